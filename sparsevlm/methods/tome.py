"""ToMe (Bolya et al., ICLR 2023) on LLaVA's vision tower: bipartite soft matching merges tokens layer by layer."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from sparsevlm.methods.base import Plan, StageDecision, StageInput
from sparsevlm.methods.prellm import VisionStage
from sparsevlm.registry import register


@register("tome")
@dataclass(frozen=True)
class ToMe(VisionStage):
    """Token Merging inside the CLIP ViT up to the layer LLaVA reads (official code: facebookresearch/ToMe).

    At each layer r tokens merge: keys averaged over heads, cosine-normalised; tokens alternate into sets A (even
    positions, the [CLS] token first and protected) and B; each A token's best B match is scored, the r best-matched A
    tokens merge into their B partners by size-weighted average, the rest stay ([CLS] first, then the unmerged A tokens
    in order, then B). Attention is proportional (log size added to the keys' logits). r is constant over the layers
    (the last one takes the rest) so that `budget` patch tokens reach the LLM, which then drops [CLS] as usual.
    Deviation: merging happens at each block's output, after its MLP, not between attention and MLP as in ToMe:
    Hugging Face's CLIP layer has no hook point there, so a merged token's MLP output is the size-weighted mean of its
    members' instead of the MLP of their mean.
    """

    merges_in_tower: ClassVar[bool] = True

    def check_tower(self, n_merge_layers: int, n_patches: int) -> None:
        self.tower_schedule(n_merge_layers, n_patches)

    def tower_schedule(self, n_layers: int, n_patches: int) -> tuple[int, ...]:
        """Tokens merged at each of the tower's first n_layers layers, to leave `budget` patches."""
        remaining, schedule, tokens = n_patches - self.budget, [], n_patches + 1
        per_layer = math.ceil(remaining / max(n_layers, 1))  # a tower whose first layer feeds the LLM merges nothing
        for _ in range(n_layers):
            r = min(per_layer, remaining, (tokens + 1) // 2 - 1)  # set A's size, minus the protected [CLS]
            schedule.append(r)
            remaining, tokens = remaining - r, tokens - r
        if remaining > 0:
            raise ValueError(
                f"budget={self.budget} is unreachable for tome in {n_layers} vision layers: one matching round per "
                f"layer merges at most half the tokens, so at least {n_patches - sum(schedule)} of {n_patches} "
                "patches remain"
            )
        return tuple(schedule)

    def tower_step(self, hidden, metric, size, sources: list[list[list[int]]], r: int):
        """Merge r tokens per image by bipartite soft matching; returns (hidden, size, sources), [CLS] first."""
        import torch

        unit = metric / metric.norm(dim=-1, keepdim=True)
        a, b = unit[:, ::2], unit[:, 1::2]
        scores = a @ b.transpose(1, 2)
        scores[:, 0, :] = -math.inf  # the [CLS] token never merges
        best, partner = scores.max(dim=-1)
        order = best.argsort(dim=-1, descending=True)
        unmerged, merged = order[:, r:].sort(dim=-1).values, order[:, :r]
        target = partner.gather(1, merged)

        def combine(x):
            x_a, x_b = x[:, ::2], x[:, 1::2]
            gather = lambda idx: x_a.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))  # noqa: E731
            x_b = x_b.scatter_reduce(1, target[..., None].expand(-1, -1, x.shape[-1]), gather(merged), reduce="sum")
            return torch.cat([gather(unmerged), x_b], dim=1)

        weighted = combine(hidden * size[..., None])
        new_size = combine(size[..., None])
        new_sources = []
        for image, groups in enumerate(sources):
            group_a, group_b = groups[::2], [list(g) for g in groups[1::2]]
            for src, dst in zip(merged[image].tolist(), target[image].tolist(), strict=True):
                group_b[dst] += group_a[src]
            new_sources.append([group_a[i] for i in unmerged[image].tolist()] + [sorted(g) for g in group_b])
        return (weighted / new_size).to(hidden.dtype), new_size[..., 0], new_sources

    def decide(self, inp: StageInput, plan: Plan) -> StageDecision:
        import torch

        groups = [[position - 1 for position in group] for group in inp.tower_sources[1:]]  # LLaVA drops [CLS]
        return StageDecision(
            kept=torch.zeros(0, dtype=torch.long, device=inp.tower_tokens.device),
            merged=inp.tower_tokens[1:],
            merged_groups=groups,
        )

"""VisionZip (Yang et al., CVPR 2025): dominant tokens by [CLS] attention plus a few contextual merged tokens."""

from __future__ import annotations

from dataclasses import dataclass

from sparsevlm.methods.base import Plan, StageDecision, StageInput
from sparsevlm.methods.prellm import VisionStage
from sparsevlm.registry import register

CONTEXTUAL_SHARE = 10 / 64  # the paper's split: 54 + 10 at 64, 108 + 20 at 128, 162 + 30 at 192


@register("visionzip")
@dataclass(frozen=True)
class VisionZip(VisionStage):
    """VisionZip on the vision tower's feature layer (official code: dvlab-research/VisionZip @ 3151f6d).

    - dominant: the [CLS] token plus the patches with the largest [CLS] attention, summed over heads (the [CLS] token
      is kept as one of the dominant tokens, before the others, as the code does);
    - contextual: the other patches by their keys averaged over heads and normalised: every step-th one is a target
      (step = remaining // contextual), each other patch joins its most similar target, and a contextual token is the
      target plus the mean of its members (the code's sum, not a mean over the target too).
    The LLM reads [CLS, dominant patches in order, contextual tokens]. `contextual=None`: round(budget * 10 / 64).
    Text-agnostic.
    """

    contextual: int | None = None
    keep_cls: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        contextual = round(self.budget * CONTEXTUAL_SHARE) if self.contextual is None else self.contextual
        if not 0 <= contextual < self.budget - int(self.keep_cls):
            raise ValueError(f"contextual: expected 0 <= contextual < budget - 1, got {contextual}")

    def decide(self, inp: StageInput, plan: Plan) -> StageDecision:
        import torch

        budget = plan.keeps[inp.stage]
        contextual = round(budget * CONTEXTUAL_SHARE) if self.contextual is None else self.contextual
        dominant = budget - contextual - int(self.keep_cls)
        kept = inp.cls_attention.sum(dim=0).topk(dominant).indices.sort().values
        rest = torch.ones(inp.hidden.shape[0], dtype=torch.bool, device=kept.device)
        rest[kept] = False
        rest = rest.nonzero().squeeze(1)  # ascending, as the code's mask selects them
        heads = inp.cls_attention.shape[0]
        metric = inp.vision_keys[1:].view(inp.hidden.shape[0], heads, -1).mean(dim=1)[rest]  # [R, dv]
        metric = metric / metric.norm(dim=-1, keepdim=True)
        step = max(1, rest.numel() // contextual) if contextual else 1
        targets = torch.arange(0, rest.numel(), step, device=rest.device)[:contextual]
        others = torch.ones(rest.numel(), dtype=torch.bool, device=rest.device)
        others[targets] = False
        others = others.nonzero().squeeze(1)
        assign = (metric[others] @ metric[targets].T).argmax(dim=1)  # [R - C]
        merged, groups = [], []
        for c in range(targets.numel()):
            members = rest[others[assign == c]]
            mean = inp.hidden[members].sum(dim=0) / max(members.numel(), 1)
            merged.append(inp.hidden[rest[targets[c]]] + mean)
            groups.append([int(rest[targets[c]]), *members.tolist()])
        if self.keep_cls:
            merged.insert(0, inp.cls_hidden)
            groups.insert(0, [])
        features = torch.stack(merged) if merged else None
        return StageDecision(kept=kept, merged=features, merged_groups=groups, merged_first=int(self.keep_cls))

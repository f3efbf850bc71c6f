"""One-stage in-LLM baselines at matched budgets: FastV and random pruning (and their shared mechanics)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from sparsevlm.methods.base import (
    CONVENTIONS,
    POSITIONS,
    Plan,
    PruningMethod,
    StageDecision,
    StageInput,
    check_choice,
    check_fields,
    recycling_of,
    topk_sorted,
    unpruned_plan,
)
from sparsevlm.registry import register
from sparsevlm.schedule import PAPER_DEPTH, map_layers, single_stage_keep

FASTV_K = 2  # FastV's K for LLaVA-1.5 (32 layers); other depths map it with schedule.map_layers


@dataclass(frozen=True)
class OneStage(PruningMethod):
    """A method that prunes once, after FastV's layer K - 1, keeping a count matched to the budget.

    `layer` is FastV's K, the first layer that sees the pruned sequence (None: K = 2 on 32 layers, mapped to other
    depths like SparseVLM's layers). The keep count is matched to `budget` equivalent tokens under `convention`
    ("output": the paper's, as SparseVLM's budgets; "input": counting layer K-1 at full length,
    Gumpest/SparseVLMs#12). `recycle` adds SparseVLM's recycling of the best deleted tokens (the keep count then
    leaves room for the merged tokens).
    """

    budget: int = 192
    layer: int | None = None
    convention: str = "output"
    positions: str = "original"
    recycle: bool = False
    recycle_fraction: float = 0.3
    cluster_ratio: float = 0.1
    tie_break: str = "index"
    retain_ratio: float | None = None  # per-sample budget: round(ratio * visual tokens)
    score_rows: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        check_fields(self)
        if self.layer is not None and self.layer < 1:
            raise ValueError(f"layer: expected null (depth-mapped K) or an int >= 1 (FastV's K), got {self.layer!r}")
        check_choice("convention", self.convention, CONVENTIONS)
        check_choice("positions", self.positions, POSITIONS)
        recycling_of(self)

    def check_model(self, n_layers: int, n_heads: int) -> None:
        if self.layer is not None and self.layer >= n_layers:
            raise ValueError(f"layer: K={self.layer} must be < the model's {n_layers} decoder layers")

    def pruning_layers(self, n_layers: int) -> tuple[int, ...]:
        """The pruned layer's index, K - 1; K defaults to FastV's 2 at 32 layers, depth-mapped elsewhere."""
        if self.layer is None:
            return map_layers((FASTV_K - 1,), n_layers, PAPER_DEPTH)
        return (self.layer - 1,)

    def plan(self, n_layers: int, n_visual: int) -> Plan:
        if self.budget >= n_visual:
            return unpruned_plan(self, self.budget, n_visual)
        recycling = recycling_of(self)
        prune_layer = self.pruning_layers(n_layers)[0]
        keep = single_stage_keep(self.budget, prune_layer, n_visual, n_layers, self.convention, recycling)
        return Plan((prune_layer,), (keep,), self.score_rows, positions=self.positions, recycling=recycling)


@register("fastv")
@dataclass(frozen=True)
class FastV(OneStage):
    """FastV (Chen et al., ECCV 2024): from layer K on keep the visual tokens the last token attends to most.

    Scores are layer K-1's attention of the last prompt token, averaged over heads; the survivors keep their original
    position ids. Official code: pkunlp-icler/FastV (its main implementation re-prunes at every decoding step without
    a KV cache; this prunes once and caches, as the llava-hf / lmms-eval ports do).
    """

    score_rows: ClassVar[str | None] = "last"

    def decide(self, inp: StageInput, plan: Plan) -> StageDecision:
        scores = inp.attention.mean(dim=0)[-1]  # [Nv]: head-averaged attention of the last token
        return StageDecision(kept=topk_sorted(scores, min(plan.keeps[inp.stage], scores.numel())), scores=scores)


@register("random")
@dataclass(frozen=True)
class RandomPrune(OneStage):
    """Uniformly random visual tokens at FastV's schedule (same layer, same matched keep count).

    The draw is seeded per sample from `seed` and the sample's token ids, so a sample gets the same tokens alone or
    in a batch, and every beam of a beam search shares them. With recycling, the deleted tokens are ranked by a second
    random draw.
    """

    seed: int = 0

    def plan(self, n_layers: int, n_visual: int) -> Plan:
        return dataclasses.replace(super().plan(n_layers, n_visual), seed=self.seed)

    def decide(self, inp: StageInput, plan: Plan) -> StageDecision:
        import torch

        n_visual = inp.hidden.shape[0]
        perm = torch.randperm(n_visual, generator=inp.generator)
        kept = torch.sort(perm[: min(plan.keeps[inp.stage], n_visual)]).values.to(inp.hidden.device)
        scores = None
        if plan.recycling is not None:
            scores = torch.rand(n_visual, generator=inp.generator).to(inp.hidden.device)
        return StageDecision(kept=kept, scores=scores)

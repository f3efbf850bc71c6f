"""Baselines at matched equivalent-token budgets: Dense (upper bound), FastV, random pruning."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

from sparsevlm.methods.base import (
    Plan,
    PruningMethod,
    StageDecision,
    StageInput,
    check_budget,
    check_choice,
    check_field_types,
    topk_sorted,
)
from sparsevlm.schedule import PAPER_DEPTH, map_layers, single_stage_keep

FASTV_K = 2  # FastV's K for LLaVA-1.5 (32 layers); other depths map it with schedule.map_layers


@dataclass(frozen=True)
class Dense(PruningMethod):
    """No pruning: the attached model must behave exactly like the bare one (the Table-1 upper-bound row)."""

    name: ClassVar[str] = "dense"


def _check_layer(layer: object) -> None:
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 1):
        raise ValueError(f"layer: expected null (depth-mapped K) or an int >= 1 (FastV's K), got {layer!r}")


def _check_depth(layer: int | None, n_layers: int) -> None:
    if layer is not None and layer >= n_layers:
        raise ValueError(f"layer: K={layer} must be < the model's {n_layers} decoder layers")


def _single_stage_layers(layer: int | None, n_layers: int) -> tuple[int, ...]:
    """The pruned layer's index, K - 1; K defaults to FastV's 2 at 32 layers, depth-mapped elsewhere."""
    if layer is None:
        return map_layers((FASTV_K - 1,), n_layers, PAPER_DEPTH)
    return (layer - 1,)


def _single_stage_plan(method, n_layers: int, n_visual: int, score_rows: str | None) -> Plan:
    """Plan for one pruning stage at FastV's layer K - 1 with the keep count matched to the budget."""
    if method.budget >= n_visual:
        warnings.warn(
            f"{method.name}: budget={method.budget} >= {n_visual} visual tokens; nothing is pruned", stacklevel=3
        )
        return Plan()
    prune_layer = method.pruning_layers(n_layers)[0]
    keep = single_stage_keep(method.budget, prune_layer, n_visual, n_layers, method.convention)
    return Plan((prune_layer,), (keep,), score_rows, positions=method.positions)


@dataclass(frozen=True)
class FastV(PruningMethod):
    """FastV (Chen et al., ECCV 2024): from layer K on keep the visual tokens the last token attends to most.

    `layer` is FastV's K, the first layer that sees the pruned sequence (None: K = 2 on 32 layers, mapped to other
    depths like SparseVLM's layers); scores are layer K-1's attention of the last prompt token, averaged over heads.
    The keep count is matched to `budget` equivalent tokens under `convention` ("output": the paper's, as
    SparseVLM's budgets; "input": counting layer K-1 at full length, Gumpest/SparseVLMs#12).
    FastV keeps the original position ids of the survivors.
    """

    budget: int = 192
    layer: int | None = None
    convention: str = "output"
    positions: str = "original"
    name: ClassVar[str] = "fastv"

    def __post_init__(self) -> None:
        check_budget(self.budget)
        check_field_types(self)
        _check_layer(self.layer)
        check_choice("convention", self.convention, ("output", "input"))
        check_choice("positions", self.positions, ("original", "contiguous"))

    def check_model(self, n_layers: int, n_heads: int) -> None:
        _check_depth(self.layer, n_layers)

    def pruning_layers(self, n_layers: int) -> tuple[int, ...]:
        return _single_stage_layers(self.layer, n_layers)

    def plan(self, n_layers: int, n_visual: int) -> Plan:
        return _single_stage_plan(self, n_layers, n_visual, "last")

    def decide(self, inp: StageInput, plan: Plan) -> StageDecision:
        scores = inp.attention.mean(dim=0)[-1]  # [Nv]: head-averaged attention of the last token
        return StageDecision(kept=topk_sorted(scores, min(plan.keeps[inp.stage], scores.numel())))


@dataclass(frozen=True)
class RandomPrune(PruningMethod):
    """Uniformly random visual tokens at FastV's schedule (same layer, same matched keep count).

    The draw is seeded per sample from `seed` and the sample's token ids, so a sample gets the same tokens alone or
    in a batch, and every beam of a beam search shares them.
    """

    budget: int = 192
    seed: int = 0
    layer: int | None = None
    convention: str = "output"
    positions: str = "original"
    name: ClassVar[str] = "random"

    def __post_init__(self) -> None:
        check_budget(self.budget)
        check_field_types(self)
        _check_layer(self.layer)
        check_choice("convention", self.convention, ("output", "input"))
        check_choice("positions", self.positions, ("original", "contiguous"))

    def check_model(self, n_layers: int, n_heads: int) -> None:
        _check_depth(self.layer, n_layers)

    def pruning_layers(self, n_layers: int) -> tuple[int, ...]:
        return _single_stage_layers(self.layer, n_layers)

    def plan(self, n_layers: int, n_visual: int) -> Plan:
        return _single_stage_plan(self, n_layers, n_visual, None)

    def decide(self, inp: StageInput, plan: Plan) -> StageDecision:
        import torch

        n_visual = inp.hidden.shape[0]
        perm = torch.randperm(n_visual, generator=inp.generator)
        return StageDecision(kept=torch.sort(perm[: min(plan.keeps[inp.stage], n_visual)]).values.to(inp.hidden.device))

"""Pooling: 2-D average pooling of the visual grid before the LLM (VTC-Bench's strong baseline)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

from sparsevlm.methods.base import Plan, StageDecision, StageInput
from sparsevlm.methods.prellm import PreLLM
from sparsevlm.registry import register


@register("pooling")
@dataclass(frozen=True)
class Pooling(PreLLM):
    """Average the projector outputs over a coarser grid: rows x cols cells with rows * cols <= budget.

    rows = floor(sqrt(budget)), cols = budget // rows (64 -> 8 x 8, 128 -> 11 x 11, 192 -> 13 x 14; 48 -> 6 x 8 on a
    12 x 12 grid); cell boundaries as adaptive average pooling draws them (floor/ceil of i * size / cells), so cells may
    overlap by one patch when the grid does not divide. Each pooled token takes the position of its cell's first patch
    before the sequence is renumbered. VTC-Bench (arXiv 2510.07143) found such downsampling beats many methods.
    """

    needs_grid: ClassVar[bool] = True

    def plan(self, n_layers: int, n_visual: int) -> Plan:
        plan = super().plan(n_layers, n_visual)
        if not plan.keeps:
            return plan
        rows = math.isqrt(self.budget)  # the pooled count, rows * cols, is what the LLM gets (<= budget)
        return dataclasses.replace(plan, keeps=(rows * (self.budget // rows),))

    def decide(self, inp: StageInput, plan: Plan) -> StageDecision:
        import torch

        if inp.grid is None:
            raise ValueError(f"pooling: the visual block of {inp.hidden.shape[0]} tokens is not a square patch grid")
        rows = math.isqrt(plan.keeps[inp.stage])
        groups = pooling_cells(inp.grid, (rows, plan.keeps[inp.stage] // rows))
        pooled = torch.stack([inp.hidden[group].mean(dim=0) for group in groups])
        return StageDecision(kept=torch.zeros(0, dtype=torch.long, device=inp.hidden.device), merged=pooled,
                             merged_groups=groups)  # fmt: skip


def pooling_cells(grid: tuple[int, int], cells: tuple[int, int]) -> list[list[int]]:
    """Patch indices (row-major) in each output cell of adaptive average pooling from grid to cells, row-major."""
    spans = []
    for size, count in zip(grid, cells, strict=True):
        spans.append([(i * size // count, -(-(i + 1) * size // count)) for i in range(count)])
    return [
        [r * grid[1] + c for r in range(r0, r1) for c in range(c0, c1)] for r0, r1 in spans[0] for c0, c1 in spans[1]
    ]

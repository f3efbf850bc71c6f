"""Training-only linear probes: grid positions (row, column) or classes read from the LLM's hidden states."""

from __future__ import annotations

import torch

from eval import synth

ORDINAL_OUTPUTS = 2  # row and column as scalars in [-1, 1], after the row and column logits


class PositionProbe(torch.nn.Module):
    """Training-only heads reading row and column from hidden states: grid-way classes and ordinal (scalar)."""

    def __init__(self, hidden: int, grid: int, n_layers: int):
        super().__init__()
        self.grid = grid
        self.heads = torch.nn.ModuleList(torch.nn.Linear(hidden, 2 * grid + ORDINAL_OUTPUTS) for _ in range(n_layers))

    def loss(self, hidden_states: list[torch.Tensor], cells: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """Mean over heads of cross-entropy (row, column) + MSE of the scaled row and column.

        ``cells`` [N] labels every head's input alike; a list gives each head its own labels.
        """
        labels = cells if isinstance(cells, list) else [cells] * len(self.heads)
        total = torch.zeros(())
        for head, hidden, cell in zip(self.heads, hidden_states, labels, strict=True):
            rows, cols = synth.patch_cell(cell, self.grid)
            scalar = torch.stack([rows, cols], dim=-1).float() / (self.grid - 1) * 2 - 1
            row_logits, col_logits, ordinal = head(hidden).split([self.grid, self.grid, ORDINAL_OUTPUTS], dim=-1)
            total = total + torch.nn.functional.cross_entropy(row_logits, rows)
            total = total + torch.nn.functional.cross_entropy(col_logits, cols)
            total = total + torch.nn.functional.mse_loss(ordinal, scalar)
        return total / len(self.heads)

    @torch.no_grad()
    def column_accuracy(self, hidden: torch.Tensor, cells: torch.Tensor) -> float:
        """Share of cells whose column the last head reads right from `hidden` [N, D]."""
        col_logits = self.heads[-1](hidden)[:, self.grid : 2 * self.grid]
        return (col_logits.argmax(-1) == synth.patch_cell(cells, self.grid)[1]).float().mean().item()


class ClassProbe(torch.nn.Module):
    """Training-only linear heads classifying hidden states (one head per layer read); rare classes weighted up."""

    def __init__(self, hidden: int, n_classes: int, n_layers: int, rare_weight: float):
        super().__init__()
        self.rare_weight = rare_weight
        self.heads = torch.nn.ModuleList(torch.nn.Linear(hidden, n_classes) for _ in range(n_layers))

    def loss(self, hidden_states: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Mean over heads of the cross-entropy, every label other than class 0 weighted by rare_weight."""
        weight = torch.where(labels > 0, self.rare_weight, 1.0)
        total = torch.zeros(())
        for head, hidden in zip(self.heads, hidden_states, strict=True):
            ce = torch.nn.functional.cross_entropy(head(hidden), labels, reduction="none")
            total = total + (ce * weight).sum() / weight.sum()
        return total / len(self.heads)

    @torch.no_grad()
    def rare_accuracy(self, hidden: torch.Tensor, labels: torch.Tensor) -> float:
        """Share of the labels other than class 0 that the last head gets right from `hidden` [N, D]."""
        rare = labels > 0
        return (self.heads[-1](hidden[rare]).argmax(-1) == labels[rare]).float().mean().item()


def probe_layers(layers: str, weight: float) -> tuple[int, ...]:
    """Hidden-state indices ("0,2,4": 0 is the LLM's input) an auxiliary probe reads; none when its weight is 0."""
    return tuple(int(k) for k in layers.split(",")) if weight else ()

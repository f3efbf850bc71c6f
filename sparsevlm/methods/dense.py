"""Dense: no pruning, the Table-1 upper-bound row."""

from __future__ import annotations

from dataclasses import dataclass

from sparsevlm.methods.base import PruningMethod
from sparsevlm.registry import register


@register("dense")
@dataclass(frozen=True)
class Dense(PruningMethod):
    """No pruning: the attached model must behave exactly like the bare one (the Table-1 upper-bound row)."""

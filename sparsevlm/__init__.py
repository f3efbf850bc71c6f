"""SparseVLM and visual-token pruning baselines on stock Hugging Face LLaVA models.

with sparsevlm.attach(model, sparsevlm.SparseVLM(budget=64)) as trace:
    model.generate(**inputs)
trace.last.equivalent_tokens

Names are imported on first use, so building and validating a method (e.g. a config check) never imports torch or
transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "attach": "sparsevlm.engine",
    "check": "sparsevlm.engine",
    "PruningMethod": "sparsevlm.methods.base",
    "Dense": "sparsevlm.methods.dense",
    "FastV": "sparsevlm.methods.baselines",
    "RandomPrune": "sparsevlm.methods.baselines",
    "SparseVLM": "sparsevlm.methods.sparsevlm",
    "PruneTrace": "sparsevlm.trace",
    "SampleTrace": "sparsevlm.trace",
    "StageRecord": "sparsevlm.trace",
    "make_method": "sparsevlm.registry",
    "available_methods": "sparsevlm.registry",
    "register": "sparsevlm.registry",
}

__all__ = [
    "Dense",
    "FastV",
    "PruneTrace",
    "PruningMethod",
    "RandomPrune",
    "SampleTrace",
    "SparseVLM",
    "StageRecord",
    "attach",
    "check",
    "make_method",
    "available_methods",
    "register",
]

if TYPE_CHECKING:
    from sparsevlm.engine import attach, check
    from sparsevlm.methods.base import PruningMethod
    from sparsevlm.methods.baselines import FastV, RandomPrune
    from sparsevlm.methods.dense import Dense
    from sparsevlm.methods.sparsevlm import SparseVLM
    from sparsevlm.registry import available_methods, make_method, register
    from sparsevlm.trace import PruneTrace, SampleTrace, StageRecord


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sparsevlm' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__

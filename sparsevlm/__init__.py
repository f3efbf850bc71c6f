"""SparseVLM and visual-token pruning baselines on stock Hugging Face LLaVA models.

with sparsevlm.attach(model, sparsevlm.SparseVLM(budget=64)) as trace:
    model.generate(**inputs)
trace.last.equivalent_tokens
"""

from sparsevlm.engine import attach
from sparsevlm.methods.base import PruningMethod
from sparsevlm.methods.baselines import Dense, FastV, RandomPrune
from sparsevlm.methods.sparsevlm import SparseVLM
from sparsevlm.trace import PruneTrace, SampleTrace, StageRecord

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
]

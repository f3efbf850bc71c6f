"""The contract between a pruning method (policy) and the engine (mechanics)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # methods are built and validated without torch (config checks); decide() imports it
    import torch


@dataclass(frozen=True)
class Plan:
    """What the engine must do for one sample: where to prune, what to score, how to number positions."""

    prune_layers: tuple[int, ...] = ()
    keeps: tuple[int, ...] = ()  # per stage; empty for data-dependent rules (v1.0 rank)
    score_rows: str | None = None  # "raters" | "last" | None (no attention needed, e.g. random)
    gravity: bool = False  # divide rater attention by the RoPE distance prior (SparseVLM+)
    positions: str = "contiguous"  # "contiguous" (renumber survivors) | "original" (keep their positions)
    rank_scale_bias: tuple[float, float] | None = None  # v1.0 rank rule: keep = rank * scale + bias
    noise_seed: int | None = None  # per-sample generators seeded with this at every prefill (the reference's stream)


@dataclass(frozen=True)
class StageInput:
    """What a method sees at one pruning layer for one sample."""

    stage: int  # index into Plan.prune_layers
    layer: int
    hidden: torch.Tensor  # [Nv, D] the layer's output for the current visual block
    attention: torch.Tensor | None  # [H, R, Nv] fp32 probabilities of the score rows over the visual block
    generator: torch.Generator  # per sample, seeded at the start of each prefill


@dataclass(frozen=True)
class StageDecision:
    """Which visual tokens survive a stage, and which recycled tokens are appended after them."""

    kept: torch.Tensor  # sorted positions inside the current visual block
    merged: torch.Tensor | None = None  # [C, D] recycled tokens, in insertion order
    merged_groups: list[list[int]] = field(default_factory=list)  # block positions merged into each recycled token
    rank: int | None = None


class PruningMethod:
    """Base of all methods: a frozen dataclass of policy; the engine does every tensor bookkeeping step."""

    name: ClassVar[str] = "base"

    def pruning_layers(self, n_layers: int) -> tuple[int, ...]:
        """Decoder layers whose output is pruned, for a model of this depth."""
        return ()

    def plan(self, n_layers: int, n_visual: int) -> Plan:
        """The static part of the method for one sample with n_visual image tokens."""
        return Plan()

    def decide(self, inp: StageInput, plan: Plan) -> StageDecision:
        """Choose survivors at one pruning layer."""
        raise NotImplementedError

    def check_model(self, n_layers: int, n_heads: int) -> None:
        """Raise a one-line ValueError if the method cannot run on a model of this shape."""


def _matches(value: Any, annotation: Any) -> bool:
    """Whether value fits a field annotation (int, float, str, bool, None, unions, tuple[X, ...]); ints fit float."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is tuple:
        item = typing.get_args(annotation)[0]
        return isinstance(value, tuple | list) and all(_matches(v, item) for v in value)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, annotation) if isinstance(annotation, type) else True


def _describe(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("NoneType", "None")


def check_field_types(method: object) -> None:
    """Raise a one-line ValueError naming the first dataclass field whose value does not fit its annotation."""
    hints = typing.get_type_hints(type(method))
    for f in dataclasses.fields(method):
        value = getattr(method, f.name)
        if not _matches(value, hints[f.name]):
            raise ValueError(f"{f.name}: expected {_describe(hints[f.name])}, got {value!r}")


def check_budget(budget: object) -> None:
    """Budgets are positive integers (equivalent visual tokens)."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise ValueError(
            f"budget: expected a positive int (equivalent visual tokens, e.g. 64, 128, 192), got {budget!r}"
        )


def check_choice(name: str, value: object, allowed: tuple) -> None:
    """One-line error naming the field and its allowed values."""
    if value not in allowed:
        raise ValueError(f"{name}: got {value!r}, allowed: {', '.join(repr(a) for a in allowed)}")


def topk_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores, in ascending position order (the reference selects through a 0/1 mask)."""
    return scores.topk(k).indices.sort().values

"""The contract between a pruning method (policy) and the engine (mechanics).

A method says where it acts (`hook`), scores the visual tokens and selects survivors (`decide`); the engine does every
tensor bookkeeping step (sequence surgery, positions, masks, cache, trace) and, when the plan asks for it, recycles
part of the deleted tokens (SparseVLM's DPC-kNN merge) for any method that returns its scores.

Hook points:
- "llm": on the output of decoder layers (one stage or several), with attention rows of chosen queries;
- "pre_llm": on the projector output, before the first decoder layer: the LLM reads fewer visual tokens;
- "vision": on the vision tower (its features before the projector, its [CLS] attention); the LLM reads fewer.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # methods are built and validated without torch (config checks); decide() imports it
    import torch


BEFORE_LLM = -1  # the "layer" of a pre-LLM or vision stage: it prunes the input of decoder layer 0
HOOKS = ("llm", "pre_llm", "vision")


TIE_BREAKS = ("index", "noise", "reference")
POSITIONS = ("contiguous", "original")  # survivors renumbered | keeping their own positions
CONVENTIONS = ("output", "input")  # equivalent tokens counted after each layer | the pruning layer at full length


@dataclass(frozen=True)
class Recycling:
    """SparseVLM's recycling (§3.4): the best `fraction` of the deleted tokens, DPC-kNN-merged into
    int(candidates * cluster_ratio) + 1 tokens appended after the kept ones.

    tie_break decides equal densities: "index" (deterministic), "noise" (1e-6 U[0,1) noise from the sample's seeded
    generator) or "reference" (the same noise drawn as the authors' code does: a generator seeded with 1234 at each
    prefill, as their evaluation seeds torch before each generate).
    """

    fraction: float = 0.3
    cluster_ratio: float = 0.1
    tie_break: str = "index"

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1 or not 0 < self.cluster_ratio <= 1:
            raise ValueError("recycle_fraction and cluster_ratio: expected values in (0, 1]")
        check_choice("tie_break", self.tie_break, TIE_BREAKS)


@dataclass(frozen=True)
class Plan:
    """What the engine must do for one sample: where to prune, what to score, how to number positions."""

    prune_layers: tuple[int, ...] = ()  # decoder layers whose output is pruned; (BEFORE_LLM,) for pre-LLM methods
    keeps: tuple[int, ...] = ()  # per stage; empty for data-dependent rules (v1.0 rank)
    score_rows: str | None = None  # "raters" | "last" | None (no attention needed, e.g. random)
    gravity: bool = False  # divide rater attention by the RoPE distance prior (SparseVLM+)
    positions: str = "contiguous"  # "contiguous" (renumber survivors) | "original" (keep their positions)
    rank_scale_bias: tuple[float, float] | None = None  # v1.0 rank rule: keep = rank * scale + bias
    seed: int = 0  # per-sample generators depend on this and the sample's own tokens (see Recycling.tie_break)
    raters: str = "relevant"  # with score_rows="raters": "relevant" (above-mean relevance) | "all" text tokens
    rater_dtype: str = "model"  # "model" | "float32": the dtype of the rater-relevance product
    recycling: Recycling | None = None  # merge part of the deleted tokens (needs StageDecision.scores)
    score_with_next_layer: bool = False  # score rows from the next layer's norm and q/k projections (PyramidDrop)
    needs: frozenset[str] = frozenset()  # extra StageInput fields: "text", "keys", "final_norm"
    unpruned: str | None = None  # why this sample is not pruned at all (the engine warns once per attach)


@dataclass(frozen=True)
class StageInput:
    """What a method sees at one pruning stage for one sample."""

    stage: int  # index into Plan.prune_layers
    layer: int  # the decoder layer whose output is pruned (BEFORE_LLM for pre-LLM stages)
    hidden: torch.Tensor  # [Nv, D] the current visual block (the layer's output; projector output before the LLM)
    attention: torch.Tensor | None  # [H, R, Nv] fp32 probabilities of the score rows over the visual block
    generator: torch.Generator  # per sample, seeded at the start of each prefill
    text: torch.Tensor | None = None  # [Nt, D] tokens after the visual block (when the plan needs "text")
    grid: tuple[int, int] | None = None  # (rows, cols) of the visual block's patch grid, when it is still whole
    keys: torch.Tensor | None = None  # [Nv + Nt, Hkv * d] the layer's keys after RoPE, visual block then text ("keys")
    final_norm: Callable[[torch.Tensor], torch.Tensor] | None = None  # the LLM's last norm ("final_norm")
    image_start: int = 0  # index of the visual block's first token in the sample's unpadded prompt
    cls_hidden: torch.Tensor | None = None  # [Dv] vision stage: the [CLS] token's features at the feature layer
    cls_attention: torch.Tensor | None = None  # [Hv, Nv] vision stage: the [CLS] query's softmax over the patches
    vision_keys: torch.Tensor | None = None  # [Nv + 1, Hv * dv] vision stage: the feature layer's keys, [CLS] first
    tower_tokens: torch.Tensor | None = None  # [N', Dv] vision stage of a tower-merging method: its tokens, [CLS] first
    tower_sources: list[list[int]] | None = None  # the tower positions (0 = [CLS]) each of those tokens holds


@dataclass(frozen=True)
class StageDecision:
    """Which visual tokens survive a stage, and which recycled or merged tokens are appended after them."""

    kept: torch.Tensor  # sorted positions inside the current visual block
    merged: torch.Tensor | None = None  # [C, D] recycled tokens, in insertion order
    merged_groups: list[list[int]] = field(default_factory=list)  # block positions merged into each recycled token
    # (a vision stage may append features with no patch members, e.g. the [CLS] token: an empty group)
    rank: int | None = None
    scores: torch.Tensor | None = None  # [Nv] the scores behind the choice (recycling takes the best deleted ones)
    merged_first: int = 0  # vision stage: this many merged features go before the kept ones (VisionZip's [CLS])


class PruningMethod:
    """Base of all methods: a frozen dataclass of policy; the engine does every tensor bookkeeping step.

    Subclasses are frozen dataclasses registered by name (sparsevlm.registry.register); `hook` says where they act.
    """

    name: ClassVar[str] = "base"
    hook: ClassVar[str] = "llm"
    merges_in_tower: ClassVar[bool] = False  # merges tokens inside the vision tower's layers (tower_step)
    needs_grid: ClassVar[bool] = False  # reads the visual block as one square patch grid (StageInput.grid)

    def pruning_layers(self, n_layers: int) -> tuple[int, ...]:
        """Decoder layers whose output is pruned, for a model of this depth."""
        return ()

    def for_sample(self, n_visual: int) -> PruningMethod:
        """The method as it runs on a sample of n_visual visual tokens: `retain_ratio`, when set, becomes its budget
        round(retain_ratio * n_visual) (at least 1), for models whose visual count varies per input."""
        ratio = getattr(self, "retain_ratio", None)
        if ratio is None:
            return self
        return dataclasses.replace(self, budget=max(1, round(ratio * n_visual)))

    def plan(self, n_layers: int, n_visual: int) -> Plan:
        """The static part of the method for one sample with n_visual image tokens."""
        return Plan()

    def decide(self, inp: StageInput, plan: Plan) -> StageDecision:
        """Choose survivors at one pruning layer."""
        raise NotImplementedError

    def check_model(self, n_layers: int, n_heads: int) -> None:
        """Raise a one-line ValueError if the method cannot run on a model of this shape."""

    def check_tower(self, n_merge_layers: int, n_patches: int) -> None:
        """Raise a one-line ValueError if the method cannot run on this vision tower (layers up to the one read)."""


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


def check_fields(method: PruningMethod) -> None:
    """Raise a one-line ValueError for a bad budget or the first dataclass field whose value does not fit its type."""
    check_budget(method.budget)
    ratio = getattr(method, "retain_ratio", None)
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio < 1):
        raise ValueError(
            f"retain_ratio: expected null (use budget) or a share of the visual tokens in (0, 1), got {ratio!r}"
        )
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


def recycling_of(method: PruningMethod) -> Recycling | None:
    """The method's recycling options as a Recycling (validated even when off); None unless `method.recycle`."""
    recycling = Recycling(method.recycle_fraction, method.cluster_ratio, method.tie_break)
    return recycling if method.recycle else None


def unpruned_plan(method: PruningMethod, budget: int, n_visual: int, **fields: Any) -> Plan:
    """The plan of a budget that prunes nothing (budget >= the visual tokens), saying so."""
    return Plan(unpruned=f"{method.name}: budget={budget} >= {n_visual} visual tokens; nothing is pruned", **fields)


def topk_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores, in ascending position order (the reference selects through a 0/1 mask)."""
    return scores.topk(k).indices.sort().values

"""SparseVLM (Zhang et al., ICML 2025, arXiv 2410.04417): text-rater-guided progressive visual-token pruning."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sparsevlm.methods.base import (
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
from sparsevlm.schedule import (
    V10_LAYERS,
    V15_LAYERS,
    V15_TABLE,
    V20_HEAD_FRACTION,
    V20_TABLE,
    VIDEO_LAYERS,
    derive_keeps,
    map_layers,
    rank_scale_bias,
    single_stage_keep,
)

# What each released version does (docs/method.md); every entry is also a field that can be overridden.
VERSION_DEFAULTS = {
    "1.0": dict(keep_rule="rank", head_fraction=1.0, gravity=False, recycle=True, positions="contiguous"),
    "1.5": dict(keep_rule="table", head_fraction=1.0, gravity=False, recycle=True, positions="contiguous"),
    "2.0": dict(keep_rule="table", head_fraction=V20_HEAD_FRACTION, gravity=True, recycle=False, positions="original"),
    "video": dict(keep_rule="table", head_fraction=1.0, gravity=False, recycle=True, positions="contiguous"),
}


@register("sparsevlm")
@dataclass(frozen=True)
class SparseVLM(PruningMethod):
    """SparseVLM with every difference between the authors' releases exposed as a field.

    Versions (defaults for the None fields):
      "1.0"  Oct-2024 code (91fb6d9): rank rule keep = min(int(rank * scale + bias), Nv - 1), layers 2/6/15/19.
      "1.5"  ICML-era code (tag v1.5, b9619e6): fixed per-layer tables at layers 2/6/15, recycling. Default.
      "2.0"  SparseVLM+ (9e1f649, USE_VERSION=2_0): gravity-corrected attention, top-14 heads, no recycling,
             original position ids.
      "video" the `video` branch (f05b898, Video-LLaVA): one stage after layer 1, recycling. The branch keeps int(rank)
             tokens, with no budget knob (keep_rule="rank" does that: scale 1, bias 0); by default the stage keeps the
             count whose equivalent tokens meet `budget` (135 of 2048 -> 11 kept + 62 recycled = 73).
    Deviations from the reference are fields too: `tie_break` ("reference": the authors' exact noise stream; "noise":
    seeded noise of our own; "index": deterministic), `rank_rule` ("paper": deleted = scale * (Nv - rank), Eq. 8),
    `raters="all"`, `rater_dtype="float32"`.
    Any model (ours, documented in docs/method.md): v1.0 at budgets or visual counts the authors did not calibrate
    interpolates scale/bias (schedule.rank_scale_bias); v2.0 on a model without 32 heads averages the top
    round(14/32 * heads) heads (`head_fraction`).
    """

    budget: int = 192
    version: str = "1.5"  # numbers are accepted as written in configs (2.0, 1.5, 1 -> "2.0", "1.5", "1.0")
    prune_layers: tuple[int, ...] | None = None  # None: the version's layers, mapped to the model's depth
    keeps: tuple[int, ...] | None = None  # None: the version's table, or derived for other budgets/depths
    keep_rule: str | None = None  # "table" | "rank"
    rank_rule: str = "code"  # "code": keep = rank * scale + bias | "paper": delete = scale * (Nv - rank)
    scale: float | None = None  # rank rule; None: the authors' value for the budget (interpolated elsewhere)
    bias: float | None = None
    raters: str = "relevant"  # "relevant": text tokens with above-mean relevance (the paper) | "all"
    rater_dtype: str = "model"  # "model": V @ T^T in the model's dtype, as the reference | "float32"
    heads: int | None = None  # average the top-`heads` heads by rater->visual mass; None: see head_fraction
    head_fraction: float | None = None  # with heads=None: the top round(fraction * n_heads) heads (1.0 = all)
    gravity: bool | None = None
    recycle: bool | None = None
    recycle_fraction: float = 0.3  # tau: share of deleted tokens (best scores) offered to clustering
    cluster_ratio: float = 0.1  # theta: clusters per candidate
    positions: str | None = None  # "contiguous" | "original"
    tie_break: str = "index"  # DPC-kNN density ties: "index" (deterministic) | "noise" (seeded) | "reference"
    seed: int = 0
    retain_ratio: float | None = None  # per-sample budget: round(ratio * visual tokens)

    def __post_init__(self) -> None:
        if isinstance(self.version, int | float) and not isinstance(self.version, bool):
            written = f"{float(self.version):.1f}"
            if written in VERSION_DEFAULTS:
                object.__setattr__(self, "version", written)
        check_choice("version", self.version, tuple(VERSION_DEFAULTS))
        check_fields(self)
        for key, value in VERSION_DEFAULTS[self.version].items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        check_choice("keep_rule", self.keep_rule, ("table", "rank"))
        check_choice("rank_rule", self.rank_rule, ("code", "paper"))
        check_choice("raters", self.raters, ("relevant", "all"))
        check_choice("rater_dtype", self.rater_dtype, ("model", "float32"))
        check_choice("positions", self.positions, POSITIONS)
        recycling_of(self)
        if self.heads is not None and (not isinstance(self.heads, int) or self.heads < 1):
            raise ValueError(f"heads: expected None (see head_fraction) or a positive int, got {self.heads!r}")
        if not 0 < self.head_fraction <= 1:
            raise ValueError(f"head_fraction: expected a value in (0, 1], got {self.head_fraction!r}")
        if (self.scale is None) != (self.bias is None):
            raise ValueError("scale, bias: give both (the rank rule keep = rank * scale + bias) or neither")
        if self.keeps is not None:
            object.__setattr__(self, "keeps", tuple(self.keeps))
            layers = self.prune_layers
            if layers is None or len(layers) != len(self.keeps):
                raise ValueError("keeps: needs prune_layers with the same number of stages")
        if self.prune_layers is not None:
            object.__setattr__(self, "prune_layers", tuple(self.prune_layers))
            if list(self.prune_layers) != sorted(set(self.prune_layers)):
                raise ValueError(f"prune_layers: expected strictly increasing layers, got {self.prune_layers}")

    def heads_used(self, n_heads: int) -> int:
        """How many heads the scores average: `heads`, else round(head_fraction * n_heads), at least 1."""
        if self.heads is not None:
            return self.heads
        return max(1, min(n_heads, int(math.floor(self.head_fraction * n_heads + 0.5))))

    def check_model(self, n_layers: int, n_heads: int) -> None:
        if self.heads is not None and self.heads > n_heads:
            raise ValueError(
                f"heads: top-{self.heads} head selection needs >= {self.heads} attention heads, the model has {n_heads}"
            )
        layers = self.pruning_layers(n_layers)
        if layers and layers[-1] > n_layers - 2:
            raise ValueError(f"prune_layers: layers must be <= {n_layers - 2} for a {n_layers}-layer model")

    def pruning_layers(self, n_layers: int) -> tuple[int, ...]:
        if self.prune_layers is not None:
            return self.prune_layers
        if self.version == "video":
            return map_layers(VIDEO_LAYERS, n_layers)
        return map_layers(V10_LAYERS if self.keep_rule == "rank" else V15_LAYERS, n_layers)

    def plan(self, n_layers: int, n_visual: int) -> Plan:
        layers = self.pruning_layers(n_layers)
        recycling = recycling_of(self)
        policy = {key: getattr(self, key) for key in ("gravity", "positions", "seed", "raters", "rater_dtype")}
        common = dict(score_rows="raters", recycling=recycling, **policy)
        if self.budget >= n_visual:
            return unpruned_plan(self, self.budget, n_visual, positions=self.positions)
        if self.keep_rule == "rank":
            scale_bias = (self.scale, self.bias) if self.scale is not None else self._rank_scale_bias(n_visual)
            return Plan(layers, (), rank_scale_bias=scale_bias, **common)
        if self.keeps is not None:
            return Plan(layers, self.keeps, **common)
        if self.version == "video":
            return Plan(
                layers, (single_stage_keep(self.budget, layers[0], n_visual, n_layers, "output", recycling),), **common
            )
        table = V20_TABLE if self.version == "2.0" else V15_TABLE
        keeps = derive_keeps(
            table, self.budget, layers, n_visual, n_layers, self.recycle, self.recycle_fraction, self.cluster_ratio
        )
        return Plan(layers, keeps, **common)

    def _rank_scale_bias(self, n_visual: int) -> tuple[float, float]:
        """The rank rule's default scale and bias: the video branch keeps int(rank); v1.0 was calibrated per budget."""
        return (1.0, 0.0) if self.version == "video" else rank_scale_bias(self.budget, n_visual)

    def decide(self, inp: StageInput, plan: Plan) -> StageDecision:
        import torch

        attention = inp.attention  # [H, R, Nv]
        n_heads = self.heads_used(attention.shape[0])
        if n_heads < attention.shape[0]:  # SparseVLM+ §4.3: the heads that look at the image most
            top = attention.sum(dim=(1, 2)).topk(n_heads).indices
            attention = attention[top]
        relation = attention.mean(dim=0)  # [R, Nv]
        scores = relation.mean(dim=0)  # [Nv]
        n_visual = scores.numel()
        rank = None
        if self.keep_rule == "rank":
            rank = int(torch.linalg.matrix_rank(relation.float()))
            scale, bias = plan.rank_scale_bias
            if self.rank_rule == "code":
                keep = min(int(rank * scale + bias), n_visual - 1) if n_visual - rank != 0 else n_visual
            else:
                keep = n_visual - min(int(scale * (n_visual - rank)), n_visual - 1)
            keep = max(keep, 0)
        else:
            keep = min(plan.keeps[inp.stage], n_visual - 1)
        return StageDecision(kept=topk_sorted(scores, keep), rank=rank, scores=scores)

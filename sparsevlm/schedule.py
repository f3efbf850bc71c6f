"""Pruning layers and per-layer keep counts: the authors' tables, the depth-mapping rule and the any-budget rule.

Conventions (docs/method.md has the worked numbers):
- A pruning layer l runs on the full current sequence; its *output* loses tokens (reference semantics).
- Equivalent tokens (paper): mean over decoder layers of the visual tokens *leaving* each layer, recycled included.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sparsevlm.methods.base import Recycling

PAPER_DEPTH = 32  # LLaVA-1.5-7B: the depth every authors' table was tuned for
PAPER_VISUAL = 576  # 24 x 24 CLIP-L/336 patches

# Authors' repository (Gumpest/SparseVLMs), tag v1.5 (b9619e6), llava/model/language_model/score.py; the 96 row exists
# only in commit 9e1f649 (main, default "1_0" mode, which equals v1.5 semantics).
V15_LAYERS = (2, 6, 15)
V15_TABLE = {192: (300, 200, 110), 128: (303, 110, 36), 96: (238, 48, 26), 64: (66, 30, 17)}
# Same file at commit 9e1f649 with USE_VERSION=2_0 (SparseVLM+).
V20_TABLE = {192: (300, 200, 118), 128: (238, 108, 60), 96: (246, 54, 28), 64: (66, 34, 20)}
# Commit 91fb6d9, modelling_sparse_llama.py (pruning_loc) and scripts/v1_5/eval/{mme,pope,textvqa}.sh (--scale/--bias).
V10_LAYERS = (2, 6, 15, 19)
VIDEO_LAYERS = (1,)  # the `video` branch (f05b898): pruning_loc=[1]
V10_SCALE_BIAS = {192: (13.5, 0.0), 128: (9.0, 6.0), 64: (0.8, 0.0)}
V20_HEAD_FRACTION = 14 / 32  # SparseVLM+ averages the top-14 of LLaVA-7B's 32 heads


def map_layers(layers: Sequence[int], n_layers: int, ref_depth: int = PAPER_DEPTH) -> tuple[int, ...]:
    """Map pruning layers tuned for `ref_depth` layers to `n_layers`, keeping the fraction of depth run at full length.

    Pruning after layer l means l + 1 layers see the unpruned sequence; that count scales with depth:
    l' = round((l + 1) * n_layers / ref_depth) - 1, then forced strictly increasing and below the last layer.
    Example: (2, 6, 15) -> 40 layers: (3, 8, 19); 8 layers: (0, 1, 3).
    """
    if n_layers == ref_depth:
        return tuple(layers)
    mapped: list[int] = []
    for layer in layers:
        new = max(int(math.floor((layer + 1) * n_layers / ref_depth + 0.5)) - 1, 0)
        if mapped:
            new = max(new, mapped[-1] + 1)
        mapped.append(new)
    if mapped and mapped[-1] > n_layers - 2:
        raise ValueError(
            f"prune_layers: cannot place {len(layers)} pruning layers in a {n_layers}-layer model "
            f"(mapped {tuple(mapped)}; the last pruning layer must be <= {n_layers - 2})"
        )
    return tuple(mapped)


def rank_scale_bias(budget: int, n_visual: int) -> tuple[float, float]:
    """Scale and bias of the v1.0 rank rule (keep = rank * scale + bias) for any budget and visual token count.

    The authors calibrated three budgets of LLaVA-1.5's 576 tokens; those are returned verbatim. Elsewhere (ours):
    interpolate scale and bias linearly in the budget fraction budget / n_visual between the calibrated fractions,
    clamped outside them. The rank is bounded by the number of raters, not by n_visual, so the values are not rescaled
    with n_visual; the measured equivalent tokens can differ from the budget (tables flag it).
    """
    if n_visual == PAPER_VISUAL and budget in V10_SCALE_BIAS:
        return V10_SCALE_BIAS[budget]
    points = sorted((b / PAPER_VISUAL, scale_bias) for b, scale_bias in V10_SCALE_BIAS.items())
    fraction = min(max(budget / n_visual, points[0][0]), points[-1][0])
    for (x0, (s0, b0)), (x1, (s1, b1)) in zip(points, points[1:], strict=False):
        if x0 <= fraction <= x1:
            t = (fraction - x0) / (x1 - x0)
            return s0 + t * (s1 - s0), b0 + t * (b1 - b0)
    raise AssertionError("unreachable")


def recycled_count(n_deleted: int, fraction: float, cluster_ratio: float) -> int:
    """Merged tokens recycling adds: C = int((int(fraction * n_del) + 1) * cluster_ratio) + 1; 0 if none deleted."""
    if n_deleted <= 0:
        return 0
    candidates = int(fraction * n_deleted) + 1
    return int(candidates * cluster_ratio) + 1


def stage_counts(
    keeps: Sequence[int], n_visual: int, recycle: bool, fraction: float = 0.3, cluster_ratio: float = 0.1
) -> list[int]:
    """Visual tokens after each stage: kept (capped at current - 1, as the authors' code) plus recycled clusters."""
    counts, current = [], n_visual
    for keep in keeps:
        kept = min(keep, current - 1)
        current = kept + (recycled_count(current - kept, fraction, cluster_ratio) if recycle else 0)
        counts.append(current)
    return counts


def per_layer_visual(
    prune_layers: Sequence[int], counts_after: Sequence[int], n_visual: int, n_layers: int
) -> list[int]:
    """Visual tokens leaving each layer, given the count after each pruning layer."""
    out, current, stage = [], n_visual, dict(zip(prune_layers, counts_after, strict=True))
    for layer in range(n_layers):
        current = stage.get(layer, current)
        out.append(current)
    return out


def equivalent_tokens(prune_layers: Sequence[int], counts_after: Sequence[int], n_visual: int, n_layers: int) -> float:
    """Paper-convention equivalent tokens of a static schedule."""
    return sum(per_layer_visual(prune_layers, counts_after, n_visual, n_layers)) / n_layers


def min_equivalent_tokens(prune_layers: Sequence[int], n_visual: int, n_layers: int, recycle: bool) -> float:
    """The smallest reachable budget: every stage keeps one token (layers up to the first pruning layer stay full)."""
    return equivalent_tokens(prune_layers, stage_counts([1] * len(prune_layers), n_visual, recycle), n_visual, n_layers)


def _profile(table: Mapping[int, Sequence[int]], budget_fraction: float) -> list[float]:
    """Keep fractions per stage, interpolated linearly in budget/visual between the tabulated budgets."""
    points = sorted((b / PAPER_VISUAL, [k / PAPER_VISUAL for k in keeps]) for b, keeps in table.items())
    if budget_fraction <= points[0][0]:
        return points[0][1]
    if budget_fraction >= points[-1][0]:
        return points[-1][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x0 <= budget_fraction <= x1:
            t = (budget_fraction - x0) / (x1 - x0)
            return [a + t * (b - a) for a, b in zip(y0, y1, strict=True)]
    raise AssertionError("unreachable")


def derive_keeps(
    table: Mapping[int, Sequence[int]],
    budget: int,
    prune_layers: Sequence[int],
    n_visual: int,
    n_layers: int,
    recycle: bool,
    fraction: float = 0.3,
    cluster_ratio: float = 0.1,
) -> tuple[int, ...]:
    """Keep counts per stage that hit `budget` equivalent tokens.

    The authors' table is returned verbatim when it applies (32 layers, 576 visual tokens, tabulated budget).
    Otherwise: take the table's shape (keep fractions interpolated at budget/visual), scale it by one factor s and
    pick the s whose equivalent tokens (recycling included) are closest to the budget (bisection over s).
    """
    if n_layers == PAPER_DEPTH and n_visual == PAPER_VISUAL and budget in table:
        return tuple(table[budget])
    floor = min_equivalent_tokens(prune_layers, n_visual, n_layers, recycle)
    if budget < floor:
        raise ValueError(
            f"budget={budget} is unreachable with prune_layers={tuple(prune_layers)} in a {n_layers}-layer model: "
            f"layers up to {prune_layers[0]} always see all {n_visual} visual tokens, so the minimum is {floor:.1f}"
        )
    profile = _profile(table, budget / n_visual)

    def keeps_at(scale: float) -> list[int]:
        return [min(max(int(round(scale * f * n_visual)), 1), n_visual - 1) for f in profile]

    def equiv(scale: float) -> float:
        counts = stage_counts(keeps_at(scale), n_visual, recycle, fraction, cluster_ratio)
        return equivalent_tokens(prune_layers, counts, n_visual, n_layers)

    lo, hi = 0.0, 1.0
    while equiv(hi) < budget and hi < 1e6:
        hi *= 2
    best = min((lo, hi), key=lambda s: abs(equiv(s) - budget))
    for _ in range(60):
        mid = (lo + hi) / 2
        if abs(equiv(mid) - budget) < abs(equiv(best) - budget):
            best = mid
        if equiv(mid) < budget:
            lo = mid
        else:
            hi = mid
    return tuple(keeps_at(best))


def single_stage_keep(
    budget: int,
    prune_layer: int,
    n_visual: int,
    n_layers: int,
    convention: str = "output",
    recycling: Recycling | None = None,
) -> int:
    """Keep count for a one-stage method (FastV, random) pruning the output of `prune_layer` to hit the budget.

    convention "output" (the paper's, as for SparseVLM): (p * Nv + (N - p) * k) / N = budget;
    "input" (Gumpest/SparseVLMs#12, #35: the pruning layer counts at full length): ((p+1) * Nv + (N-p-1) * k) / N.
    With recycling, the layers after the stage also carry the merged tokens, so k is the largest count whose
    k + recycled tokens does not exceed the budget's share (at least 1).
    """
    full_layers = prune_layer + (1 if convention == "input" else 0)
    keep = int(round((budget * n_layers - full_layers * n_visual) / (n_layers - full_layers)))
    if keep < 1:
        floor = full_layers * n_visual / n_layers
        raise ValueError(
            f"budget={budget} is unreachable when pruning after layer {prune_layer} of {n_layers}: "
            f"{full_layers} layers see all {n_visual} visual tokens (minimum {floor:.1f}, {convention}-side convention)"
        )
    share = keep = min(keep, n_visual)  # visual tokens each later layer may carry
    while (
        recycling is not None
        and keep > 1
        and keep + recycled_count(n_visual - keep, recycling.fraction, recycling.cluster_ratio) > share
    ):
        keep -= 1
    return keep

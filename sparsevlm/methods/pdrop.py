"""PyramidDrop (Xing et al., CVPR 2025): drop a fixed share of the visual tokens at each of a few LLM stages."""

from __future__ import annotations

from dataclasses import dataclass

from sparsevlm.methods.base import (
    CONVENTIONS,
    POSITIONS,
    Plan,
    PruningMethod,
    StageDecision,
    StageInput,
    check_choice,
    check_fields,
    topk_sorted,
    unpruned_plan,
)
from sparsevlm.registry import register
from sparsevlm.schedule import equivalent_tokens, map_layers

PAPER_RANK_LAYERS = (8, 16, 24)  # the first layer that sees each pruned stage, on LLaVA-1.5-7B's 32 layers
PAPER_RATIO = 0.5  # lambda: the share kept at each stage
BISECTION_STEPS = 60


def pyramid_keeps(ratio: float, n_stages: int, n_visual: int) -> tuple[int, ...]:
    """Tokens kept after each stage: int(n_visual * ratio ** stage), cumulative against n_visual (at least 1)."""
    return tuple(max(int(n_visual * ratio ** (stage + 1)), 1) for stage in range(n_stages))


@register("pdrop")
@dataclass(frozen=True)
class PyramidDrop(PruningMethod):
    """PyramidDrop: after each stage keep `ratio` of the previous stage's visual tokens, ranked by the attention of the
    last instruction token (official code: Cooperx521/PyramidDrop @ 6444f30).

    The stage before rank layer r prunes the output of layer r - 1, scoring it with layer r's own input norm and
    query/key projections ("computed lightly": only the last token's row), softmax over all keys, mean over heads.
    Keep counts are int(Nv * ratio ** stage). Positions are renumbered after each stage (the code's position ids).
    `ratio=None` solves lambda for `budget` equivalent tokens under `convention` (the paper reports its 0.5 setting as
    270 tokens: the input-side count); the budget floor is reached as lambda -> 0, e.g. 126 output-side tokens with
    the paper's layers, so 64 needs earlier layers: the author suggests rank layers (2, 8, 16) for 64
    (Cooperx521/PyramidDrop#10, #29). `rank_layers=None`: (8, 16, 24) on 32 layers, depth-mapped elsewhere.
    """

    budget: int = 192
    rank_layers: tuple[int, ...] | None = None
    ratio: float | None = None
    convention: str = "output"
    positions: str = "contiguous"
    retain_ratio: float | None = None  # per-sample budget: round(ratio * visual tokens)

    def __post_init__(self) -> None:
        check_fields(self)
        check_choice("convention", self.convention, CONVENTIONS)
        check_choice("positions", self.positions, POSITIONS)
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise ValueError(f"ratio: expected a value in (0, 1) (lambda, the share kept per stage), got {self.ratio}")
        if self.rank_layers is not None:
            object.__setattr__(self, "rank_layers", tuple(self.rank_layers))
            if (
                not self.rank_layers
                or list(self.rank_layers) != sorted(set(self.rank_layers))
                or self.rank_layers[0] < 1
            ):
                raise ValueError(f"rank_layers: expected increasing layers >= 1, got {self.rank_layers}")

    def check_model(self, n_layers: int, n_heads: int) -> None:
        if self.rank_layers is not None and self.rank_layers[-1] >= n_layers:
            raise ValueError(f"rank_layers: {self.rank_layers} must be < the model's {n_layers} decoder layers")

    def pruning_layers(self, n_layers: int) -> tuple[int, ...]:
        if self.rank_layers is not None:
            return tuple(layer - 1 for layer in self.rank_layers)
        return map_layers(tuple(layer - 1 for layer in PAPER_RANK_LAYERS), n_layers)

    def _equivalent(self, keeps: tuple[int, ...], layers: tuple[int, ...], n_visual: int, n_layers: int) -> float:
        shifted = tuple(layer + 1 for layer in layers) if self.convention == "input" else layers
        if shifted[-1] >= n_layers:  # input side: the last layer's input is the last stage
            shifted = layers
        return equivalent_tokens(shifted, keeps, n_visual, n_layers)

    def plan(self, n_layers: int, n_visual: int) -> Plan:
        if self.budget >= n_visual:
            return unpruned_plan(self, self.budget, n_visual, positions=self.positions)
        layers = self.pruning_layers(n_layers)
        common = dict(score_rows="last", score_with_next_layer=True, positions=self.positions)
        if self.ratio is not None:
            return Plan(layers, pyramid_keeps(self.ratio, len(layers), n_visual), **common)
        floor = self._equivalent((1,) * len(layers), layers, n_visual, n_layers)
        if self.budget < floor:
            raise ValueError(
                f"budget={self.budget} is unreachable for pdrop with rank layers {tuple(x + 1 for x in layers)} of "
                f"{n_layers}: at least {floor:.1f} equivalent tokens; earlier layers reach lower budgets "
                "(the author suggests rank_layers=[2,8,16] for 64 of 576)"
            )
        low, high = 0.0, 1.0
        for _ in range(BISECTION_STEPS):  # equivalent tokens grow with lambda
            mid = (low + high) / 2
            if self._equivalent(pyramid_keeps(mid, len(layers), n_visual), layers, n_visual, n_layers) < self.budget:
                low = mid
            else:
                high = mid
        candidates = (pyramid_keeps(low, len(layers), n_visual), pyramid_keeps(high, len(layers), n_visual))
        keeps = min(candidates, key=lambda k: abs(self._equivalent(k, layers, n_visual, n_layers) - self.budget))
        return Plan(layers, keeps, **common)

    def decide(self, inp: StageInput, plan: Plan) -> StageDecision:
        scores = inp.attention.mean(dim=0)[-1]  # [Nv]: head-averaged attention of the last token
        return StageDecision(kept=topk_sorted(scores, min(plan.keeps[inp.stage], scores.numel())), scores=scores)

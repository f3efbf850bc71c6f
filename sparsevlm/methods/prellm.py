"""Mechanics shared by methods that act before the LLM: the visual block given to the LLM is `budget` tokens long."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sparsevlm.methods.base import (
    BEFORE_LLM,
    POSITIONS,
    Plan,
    PruningMethod,
    check_choice,
    check_fields,
    unpruned_plan,
)


@dataclass(frozen=True)
class PreLLM(PruningMethod):
    """A method that shortens the visual block once, on the projector output, before decoder layer 0.

    Its budget counts the tokens given to the LLM (the convention of VisionZip, DivPrune, CDPruner, ...); every
    decoder layer then sees `budget` visual tokens, so the equivalent tokens are the same number. The LLM reads the
    shorter sequence with positions renumbered (`positions="contiguous"`, as when the prompt itself is shorter) or
    with the survivors' original positions.
    """

    budget: int = 64
    positions: str = "contiguous"
    retain_ratio: float | None = None  # per-sample budget: round(ratio * visual tokens)
    hook: ClassVar[str] = "pre_llm"

    def __post_init__(self) -> None:
        check_fields(self)
        check_choice("positions", self.positions, POSITIONS)

    def pruning_layers(self, n_layers: int) -> tuple[int, ...]:
        return (BEFORE_LLM,)

    def plan(self, n_layers: int, n_visual: int) -> Plan:
        if self.budget >= n_visual:
            return unpruned_plan(self, self.budget, n_visual, positions=self.positions)
        return Plan((BEFORE_LLM,), (self.budget,), positions=self.positions)


@dataclass(frozen=True)
class VisionStage(PreLLM):
    """A pre-LLM method that decides on the vision tower: its [CLS] attention and features at the layer LLaVA reads.

    StageInput carries `hidden` (the patch features given to the projector), `cls_hidden`, `cls_attention` (computed
    from the layer's own queries and keys, so any attention kernel works) and `vision_keys`; merged features are in
    the vision tower's space and pass through the projector like the kept ones.
    """

    hook: ClassVar[str] = "vision"

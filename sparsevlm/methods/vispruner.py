"""VisPruner (Zhang et al., ICCV 2025): important tokens by [CLS] attention plus diverse tokens by duplicate removal."""

from __future__ import annotations

from dataclasses import dataclass

from sparsevlm.methods.base import Plan, StageDecision, StageInput
from sparsevlm.methods.prellm import VisionStage
from sparsevlm.registry import register

MATCH_STEP = 8  # the code removes at most 8 duplicate tokens per matching round


@register("vispruner")
@dataclass(frozen=True)
class VisPruner(VisionStage):
    """VisPruner on the vision tower's feature layer (official code: Theia-4869/VisPruner @ aefa01a).

    - important: int(budget * important_ratio) patches with the largest [CLS] attention averaged over heads;
    - diverse: the other patches in attention order are matched in rounds: even positions against odd positions by
      cosine similarity of their features, and the (at most 8) even ones most similar to an odd one are removed,
      until budget - important remain.
    Kept tokens keep their order. important_ratio=1 is FasterVLM ([CLS] attention alone). Text-agnostic.
    """

    important_ratio: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.important_ratio <= 1:
            raise ValueError(f"important_ratio: expected a value in [0, 1], got {self.important_ratio}")

    def decide(self, inp: StageInput, plan: Plan) -> StageDecision:
        import torch

        budget = plan.keeps[inp.stage]
        important = int(budget * self.important_ratio)
        diverse = budget - important
        order = inp.cls_attention.mean(dim=0).argsort(descending=True)
        residual = order[important:]
        unit = inp.hidden / inp.hidden.norm(dim=-1, keepdim=True)
        while diverse > 0:
            remove = min(MATCH_STEP, residual.numel() - diverse)
            if remove <= 0:
                break
            even, odd = residual[::2], residual[1::2]
            similarity = (unit[even] @ unit[odd].T).max(dim=-1).values
            distinct = similarity.argsort(descending=True)[remove:]
            residual = torch.cat([even[distinct], odd])
        selected = torch.cat([order[:important], residual]) if diverse > 0 else order[:important]
        return StageDecision(kept=selected.sort().values)

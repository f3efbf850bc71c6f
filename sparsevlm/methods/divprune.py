"""DivPrune (Alvar et al., CVPR 2025): the most diverse visual tokens, by greedy max-min cosine distance."""

from __future__ import annotations

from dataclasses import dataclass

from sparsevlm.methods.base import Plan, StageDecision, StageInput
from sparsevlm.methods.prellm import PreLLM
from sparsevlm.registry import register


@register("divprune")
@dataclass(frozen=True)
class DivPrune(PreLLM):
    """Keep `budget` projector-output tokens that solve max-min diversity greedily (official code: vbdi/divprune).

    Distance = 1 - cosine similarity (rows normalised without epsilon, in the model's dtype). The first pick is the
    most isolated token (largest distance to its nearest neighbour, itself excluded); each next pick maximises the
    distance to the nearest token already picked; ties go to the lowest index. Kept tokens keep their original order.
    Deviation: the official code keeps round(ratio * 576) tokens (its default ratio 0.098 keeps 56); here the budget is
    the count itself, so budgets match the other methods'.
    """

    def decide(self, inp: StageInput, plan: Plan) -> StageDecision:
        return StageDecision(kept=max_min_diverse(inp.hidden, plan.keeps[inp.stage]))


def max_min_diverse(features, k: int):
    """Indices (ascending) of k rows of features [N, D] picked greedily by max-min cosine distance (DivPrune)."""
    import torch

    unit = features / features.norm(dim=1, keepdim=True)
    distance = 1.0 - unit @ unit.T  # [N, N]
    picked = [int(distance.topk(2, dim=0, largest=False).values[1].argmax())]  # most isolated
    nearest = distance[picked[0]].clone()  # distance of every token to its nearest picked token
    for _ in range(1, k):
        picked.append(int(nearest.argmax()))
        nearest = torch.minimum(nearest, distance[picked[-1]])
    return torch.tensor(sorted(picked), device=features.device)

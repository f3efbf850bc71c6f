"""DART (Wen et al., EMNLP 2025): keep the visual tokens least duplicated with a few pivot tokens."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sparsevlm.methods.base import Plan, StageDecision, StageInput, check_choice
from sparsevlm.methods.baselines import OneStage
from sparsevlm.registry import register

PIVOT_ORDERS = ("reference", "ascending")


@register("dart")
@dataclass(frozen=True)
class DART(OneStage):
    """DART: after layer K - 1 (K = 2), pivots are the visual and text tokens whose keys have the largest L1 norm; each
    pivot keeps the candidates least similar to it (official code: ZichenWen1/DART, LLaVA-1.5 path).

    - keys: layer K-1's keys after RoPE, heads concatenated; `image_pivots` of the visual block and `text_pivots` of the
      tokens after it (4 + 4);
    - similarity: cosine between the LLM's final norm applied to layer K-1's output (as the code does, not layer K's
      input norm); each pivot in turn takes the `per_pivot` candidates with the lowest similarity, which leave the pool;
      text pivots select visual tokens and are then dropped, visual pivots stay;
    - `pivot_order="reference"` visits the pivots in the order the code does (a Python set of their prompt indices,
      whose order depends on the visual block's offset); "ascending" is the plain alternative;
    - original positions are kept. Needs no attention maps: runs under any attention kernel.
    Budget: the code gives every pivot budget // pivots candidates (`max_num_trunction`, so "128" keeps 132 tokens);
    here the keep count is matched to the budget (equivalent tokens, as for FastV) under `convention`, and the
    remainder goes one candidate each to the first pivots visited (deviation, so that budgets match; with
    `convention="retained"` the code's reading and even split are used).
    """

    image_pivots: int = 4
    text_pivots: int = 4
    pivot_order: str = "reference"

    def __post_init__(self) -> None:
        if self.convention == "retained":  # OneStage validates "output"/"input"; DART adds its own reading
            object.__setattr__(self, "convention", "output")
            super().__post_init__()
            object.__setattr__(self, "convention", "retained")
        else:
            super().__post_init__()
        check_choice("pivot_order", self.pivot_order, PIVOT_ORDERS)
        if self.image_pivots < 1 or self.text_pivots < 0:
            raise ValueError("image_pivots, text_pivots: expected >= 1 and >= 0")

    def plan(self, n_layers: int, n_visual: int) -> Plan:
        pivots = self.image_pivots + self.text_pivots
        if self.convention == "retained":
            plan = dataclasses.replace(self, convention="output").plan(n_layers, n_visual)
            keep = self.image_pivots + pivots * (self.budget // pivots)
        else:
            plan = super().plan(n_layers, n_visual)
            keep = plan.keeps[0] if plan.keeps else n_visual
        if not plan.prune_layers:
            return plan
        keep = min(max(keep, self.image_pivots + pivots), n_visual - 1)  # every pivot takes one candidate at least
        needs = frozenset({"keys", "final_norm", "text"})
        return dataclasses.replace(plan, keeps=(keep,), score_rows=None, needs=needs)

    def decide(self, inp: StageInput, plan: Plan) -> StageDecision:
        import torch

        n_visual = inp.hidden.shape[0]
        norms = inp.keys.abs().sum(dim=-1)  # L1 norm of each token's keys
        start = inp.image_start
        image_pivots = (norms[:n_visual].topk(self.image_pivots).indices + start).tolist()
        n_text = min(self.text_pivots, norms.shape[0] - n_visual)
        text_pivots = (norms[n_visual:].topk(n_text).indices + start + n_visual).tolist()
        states = inp.final_norm(torch.cat([inp.hidden, inp.text]))  # prompt indices - start -> row
        if self.pivot_order == "reference":  # the code iterates Python sets of prompt indices
            pivots = list(set(image_pivots + text_pivots))
        else:
            pivots = sorted(image_pivots + text_pivots)
        pool = set(range(start, start + n_visual)) - set(image_pivots)
        kept = set(image_pivots)
        per_pivot, extra = divmod(plan.keeps[inp.stage] - len(image_pivots), len(pivots))
        for visited, pivot in enumerate(pivots):
            candidates = list(pool) if self.pivot_order == "reference" else sorted(pool)
            rows = torch.tensor(candidates, device=states.device) - start
            similarity = torch.nn.functional.cosine_similarity(states[pivot - start], states[rows], dim=-1)
            take = per_pivot + (1 if visited < extra else 0)
            chosen = [candidates[i] for i in (-similarity).topk(take).indices.tolist()]
            kept.update(chosen)
            pool.difference_update(chosen)
        return StageDecision(kept=torch.tensor(sorted(k - start for k in kept), device=inp.hidden.device))

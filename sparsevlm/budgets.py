"""Budgets across conventions: the decoder FLOPs a plan implies, and a budget matched to another method's FLOPs.

"64 tokens" means different things in different papers (equivalent tokens averaged over layers, tokens given to the
LLM, ...). Matching prefill FLOPs compares methods by what they cost: `flops_matched_budget` finds the budget at which a
method's planned decoder FLOPs come closest to (without exceeding) a reference method's at its own budget, for a
prompt of a given text length. Plans are static schedules, so this is exact for every method whose keep counts do not
depend on the data (SparseVLM v1.0's rank rule does: its FLOPs are known only after it ran).
"""

from __future__ import annotations

import dataclasses

from sparsevlm.flops import paper_flops_from_counts
from sparsevlm.methods.base import BEFORE_LLM, Plan, PruningMethod
from sparsevlm.schedule import per_layer_visual, recycled_count


def planned_visual_in(plan: Plan, n_visual: int, n_layers: int) -> list[int]:
    """Visual tokens entering each decoder layer under a plan (recycled tokens included)."""
    if not plan.prune_layers:
        return [n_visual] * n_layers
    if not plan.keeps:
        raise ValueError("budgets: this plan's keep counts depend on the data (a rank rule), so its FLOPs are unknown")
    counts, current = [], n_visual
    for keep in plan.keeps:
        kept = min(keep, current)
        recycled = plan.recycling
        current = kept + (recycled_count(current - kept, recycled.fraction, recycled.cluster_ratio) if recycled else 0)
        counts.append(current)
    if plan.prune_layers == (BEFORE_LLM,):
        return [counts[0]] * n_layers
    leaving = per_layer_visual(plan.prune_layers, counts, n_visual, n_layers)
    return [n_visual, *leaving[:-1]]


def planned_flops(method: PruningMethod, n_layers: int, n_visual: int, n_other: int, hidden: int, mlp: int) -> int:
    """Decoder prefill MACs (the paper's formula) of a method's plan for a prompt of n_other non-visual tokens."""
    visual_in = planned_visual_in(method.for_sample(n_visual).plan(n_layers, n_visual), n_visual, n_layers)
    return paper_flops_from_counts([n_other + v for v in visual_in], hidden, mlp)


def flops_matched_budget(
    method: PruningMethod,
    reference: PruningMethod,
    n_layers: int,
    n_visual: int,
    n_other: int,
    hidden: int,
    mlp: int,
) -> int:
    """The largest budget whose planned FLOPs do not exceed the reference's, lowered to the smallest budget with the
    same plan cost (pooling's 55 and 49 both pool to 7 x 7: the matched budget is 49, what the LLM gets)."""
    shape = (n_layers, n_visual, n_other, hidden, mlp)
    target = planned_flops(reference, *shape)
    widest = dataclasses.replace(method, budget=n_visual - 1).plan(n_layers, n_visual)
    planned_visual_in(widest, n_visual, n_layers)  # raises for a data-dependent plan (not a floor to search past)

    def cost(budget: int) -> int | None:  # None below the method's floor
        try:
            return planned_flops(dataclasses.replace(method, budget=budget), *shape)
        except ValueError:
            return None

    best, best_cost = None, None
    low, high = 1, n_visual - 1
    while low <= high:  # planned FLOPs grow with the budget
        middle = (low + high) // 2
        middle_cost = cost(middle)
        if middle_cost is None:
            low = middle + 1
        elif middle_cost <= target:
            best, best_cost, low = middle, middle_cost, middle + 1
        else:
            high = middle - 1
    if best is None:
        raise ValueError(
            f"budget: no budget of {method.name} is as cheap as {reference.name} at {reference.budget} "
            f"({target / 1e12:.3f} paper TFLOPs with {n_other} text tokens); its cheapest reachable budget, "
            f"{_cheapest(method, n_visual, n_layers)}, costs more"
        )
    while best > 1 and cost(best - 1) == best_cost:
        best -= 1
    return best


def _cheapest(method: PruningMethod, n_visual: int, n_layers: int) -> int:
    """The smallest budget a method can plan (its floor)."""
    for budget in range(1, n_visual):
        try:
            dataclasses.replace(method, budget=budget).plan(n_layers, n_visual)
        except ValueError:
            continue
        return budget
    return n_visual

"""FLOPs-matched budgets: planned token counts are what the engine runs; the matched budget is the largest fit
(the smallest budget of its plan)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from conftest import build_llava, make_inputs

import sparsevlm
from eval.config import ConfigError
from eval.preflight import ModelFacts, resolve_budget
from sparsevlm.budgets import flops_matched_budget, planned_flops, planned_visual_in

NAMES = [name for name in sparsevlm.available_methods() if name != "dense"]
BUDGETS = {"pdrop": 128, "tome": 320}  # above their floors on 8 layers (see test_method_contract)
# PyramidDrop's default rank layers (8, 16, 24) cannot go below 126.8 equivalent tokens on 32 layers
OPTIONS = {"pdrop": {"rank_layers": (2, 8, 16)}}
LLAVA_7B = {"n_layers": 32, "n_visual": 576, "n_other": 118, "hidden": 4096, "mlp": 11008}


def _static(name: str, budget: int) -> sparsevlm.PruningMethod | None:
    """The method at a budget, or None when its keep counts depend on the data (no planned FLOPs)."""
    method = sparsevlm.make_method(name, budget)
    try:
        planned_visual_in(method.plan(32, 576), 576, 32)
    except ValueError:
        return None
    return method


@pytest.fixture(scope="module")
def model():
    return build_llava(n_layers=8)


@pytest.mark.parametrize("name", NAMES)
def test_planned_visual_tokens_are_what_the_engine_ran(model, name):
    method = sparsevlm.make_method(name, BUDGETS.get(name, 64))
    plan = method.plan(8, 576)
    try:
        planned = planned_visual_in(plan, 576, 8)
    except ValueError:
        pytest.skip(f"{name}: keep counts depend on the data")
    with sparsevlm.attach(model, method) as trace, torch.no_grad():
        model(**make_inputs(question_lengths=(9,)))
    assert trace.samples[0].visual_in == planned


@pytest.mark.parametrize("name", NAMES)
def test_the_matched_budget_is_the_largest_that_does_not_exceed_the_reference(name):
    if _static(name, 128) is None:
        pytest.skip(f"{name}: keep counts depend on the data")
    reference = sparsevlm.make_method("sparsevlm", 64)
    options = OPTIONS.get(name, {})
    budget = flops_matched_budget(sparsevlm.make_method(name, 64, **options), reference, **LLAVA_7B)
    target = planned_flops(reference, **LLAVA_7B)
    method = sparsevlm.make_method(name, budget, **options)
    cost = planned_flops(method, **LLAVA_7B)
    assert cost <= target
    costs = {b: _cost(dataclasses.replace(method, budget=b)) for b in range(max(1, budget - 1), budget + 64)}
    dearer = min(b for b, c in costs.items() if b > budget and c != cost)  # the next budget with another plan
    assert costs[dearer] > target
    assert budget == 1 or costs[budget - 1] is None or costs[budget - 1] < cost  # the smallest budget of its plan


def _cost(method) -> float | None:
    try:
        return planned_flops(method, **LLAVA_7B)
    except ValueError:
        return None


def test_pooling_is_matched_to_the_grid_it_pools_to():
    # 55 of 144 would pool to 7 x 7 = 49 like 49 itself: the matched budget names what the LLM gets
    reference = sparsevlm.make_method("sparsevlm", 32)
    tiny = {"n_layers": 8, "n_visual": 144, "n_other": 118, "hidden": 128, "mlp": 384}
    assert flops_matched_budget(sparsevlm.make_method("pooling", 32), reference, **tiny) == 49


def test_matched_budgets_on_llava_7b():
    # SparseVLM v1.5 at 64 keeps 66 tokens after layer 2, 30 after 6, 17 after 15 (+ recycled ones): a method that
    # prunes before the LLM can keep more than 64 for the same FLOPs, one that prunes after layer 2 about 64
    reference = sparsevlm.make_method("sparsevlm", 64)
    matched = {
        name: flops_matched_budget(sparsevlm.make_method(name, 64), reference, **LLAVA_7B)
        for name in ("fastv", "divprune", "visionzip", "dart", "random")
    }
    assert matched == {"fastv": 65, "divprune": 83, "visionzip": 83, "dart": 65, "random": 65}


def test_a_method_whose_floor_costs_more_says_so():
    with pytest.raises(
        ValueError,
        match=r"no budget of pdrop is as cheap as sparsevlm at 64 \(1\.314 paper TFLOPs.*"
        r"cheapest reachable budget, 127, costs more",
    ):
        flops_matched_budget(sparsevlm.make_method("pdrop", 128), sparsevlm.make_method("sparsevlm", 64), **LLAVA_7B)


def test_a_data_dependent_plan_has_no_planned_flops():
    with pytest.raises(ValueError, match="depend on the data"):
        planned_flops(sparsevlm.make_method("sparsevlm", 64, version="1.0"), **LLAVA_7B)


# ----------------------------------------------------------------------------------------- the harness's convention
FACTS_7B = ModelFacts("llava", 32, 32, 576, "local", n_tower_layers=23, hidden=4096, intermediate=11008)


def _spec(method: str, convention: str, budget: int = 64, reference: str = "sparsevlm"):
    from hydra import compose, initialize_config_dir

    from eval.config import spec_from_config

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                f"method={method}",
                f"budget={budget}",
                f"budget_convention={convention}",
                f"flops_reference={reference}",
            ],
        )
    return spec_from_config(cfg)


def test_native_cells_keep_their_budget():
    spec = _spec("divprune", "native")
    assert resolve_budget(spec, FACTS_7B) is spec and "budget_convention" not in spec.grid


def test_a_flops_cell_runs_the_matched_budget_and_says_so():
    native, flops = _spec("divprune", "native"), _spec("divprune", "flops")
    resolved = resolve_budget(flops, FACTS_7B)
    assert resolved.method.budget == 83 and resolved.budget == 64
    assert resolved.grid == {**native.grid, "budget_convention": "flops", "method_budget": 83}
    assert "-flops_b64_" in resolved.run_id and resolved.run_id != native.run_id


def test_a_flops_cell_against_another_reference():
    resolved = resolve_budget(_spec("divprune", "flops", reference="fastv"), FACTS_7B)
    assert resolved.method.budget == flops_matched_budget(
        sparsevlm.make_method("divprune", 64), sparsevlm.make_method("fastv", 64), **LLAVA_7B
    )


def test_a_rank_rule_method_cannot_be_flops_matched():
    with pytest.raises(ConfigError, match="^budget_convention: flops: .*depend on the data"):
        resolve_budget(_spec("sparsevlm_v1", "flops"), FACTS_7B)


@pytest.mark.parametrize("budget", [62, 48, 30, 34])
def test_pooling_plans_the_grid_it_pools_to(model, budget):
    """Pooling gives the LLM rows x cols <= budget tokens (62 -> 7 x 8 = 56); its plan, and its FLOPs match, say so."""
    method = sparsevlm.make_method("pooling", budget)
    planned = planned_visual_in(method.plan(8, 576), 576, 8)
    with sparsevlm.attach(model, method) as trace, torch.no_grad():
        model(**make_inputs(question_lengths=(9,)))
    rows = math.isqrt(budget)
    assert trace.samples[0].visual_in == planned == [rows * (budget // rows)] * 8

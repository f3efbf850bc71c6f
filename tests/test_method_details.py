"""Policy details that whole-model tests could miss: each test fails if its detail is changed."""

from __future__ import annotations

import pytest
import torch

import sparsevlm
from sparsevlm import SparseVLM
from sparsevlm.methods.base import Plan, StageInput
from sparsevlm.recycle import dpc_knn_clusters
from sparsevlm.scoring import above_mean


def test_a_rater_exactly_at_the_mean_does_not_rate():
    assert above_mean(torch.tensor([1.0, 2.0, 3.0])).tolist() == [2]  # 2.0 is the mean: strictly above only
    assert above_mean(torch.tensor([0.5, 0.5])).tolist() == [0, 1]  # nobody above: everyone rates


def _rank_stage(rank_rule: str) -> int:
    """Kept count of a v1.0 rank stage on 10 visual tokens whose 2 rater rows have rank 2 (scale 1.5, bias 0)."""
    rows = torch.zeros(1, 2, 10)
    rows[0, 0, :5], rows[0, 1, 5:] = 0.2, 0.2  # two independent rows: rank 2
    method = SparseVLM(budget=64, version="1.0", rank_rule=rank_rule, scale=1.5, bias=0.0, recycle=False)
    plan = Plan((2,), (), "raters", rank_scale_bias=(1.5, 0.0))
    decision = method.decide(StageInput(0, 2, torch.zeros(10, 4), rows, torch.Generator()), plan)
    assert decision.rank == 2
    return decision.kept.numel()


def test_rank_rule_code_keeps_rank_times_scale_plus_bias():
    assert _rank_stage("code") == int(2 * 1.5 + 0.0)  # 3


def test_rank_rule_paper_deletes_scale_times_the_rank_deficit():
    assert _rank_stage("paper") == 10 - min(int(1.5 * (10 - 2)), 10 - 1)  # 1


def test_noise_tie_break_changes_real_ties():
    """Two tight pairs: every point has the same density, so the tie-break alone picks the centres."""
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 1.0]])
    index_centres = dpc_knn_clusters(x, 2, "index")[0].tolist()
    noisy = {tuple(dpc_knn_clusters(x, 2, "noise", torch.Generator().manual_seed(s))[0].tolist()) for s in range(12)}
    assert index_centres == dpc_knn_clusters(x, 2, "index")[0].tolist()  # deterministic
    assert len(noisy) > 1 and noisy != {tuple(index_centres)}


def test_tome_on_a_tower_without_a_layer_before_the_read_one_is_a_clear_error():
    with pytest.raises(ValueError, match=r"^budget=128 is unreachable for tome in 0 vision layers.* 576 of 576"):
        sparsevlm.make_method("tome", 128).check_tower(0, 576)
    sparsevlm.make_method("tome", 576).check_tower(0, 576)  # nothing to merge: fine

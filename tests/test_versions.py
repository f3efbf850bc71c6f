"""All three SparseVLM versions on any model: v1.0 at any budget, v2.0 at any head count, and the reference's noise."""

from __future__ import annotations

import naive_reference as naive
import pytest
import torch
from conftest import build_llava, make_inputs

import sparsevlm
from sparsevlm import SparseVLM
from sparsevlm.schedule import rank_scale_bias


@pytest.fixture(scope="module")
def model_v2():
    """Four heads of 64: SparseVLM+'s RoPE distance prior stays positive over the ~600-token prompt."""
    return build_llava(hidden=256, heads=4)


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits[:, -1]


@pytest.mark.parametrize(
    ("budget", "n_visual", "expected"),
    [
        (64, 576, (0.8, 0.0)),  # calibrated: verbatim
        (128, 576, (9.0, 6.0)),
        (100, 576, (0.8 + 36 / 64 * 8.2, 36 / 64 * 6.0)),  # between 64 and 128 (fractions .111 and .222)
        (48, 144, (13.5, 0.0)),  # 48 / 144 is 192 / 576
        (16, 144, (0.8, 0.0)),  # 16 / 144 is 64 / 576
        (300, 576, (13.5, 0.0)),  # above the calibrated range: clamped
        (10, 576, (0.8, 0.0)),  # below it: clamped
    ],
)
def test_rank_rule_scale_and_bias_for_any_budget(budget, n_visual, expected):
    assert rank_scale_bias(budget, n_visual) == pytest.approx(expected)


def test_v10_at_an_uncalibrated_budget_matches_the_naive_rank_rule(llava32):
    inputs = make_inputs(question_lengths=(14,), seed=3)
    recorded = []
    scale_bias = rank_scale_bias(100, 576)
    decider = naive.sparsevlm_decider(llava32, inputs, "1.0", 100, recorded, scale_bias=scale_bias)
    ref_logits = naive.run(llava32, inputs, decider, "contiguous")
    with sparsevlm.attach(llava32, SparseVLM(budget=100, version="1.0")) as trace:
        logits = _logits(llava32, inputs)
    assert [(s.layer, s.kept, s.merged_groups) for s in trace.last.stages] == recorded
    assert (logits - ref_logits).abs().max() < 1e-5


@pytest.mark.parametrize(("n_heads", "used"), [(32, 14), (40, 18), (8, 4), (4, 2), (2, 1), (1, 1)])
def test_v20_averages_the_scaled_top_heads(n_heads, used):
    assert SparseVLM(budget=64, version="2.0").heads_used(n_heads) == used
    assert SparseVLM(budget=64, version="2.0", heads=3).heads_used(n_heads) == 3
    assert SparseVLM(budget=64, version="1.5").heads_used(n_heads) == n_heads


def test_v20_on_a_four_head_model_keeps_what_its_top_two_heads_say(model_v2):
    inputs = make_inputs(question_lengths=(14,), seed=5)
    recorded = []
    decider = naive.sparsevlm_decider(model_v2, inputs, "2.0", 128, recorded, top_heads=2)
    ref_logits = naive.run(model_v2, inputs, decider, "original")
    with sparsevlm.attach(model_v2, SparseVLM(budget=128, version="2.0")) as trace:
        logits = _logits(model_v2, inputs)
    assert [(s.layer, s.kept) for s in trace.last.stages] == [(layer, kept) for layer, kept, _ in recorded]
    assert (logits - ref_logits).abs().max() < 1e-5


def test_reference_tie_break_replays_the_authors_noise_stream(monkeypatch):
    """torch.manual_seed(1234) before each generate, then torch.rand(1, n1) at each recycling stage, per sample."""
    model = build_llava(n_layers=32, image_size=48, patch=2)
    draws: list[tuple[int, torch.Tensor]] = []
    rand = torch.rand

    def recording_rand(*size, generator=None, **kwargs):
        out = rand(*size, generator=generator, **kwargs)
        if generator is not None:
            draws.append((generator.initial_seed(), out.clone()))
        return out

    monkeypatch.setattr(torch, "rand", recording_rand)
    inputs = make_inputs(question_lengths=(9, 14), seed=2)  # two samples, left-padded
    with sparsevlm.attach(model, SparseVLM(budget=64, tie_break="reference")) as trace:
        _logits(model, inputs)
    monkeypatch.setattr(torch, "rand", rand)
    # candidates per (sample, stage); the engine runs a batch layer by layer, so draws come stage by stage
    n1 = [[sum(len(g) for g in stage.merged_groups) for stage in sample.stages] for sample in trace.samples]
    assert [seed for seed, _ in draws] == [1234] * 6 and [len(stages) for stages in n1] == [3, 3]
    for sample in range(2):  # each sample restarts the stream, as each reference generate() did
        torch.manual_seed(1234)
        for stage in range(3):
            _, drawn = draws[stage * 2 + sample]
            assert drawn.shape == (1, n1[sample][stage]) and torch.equal(drawn, torch.rand(1, n1[sample][stage]))


def test_noise_and_reference_streams_differ_and_index_draws_nothing(monkeypatch):
    model = build_llava(n_layers=32, image_size=48, patch=2)
    seeds = []
    rand = torch.rand

    def recording_rand(*size, generator=None, **kwargs):
        if generator is not None:
            seeds.append(generator.initial_seed())
        return rand(*size, generator=generator, **kwargs)

    monkeypatch.setattr(torch, "rand", recording_rand)
    inputs = make_inputs(question_lengths=(9,), seed=2)
    for tie_break in ("index", "noise", "reference"):
        with sparsevlm.attach(model, SparseVLM(budget=64, tie_break=tie_break)):
            _logits(model, inputs)
        seeds.append(tie_break)
    index_end, noise_end = seeds.index("index"), seeds.index("noise")
    assert index_end == 0  # "index" breaks ties without random numbers
    assert set(seeds[index_end + 1 : noise_end]) != {1234} and set(seeds[noise_end + 1 : -1]) == {1234}


def test_video_version_prunes_once_after_layer_1_to_the_papers_token_count():
    """135 of 2048 (the v1 video table): layer 0 and 1 read 2048, then 73 tokens, kept plus recycled, as the video
    branch's rank + ~62 merged tokens imply ((2048 + 31 x 73) / 32 = 134.7)."""
    from sparsevlm.budgets import planned_visual_in
    from sparsevlm.schedule import recycled_count

    method = SparseVLM(budget=135, version="video")
    plan = method.plan(32, 2048)
    assert plan.prune_layers == (1,) and plan.recycling is not None and plan.positions == "contiguous"
    keep = plan.keeps[0]
    carried = keep + recycled_count(2048 - keep, 0.3, 0.1)
    assert carried <= 73 < keep + 1 + recycled_count(2048 - keep - 1, 0.3, 0.1)
    visual_in = planned_visual_in(plan, 2048, 32)
    assert visual_in[:2] == [2048, 2048] and set(visual_in[2:]) == {carried}
    assert sum(visual_in[1:] + [carried]) / 32 <= 135  # output side: layer 1's output is already pruned


def test_video_versions_rank_rule_keeps_int_rank_like_the_branch():
    plan = SparseVLM(budget=135, version="video", keep_rule="rank").plan(32, 2048)
    assert plan.prune_layers == (1,) and plan.keeps == () and plan.rank_scale_bias == (1.0, 0.0)
    assert SparseVLM(budget=135, keep_rule="rank").plan(32, 2048).rank_scale_bias != (1.0, 0.0)

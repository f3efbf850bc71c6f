"""Every supported family (LLaVA-1.5, Video-LLaVA, LLaVA-NeXT, LLaVA-OneVision, Qwen2.5-VL) on random-init models with
each checkpoint's structure: dense identity, keep sets against the naive reference, batches of different visual counts,
cached decode (M-RoPE included), budgets, and what each family refuses."""

from __future__ import annotations

import warnings

import families as fam
import naive_reference as naive
import pytest
import torch

import sparsevlm
from sparsevlm import Dense, FastV, RandomPrune, SparseVLM
from sparsevlm.budgets import planned_visual_in
from sparsevlm.registry import available_methods, make_method

N_LAYERS = 8
# per family: the inputs of one sample (an anyres image of 2 x 2 crops, a Qwen image of 16 x 12 patches, a video)
SAMPLE = {
    "llava": {},
    "video_llava": {"video": True},
    "llava_next": {"size": (56, 56)},
    "llava_onevision": {"size": (56, 56)},
    "qwen2_5_vl": {"size": (112, 84)},
}
# two further samples with other visual counts (image sizes), for batches
OTHER_SIZES = {
    "llava_next": [(28, 56), (56, 28)],
    "llava_onevision": [(28, 56), (56, 28)],
    "qwen2_5_vl": [(56, 56), (84, 84)],
    "video_llava": [None, None],
}


def positions(family: str) -> str:
    """M-RoPE positions are patch coordinates: the families with them keep original positions."""
    return "original" if family == "qwen2_5_vl" else "contiguous"


@pytest.fixture(scope="module")
def models() -> dict:
    return {family: fam.build(family) for family in fam.FAMILIES}


def _sample(model, family: str, seed: int = 0, question_length: int = 6, size=None) -> dict:
    kwargs = dict(SAMPLE[family])
    if size is not None:
        kwargs["size"] = size
    return fam.sample(model, family, question_length=question_length, seed=seed, **kwargs)


def _n_visual(inputs: dict) -> int:
    return int(torch.isin(inputs["input_ids"][0], torch.tensor([fam.IMAGE, fam.VIDEO])).sum())


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits[:, -1]


def _generate(model, inputs, **kwargs):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=fam.PAD, **kwargs)


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("family", fam.FAMILIES)
def test_dense_and_oversized_budgets_are_bit_identical(models, family):
    model = models[family]
    inputs = _sample(model, family)
    ref_logits, ref_ids = _logits(model, inputs), _generate(model, inputs)
    hooks = _hooks(model)
    n_visual = _n_visual(inputs)
    for method in (Dense(), SparseVLM(budget=n_visual, positions=positions(family)), FastV(budget=n_visual + 5)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with sparsevlm.attach(model, method) as trace:
                assert torch.equal(_logits(model, inputs), ref_logits)
                assert torch.equal(_generate(model, inputs), ref_ids)
        assert trace.last.n_visual == n_visual
    assert _hooks(model) == hooks
    assert torch.equal(_logits(model, inputs), ref_logits)


@pytest.mark.parametrize("family", fam.FAMILIES)
@pytest.mark.parametrize("method_name", ["sparsevlm", "fastv"])
def test_keep_sets_and_logits_match_the_naive_reference(models, family, method_name):
    model = models[family]
    inputs = _sample(model, family, seed=3, question_length=9)
    n_visual = _n_visual(inputs)
    budget = n_visual // 3
    recorded: list = []
    if method_name == "sparsevlm":
        method = SparseVLM(budget=budget, positions=positions(family))
        plan = method.plan(N_LAYERS, n_visual)
        decider = naive.sparsevlm_decider(
            model, inputs, "1.5", budget, recorded, layers=plan.prune_layers, keeps=plan.keeps
        )
    else:
        method = FastV(budget=budget, positions=positions(family))
        plan = method.plan(N_LAYERS, n_visual)
        decider = naive.fastv_decider(plan.prune_layers[0] + 1, plan.keeps[0], recorded)
    ref_logits = naive.run(model, inputs, decider, positions(family))
    with sparsevlm.attach(model, method) as trace:
        logits = _logits(model, inputs)
    stages = trace.last.stages
    assert [s.layer for s in stages] == [r[0] for r in recorded]
    for stage, (_, kept, groups) in zip(stages, recorded, strict=True):
        assert stage.kept == kept
        assert stage.merged_groups == groups
    assert (logits - ref_logits).abs().max() < 1e-5


@pytest.mark.parametrize("family", ["video_llava", "llava_next", "llava_onevision", "qwen2_5_vl"])
@pytest.mark.parametrize("method_name", ["sparsevlm", "fastv", "random"])
def test_a_batch_of_different_visual_counts_equals_single_runs(models, family, method_name):
    model = models[family]
    singles = [_sample(model, family, seed=0, question_length=7)]
    singles += [
        _sample(model, family, seed=i + 1, question_length=4 + 5 * i, size=size)
        for i, size in enumerate(OTHER_SIZES[family])
    ]
    counts = [_n_visual(s) for s in singles]
    if family != "video_llava":
        assert len(set(counts)) == 3, counts  # anyres / dynamic resolution: each image its own count
    budget = min(counts) // 2
    cls = {"sparsevlm": SparseVLM, "fastv": FastV, "random": RandomPrune}[method_name]
    method = cls(budget=budget, positions=positions(family))
    batch = fam.batch(model, family, singles)
    with sparsevlm.attach(model, method) as trace:
        batched = _generate(model, batch)
    width = batch["input_ids"].shape[1]
    for row, single in enumerate(singles):
        with sparsevlm.attach(model, method) as single_trace:
            alone = _generate(model, single)
        assert trace.samples[row].n_visual == counts[row]
        assert [s.kept for s in trace.samples[row].stages] == [s.kept for s in single_trace.last.stages]
        assert torch.equal(batched[row, width:], alone[0, single["input_ids"].shape[1] :])


@pytest.mark.parametrize("family", fam.FAMILIES)
def test_cached_decode_equals_cache_free_recomputation(models, family):
    model = models[family]
    inputs = _sample(model, family, seed=5)
    method = SparseVLM(budget=_n_visual(inputs) // 3, positions=positions(family))
    with sparsevlm.attach(model, method) as trace, torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=4,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=fam.PAD,
        )
    stages = trace.last.stages
    prompt_len = inputs["input_ids"].shape[1]
    for step, step_logits in enumerate(out.logits):
        ids = out.sequences[:, : prompt_len + step]
        extended = dict(inputs, input_ids=ids, attention_mask=torch.ones_like(ids))
        if "mm_token_type_ids" in inputs:
            extended["mm_token_type_ids"] = (ids == fam.IMAGE).int()
        recomputed = naive.run(model, extended, naive.replay_decider(stages), positions(family))
        assert (step_logits - recomputed).abs().max() < 1e-4, f"step {step}"


@pytest.mark.parametrize("family", fam.FAMILIES)
@pytest.mark.parametrize("method_name", ["sparsevlm", "fastv", "random"])
def test_measured_equivalent_tokens_meet_the_budget(models, family, method_name):
    model = models[family]
    inputs = _sample(model, family, seed=2)
    budget = _n_visual(inputs) // 4
    method = make_method(method_name, budget=budget, positions=positions(family))
    with sparsevlm.attach(model, method) as trace:
        _logits(model, inputs)
    assert abs(trace.last.equivalent_tokens - budget) < 1  # SparseVLM's derived keeps come closest, from either side


def _zoo_method(name: str, budget: int, family: str):
    options = {"positions": positions(family)} if "positions" in available_methods()[name].__dataclass_fields__ else {}
    return make_method(name, budget=budget, **options)


@pytest.mark.parametrize("family", fam.FAMILIES)
@pytest.mark.parametrize("method_name", sorted(set(available_methods()) - {"dense"}))
def test_every_method_runs_or_refuses_in_one_line_at_attach(models, family, method_name):
    """A method runs its plan where its hook point exists, else attach refuses it in one line."""
    model = models[family]
    inputs = _sample(model, family, seed=4)
    n_visual = _n_visual(inputs)
    budget = n_visual // 2
    try:
        method = _zoo_method(method_name, budget, family)
        context = sparsevlm.attach(model, method)
        trace = context.__enter__()
    except ValueError as err:
        assert "\n" not in str(err)
        assert family != "llava", f"{method_name} refused on LLaVA-1.5: {err}"
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _logits(model, inputs)
    finally:
        context.__exit__(None, None, None)
    plan = method.plan(N_LAYERS, n_visual)
    if plan.keeps and not method.merges_in_tower:  # static plans: what ran is what was planned
        assert trace.last.visual_in == planned_visual_in(plan, n_visual, N_LAYERS)


def test_contiguous_positions_and_gravity_are_refused_on_mrope(models):
    model = models["qwen2_5_vl"]
    inputs = _sample(model, "qwen2_5_vl")
    contiguous = SparseVLM(budget=16)  # SparseVLM's releases renumber survivors
    with pytest.raises(ValueError, match="positions: 'contiguous' .* M-RoPE"), sparsevlm.attach(model, contiguous):
        _logits(model, inputs)
    gravity = SparseVLM(budget=16, version="2.0", heads=2)  # v2.0 keeps original positions, but divides by gravity
    with pytest.raises(ValueError, match="gravity: .* 1-D positions"), sparsevlm.attach(model, gravity):
        _logits(model, inputs)


@pytest.mark.parametrize("family", ["video_llava", "llava_next", "llava_onevision", "qwen2_5_vl"])
@pytest.mark.parametrize("method_name", ["visionzip", "tome"])
def test_vision_stage_methods_are_refused_where_the_tower_output_is_reshaped(models, family, method_name):
    with pytest.raises(ValueError, match=f"{method_name} acts on the vision tower's per-image output"):
        sparsevlm.check(models[family], make_method(method_name, budget=8))


def test_video_and_image_inputs_both_prune_on_video_llava(models):
    model = models["video_llava"]
    for video, n_visual in ((True, 8 * 17), (False, 16)):
        inputs = fam.sample(model, "video_llava", video=video)
        with sparsevlm.attach(model, FastV(budget=n_visual // 4)) as trace:
            _logits(model, inputs)
        assert trace.last.n_visual == n_visual
        assert trace.last.stages[0].visual_in == n_visual


def test_sparsevlms_video_version_prunes_the_whole_video_block_once(models):
    model = models["video_llava"]
    inputs = fam.sample(model, "video_llava", video=True)
    budget = 40  # of 136: the paper's 135 of 2048 is 6.6 %, too few for 8 layers here (floor 136 / 8 = 17)
    with sparsevlm.attach(model, SparseVLM(budget=budget, version="video")) as trace:
        _logits(model, inputs)
    (stage,) = trace.last.stages
    assert stage.layer == 0 and stage.visual_in == 8 * 17  # layer 1 of 32, mapped to 8 layers
    assert len(stage.kept) + len(stage.merged_groups) == trace.last.visual_out[0]
    assert budget - 1 < trace.last.equivalent_tokens <= budget


@pytest.mark.parametrize("method_name", ["sparsevlm", "fastv", "divprune"])
def test_retain_ratio_budgets_each_sample_by_its_own_visual_count(models, method_name):
    model = models["llava_next"]
    singles = [_sample(model, "llava_next", seed=i, size=size) for i, size in enumerate([(56, 56), (28, 56)])]
    counts = [_n_visual(s) for s in singles]
    assert counts[0] > counts[1]
    method = make_method(method_name, budget=1, retain_ratio=0.4)  # the ratio replaces the budget
    with sparsevlm.attach(model, method) as trace:
        _generate(model, fam.batch(model, "llava_next", singles))
    for sample, count in zip(trace.samples, counts, strict=True):
        assert sample.n_visual == count
        assert abs(sample.equivalent_tokens - round(0.4 * count)) < 1


@pytest.mark.parametrize("ratio", [0, 1, 1.5, -0.1, True, "half"])
def test_a_retain_ratio_outside_0_1_is_refused_in_one_line(ratio):
    with pytest.raises(ValueError, match="retain_ratio: expected null .* in \\(0, 1\\)"):
        SparseVLM(budget=64, retain_ratio=ratio)


MULTI_IMAGE = ["llava", "llava_next", "qwen2_5_vl"]


@pytest.mark.parametrize("family", MULTI_IMAGE)
@pytest.mark.parametrize("method_name", ["sparsevlm", "fastv"])
def test_two_images_in_one_prompt_match_the_naive_reference(models, family, method_name):
    """Both images are one visual set; the text between them stays in place and never rates or gets pruned."""
    model = models[family]
    inputs = fam.two_images(model, family, question_length=9, seed=3)
    n_visual = _n_visual(inputs)
    budget = n_visual // 3
    recorded: list = []
    if method_name == "sparsevlm":
        method = SparseVLM(budget=budget, positions=positions(family))
        plan = method.plan(N_LAYERS, n_visual)
        decider = naive.sparsevlm_decider(
            model, inputs, "1.5", budget, recorded, layers=plan.prune_layers, keeps=plan.keeps
        )
    else:
        method = FastV(budget=budget, positions=positions(family))
        plan = method.plan(N_LAYERS, n_visual)
        decider = naive.fastv_decider(plan.prune_layers[0] + 1, plan.keeps[0], recorded)
    ref_logits = naive.run(model, inputs, decider, positions(family))
    with sparsevlm.attach(model, method) as trace:
        logits = _logits(model, inputs)
    assert trace.last.n_visual == n_visual
    for stage, (_, kept, groups) in zip(trace.last.stages, recorded, strict=True):
        assert stage.kept == kept
        assert stage.merged_groups == groups
    kept_original = trace.last.stages[0].kept_original
    ids = inputs["input_ids"][0]
    assert all(int(ids[i]) == fam.IMAGE for i in kept_original)  # indices into the prompt: visual tokens only
    assert (logits - ref_logits).abs().max() < 1e-5


@pytest.mark.parametrize("family", MULTI_IMAGE)
def test_a_two_image_prompt_batched_with_a_one_image_prompt_equals_single_runs(models, family):
    model = models[family]
    singles = [fam.two_images(model, family, seed=1), _sample(model, family, seed=2, question_length=11)]
    method = SparseVLM(budget=min(_n_visual(s) for s in singles) // 2, positions=positions(family))
    with sparsevlm.attach(model, method) as trace:
        batched = _generate(model, fam.batch(model, family, singles))
    width = max(s["input_ids"].shape[1] for s in singles)
    for row, single in enumerate(singles):
        with sparsevlm.attach(model, method) as single_trace:
            alone = _generate(model, single)
        assert [s.kept for s in trace.samples[row].stages] == [s.kept for s in single_trace.last.stages]
        assert torch.equal(batched[row, width:], alone[0, single["input_ids"].shape[1] :])


@pytest.mark.parametrize("family", MULTI_IMAGE)
def test_two_images_cached_decode_equals_cache_free_recomputation(models, family):
    model = models[family]
    inputs = fam.two_images(model, family, seed=5)
    method = SparseVLM(budget=_n_visual(inputs) // 3, positions=positions(family))
    with sparsevlm.attach(model, method) as trace, torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True,
            pad_token_id=fam.PAD,
        )  # fmt: skip
    prompt_len = inputs["input_ids"].shape[1]
    for step, step_logits in enumerate(out.logits):
        ids = out.sequences[:, : prompt_len + step]
        extended = dict(inputs, input_ids=ids, attention_mask=torch.ones_like(ids))
        if "mm_token_type_ids" in inputs:
            extended["mm_token_type_ids"] = (ids == fam.IMAGE).int()
        recomputed = naive.run(model, extended, naive.replay_decider(trace.last.stages), positions(family))
        assert (step_logits - recomputed).abs().max() < 1e-4, f"step {step}"


def test_vision_stage_methods_refuse_two_images_in_one_prompt(models):
    model = models["llava"]
    inputs = fam.two_images(model, "llava")
    with pytest.raises(ValueError, match="several images; visionzip decides per image"):
        with sparsevlm.attach(model, make_method("visionzip", budget=8)):
            _logits(model, inputs)

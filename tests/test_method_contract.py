"""The contract every registered method keeps (parametrised over the registry, so a new method is covered at once).

For each method on a random 8-layer LLaVA with 576 visual tokens:
- attach leaves no hook behind;
- nothing pruned (a budget at or above the visual tokens) is bit-identical to the bare model;
- a left-padded batch equals single runs (same kept tokens, same greedy tokens);
- cached decoding equals a cache-free recomputation by the naive reference replaying the trace;
- the measured budget is met in the method's own convention;
- the trace records what the method kept (consistent counts, kept tokens inside the image).
"""

from __future__ import annotations

import warnings

import naive_reference as naive
import pytest
import torch
from conftest import build_llava, make_inputs

import sparsevlm
from sparsevlm.methods.base import BEFORE_LLM

BUDGET = 64
# PyramidDrop's first stage is after layer 1 of these 8 layers: its floor (72.9 tokens) is above 64; ToMe merges in
# the vision layers up to the one LLaVA reads, here only the first of 2, where at most half the tokens can merge
BUDGETS = {"pdrop": 128, "tome": 320}
IMAGE_TOKEN = 250
# a generated image token would read as a new image after a filled cache; the plugin suppresses it the same way
GENERATE = {"do_sample": False, "pad_token_id": 0, "suppress_tokens": [IMAGE_TOKEN]}
NAMES = list(sparsevlm.available_methods())


def _budget(name: str) -> int:
    return BUDGETS.get(name, BUDGET)


def _method(name: str, budget: int | None = None):
    return sparsevlm.make_method(name, None if name == "dense" else budget or _budget(name))


def _hook_counts(model) -> list[int]:
    return [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]


@pytest.fixture(scope="module")
def model():
    return build_llava(n_layers=8)


def test_every_method_is_registered_with_its_name():
    assert NAMES[:4] == ["dense", "sparsevlm", "fastv", "random"]
    for name, cls in sparsevlm.available_methods().items():
        assert cls.name == name and cls.hook in ("llm", "pre_llm", "vision")


@pytest.mark.parametrize("name", NAMES)
def test_attach_leaves_no_hooks(model, name):
    model(**make_inputs(question_lengths=(6,)))  # transformers installs its own output-capturing hooks on first use
    before = _hook_counts(model)
    with sparsevlm.attach(model, _method(name)):
        assert _hook_counts(model) != before
        model(**make_inputs(question_lengths=(6,)))
    assert _hook_counts(model) == before


@pytest.mark.parametrize("name", NAMES)
def test_nothing_pruned_is_bit_identical_to_the_bare_model(model, name):
    inputs = make_inputs(question_lengths=(7, 11), seed=1)
    with torch.no_grad():
        bare = model(**inputs).logits
    with warnings.catch_warnings(record=True) as caught, sparsevlm.attach(model, _method(name, 576)) as trace:
        warnings.simplefilter("always")
        with torch.no_grad():
            attached = model(**inputs).logits
    assert torch.equal(bare, attached)
    assert all(sample.stages == [] for sample in trace.samples)
    if name != "dense":
        assert [str(w.message) for w in caught] == [f"{name}: budget=576 >= 576 visual tokens; nothing is pruned"]


@pytest.mark.parametrize("name", NAMES)
def test_a_left_padded_batch_equals_single_runs(model, name):
    lengths = (9, 4, 13)
    batch = make_inputs(question_lengths=lengths, seed=2)
    method = _method(name)
    with sparsevlm.attach(model, method) as trace, torch.no_grad():
        batched = model.generate(**batch, max_new_tokens=3, **GENERATE)
    width = batch["input_ids"].shape[1]
    for row, length in enumerate(lengths):
        start = width - (5 + 576 + length)
        single = {k: v[row : row + 1, start:] if k != "pixel_values" else v[row : row + 1] for k, v in batch.items()}
        with sparsevlm.attach(model, method) as alone_trace, torch.no_grad():
            alone = model.generate(**single, max_new_tokens=3, **GENERATE)
        stages = [(s.kept, s.merged_groups) for s in trace.samples[row].stages]
        assert stages == [(s.kept, s.merged_groups) for s in alone_trace.last.stages]
        assert torch.equal(batched[row, width:], alone[0, single["input_ids"].shape[1] :])


@pytest.mark.parametrize("name", NAMES)
def test_cached_decode_equals_cache_free_recomputation(model, name):
    method = _method(name)
    positions = naive_positions(method)
    inputs = make_inputs(question_lengths=(8,), seed=3)
    with sparsevlm.attach(model, method) as trace, torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, output_logits=True, return_dict_in_generate=True, **GENERATE)
    prompt_len = inputs["input_ids"].shape[1]
    if method.hook == "vision":  # merged vision features cannot be replayed from the trace: a fresh pruned prefill
        for step, step_logits in enumerate(out.logits):
            ids = out.sequences[:, : prompt_len + step]
            extended = dict(inputs, input_ids=ids, attention_mask=torch.ones_like(ids))
            with sparsevlm.attach(model, method), torch.no_grad():
                recomputed = model(**extended).logits[:, -1]
            assert (step_logits - recomputed).abs().max() < 1e-4, f"step {step}"
        return
    for step, step_logits in enumerate(out.logits):
        ids = out.sequences[:, : prompt_len + step]
        extended = dict(inputs, input_ids=ids, attention_mask=torch.ones_like(ids))
        recomputed = naive.run(model, extended, naive.replay_decider(trace.last.stages), positions)
        assert (step_logits - recomputed).abs().max() < 1e-4, f"step {step}"


def naive_positions(method) -> str:
    """How the naive reference must number positions to reproduce the method."""
    return getattr(method, "positions", "contiguous")


@pytest.mark.parametrize("name", NAMES)
def test_the_budget_is_met_in_the_methods_convention(model, name):
    method = _method(name)
    with sparsevlm.attach(model, method) as trace, torch.no_grad():
        model(**make_inputs(question_lengths=(10,), seed=4))
    sample = trace.last
    if name == "dense":
        assert sample.equivalent_tokens == 576 and sample.llm_input_tokens == 576
    elif method.hook == "llm":  # equivalent tokens (layer-averaged, output side); the LLM is given all 576
        assert abs(sample.equivalent_tokens - _budget(name)) <= 0.02 * _budget(name), sample.equivalent_tokens
        assert sample.llm_input_tokens == 576
    else:  # tokens given to the LLM; every layer then reads them
        assert sample.visual_in == [_budget(name)] * 8 and sample.equivalent_tokens == _budget(name)
        assert sample.llm_input_tokens == _budget(name)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "dense"])
def test_the_trace_records_what_was_kept(model, name):
    method = _method(name)
    inputs = make_inputs(question_lengths=(10,), seed=5)
    with sparsevlm.attach(model, method) as trace, torch.no_grad():
        model(**inputs)
    sample = trace.last
    assert sample.stages, "a pruning method must record at least one stage"
    image = range(sample.image_start, sample.image_start + 576)
    for stage in sample.stages:
        out = len(stage.kept) + len(stage.merged_groups)
        after = sample.visual_in[stage.layer + 1] if stage.layer + 1 < 8 else sample.visual_out[-1]
        assert out == after, (stage.layer, out, after)
        assert stage.kept == sorted(set(stage.kept)) and all(0 <= k < stage.visual_in for k in stage.kept)
        assert all(i in image or i == -1 for i in stage.kept_original)
        assert all(0 <= m < stage.visual_in for group in stage.merged_groups for m in group)
    if method.hook != "llm":
        assert [s.layer for s in sample.stages] == [BEFORE_LLM]


def test_an_unreachable_budget_fails_at_attach_and_installs_nothing(model):
    before = _hook_counts(model)
    with (
        pytest.raises(ValueError, match="^budget=64 is unreachable for pdrop"),
        sparsevlm.attach(model, sparsevlm.make_method("pdrop", 64)),
    ):
        pytest.fail("attach must raise before the block runs")
    assert _hook_counts(model) == before


@pytest.fixture(scope="module")
def eager_model():
    return build_llava(n_layers=8, attn="eager")  # the same seed: the same weights as `model`


@pytest.mark.parametrize("name", [n for n in NAMES if n != "dense"])
def test_sdpa_and_eager_keep_the_same_tokens(model, eager_model, name):
    """No method reads attention maps from the kernel, so the kernel never changes what is kept."""
    inputs = make_inputs(question_lengths=(9,), seed=6)
    kept = []
    for kernel in (model, eager_model):
        with sparsevlm.attach(kernel, _method(name)) as trace, torch.no_grad():
            kernel(**inputs)
        kept.append([(s.layer, s.kept_original, s.merged_groups) for s in trace.last.stages])
    assert kept[0] == kept[1] and kept[0]

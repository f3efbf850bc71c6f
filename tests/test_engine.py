"""The engine against the spec: identity when nothing is pruned, exact counts, a naive reference, decode, batches."""

from __future__ import annotations

import subprocess
import sys
import warnings

import naive_reference as naive
import pytest
import torch
from conftest import build_llava, make_inputs

import sparsevlm
from sparsevlm import Dense, FastV, RandomPrune, SparseVLM


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits[:, -1]


def _generate(model, inputs, **kwargs):
    kwargs.setdefault("max_new_tokens", 6)
    kwargs.setdefault("do_sample", False)
    with torch.no_grad():
        return model.generate(**inputs, pad_token_id=0, **kwargs)


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def model_v2():
    """head_dim 64, so SparseVLM+'s RoPE distance prior stays positive over the ~600-token prompt."""
    return build_llava(hidden=256, heads=4)


# 1. ------------------------------------------------------------------------------------------ identity
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_dense_and_oversized_budget_are_exact(attn):
    model = build_llava(attn=attn)
    inputs = make_inputs()
    ref_logits, ref_ids = _logits(model, inputs), _generate(model, inputs)
    hooks_before = _hook_count(model)  # after a forward: HF installs its own output-capturing hooks lazily
    for method in (Dense(), SparseVLM(budget=576), SparseVLM(budget=1000, version="2.0", heads=4), FastV(budget=600)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with sparsevlm.attach(model, method) as trace:
                assert (_logits(model, inputs) - ref_logits).abs().max() <= 1e-6
                assert torch.equal(_generate(model, inputs), ref_ids)
        assert trace.last.equivalent_tokens == 576
    assert _hook_count(model) == hooks_before
    assert torch.equal(_logits(model, inputs), ref_logits)


def test_detach_restores_model_after_pruning_and_after_errors(llava32):
    inputs = make_inputs()
    ref = _logits(llava32, inputs)
    hooks_before = _hook_count(llava32)
    with sparsevlm.attach(llava32, SparseVLM(budget=64)):
        assert not torch.allclose(_logits(llava32, inputs), ref)
    with pytest.raises(RuntimeError, match="boom"), sparsevlm.attach(llava32, SparseVLM(budget=64)):
        raise RuntimeError("boom")
    assert _hook_count(llava32) == hooks_before
    assert torch.equal(_logits(llava32, inputs), ref)


def test_budget_at_or_above_visual_count_warns(llava32):
    with pytest.warns(UserWarning, match="nothing is pruned"), sparsevlm.attach(llava32, SparseVLM(budget=576)):
        _logits(llava32, make_inputs())


# 2. --------------------------------------------------------------------------------- exact schedule counts
@pytest.mark.parametrize(
    ("version", "budget", "after", "equivalent"),
    [
        ("1.5", 192, (309, 204, 113), 192.03125),
        ("1.5", 128, (312, 117, 39), 128.625),
        ("1.5", 96, (249, 55, 27), 96.9375),
        ("1.5", 64, (82, 32, 18), 64.8125),
        ("2.0", 192, (300, 200, 118), 192.4375),
        ("2.0", 64, (66, 34, 20), 64.4375),
    ],
)
def test_paper_schedule_counts(llava32, model_v2, version, budget, after, equivalent):
    model = model_v2 if version == "2.0" else llava32
    method = SparseVLM(budget=budget, version=version, heads=4 if version == "2.0" else None)
    with sparsevlm.attach(model, method) as trace:
        _logits(model, make_inputs())
    sample = trace.last
    assert tuple(sample.visual_out[layer] for layer in (2, 6, 15)) == after
    assert sample.visual_out[:2] == [576, 576] and sample.visual_in[:3] == [576] * 3
    assert sample.equivalent_tokens == equivalent
    n_other = sample.prompt_tokens - 576
    assert sample.tokens_in[16] == n_other + after[2] and sample.tokens_in[31] == n_other + after[2]
    assert sample.equivalent_tokens_input == (3 * 576 + 4 * after[0] + 9 * after[1] + 16 * after[2]) / 32


# 3. ------------------------------------------------------------------------------------ naive reference
@pytest.mark.parametrize(("version", "budget"), [("1.5", 64), ("1.5", 192), ("1.0", 64), ("1.0", 128), ("2.0", 128)])
def test_keep_sets_match_naive_full_attention_reference(llava32, model_v2, version, budget):
    model = model_v2 if version == "2.0" else llava32
    inputs = make_inputs(question_lengths=(14,), seed=3)
    recorded = []
    decider = naive.sparsevlm_decider(model, inputs, version, budget, recorded)
    ref_logits = naive.run(model, inputs, decider, "original" if version == "2.0" else "contiguous")
    method = SparseVLM(budget=budget, version=version, heads=4 if version == "2.0" else None)
    with sparsevlm.attach(model, method) as trace:
        logits = _logits(model, inputs)
    stages = trace.last.stages
    assert [s.layer for s in stages] == [r[0] for r in recorded]
    for stage, (_, kept, groups) in zip(stages, recorded, strict=True):
        assert stage.kept == kept
        assert stage.merged_groups == groups
    assert (logits - ref_logits).abs().max() < 1e-5


# FastV at K = 2 prunes the output of layer 1. Output-side convention (the paper's): layer 0 leaves 576 tokens and
# 31 layers leave k, so (576 + 31 k) / 32 = 64 gives k = 47.48 -> 47. Input side: 2 layers read 576, 30 read k:
# (2 * 576 + 30 k) / 32 = 64 gives k = 29.87 -> 30.
FASTV_64_KEEP = {"output": 47, "input": 30}


@pytest.mark.parametrize("convention", ["output", "input"])
def test_fastv_matches_naive_reference(llava32, convention):
    inputs = make_inputs(seed=4)
    recorded = []
    keep = FASTV_64_KEEP[convention]
    ref_logits = naive.run(llava32, inputs, naive.fastv_decider(2, keep, recorded), "original")
    with sparsevlm.attach(llava32, FastV(budget=64, layer=2, convention=convention)) as trace:
        logits = _logits(llava32, inputs)
    stage = trace.last.stages[0]
    assert stage.layer == 1 and len(stage.kept) == keep and stage.kept == recorded[0][1]
    assert (logits - ref_logits).abs().max() < 1e-5
    expected = (576 + 31 * keep) / 32  # equivalent tokens (output side) of what actually ran
    assert trace.last.equivalent_tokens == pytest.approx(expected)


@pytest.mark.parametrize("convention", ["output", "input"])
def test_random_keeps_fastvs_count_and_draws_per_sample(llava32, convention):
    inputs = make_inputs(question_lengths=(7, 12), seed=8)
    with sparsevlm.attach(llava32, RandomPrune(budget=64, convention=convention, seed=1)) as trace:
        _logits(llava32, inputs)
    first, second = (s.stages[0].kept for s in trace.samples)
    assert len(first) == len(second) == FASTV_64_KEEP[convention]
    assert first != second  # the draw depends on the sample's own tokens, not only on the seed


# 4. ------------------------------------------------------------------------------------ decode consistency
@pytest.mark.parametrize(
    ("method", "positions"),
    [
        (SparseVLM(budget=64), "contiguous"),
        (SparseVLM(budget=128, version="2.0", heads=4), "original"),
        (FastV(budget=64), "original"),
        (SparseVLM(budget=64, positions="original"), "original"),
    ],
    ids=["v1.5", "v2.0", "fastv", "v1.5-original-positions"],
)
def test_cached_decode_equals_cache_free_recomputation(llava32, model_v2, method, positions):
    model = model_v2 if getattr(method, "version", None) == "2.0" else llava32
    inputs = make_inputs(seed=5)
    with sparsevlm.attach(model, method) as trace, torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=4,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    stages = trace.last.stages
    prompt_len = inputs["input_ids"].shape[1]
    for step, step_logits in enumerate(out.logits):
        ids = out.sequences[:, : prompt_len + step]
        extended = dict(inputs, input_ids=ids, attention_mask=torch.ones_like(ids))
        recomputed = naive.run(model, extended, naive.replay_decider(stages), positions)
        assert (step_logits - recomputed).abs().max() < 1e-4, f"step {step}"


# 5. ----------------------------------------------------------------------------------------- batches
@pytest.mark.parametrize(
    "method",
    [SparseVLM(budget=64), SparseVLM(budget=192, version="1.0"), FastV(budget=128), RandomPrune(budget=64, seed=1)],
    ids=["v1.5", "v1.0-ragged", "fastv", "random"],
)
def test_left_padded_batch_equals_single_runs(llava32, method):
    lengths = (9, 15, 4, 12)
    batch = make_inputs(question_lengths=lengths, seed=6)
    with sparsevlm.attach(llava32, method) as trace:
        batched = _generate(llava32, batch)
    assert len(trace.samples) == 4
    width = batch["input_ids"].shape[1]
    for row, length in enumerate(lengths):
        start = width - (5 + 576 + length)
        single = {k: v[row : row + 1, start:] if k != "pixel_values" else v[row : row + 1] for k, v in batch.items()}
        with sparsevlm.attach(llava32, method) as single_trace:
            alone = _generate(llava32, single)
        assert [s.kept for s in trace.samples[row].stages] == [s.kept for s in single_trace.last.stages]
        assert torch.equal(batched[row, width:], alone[0, single["input_ids"].shape[1] :])


# 6. ------------------------------------------------------------------------------------- attention kernels
@pytest.mark.parametrize("method", [SparseVLM(budget=64), SparseVLM(budget=128, version="1.0"), FastV(budget=64)])
def test_sdpa_and_eager_choose_the_same_tokens(method):
    inputs = make_inputs(seed=7)
    traces, logits = [], []
    for attn in ("sdpa", "eager"):
        model = build_llava(attn=attn)
        with sparsevlm.attach(model, method) as trace:
            logits.append(_logits(model, inputs))
        traces.append([(s.kept, s.merged_groups) for s in trace.last.stages])
    assert traces[0] == traces[1]
    assert (logits[0] - logits[1]).abs().max() < 1e-5


# 7. ------------------------------------------------------------------------------------------ other depths
def test_forty_layer_model_uses_the_mapped_layers_and_hits_the_budget():
    model = build_llava(n_layers=40, hidden=32, heads=2)
    for budget in (192, 64):
        with sparsevlm.attach(model, SparseVLM(budget=budget)) as trace:
            _generate(model, make_inputs(), max_new_tokens=2)
        sample = trace.last
        assert [s.layer for s in sample.stages] == [3, 8, 19]
        assert abs(sample.equivalent_tokens - budget) <= 1.0
        assert sample.visual_out[2] == 576 and sample.visual_out[3] < 576


def test_any_budget_on_the_paper_depth(llava32):
    for budget in (100, 160, 250):
        with sparsevlm.attach(llava32, SparseVLM(budget=budget)) as trace:
            _logits(llava32, make_inputs())
        assert abs(trace.last.equivalent_tokens - budget) <= 1.0


# 8. -------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"budget": 0}, "budget: expected a positive int"),
        ({"budget": -64}, "budget: expected a positive int"),
        ({"budget": "64"}, "budget: expected a positive int"),
        ({"budget": True}, "budget: expected a positive int"),
        ({"version": "3.0"}, "version: got '3.0', allowed: '1.0', '1.5', '2.0'"),
        ({"positions": "shuffled"}, "positions: got 'shuffled'"),
        ({"version": "1.0", "scale": 2.0}, "scale, bias: give both"),
        ({"version": "2.0", "head_fraction": 0.0}, "head_fraction: expected a value in"),
        ({"tie_break": "random"}, "tie_break: got 'random', allowed: 'index', 'noise', 'reference'"),
        ({"keeps": (10, 5)}, "keeps: needs prune_layers"),
        ({"recycle_fraction": 0.0}, r"recycle_fraction and cluster_ratio: expected values in \(0, 1\]"),
        ({"cluster_ratio": 1.5}, r"recycle_fraction and cluster_ratio: expected values in \(0, 1\]"),
    ],
)
def test_bad_method_fields_fail_fast(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparseVLM(**kwargs)


def test_a_budget_of_zero_is_refused():
    with pytest.raises(ValueError, match="budget: expected a positive int"):
        FastV(budget=0)


def test_recycling_options_are_checked_even_when_recycling_is_off():
    with pytest.raises(ValueError, match="tie_break: got 'random'"):
        FastV(budget=64, recycle=False, tie_break="random")


def test_more_top_heads_than_the_model_has_are_refused(llava32):
    with pytest.raises(ValueError, match="heads: top-14 head selection needs >= 14 attention heads, the model has 4"):
        sparsevlm.attach(llava32, SparseVLM(budget=64, version="2.0", heads=14)).__enter__()


def test_an_unreachable_budget_is_refused_at_the_prefill(llava32):
    with pytest.raises(ValueError, match="budget=8 is unreachable"):
        with sparsevlm.attach(llava32, SparseVLM(budget=8)):
            _logits(llava32, make_inputs())


def test_a_text_only_forward_is_left_alone(llava32):
    text_only = make_inputs()["input_ids"].masked_fill(make_inputs()["input_ids"] == 250, 7)[:, :20]
    with sparsevlm.attach(llava32, SparseVLM(budget=64)) as trace:
        llava32(input_ids=text_only, pixel_values=None)
    assert trace.samples == []


def test_a_batch_row_without_an_image_is_refused(llava32):
    batch = make_inputs(question_lengths=(5, 6))
    batch["input_ids"][1] = batch["input_ids"][1].masked_fill(batch["input_ids"][1] == 250, 7)
    with pytest.raises(ValueError, match="sample 1 of the batch has no visual tokens"):
        with sparsevlm.attach(llava32, SparseVLM(budget=64)):
            llava32(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def test_an_unsupported_model_is_refused():
    from transformers import LlamaConfig, LlamaForCausalLM

    llm = LlamaForCausalLM(
        LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=64)
    )
    with pytest.raises(ValueError, match=r"model: unsupported model_type=.llama.*\[got a LlamaForCausalLM\]"):
        sparsevlm.attach(llm, SparseVLM(budget=64)).__enter__()


def test_a_method_must_be_a_method_object(llava32):
    with pytest.raises(TypeError, match="method: expected a sparsevlm method"):
        sparsevlm.attach(llava32, "sparsevlm").__enter__()


def test_right_padding_is_refused(llava32):
    right_padded = make_inputs(question_lengths=(5, 9))
    right_padded["attention_mask"][0] = right_padded["attention_mask"][0].flip(0)
    with pytest.raises(ValueError, match="pad on the left"), sparsevlm.attach(llava32, SparseVLM(budget=64)):
        _logits(llava32, right_padded)


def test_sparsevlm_plus_refuses_inputs_where_the_distance_prior_turns_negative():
    model = build_llava(hidden=64, heads=4)  # head_dim 16: G(delta) <= 0 from delta = 91
    with pytest.raises(ValueError, match="gravity: the RoPE distance prior is <= 0"):
        with sparsevlm.attach(model, SparseVLM(budget=64, version="2.0", heads=4)):
            _logits(model, make_inputs())


# ---------------------------------------------------------------------------------------- generation modes
@pytest.mark.parametrize(
    "kwargs", [{"do_sample": True, "top_k": 5}, {"num_beams": 2}, {"num_beams": 2, "num_return_sequences": 2}]
)
def test_pruning_applies_in_every_generation_mode(llava32, kwargs):
    torch.manual_seed(0)
    with sparsevlm.attach(llava32, SparseVLM(budget=64)) as trace:
        out = _generate(llava32, make_inputs(), max_new_tokens=4, **kwargs)
    assert out.shape[1] == make_inputs()["input_ids"].shape[1] + 4
    assert trace.samples and all(s.equivalent_tokens == 64.8125 for s in trace.samples)


def test_recycling_is_deterministic_and_noise_is_seeded(llava32):
    inputs = make_inputs(seed=8)
    runs = {}
    for tie_break in ("index", "noise"):
        for _ in range(2):
            with sparsevlm.attach(llava32, SparseVLM(budget=64, tie_break=tie_break, seed=3)) as trace:
                logits = _logits(llava32, inputs)
            runs.setdefault(tie_break, []).append((logits, [s.merged_groups for s in trace.last.stages]))
    for first, second in runs.values():
        assert torch.equal(first[0], second[0]) and first[1] == second[1]


def test_library_imports_no_harness_modules():
    code = (
        "import sys, sparsevlm; print(sorted(m for m in ('hydra', 'lmms_eval', 'wandb', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------- real checkpoint shapes
@pytest.mark.parametrize(
    ("name", "layers", "expected"), [("llava-1.5-7b", 32, (2, 6, 15)), ("llava-1.5-13b", 40, (3, 8, 19))]
)
def test_llava_1_5_checkpoint_shapes_attach_and_detach(name, layers, expected):
    """llava-hf/llava-1.5-{7b,13b}-hf configs, built on the meta device (no weights allocated)."""
    from transformers import LlavaForConditionalGeneration

    from eval.shapes import SHAPES, llava_config

    config = llava_config(SHAPES[name])
    config.text_config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    method = SparseVLM(budget=64)
    with sparsevlm.attach(model, method):
        assert sum(len(layer._forward_pre_hooks) for layer in model.model.language_model.layers) == layers
    assert method.pruning_layers(layers) == expected
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0
    assert SparseVLM(budget=64, version="2.0").plan(layers, 576).prune_layers == expected  # 32 heads >= 14


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_flash_attention_2_chooses_the_same_tokens_as_sdpa():
    pytest.importorskip("flash_attn", reason="flash-attn is not installed")
    inputs = {k: v.cuda() for k, v in make_inputs(seed=9).items()}
    kept = []
    for attn in ("sdpa", "flash_attention_2"):
        model = build_llava(attn=attn).to("cuda", torch.float16)
        with sparsevlm.attach(model, SparseVLM(budget=64)) as trace:
            _generate(model, {k: v.half() if k == "pixel_values" else v for k, v in inputs.items()}, max_new_tokens=2)
        kept.append([s.kept for s in trace.last.stages])
    assert kept[0] == kept[1]

"""Timing helpers: sane per-sample values on CPU, timer boundaries, KV-cache bytes, CUDA path when available."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import build_llava, make_inputs
from transformers import DynamicCache

import sparsevlm
from sparsevlm.timing import kv_cache_bytes, timed_generate

HIDDEN, LAYERS = 64, 8


@pytest.fixture(scope="module")
def model():
    return build_llava(n_layers=LAYERS, hidden=HIDDEN)


@pytest.fixture(scope="module")
def inputs():
    return make_inputs(question_lengths=(12,))


def _generate(model, inputs, method, new_tokens=4):
    return timed_generate(
        model, inputs, method, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0
    )


@pytest.mark.parametrize("method", [sparsevlm.Dense(), sparsevlm.SparseVLM(budget=192)], ids=["dense", "sparsevlm"])
def test_cpu_values_are_sane(model, inputs, method):
    timing, trace, output = _generate(model, inputs, method)
    assert timing.device == "cpu" and timing.new_tokens == 4 and output.shape[1] == inputs["input_ids"].shape[1] + 4
    assert 0 < timing.prefill_s < timing.ttft_s < timing.e2e_s
    assert 0 < timing.decode_per_token_s < timing.e2e_s
    assert 0 < timing.prefill_cpu_s
    # the hook intervals are measured (> 0 even for Dense: the timing pair itself takes time) and all lie inside the
    # first forward, so they sum to less than the time to first token
    assert 0 < timing.overhead_s < timing.ttft_s
    assert timing.peak_memory_bytes >= timing.base_memory_bytes > 0
    # one K and one V per layer, each layer at its own cached length (= tokens entering it; pruning layers hold all)
    expected = sum(2 * n * HIDDEN * 4 for n in trace.last.tokens_in)
    assert timing.kv_cache_bytes == expected
    if isinstance(method, sparsevlm.SparseVLM):
        assert timing.kv_cache_bytes < 2 * LAYERS * trace.last.prompt_tokens * HIDDEN * 4


def test_single_token_has_no_decode_time(model, inputs):
    timing, _, _ = _generate(model, inputs, sparsevlm.Dense(), new_tokens=1)
    assert timing.decode_per_token_s is None and timing.new_tokens == 1


def test_timer_boundaries(model, inputs):
    """A slow hook inside the decoder stack counts as prefill and overhead; a slow vision tower only as TTFT."""
    calls = {"vision": 0, "layer": 0}

    def slow(key: str, seconds: float):
        def hook(*_args):
            calls[key] += 1
            if calls[key] == 1:  # the prefill only
                time.sleep(seconds)

        return hook

    handles = [
        model.model.vision_tower.register_forward_hook(slow("vision", 0.2)),
        model.model.language_model.layers[3].register_forward_hook(slow("layer", 0.1)),
    ]
    try:
        timing, _, _ = _generate(model, inputs, sparsevlm.Dense(), new_tokens=2)
    finally:
        for handle in handles:
            handle.remove()
    # margins below the sleeps: process CPU time counts every thread, so it can exceed wall time a little
    assert timing.overhead_s >= 0.1 and timing.prefill_s >= 0.1
    assert timing.prefill_s - timing.prefill_cpu_s >= 0.08  # sleeping is wall time, not CPU time
    assert timing.ttft_s - timing.prefill_s >= 0.18  # the vision tower is before the decoder stack


def test_hooks_are_removed(model, inputs):
    layers = model.model.language_model.layers
    before = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in [model, *layers]]
    _generate(model, inputs, sparsevlm.SparseVLM(budget=128), new_tokens=1)
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in [model, *layers]] == before


def test_kv_cache_bytes_counts_ragged_layers():
    cache = DynamicCache()
    cache.update(torch.zeros(1, 2, 10, 4), torch.zeros(1, 2, 10, 4), 0)
    cache.update(torch.zeros(1, 2, 3, 4, dtype=torch.bfloat16), torch.zeros(1, 2, 3, 4, dtype=torch.bfloat16), 1)
    assert kv_cache_bytes(cache) == 2 * 80 * 4 + 2 * 24 * 2
    assert kv_cache_bytes(None) == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_events_path():
    model = build_llava(n_layers=LAYERS, hidden=HIDDEN).cuda()
    batch = {k: v.cuda() for k, v in make_inputs(question_lengths=(12,)).items()}
    _generate(model, batch, sparsevlm.Dense())  # warm-up
    started = time.perf_counter()
    timing, trace, _ = _generate(model, batch, sparsevlm.SparseVLM(budget=128))
    wall = time.perf_counter() - started
    assert timing.device.startswith("cuda") and timing.prefill_cpu_s is None
    assert timing.e2e_s <= wall  # event times in seconds, inside the call (not milliseconds, not the host's clock)
    assert 0 < timing.prefill_s < timing.ttft_s < timing.e2e_s and timing.decode_per_token_s > 0
    assert timing.peak_memory_bytes >= timing.base_memory_bytes > 0
    assert timing.kv_cache_bytes == sum(2 * n * HIDDEN * 4 for n in trace.last.tokens_in)

"""Benchmark smoke test on the tiny shape, plus the shapes and table helpers it relies on."""

from __future__ import annotations

import json

import pytest
import torch

from eval import bench
from eval.shapes import PRE_PROMPT, SHAPES, llava_config, make_batch
from sparsevlm import flops


def test_shapes_match_the_published_models():
    seven = flops.text_shape(llava_config(SHAPES["llava-1.5-7b"]))
    assert (seven.hidden, seven.intermediate, seven.n_layers) == (4096, 11008, 32)
    assert (seven.n_heads, seven.head_dim) == (32, 128)
    thirteen = flops.text_shape(llava_config(SHAPES["llava-1.5-13b"]))
    assert (thirteen.hidden, thirteen.intermediate, thirteen.n_layers) == (5120, 13824, 40)
    vision = flops.vision_shape(llava_config(SHAPES["llava-1.5-7b"]))
    assert (vision.hidden, vision.n_layers, vision.n_patches) == (1024, 24, 576)
    for name in ("cpu-32l", "tiny"):  # the paper's 2/6/15 schedule and 576 visual tokens run unmodified
        assert SHAPES[name].layers == 32 and SHAPES[name].n_visual == 576 and SHAPES[name].head_dim == 64


def test_make_batch_layout():
    shape = SHAPES["tiny"]
    batch = make_batch(shape, batch=3, prompt_len=620, seed=1, dtype=torch.bfloat16)
    ids = batch["input_ids"]
    image = llava_config(shape).image_token_index
    assert ids.shape == (3, 620) and bool(batch["attention_mask"].all())
    assert bool((ids[:, PRE_PROMPT : PRE_PROMPT + 576] == image).all())
    assert int((ids == image).sum()) == 3 * 576
    assert batch["pixel_values"].shape == (3, 3, 48, 48) and batch["pixel_values"].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="no question tokens"):
        make_batch(shape, prompt_len=611)


def test_format_table_and_targets():
    rows = [
        {"label": "a", "budget": 64, "ratio_over_flops_ratio": 1.1, "overhead_pct_of_dense": 1.0, "x": None},
        {"label": "b", "budget": 64, "ratio_over_flops_ratio": 1.3, "overhead_pct_of_dense": 4.0, "x": 2.0},
        {"label": "c", "budget": 128, "ratio_over_flops_ratio": 9.0, "overhead_pct_of_dense": 9.0, "x": 2.0},
    ]
    for row in rows:
        row.update(net_ratio_over_flops_ratio=1.0, fixed_stack_ms=100.0)
    table = bench.format_table(rows, [("label", "config", "{}"), ("x", "x", "{:.1f}")])
    assert table.splitlines() == ["| config | x |", "|---|---|", "| a | - |", "| b | 2.0 |", "| c | 2.0 |"]
    lines = bench.check_targets(rows, 64)
    assert len(lines) == 2 and "1.00 net of the 100 ms fixed stack cost" in lines[0]
    assert "1.10 (ok" in lines[0] and "1.00 % of dense prefill (ok" in lines[0]
    assert "1.30 (MISSED" in lines[1] and "4.00 % of dense prefill (MISSED" in lines[1]


def test_bench_smoke_on_tiny(tmp_path, capsys):
    out = tmp_path / "tiny.json"
    argv = ["--shape", "tiny", "--repeats", "2", "--warmup", "0", "--budgets", "128", "--versions", "1.5"]
    argv += ["--new-tokens", "2", "--batches", "1", "2", "--out", str(out)]
    result = bench.main(argv)
    assert torch.get_num_threads() == 1
    written = json.loads(out.read_text())
    assert written["rows"] == json.loads(json.dumps(result["rows"]))
    rows = {row["label"]: row for row in written["rows"]}
    assert list(rows) == ["dense", "sparsevlm-1.5@128", "fastv@128"]
    assert len(written["runs"]) == 2 * 3 and all(row["repeats"] == 2 for row in rows.values())
    dense, sparse, fastv = rows["dense"], rows["sparsevlm-1.5@128"], rows["fastv@128"]
    assert dense["flops_ratio"] == 1.0 and dense["prefill_ratio"] == 1.0 and dense["equivalent_tokens"] == 576
    assert dense["paper_tflops"] == pytest.approx(32 * flops.paper_layer_flops(694, 128, 344) / 1e12)
    for row in (sparse, fastv):
        assert row["equivalent_tokens"] == pytest.approx(128, abs=1.5)
        assert 0 < row["flops_ratio"] < 0.5 and row["kv_mb"] < dense["kv_mb"]
        assert row["full_tflops"] > row["paper_tflops"] and row["prefill_ms"] > 0 and row["e2e_ms"] > row["ttft_ms"]
    assert sparse["overhead_flops_pct"] > fastv["overhead_flops_pct"] > 0
    throughput = {(row["label"], row["batch"]): row for row in written["throughput"]}
    assert set(throughput) == {("dense", 1), ("dense", 2), ("sparsevlm-1.5@128", 1), ("sparsevlm-1.5@128", 2)}
    assert throughput[("dense", 1)]["speedup_vs_batch1"] == 1.0
    printed = capsys.readouterr().out
    assert "| config | eq.tok | TFLOPs paper |" in printed and "sparsevlm-1.5@128: prefill ratio" in printed

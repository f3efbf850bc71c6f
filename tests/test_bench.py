"""Benchmark smoke test on the tiny shape, plus the shapes and table helpers it relies on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from eval import bench, report
from eval.shapes import PRE_PROMPT, SHAPES, llava_config, make_batch
from sparsevlm import flops
from sparsevlm.methods.sparsevlm import VERSION_DEFAULTS


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
    assert dense["equivalent_tokens"] == 576
    for row in (sparse, fastv):  # ratios to dense: FLOPs from the trace, prefill from CPU time (the shared-core clock)
        assert row["flops_ratio"] == pytest.approx(row["paper_tflops"] / dense["paper_tflops"])
        assert row["prefill_ratio"] == pytest.approx(row["prefill_cpu_ms"] / dense["prefill_cpu_ms"])
        assert row["decode_cpu_ms_per_token"] > 0 and row["decode_ratio_paired"]["median"] > 0
    assert dense["paper_tflops"] == pytest.approx(32 * flops.paper_layer_flops(694, 128, 344) / 1e12)
    for row in (sparse, fastv):
        assert row["equivalent_tokens"] == pytest.approx(128, abs=1.5)
        assert 0 < row["flops_ratio"] < 0.5 and row["kv_mb"] < dense["kv_mb"]
        assert row["full_tflops"] > row["paper_tflops"] and row["prefill_ms"] > 0 and row["e2e_ms"] > row["ttft_ms"]
    assert sparse["overhead_flops_pct"] > fastv["overhead_flops_pct"] > 0
    throughput = {(row["label"], row["batch"]): row for row in written["throughput"]}
    assert set(throughput) == {("dense", 1), ("dense", 2), ("sparsevlm-1.5@128", 1), ("sparsevlm-1.5@128", 2)}
    for label in ("dense", "sparsevlm-1.5@128"):  # the speed-up of batch 2 over batch 1 of the same method
        single, double = throughput[(label, 1)], throughput[(label, 2)]
        assert double["speedup_vs_batch1"] == pytest.approx(double["samples_per_s"] / single["samples_per_s"])
        for batch, row in ((1, single), (2, double)):  # a batch of b finishes b samples in its e2e time
            assert row["samples_per_s"] == pytest.approx(batch / (row["e2e_ms"] / 1e3))
    printed = capsys.readouterr().out
    assert "| config | eq.tok | TFLOPs paper |" in printed and "sparsevlm-1.5@128: prefill ratio" in printed


def test_paired_ratios_pair_each_repeat_with_dense_of_the_same_repeat():
    def runs(label: str, times: list[float]) -> list[dict]:
        return [{"label": label, "repeat": i, "timing": {"prefill_cpu_s": t}} for i, t in enumerate(times)]

    dense, pruned = runs("dense", [10.0, 20.0, 12.0]), runs("x", [5.0, 8.0, 9.0])
    ratio = bench.paired_ratios(pruned, dense, "prefill_cpu_s")
    assert ratio == {"median": pytest.approx(0.5), "min": pytest.approx(0.4), "max": pytest.approx(0.75)}
    assert bench._spread(pruned, "prefill_cpu_s", 1e3) == {"median": 8000.0, "min": 5000.0, "max": 9000.0}


def test_versions_come_from_the_library():
    assert bench.parse_args([]).versions == [v for v in VERSION_DEFAULTS if v != "video"]
    labels = [c.label for c in bench.configurations([16], ["2.0"], None, ("fastv", "random"))]
    assert labels == ["dense", "sparsevlm-2.0@16", "fastv@16", "random@16"]


def test_bench_on_a_checkpoint_times_the_bundled_questions(tmp_path):
    model = Path(__file__).resolve().parents[1] / "models" / "tiny-llava"
    if not (model / "model.safetensors").exists():
        pytest.skip("no committed tiny model")
    out = tmp_path / "tiny.json"
    argv = ["--model", str(model), "--batch", "2", "--repeats", "2", "--warmup", "0", "--budgets", "16"]
    argv += ["--versions", "1.5", "--baselines", "random", "--new-tokens", "3", "--out", str(out)]
    result = bench.main(argv)
    rows = {row["label"]: row for row in result["rows"]}
    assert list(rows) == ["dense", "sparsevlm-1.5@16", "random@16"] and result["meta"]["batch"] == 2
    assert rows["dense"]["equivalent_tokens"] == 144 and rows["random@16"]["equivalent_tokens"] == 16
    assert rows["dense"]["kv_mb_per_sample"] == pytest.approx(rows["dense"]["kv_mb"] / 2)
    timing = report.load_timing(out)  # the reporter reads it under the tables' row labels
    assert list(timing.frame.index) == ["dense", "sparsevlm-v1.5 @16", "random @16"] and timing.batch == 2
    assert timing.frame.loc["random @16", "prefill median"] == rows["random@16"]["prefill_time_ms"]["median"]


def test_every_registered_method_is_benchmarked_or_skipped_with_its_reason(tmp_path):
    argv = ["--shape", "tiny", "--repeats", "1", "--warmup", "0", "--budgets", "128", "--versions", "1.5"]
    result = bench.main([*argv, "--new-tokens", "1", "--baselines", "all", "--out", str(tmp_path / "all.json")])
    labels = [row["label"] for row in result["rows"]]
    # the tiny shape's one-layer tower lets ToMe merge at most half of 576 tokens: 128 is below its floor
    assert labels == ["dense", "sparsevlm-1.5@128", *(f"{m}@128" for m in bench.BASELINES if m != "tome")]
    assert len(result["skipped"]) == 1 and result["skipped"][0].startswith("skipped tome@128: ")
    measured = {"pooling@128": 121}  # pooling keeps the 24 x 24 grid's aspect: an 11 x 11 grid fits 128
    for row in result["rows"][1:]:  # every method's tokens and FLOPs come from its own trace
        assert row["equivalent_tokens"] == pytest.approx(measured.get(row["label"], 128), abs=1)
        assert 0 < row["flops_ratio"] < 0.35


def test_family_shapes_match_the_published_configs():
    from eval.shapes import family_config

    qwen = flops.text_shape(family_config(SHAPES["qwen2.5-vl-7b"]))
    assert (qwen.hidden, qwen.intermediate, qwen.n_layers, qwen.n_heads, qwen.n_kv_heads, qwen.vocab) == (
        3584, 18944, 28, 28, 4, 152064,
    )  # fmt: skip
    assert family_config(SHAPES["qwen2.5-vl-7b"]).text_config.rope_parameters["mrope_section"] == [16, 24, 24]
    vit = flops.vision_shape(family_config(SHAPES["qwen2.5-vl-7b"]))
    assert (vit.hidden, vit.intermediate, vit.depth, vit.full_attention_blocks) == (1280, 3420, 32, (7, 15, 23, 31))
    siglip = flops.vision_shape(family_config(SHAPES["llava-onevision-7b"]))
    assert (siglip.hidden, siglip.n_layers, siglip.n_patches, siglip.cls_token, siglip.pooling_head) == (
        1152, 26, 729, False, False,
    )  # fmt: skip
    video = family_config(SHAPES["video-llava-7b"])
    assert video.video_seq_length == 8 * 257 and flops.text_shape(video).hidden == 4096


@pytest.mark.slow
def test_family_bench_skips_contiguous_positions_on_mrope(tmp_path):
    argv = ["--shape", "cpu-qwen2.5-vl", "--repeats", "1", "--warmup", "0", "--budgets", "114", "--versions", "1.5"]
    argv += ["--positions", "default", "original", "--new-tokens", "1", "--out", str(tmp_path / "q.json")]
    result = bench.main(argv)
    rows = {row["label"]: row for row in result["rows"]}
    assert "sparsevlm-1.5+original@114" in rows and "sparsevlm-1.5@114" not in rows
    assert any(line.startswith("skipped sparsevlm-1.5@114: positions: 'contiguous'") for line in result["skipped"])
    assert rows["dense"]["equivalent_tokens"] == 1024
    assert rows["sparsevlm-1.5+original@114"]["equivalent_tokens"] == pytest.approx(114, abs=1)
    breakdown = rows["dense"]["full_tflops"] - rows["dense"]["paper_tflops"]
    assert breakdown > 0.01  # the Qwen ViT's 4096 patches are in the full column

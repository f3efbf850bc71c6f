"""Reporters on a small synthetic set of records: golden tables, Avg % by hand, failed and missing cells."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from eval import report
from eval.records import Efficiency, Provenance, RunRecord, write_record

GOLDEN = Path(__file__).parent / "golden"


def _record(
    method, budget, task, column, value, status="ok", finished="2026-11-23T10:00:00", version=None, tflops=None
):
    grid = {"model": "tiny", "method": method, "version": version, "budget": budget, "task": task}
    run_id = f"tiny_{method}_{budget}_{task}"
    provenance = Provenance(None, None, {}, "3.11", "cpu", "host", 0, {}, "test", finished, finished)
    return RunRecord(
        run_id=run_id,
        experiment="exp",
        grid=grid,
        config={},
        status=status,
        provenance=provenance,
        is_full_eval=True,
        primary={"column": column, "value": value if status == "ok" else None},
        efficiency=Efficiency(
            n_samples=4,
            equivalent_tokens=576.0 if budget is None else budget + 0.8,
            tflops_paper=tflops,
            prefill_ms_median=10.0 if budget is None else 5.0,
            e2e_ms_median=20.0,
            kv_cache_mb=2.0,
        ),
        error=None if status == "ok" else "RuntimeError: boom",
    )


@pytest.fixture
def records_dir(tmp_path: Path) -> Path:
    cells = [
        _record("dense", None, "pope", "POPE", 80.0, tflops=4.0),
        _record("dense", None, "mme", "MME", 1800.0, tflops=4.0),
        _record("sparsevlm", 64, "pope", "POPE", 60.0, version="1.5", tflops=1.0),
        _record("sparsevlm", 64, "mme", "MME", 1500.0, version="1.5", tflops=1.0),
        # a rerun of the same cell: the later ok record wins
        _record("sparsevlm", 64, "pope", "POPE", 72.0, version="1.5", finished="2026-11-23T11:00:00", tflops=1.0),
        _record("fastv", 64, "pope", "POPE", 40.0, tflops=1.2),
        _record("fastv", 64, "mme", "MME", None, status="failed", tflops=None),
        _record("random", 64, "pope", "POPE", 30.0, tflops=1.2),  # its MME cell is missing
    ]
    for i, record in enumerate(cells):
        write_record(record, tmp_path / "exp" / f"{record.run_id}-{i}" / "record.json")
    return tmp_path


def test_collect_dedupes_and_lists_failed_and_missing(records_dir):
    collection = report.collect(records_dir, "exp")
    assert len(collection.cells) == 6
    sparse_pope = collection.cells[(collection.cells.row == "sparsevlm-v1.5") & (collection.cells.column == "POPE")]
    assert sparse_pope.value.tolist() == [72.0]
    assert collection.failed.run_id.tolist() == ["tiny_fastv_64_mme"]
    assert collection.missing == [("random @64", "MME")]


def test_avg_percent_is_the_mean_of_per_benchmark_ratios_to_dense(records_dir):
    table = report.table1(report.collect(records_dir, "exp"), columns=["POPE", "MME"])
    assert table.index.tolist() == ["dense", "sparsevlm-v1.5 @64", "fastv @64", "random @64"]
    assert table.loc["dense", "Avg %"] == pytest.approx(100.0)
    assert table.loc["sparsevlm-v1.5 @64", "Avg %"] == pytest.approx((72 / 80 + 1500 / 1800) / 2 * 100)
    assert pd.isna(table.loc["fastv @64", "Avg %"])  # a failed benchmark gives no average, never a partial one
    assert table.loc["sparsevlm-v1.5 @64", "TFLOPs"] == 1.0


def test_reports_match_golden_files(records_dir, tmp_path):
    collection = report.collect(records_dir, "exp")
    paths = report.write_reports(collection, tmp_path / "out")
    for name in ("table1.md", "table1.csv", "efficiency.md"):
        assert paths[name].read_text() == (GOLDEN / name).read_text(), name
    assert paths["pareto.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["table1.tex"].read_text().startswith("\\begin{tabular}{lrrrrrr}")


def test_reference_rows_load_and_align(records_dir):
    reference = report.load_reference()
    assert {"row", "column", "value", "source", "confidence"} <= set(reference.columns)
    dense = reference[reference.row == "dense"].set_index("column")["value"]
    assert dense["GQA"] == 61.9 and dense["MME"] == 1862
    ours = report.table1(report.collect(records_dir, "exp"), columns=["POPE", "MME"])
    shown = report.with_reference(ours.loc[["dense"]], reference)
    assert shown.index.tolist() == [
        "dense (measured here)",
        "dense (published: sparsevlm_v1_projpage + sparsevlm_icml_t1_transcribed)",
        "dense (delta)",
    ]
    assert shown.iloc[1]["POPE"] == 85.9 and shown.iloc[2]["POPE"] == pytest.approx(80.0 - 85.9)

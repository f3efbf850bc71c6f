"""Reporters on a small synthetic set of records: golden tables, Avg % by hand, failed and missing cells."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from eval import report
from eval.records import Efficiency, Provenance, RunRecord, write_record

GOLDEN = Path(__file__).parent / "golden"


def _record(
    method,
    budget,
    task,
    column,
    value,
    status="ok",
    finished="2026-11-23T10:00:00",
    version=None,
    tflops=None,
    full=True,
    code="c0de",
    documents=None,
    missing=(),
    tokens=None,
):
    grid = {"model": "tiny", "method": method, "version": version, "budget": budget, "task": task}
    run_id = f"tiny_{method}_{budget}_{task}" + ("" if full else "_partial")
    provenance = Provenance(None, None, {}, "3.11", "cpu", "host", 0, {}, "test", finished, finished, code_hash=code)
    return RunRecord(
        run_id=run_id,
        experiment="exp",
        grid=grid,
        config={"task": {"column": column}},
        status=status,
        provenance=provenance,
        is_full_eval=full,
        documents=documents or {"n": 4, "n_failed": 0},
        primary={"column": column, "value": value, "missing": list(missing)} if status == "ok" else {},
        efficiency=Efficiency(
            n_samples=4,
            equivalent_tokens=tokens or (576.0 if budget is None else budget + 0.8),
            tflops_paper=tflops,
            prefill_ms_median=10.0 if budget is None else 5.0,
            e2e_ms_median=20.0,
            kv_cache_mb=2.0,
        ),
        error=None if status == "ok" else "RuntimeError: boom",
    )


def _write(tmp_path: Path, records: list[RunRecord]) -> Path:
    for i, record in enumerate(records):
        write_record(record, tmp_path / "exp" / f"{record.run_id}-{i}" / "record.json")
    return tmp_path


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
    return _write(tmp_path, cells)


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


def test_golden_table_checked_by_hand(records_dir, tmp_path):
    """The golden files' numbers, recomputed here from the records above without the reporter."""
    rows = {line.split(",")[0]: line.split(",") for line in (GOLDEN / "table1.csv").read_text().splitlines()}
    assert rows["method"] == ["method", "MME", "POPE", "Avg %", "TFLOPs", "Prefill ms", "Tokens", "notes"]
    assert float(rows["sparsevlm-v1.5 @64"][3]) == pytest.approx(100 * (72 / 80 + 1500 / 1800) / 2)
    assert rows["fastv @64"][1] == "" and rows["fastv @64"][3] == ""  # failed MME: no value, no average
    assert float(rows["dense"][6]) == 576.0 and float(rows["random @64"][6]) == 64.8


def test_empty_and_corrupt_records_are_skipped_with_a_warning_naming_them(records_dir):
    empty = records_dir / "exp" / "broken-empty" / "record.json"
    corrupt = records_dir / "exp" / "broken-corrupt" / "record.json"
    for path, content in ((empty, ""), (corrupt, '{"run_id": "x", "grid": ')):
        path.parent.mkdir(parents=True)
        path.write_text(content)
    collection = report.collect(records_dir, "exp")
    assert len(collection.cells) == 6
    assert f"unreadable record skipped: {empty}: empty file" in collection.warnings
    assert any(w.startswith(f"unreadable record skipped: {corrupt}: not valid JSON") for w in collection.warnings)


def test_a_failed_attempt_of_another_cell_never_hides_ok_cells(tmp_path):
    collection = report.collect(
        _write(
            tmp_path,
            [
                _record("dense", None, "pope", "POPE", 80.0),
                _record("fastv", 64, "pope", "POPE", 40.0),
                _record("random", 64, "pope", "POPE", None, status="failed"),  # failed: no primary at all
            ],
        ),
        "exp",
    )
    assert collection.missing == [] and collection.failed.label.tolist() == ["random @64"]
    assert set(collection.cells.column) == {"POPE"}


def test_a_partial_run_never_replaces_a_full_one_and_shows_its_n(tmp_path):
    records = [
        _record("dense", None, "pope", "POPE", 80.0, finished="2026-11-23T10:00:00"),
        _record("dense", None, "pope", "POPE", 99.0, finished="2026-11-23T12:00:00", full=False),
        _record("fastv", 64, "pope", "POPE", 50.0, full=False, documents={"n": 40, "n_failed": 2}),
    ]
    collection = report.collect(_write(tmp_path, records), "exp")
    table = report.table1(collection)
    assert table.loc["dense", "POPE"] == 80.0
    assert "partial run tiny_dense_None_pope_partial not shown: a full evaluation of that cell exists" in (
        collection.warnings
    )
    markdown = report.to_markdown(table, report.cell_notes(collection))
    assert "| fastv @64 | 50.0 (n=38; 2 failed) | 62.5 (from partial cells) |" in markdown
    assert "| dense | 80.0 | 100.0 |" in markdown


def test_mixed_code_versions_and_off_budget_rows_are_flagged(tmp_path):
    records = [
        _record("dense", None, "pope", "POPE", 80.0, code="aaaa"),
        _record("fastv", 64, "pope", "POPE", 50.0, code="bbbb", tokens=72.0),
    ]
    warnings = report.collect(_write(tmp_path, records), "exp").warnings
    assert (
        "mixed code versions: aaaa (1 cells), bbbb (1 cells); rerun with stale=rerun to make the table consistent"
        in (warnings)
    )
    assert "fastv @64: measured 72.0 equivalent tokens, not 64" in warnings


def test_a_value_without_some_of_its_metrics_says_so(tmp_path):
    records = [_record("dense", None, "mme", "MME", 680.0, missing=["mme/mme_cognition_score"])]
    collection = report.collect(_write(tmp_path, records), "exp")
    assert report.cell_notes(collection) == {("dense", "MME"): "without mme_cognition_score"}
    assert "| dense | 680.0 (without mme_cognition_score) |" in report.to_markdown(
        report.table1(collection), report.cell_notes(collection)
    )


def test_running_cells_are_reported(tmp_path):
    cell = _write(tmp_path, [_record("dense", None, "pope", "POPE", 80.0)]) / "exp" / "some-running-cell"
    cell.mkdir()
    (cell / "running.json").write_text("{}")
    assert "running or interrupted (no record yet): some-running-cell" in report.collect(tmp_path, "exp").warnings


def test_a_note_shared_by_a_whole_column_moves_to_its_header(tmp_path):
    records = [
        _record("dense", None, "pope", "POPE", 80.0, full=False, documents={"n": 40, "n_failed": 0}),
        _record("fastv", 64, "pope", "POPE", 50.0, full=False, documents={"n": 40, "n_failed": 0}),
        _record("dense", None, "mme", "MME", 700.0, full=False, documents={"n": 40, "n_failed": 0}),
        _record("fastv", 64, "mme", "MME", 600.0, full=False, documents={"n": 40, "n_failed": 1}),
    ]
    collection = report.collect(_write(tmp_path, records), "exp")
    table, notes = report.hoist_notes(report.table1(collection), report.cell_notes(collection))
    assert list(table.columns[:3]) == ["MME", "POPE (n=40)", "Avg % (of partial cells)"]
    assert notes == {("dense", "MME"): "n=40", ("fastv @64", "MME"): "n=39; 1 failed"}
    assert "| fastv @64 | 600.0 (n=39; 1 failed) | 50.0 | 74.1 (from partial cells) |" in report.to_markdown(
        table, notes
    )

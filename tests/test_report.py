"""Reporters on a small synthetic set of records: golden tables, Avg % by hand, failed and missing cells."""

from __future__ import annotations

import json
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
    stderr=None,
    batch=1,
    device="cpu",
    model="tiny",
    method_budget=None,
    llm_tokens=576.0,
):
    grid = {"model": model, "method": method, "version": version, "budget": budget, "task": task}
    if method_budget is not None:  # a FLOPs-matched cell
        grid |= {"budget_convention": "flops", "method_budget": method_budget}
    run_id = f"{model}_{method}_{budget}_{task}" + ("" if full else "_partial") + ("_flops" if method_budget else "")
    provenance = Provenance(None, None, {}, "3.11", device, "host", 0, {}, "test", finished, finished, code_hash=code)
    primary = {"column": column, "value": value, "missing": list(missing)}
    if stderr is not None:
        primary.update(stderr=stderr, stderr_method="jackknife over documents", stderr_missing=[])
    return RunRecord(
        run_id=run_id,
        experiment="exp",
        grid=grid,
        config={"task": {"column": column}, "batch_size": batch},
        status=status,
        provenance=provenance,
        is_full_eval=full,
        documents=documents or {"n": 4, "n_failed": 0},
        primary=primary if status == "ok" else {},
        efficiency=Efficiency(
            n_samples=4,
            equivalent_tokens=tokens or (576.0 if budget is None else budget + 0.8),
            llm_input_tokens=llm_tokens,
            tflops_paper=tflops,
            prefill_ms_median=10.0 if budget is None else 5.0,
            e2e_ms_median=20.0,
            kv_cache_mb=2.0 * batch,
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
        _record("dense", None, "pope", "POPE", 80.0, tflops=4.0, stderr=2.0),
        _record("dense", None, "mme", "MME", 1800.0, tflops=4.0, stderr=30.0),
        _record("sparsevlm", 64, "pope", "POPE", 60.0, version="1.5", tflops=1.0),
        _record("sparsevlm", 64, "mme", "MME", 1500.0, version="1.5", tflops=1.0, stderr=45.0),
        # a rerun of the same cell: the later ok record wins
        _record(
            "sparsevlm", 64, "pope", "POPE", 72.0, version="1.5", finished="2026-11-23T11:00:00", tflops=1.0, stderr=3.0
        ),
        _record("fastv", 64, "pope", "POPE", 40.0, tflops=1.2),  # no stderr: the table says so
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
    assert paths["table1.tex"].read_text().startswith("\\begin{tabular}{lrrrrrrr}")


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
    table = pd.read_csv(GOLDEN / "table1.csv", index_col=0)
    assert list(table.columns) == [
        "MME", "POPE", "Avg %", "TFLOPs", "Prefill ms (1 pass)", "Tokens", "LLM tokens",
        "MME stderr", "MME n", "POPE stderr", "POPE n", "Avg % stderr", "notes",
    ]  # fmt: skip
    sparse = table.loc["sparsevlm-v1.5 @64"]
    assert sparse["Avg %"] == pytest.approx(100 * (72 / 80 + 1500 / 1800) / 2)
    # delta method: each ratio s/d has variance (se_s/d)^2 + (s*se_d/d^2)^2; Avg % = 100 * mean of the two ratios
    variance = (3 / 80) ** 2 + (72 * 2 / 80**2) ** 2 + (45 / 1800) ** 2 + (1500 * 30 / 1800**2) ** 2
    assert sparse["Avg % stderr"] == pytest.approx(100 * variance**0.5 / 2)
    assert (sparse["MME stderr"], sparse["POPE stderr"], sparse["POPE n"]) == (45.0, 3.0, 4.0)
    assert table.loc["dense", "Avg % stderr"] == 0.0  # dense / dense is 1 by definition
    assert pd.isna(table.loc["fastv @64", "MME"]) and pd.isna(table.loc["fastv @64", "Avg %"])  # failed MME
    assert pd.isna(table.loc["fastv @64", "POPE stderr"]) and "no stderr" in table.loc["fastv @64", "notes"]
    assert table.loc["dense", "Tokens"] == 576.0 and table.loc["random @64", "Tokens"] == 64.8
    assert table.loc["random @64", "LLM tokens"] == 576.0  # pruned inside the LLM: all 576 enter it


def test_every_cell_shows_its_n_and_stderr_or_says_it_has_none(records_dir):
    collection = report.collect(records_dir, "exp")
    table = report.table1(collection, columns=["MME", "POPE"])
    errors = report.table1_errors(collection, table)
    hoisted, notes = report.hoist_notes(table, report.cell_notes(collection), report.incomplete_cells(collection))
    keys = dict(zip(hoisted.columns, table.columns, strict=True))
    markdown = report.to_markdown(hoisted, report.Marks(notes, errors, report.incomplete_cells(collection), keys))
    assert "| method | MME (n=4) | POPE (n=4) | Avg % |" in markdown  # n shared by a column: in its header
    assert "| sparsevlm-v1.5 @64 | 1500 ± 45 | 72.0 ± 3.0 | 86.7 ± 2.6 |" in markdown
    assert "| fastv @64 | — | 40.0 (no stderr) | — |" in markdown
    assert "| dense | 1800 ± 30 | 80.0 ± 2.0 | 100.0 ± 0.0 |" in markdown


def test_warnings_for_no_dense_row_mixed_batches_and_devices(tmp_path):
    records = [
        _record("fastv", 64, "pope", "POPE", 50.0, batch=1, stderr=1.0),
        _record("random", 64, "pope", "POPE", 40.0, batch=8, device="cuda:0", stderr=1.0),
    ]
    collection = report.collect(_write(tmp_path, records), "exp")
    warnings = collection.warnings
    assert any(w.startswith("no dense row: Avg %") for w in warnings)
    assert any(w.startswith("mixed batch sizes: 1 (1 cells), 8 (1 cells)") for w in warnings)
    assert any(w.startswith("mixed devices: cpu (1 cells), cuda:0 (1 cells)") for w in warnings)
    # KV MB is per sample: the batch-8 cell's 16 MB cache is 2 MB per sample, like the batch-1 cell's
    assert report.efficiency_table(collection)["KV MB/sample"].tolist() == [2.0, 2.0]
    clean = report.collect(_write(tmp_path / "clean", [_record("dense", None, "pope", "POPE", 80.0)]), "exp")
    assert clean.warnings == []


def test_reference_rows_of_another_model_are_not_printed(records_dir, tmp_path):
    collection = report.collect(records_dir, "exp")  # model "tiny"
    paths = report.write_reports(collection, tmp_path / "out", report.load_reference())
    table = paths["table1.md"].read_text()
    assert "(published:" not in table and "(delta)" not in table and "| dense |" in table
    assert "- warning: published reference rows not shown: they are for llava-1.5-7b, this table is tiny" in table
    seven = report.collect(
        _write(tmp_path / "7b", [_record("dense", None, "pope", "POPE", 80.0, model="llava-1.5-7b")]), "exp"
    )
    shown = report.write_reports(seven, tmp_path / "out7", report.load_reference())["table1.md"].read_text()
    assert "| dense (published: sparsevlm_v1_projpage + sparsevlm_icml_t1_transcribed) |" in shown


def test_a_row_off_its_budget_is_labelled_with_what_it_measured(tmp_path):
    records = [
        _record("dense", None, "pope", "POPE", 80.0, stderr=1.0),
        _record("sparsevlm", 16, "pope", "POPE", 50.0, version="1.0", tokens=5.2, stderr=1.0),
        _record("fastv", 16, "pope", "POPE", 50.0, tokens=16.3, stderr=1.0),  # within 2 %: labelled by its budget
    ]
    paths = report.write_reports(report.collect(_write(tmp_path, records), "exp"), tmp_path / "out")
    table = paths["table1.md"].read_text()
    assert "| sparsevlm-v1.0 @16 (measured 5.2) |" in table and "| fastv @16 |" in table
    assert "- warning: sparsevlm-v1.0 @16: measured 5.2 equivalent tokens, not 16" in table
    assert "sparsevlm-v1.0 @16 (measured 5.2)" in paths["efficiency.md"].read_text()


def test_zoo_rows_follow_the_registry_and_flops_matched_rows_are_labelled(tmp_path):
    records = [
        _record("divprune", 16, "pope", "POPE", 50.0, stderr=1.0, method_budget=21, tokens=21.0, llm_tokens=21.0),
        _record("divprune", 16, "pope", "POPE", 40.0, stderr=1.0, tokens=16.0, llm_tokens=16.0),
        _record("tome", 16, "pope", "POPE", 45.0, stderr=1.0),
        _record("cdpruner", 16, "pope", "POPE", 45.0, stderr=1.0),
        _record("fastv", 16, "pope", "POPE", 45.0, stderr=1.0),
        _record("dense", None, "pope", "POPE", 80.0, stderr=1.0),
    ]
    collection = report.collect(_write(tmp_path, records), "exp")
    table = report.table1(collection)
    # registration order, not alphabetical (cdpruner was registered after divprune)
    assert list(table.index) == ["dense", "fastv @16", "divprune @16", "divprune-flops @16", "cdpruner @16", "tome @16"]
    # a FLOPs-matched row is checked against the budget it ran (21), not the reference's (16)
    assert not any("divprune-flops" in w for w in collection.warnings)
    assert table.loc["divprune-flops @16", "LLM tokens"] == 21.0 and table.loc["fastv @16", "LLM tokens"] == 576.0


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
    markdown = report.to_markdown(
        table, report.Marks(report.cell_notes(collection), incomplete=report.incomplete_cells(collection))
    )
    assert "| fastv @64 | 50.0 (n=38; 2 failed; no stderr) | 62.5 (from partial cells) |" in markdown
    assert "| dense | 80.0 (n=4; no stderr) | 100.0 |" in markdown


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
    records = [_record("dense", None, "mme", "MME", 680.0, missing=["mme/mme_cognition_score"], stderr=20.0)]
    collection = report.collect(_write(tmp_path, records), "exp")
    assert report.cell_notes(collection) == {("dense", "MME"): "n=4; without mme_cognition_score"}
    assert "| dense | 680.0 (n=4; without mme_cognition_score) |" in report.to_markdown(
        report.table1(collection), report.Marks(report.cell_notes(collection))
    )


def test_running_cells_are_reported(tmp_path):
    cell = _write(tmp_path, [_record("dense", None, "pope", "POPE", 80.0)]) / "exp" / "some-running-cell"
    cell.mkdir()
    (cell / "running.json").write_text("{}")
    assert "running or interrupted (no record yet): some-running-cell" in report.collect(tmp_path, "exp").warnings


def test_a_note_shared_by_a_whole_column_moves_to_its_header(tmp_path):
    partial = {"full": False, "stderr": 1.0}
    records = [
        _record("dense", None, "pope", "POPE", 80.0, documents={"n": 40, "n_failed": 0}, **partial),
        _record("fastv", 64, "pope", "POPE", 50.0, documents={"n": 40, "n_failed": 0}, **partial),
        _record("dense", None, "mme", "MME", 700.0, documents={"n": 40, "n_failed": 0}, **partial),
        _record("fastv", 64, "mme", "MME", 600.0, documents={"n": 40, "n_failed": 1}, full=False),
    ]
    collection = report.collect(_write(tmp_path, records), "exp")
    incomplete = report.incomplete_cells(collection)
    table, notes = report.hoist_notes(report.table1(collection), report.cell_notes(collection), incomplete)
    assert list(table.columns[:3]) == ["MME", "POPE (n=40)", "Avg % (of partial cells)"]
    assert notes == {("dense", "MME"): "n=40", ("fastv @64", "MME"): "n=39; 1 failed; no stderr"}
    markdown = report.to_markdown(table, report.Marks(notes, incomplete=incomplete))
    assert "| fastv @64 | 600.0 (n=39; 1 failed; no stderr) | 50.0 | 74.1 (from partial cells) |" in markdown


def test_only_the_shared_part_of_a_note_is_hoisted():
    table = pd.DataFrame({"POPE": [80.0, 50.0]}, index=pd.Index(["dense", "fastv @64"], name="method"))
    notes = {("dense", "POPE"): "n=40", ("fastv @64", "POPE"): "n=40; no stderr"}
    hoisted, remaining = report.hoist_notes(table, notes)
    assert list(hoisted.columns) == ["POPE (n=40)"] and remaining == {("fastv @64", "POPE"): "no stderr"}
    markdown = report.to_markdown(hoisted, report.Marks(remaining, keys={"POPE (n=40)": "POPE"}))
    assert "| fastv @64 | 50.0 (no stderr) |" in markdown and "| dense | 80.0 |" in markdown


def _timing_json(path: Path, prefill: dict[str, list[float]]) -> Path:
    """An eval.bench JSON with the given prefill CPU times per repeat for each (method, version, budget) label."""
    rows = []
    dense = prefill["dense"]
    for key, times in prefill.items():
        method, version, budget = {"dense": ("dense", None, None), "sparse": ("sparsevlm", "1.5", 64)}[key]
        ratios = [t / d for t, d in zip(times, dense, strict=True)]
        spread = {"median": sorted(times)[1], "min": min(times), "max": max(times)}
        ratio = {"median": sorted(ratios)[1], "min": min(ratios), "max": max(ratios)}
        row = {"method": method, "version": version, "budget": budget, "batch": 8, "repeats": len(times)}
        for name in ("prefill", "e2e", "decode"):
            row[f"{name}_time_ms"], row[f"{name}_ratio_paired"] = spread, ratio
        rows.append(row)
    meta = {"device_type": "cpu", "batch": 8, "repeats": 3, "command": "python -m eval.bench --model m"}
    path.write_text(json.dumps({"meta": meta, "rows": rows}))
    return path


def test_timing_columns_come_from_repeated_interleaved_runs(records_dir, tmp_path):
    timing = report.load_timing(_timing_json(tmp_path / "t.json", {"dense": [10, 12, 11], "sparse": [5, 4, 6]}))
    collection = report.collect(records_dir, "exp")
    table = report.table1(collection, timing=timing)
    assert table.loc["dense", "Prefill CPU ms"] == 11 and table.loc["sparsevlm-v1.5 @64", "Prefill CPU ms"] == 5
    assert pd.isna(table.loc["fastv @64", "Prefill CPU ms"])  # not timed: no number, never a single pass instead
    paths = report.write_reports(collection, tmp_path / "out", timing=timing)
    markdown = paths["table1.md"].read_text()
    assert "| sparsevlm-v1.5 @64 | 1500 ± 45 | 72.0 ± 3.0 | 86.7 ± 2.6 | 1.00 | 5.00 (4.00–6.00) | 64.8 |" in markdown
    assert "median of 3 interleaved repeats (min–max)" in markdown
    efficiency = pd.read_csv(paths["efficiency.csv"], index_col=0)
    # paired per repeat: 5/10, 4/12, 6/11 -> median 0.5 (not the ratio of the medians, 5/11)
    assert efficiency.loc["sparsevlm-v1.5 @64", "prefill / dense"] == pytest.approx(0.5)
    assert efficiency.loc["sparsevlm-v1.5 @64", "prefill / dense max"] == pytest.approx(6 / 11)


def test_compare_reports_exact_on_scores_and_within_spread_on_times(records_dir, tmp_path):
    collection = report.collect(records_dir, "exp")

    def written(name: str, prefill: dict[str, list[float]]) -> Path:
        timing = report.load_timing(_timing_json(tmp_path / f"{name}.json", prefill))
        return report.write_reports(collection, tmp_path / name, timing=timing)["table1.md"].parent

    reference = written("reference", {"dense": [10, 12, 11], "sparse": [5, 4, 6]})
    fresh = written("slower", {"dense": [20, 24, 22], "sparse": [11, 12, 10]})
    assert report.compare_reports(fresh, reference) == []  # a machine twice as slow, the same ratios: agrees
    problems = report.compare_reports(written("off", {"dense": [10, 12, 11], "sparse": [9, 9.5, 10]}), reference)
    assert any("sparsevlm-v1.5 @64 / prefill / dense" in p and "outside the reference" in p for p in problems)
    csv = fresh / "table1.csv"
    csv.write_text(csv.read_text().replace("1500.0,72.0", "1500.0,72.5"))
    assert report.compare_reports(fresh, reference) == ["table1.csv: sparsevlm-v1.5 @64 / POPE: 72.5 != 72.0"]


def test_pareto_figure_explains_itself(records_dir):
    """Title (model, data, n), axis labels, budget labels, the dense line and 95 % error bars, as matplotlib objects."""
    collection = report.collect(records_dir, "exp")
    table = report.table1(collection)
    errors = report.table1_errors(collection, table)
    title = report.plot_title(collection, ["MME", "POPE"])
    assert title == "tiny: MME (n=4), POPE (n=4)"
    figure = report.pareto_figure(table, errors, title, "TFLOPs")
    ax = figure.axes[0]
    assert ax.get_title() == title and ax.get_xlabel().startswith("TFLOPs per sample")
    assert "95 %" in ax.get_ylabel()
    texts = [t.get_text() for t in ax.texts]
    assert "@64" in texts and any(t.startswith("dense") for t in texts)  # budget labels, the dense point
    assert [line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == "--"] == [100.0]  # the dense line
    (bars,) = ax.containers  # sparsevlm: the only pruned row with an Avg %
    assert bars.has_yerr and bars.get_label() == "sparsevlm-v1.5"
    segment = bars.lines[2][0].get_segments()[0]
    assert segment[1][1] - segment[0][1] == pytest.approx(
        2 * report.Z95 * errors.loc["sparsevlm-v1.5 @64", "Avg % stderr"]
    )
    pruned = table.loc[["sparsevlm-v1.5 @64"]]
    names = [f"m{i}" for i in range(11)] + ["m0-flops"]
    zoo = pd.concat([pruned.set_axis([f"{name} @64"], axis=0) for name in names] + [table.loc[["dense"]]])
    ax = report.pareto_figure(zoo, None, "t", "TFLOPs").axes[0]
    series = {bars.get_label(): bars.lines[0] for bars in ax.containers}
    assert len(series) == 12 and len({line.get_color() for line in series.values()}) == 11  # no colour reused
    assert series["m0-flops"].get_color() == series["m0"].get_color() and series["m0-flops"].get_linestyle() == ":"
    assert ax.get_legend().get_bbox_to_anchor().x0 > ax.get_position().x1 * 0.9  # beside the axes
    empty = report.pareto_figure(table.drop(index="dense").assign(**{"Avg %": float("nan")}), None, "t", "TFLOPs")
    assert "no dense row" in empty.axes[0].texts[0].get_text()


def _video_record(method, budget, value, score, judge="gpt", version=None, model="video-llava-7b"):
    record = _record(method, budget, "msvd_qa", "MSVD-QA", value, version=version, tflops=2.0, model=model)
    record.grid["judge"] = judge
    record.run_id += f"-{judge}"
    record.metrics = {"msvd_qa": {"accuracy": value} | ({} if score is None else {"score": score})}
    return record


def test_video_table_has_accuracy_score_avg_and_the_published_rows(tmp_path):
    records = [
        _video_record("dense", None, 70.0, 3.9),
        _video_record("sparsevlm", 194, 63.0, 3.7, version="video"),
        _video_record("fastv", 194, 56.0, None, judge="match"),  # another judge: its own, labelled column
    ]
    collection = report.collect(_write(tmp_path, records), "exp")
    table = report.video_table(collection)
    assert list(table.index) == ["dense", "sparsevlm-video @194", "fastv @194"]
    assert table.loc["sparsevlm-video @194", "MSVD-QA Acc"] == 63.0
    assert table.loc["sparsevlm-video @194", "MSVD-QA Score"] == 3.7
    assert table.loc["sparsevlm-video @194", "Avg %"] == pytest.approx(90.0)
    matched = "MSVD-QA (match, not comparable to the paper) Acc"
    assert table.loc["fastv @194", matched] == 56.0 and pd.isna(table.loc["dense", matched])
    assert pd.isna(table.loc["fastv @194", "Avg %"])  # no dense cell judged the same way: no average
    paths = report.write_reports(collection, tmp_path / "out", report.load_reference())
    video = paths["video.md"].read_text()
    assert "| dense (published: sparsevlm_icml_video) | 72.0 | 3.95 |" in video
    assert "| fastv @194 (published: sparsevlm_icml_video) | 58.3 | 3.62 |" in video
    assert "| sparsevlm-video @135 (published: sparsevlm_v1_video) | 68.2 | 3.90 |" in video  # arXiv v1, 135 tokens
    assert "not comparable to the paper" in paths["table1.md"].read_text()


def test_a_table_without_video_cells_writes_no_video_table(records_dir, tmp_path):
    paths = report.write_reports(report.collect(records_dir, "exp"), tmp_path / "out")
    assert "video.md" not in paths and not (tmp_path / "out" / "video.md").exists()

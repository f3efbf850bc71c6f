"""Reporters: record files -> Table 1, an efficiency table and a Pareto plot (pure functions of records).

python -m eval.report --experiment table1 [--results-dir results/runs] [--out results/table1] [--reference]
python -m eval.report --experiment demo --timing OUT/timing.json --out OUT --compare results/demo

Every accuracy cell shows its standard error (`primary.stderr` of its record) and the documents it covers (n); Avg %
carries the propagated standard error. Timing columns come from an interleaved, repeated benchmark of the same
configurations when one is given (`--timing`, written by `python -m eval.bench --model ...`: median and range over the
repeats), otherwise from the cells' single pass (said in the header). docs/runs.md section 6 describes the tables.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from eval.records import RecordError, load_record
from eval.registry import METHODS

METHOD_ORDER = tuple(METHODS)  # rows of one budget in registration order: dense, sparsevlm, fastv, random, the zoo
COLUMN_ORDER = ("GQA", "MMB", "MME", "POPE", "SQA", "VQAv2", "TextVQA", "SEED", "MM-Vet")  # the papers' Table 1
REFERENCE_CSV = Path(__file__).resolve().parents[1] / "results" / "reference" / "table1.csv"
VIDEO_REFERENCE_CSV = REFERENCE_CSV.with_name("video.csv")
NOT_COMPARABLE = " (match, not comparable to the paper)"  # the column suffix of every match-judged video cell
TOKEN_TOLERANCE = 0.02  # a row whose measured equivalent tokens differ from its budget by more is flagged
Z95 = 1.96  # the plot's error bars: a normal 95 % interval, value +- Z95 standard errors
GFLOPS_BELOW_TFLOPS = 0.1  # below 0.1 TFLOPs per sample (small models) FLOPs are shown in GFLOPs
UNKNOWN = "unknown"
TIMED = ("prefill", "e2e", "decode")  # the quantities a repeated benchmark times (decode: per new token)


@dataclass
class Collection:
    """The record chosen for each cell (a full evaluation over a partial one, then the latest), and every problem."""

    cells: pd.DataFrame
    failed: pd.DataFrame
    missing: list[tuple[str, str]] = field(default_factory=list)  # (row label, column)
    warnings: list[str] = field(default_factory=list)  # unreadable records, running cells, mixed code versions, ...


@dataclass
class Timing:
    """Repeated, interleaved timings of the table's configurations (an `eval.bench` JSON), one row per label.

    `frame` columns: <quantity> median/min/max for prefill, e2e and decode per token (ms; CPU time on CPU) and the
    paired ratios to dense (prefill / dense, ...), plus batch and repeats. `describe` is the legend line.
    """

    frame: pd.DataFrame
    cpu: bool
    batch: int
    repeats: int
    command: str

    @property
    def unit(self) -> str:
        """'CPU ms' (process CPU time, on CPU) or 'ms' (CUDA time)."""
        return "CPU ms" if self.cpu else "ms"


EFFICIENCY_KEYS = (
    "equivalent_tokens",
    "equivalent_tokens_input",
    "llm_input_tokens",
    "tflops_paper",
    "tflops_full",
    "prefill_ms_median",
    "e2e_ms_median",
    "kv_cache_mb",
    "kv_cache_mb_per_sample",
)


FLOPS_SUFFIX = "-flops"  # what _row_label appends for budget_convention=flops


def _row_label(
    method: str, version: str | None, convention: str | None = None, retain_ratio: float | None = None
) -> str:
    """'sparsevlm-v1.5', 'fastv', 'divprune-flops' (a FLOPs-matched cell: its budget is the reference's),
    'fastv-r0.111' (a cell budgeted per sample as a share of its visual tokens)."""
    label = f"{method}-{'' if version == 'video' else 'v'}{version}" if method == "sparsevlm" and version else method
    label = f"{label}-{convention}" if convention and convention != "native" else label
    return f"{label}-r{retain_ratio:g}" if retain_ratio is not None else label


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _row(data: dict) -> dict:
    """The fields of one record that tables need."""
    grid, eff, primary = data["grid"], data.get("efficiency") or {}, data.get("primary") or {}
    config = data.get("config") or {}
    config_task = config.get("task") or {}
    documents = data.get("documents") or {}
    provenance = data.get("provenance") or {}
    batch = config.get("batch_size")
    per_sample = eff.get("kv_cache_mb_per_sample")
    if per_sample is None and eff.get("kv_cache_mb") is not None and batch:  # older records: whole batches
        per_sample = eff["kv_cache_mb"] / batch
    judge = grid.get("judge")
    column = config_task.get("column") or primary.get("column") or grid["task"]
    scores = [m["score"] for m in (data.get("metrics") or {}).values() if _number(m.get("score")) is not None]
    return {
        "run_id": data["run_id"],
        "model": grid["model"],
        "method": grid["method"],
        "row": _row_label(grid["method"], grid.get("version"), grid.get("budget_convention"), grid.get("retain_ratio")),
        "budget": grid.get("budget"),
        "method_budget": grid.get("method_budget", grid.get("budget")),  # what ran: differs in a FLOPs-matched cell
        "task": grid["task"],
        # the column comes from the cell's config, so a failed record (no primary) still names its column; a
        # match-judged video cell's column says it is not the paper's metric, so the two judges never share one
        "column": column + (NOT_COMPARABLE if judge == "match" else ""),
        "value": primary.get("value"),
        "judge": judge,
        "score": sum(scores) / len(scores) if scores else None,  # the GPT judge's mean 0-5 score (video QA)
        "stderr": _number(primary.get("stderr")),
        "stderr_missing": tuple(primary.get("stderr_missing") or ()),
        "missing_metrics": tuple(primary.get("missing") or ()),
        "status": data["status"],
        "error": data.get("error"),
        "is_full_eval": bool(data.get("is_full_eval")),
        "n_docs": documents.get("n", eff.get("n_samples")),
        "n_failed": documents.get("n_failed", 0),
        "code_hash": provenance.get("code_hash"),
        "device": provenance.get("device") or UNKNOWN,
        "batch_size": batch if isinstance(batch, int) else UNKNOWN,
        "finished_at": provenance.get("finished_at") or "",
        **{k: eff.get(k) for k in EFFICIENCY_KEYS},
        "kv_cache_mb_per_sample": per_sample,
    }


def _read_rows(results_dir: Path, experiment: str) -> tuple[list[dict], list[str]]:
    """Rows of every readable record of an experiment, and a warning per unreadable one or per running cell."""
    rows, warnings = [], []
    for cell_dir in sorted(p for p in Path(results_dir, experiment).glob("*") if p.is_dir() and p.name[0] != "_"):
        path = cell_dir / "record.json"
        if not path.is_file():
            if (cell_dir / "running.json").is_file():
                warnings.append(f"running or interrupted (no record yet): {cell_dir.name}")
            continue
        try:
            rows.append(_row(load_record(path).to_dict()))
        except (OSError, RecordError, KeyError, TypeError) as err:
            warnings.append(f"unreadable record skipped: {path}: {err}")
    return rows, warnings


def collect(results_dir: Path, experiment: str) -> Collection:
    """Read an experiment's records; pick one ok record per cell; list failed and missing cells and every problem."""
    rows, warnings = _read_rows(results_dir, experiment)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return Collection(frame, frame, [], warnings)
    frame["label"] = [_label(r, b) for r, b in zip(frame.row, frame.budget, strict=True)]
    key = ["model", "label", "column"]
    ok = frame[frame.status == "ok"].sort_values(["is_full_eval", "finished_at"])
    chosen = ok.drop_duplicates(key, keep="last")
    full = set(zip(*(chosen[chosen.is_full_eval][k] for k in key), strict=True))
    for _, row in ok[~ok.run_id.isin(chosen.run_id) & ~ok.is_full_eval].iterrows():
        if (row.model, row.label, row.column) in full:
            warnings.append(f"partial run {row.run_id} not shown: a full evaluation of that cell exists")
    done = set(zip(chosen.label, chosen.column, strict=True))
    attempts = frame[frame.status != "ok"].sort_values("finished_at").drop_duplicates(key, keep="last")
    unanswered = [(lab, col) not in done for lab, col in zip(attempts.label, attempts.column, strict=True)]
    failed = attempts[pd.Series(unanswered, index=attempts.index, dtype=bool)]
    done |= set(zip(failed.label, failed.column, strict=True))
    columns = list(dict.fromkeys(frame.column))
    missing = sorted((lab, col) for lab in dict.fromkeys(frame.label) for col in columns if (lab, col) not in done)
    warnings += _consistency_warnings(chosen)
    return Collection(chosen.reset_index(drop=True), failed.reset_index(drop=True), missing, warnings)


def _mixed(cells: pd.DataFrame, key: str) -> str | None:
    """'a (3 cells), b (1 cells)' when the chosen cells disagree on `key`, else None."""
    counts = cells[key].astype(str).value_counts()
    return ", ".join(f"{v} ({n} cells)" for v, n in counts.items()) if len(counts) > 1 else None


def _consistency_warnings(cells: pd.DataFrame) -> list[str]:
    """No dense row, mixed code versions / batch sizes / devices / models, rows whose tokens are off their budget."""
    warnings = []
    if not (cells.method == "dense").any():
        warnings.append(
            "no dense row: Avg %, the ratios to dense and the plot's dense line need the dense cells "
            "(e.g. experiment=table1_dense or demo_dense into the same experiment)"
        )
    versions = cells.code_hash.fillna("unknown (schema 1)").value_counts()
    if len(versions) > 1:
        listed = ", ".join(f"{v} ({n} cells)" for v, n in versions.items())
        warnings.append(f"mixed code versions: {listed}; rerun with stale=rerun to make the table consistent")
    batches = _mixed(cells, "batch_size")
    if batches:
        warnings.append(
            f"mixed batch sizes: {batches}; a cell's timings are per batch, so its ms columns are not comparable "
            "across them (KV MB is per sample)"
        )
    devices = _mixed(cells, "device")
    if devices:
        warnings.append(f"mixed devices: {devices}; timings are not comparable across them")
    models = _mixed(cells, "model")
    if models:
        warnings.append(f"mixed models: {models}; Avg % compares each row with the dense row of its own label only")
    for label, tokens, budget in _off_budget(cells):
        warnings.append(f"{label}: measured {tokens:.1f} equivalent tokens, not {budget}")
    return warnings


def _off_budget(cells: pd.DataFrame) -> list[tuple[str, float, int]]:
    """(label, measured mean equivalent tokens, budget run) of rows more than TOKEN_TOLERANCE off the budget run."""
    pruned = cells[cells.method_budget.notna() & cells.equivalent_tokens.notna()]
    out = []
    for (label, budget), tokens in pruned.groupby(["label", "method_budget"]).equivalent_tokens.mean().items():
        if abs(tokens - budget) > TOKEN_TOLERANCE * budget:
            out.append((label, float(tokens), int(budget)))
    return out


def shown_labels(collection: Collection) -> dict[str, str]:
    """Row label -> the label printed: a row off its budget by more than TOKEN_TOLERANCE says what it measured."""
    return {label: f"{label} (measured {tokens:.1f})" for label, tokens, _ in _off_budget(collection.cells)}


def cell_notes(collection: Collection) -> dict[tuple[str, str], str]:
    """(row label, column) -> documents scored (n), failed documents, absent metrics, absent standard error."""
    notes = {}
    for _, cell in collection.cells.iterrows():
        parts = []
        if cell.n_docs is not None and not pd.isna(cell.n_docs):
            parts.append(f"n={int(cell.n_docs) - int(cell.n_failed or 0)}")
        if cell.n_failed:
            parts.append(f"{int(cell.n_failed)} failed")
        if cell.missing_metrics:
            parts.append("without " + ", ".join(m.split("/")[-1] for m in cell.missing_metrics))
        if cell.stderr is None or pd.isna(cell.stderr):
            missing = ", ".join(cell.stderr_missing)
            parts.append(f"no stderr for {missing}" if missing else "no stderr")
        if parts:
            notes[(cell.label, cell.column)] = "; ".join(parts)
    return notes


def incomplete_cells(collection: Collection) -> set[tuple[str, str]]:
    """Cells whose value covers less than the column's definition: a `limit` run, failed documents, absent metrics."""
    return {
        (cell.label, cell.column)
        for _, cell in collection.cells.iterrows()
        if not cell.is_full_eval or cell.n_failed or cell.missing_metrics
    }


def _budget(budget) -> int | None:
    return None if budget is None or pd.isna(budget) else int(budget)


def _label(row: str, budget) -> str:
    return row if _budget(budget) is None else f"{row} @{int(budget)}"


def _with_labels(cells: pd.DataFrame) -> pd.DataFrame:
    """Add the row label ('fastv @64') and a sort key (budget descending, dense first, then METHOD_ORDER)."""
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    return cells.assign(
        label=[_label(r, b) for r, b in zip(cells.row, cells.budget, strict=True)],
        order=[
            (_budget(b) is not None, -(_budget(b) or 0), rank.get(r.split("-")[0], len(rank)), r)
            for r, b in zip(cells.row, cells.budget, strict=True)
        ],
    )


def _sorted_labels(cells: pd.DataFrame) -> list[str]:
    return [label for _, label in sorted(set(zip(cells.order, cells.label, strict=True)))]


def flops_unit(collection: Collection) -> tuple[str, float]:
    """('TFLOPs', 1) or, for small models, ('GFLOPs', 1000): the unit FLOPs columns are shown in, and its factor."""
    largest = pd.to_numeric(collection.cells.get("tflops_paper"), errors="coerce").max()
    return ("GFLOPs", 1e3) if pd.notna(largest) and largest < GFLOPS_BELOW_TFLOPS else ("TFLOPs", 1.0)


def load_timing(path: Path) -> Timing:
    """An `eval.bench` JSON as a Timing: bench rows relabelled like the tables' rows ('sparsevlm-v1.5 @48')."""
    data = json.loads(Path(path).read_text())
    meta, rows = data["meta"], {}
    for row in data["rows"]:
        label = _label(_row_label(row["method"], row.get("version")), row["budget"])
        values = {"batch": row["batch"], "repeats": row["repeats"]}
        for name in TIMED:
            spread, ratio = row.get(f"{name}_time_ms") or {}, row.get(f"{name}_ratio_paired") or {}
            values.update({f"{name} {k}": spread.get(k) for k in ("median", "min", "max")})
            values.update({f"{name} / dense {k}": ratio.get(k) for k in ("median", "min", "max")})
        rows[label] = values
    frame = pd.DataFrame.from_dict(rows, orient="index")
    return Timing(
        frame, meta.get("device_type", "cpu") == "cpu", int(meta["batch"]), int(meta["repeats"]), meta["command"]
    )


def table1(collection: Collection, columns: list[str] | None = None, timing: Timing | None = None) -> pd.DataFrame:
    """Rows = method x budget (dense first), columns = benchmarks, Avg (% of dense, the paper's way), FLOPs, ms, tokens.

    The ms column is the repeated benchmark's median prefill when `timing` is given, else the cells' single pass.
    """
    cells = _with_labels(collection.cells)
    rank = {c: i for i, c in enumerate(COLUMN_ORDER)}
    columns = columns or sorted(dict.fromkeys(cells.column), key=lambda c: (rank.get(c, len(rank)), c))
    labels = _sorted_labels(cells)
    scores = cells.pivot_table(index="label", columns="column", values="value", aggfunc="last")
    scores = scores.reindex(index=labels, columns=columns)
    if "dense" in scores.index:
        ratios = scores[columns].div(scores.loc["dense", columns]) * 100
        scores["Avg %"] = ratios.mean(axis=1, skipna=False)  # any missing benchmark -> no average (never a partial one)
    else:
        scores["Avg %"] = float("nan")
    unit, factor = flops_unit(collection)
    means = ["tflops_paper", "prefill_ms_median", "equivalent_tokens", "llm_input_tokens"]
    effic = cells.groupby("label")[means].mean()
    table = scores.assign(**{unit: effic.tflops_paper.reindex(labels) * factor})
    if timing is None:
        table["Prefill ms (1 pass)"] = effic.prefill_ms_median.reindex(labels)
    else:
        table[f"Prefill {timing.unit}"] = timing.frame["prefill median"].reindex(labels)
    table["Tokens"] = effic.equivalent_tokens.reindex(labels)
    table["LLM tokens"] = effic.llm_input_tokens.reindex(labels)  # given to the LLM: fewer when pruned before it
    table.index.name = "method"
    return table


def table1_errors(collection: Collection, table: pd.DataFrame, timing: Timing | None = None) -> pd.DataFrame:
    """Per row: '<column> stderr' for each benchmark and Avg % (propagated), '<column> n', and a timing column's range.

    Avg % = 100 * mean_j(s_j / d_j) over benchmarks j; its standard error propagates each score's and the dense
    score's standard errors to first order (delta method), with the row and dense treated as independent (they are
    paired on the same documents, so this overstates it) and benchmarks as independent. Dense's own Avg % is 100 by
    definition: stderr 0.
    """
    cells = _with_labels(collection.cells)
    columns = [c for c in table.columns if c in set(cells.column)]
    stderr = cells.pivot_table(index="label", columns="column", values="stderr", aggfunc="last", dropna=False)
    stderr = stderr.reindex(index=table.index, columns=columns)
    scored = (cells.n_docs.fillna(0) - cells.n_failed.fillna(0)).astype(float)
    n = cells.assign(scored=scored).pivot_table(index="label", columns="column", values="scored", aggfunc="last")
    n = n.reindex(index=table.index, columns=columns)
    out = pd.DataFrame(index=table.index)
    for column in columns:
        out[f"{column} stderr"] = stderr[column]
        out[f"{column} n"] = n[column]
    avg = pd.Series(float("nan"), index=table.index)
    if "dense" in table.index and columns:
        dense, dense_se = table.loc["dense", columns], stderr.loc["dense", columns]
        for label in table.index:
            if label == "dense":
                avg[label] = 0.0 if pd.notna(table.loc[label, "Avg %"]) else float("nan")
                continue
            var = ((stderr.loc[label] / dense) ** 2 + (table.loc[label, columns] * dense_se / dense**2) ** 2).astype(
                float
            )
            avg[label] = 100 * math.sqrt(var.sum(skipna=False)) / len(columns)
    out["Avg % stderr"] = avg.where(table["Avg %"].notna())
    if timing is not None:
        for bound in ("min", "max"):
            out[f"Prefill {timing.unit} {bound}"] = timing.frame[f"prefill {bound}"].reindex(table.index)
    return out


def video_table(collection: Collection) -> pd.DataFrame:
    """The paper's video table: per dataset accuracy (%) and the GPT judge's score (0-5), Avg % of dense accuracy,
    FLOPs, the single-pass prefill time and the equivalent tokens. Video cells only (those with a judge)."""
    cells = _with_labels(collection.cells[collection.cells.judge.notna()])
    labels = _sorted_labels(cells)
    columns = list(dict.fromkeys(cells.column))
    table = pd.DataFrame(index=labels)
    accuracy = cells.pivot_table(index="label", columns="column", values="value", aggfunc="last").reindex(labels)
    score = cells.pivot_table(index="label", columns="column", values="score", aggfunc="last", dropna=False)
    for column in columns:
        table[f"{column} Acc"] = accuracy.get(column)
        table[f"{column} Score"] = score.reindex(labels).get(column)
    if "dense" in accuracy.index:  # over the datasets dense has (a match-judged column compares with a match dense)
        judged = [c for c in columns if pd.notna(accuracy.loc["dense", c])]
        table["Avg %"] = (accuracy[judged].div(accuracy.loc["dense", judged]) * 100).mean(axis=1, skipna=False)
    else:
        table["Avg %"] = float("nan")
    unit, factor = flops_unit(collection)
    effic = cells.groupby("label")[["tflops_paper", "prefill_ms_median", "equivalent_tokens"]].mean().reindex(labels)
    table[unit] = effic.tflops_paper * factor
    table["Prefill ms (1 pass)"] = effic.prefill_ms_median
    table["Tokens"] = effic.equivalent_tokens
    table.index.name = "method"
    return table


def video_reference_rows(table: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Every published row of the reference, in the table's columns, labelled with its source (side by side with
    ours; no deltas, since the published rows do not all say at which budget they were measured)."""
    rows = []
    for (row, source), published in reference.groupby(["row", "source"], sort=False):
        values = published.set_index("column")["value"].reindex(table.columns)
        rows.append(values.rename(f"{row} (published: {source})"))
    return pd.DataFrame(rows, columns=table.columns).rename_axis("method")


def efficiency_table(collection: Collection, timing: Timing | None = None) -> pd.DataFrame:
    """Per method x budget: tokens, FLOPs paper/full, KV MB per sample, times (repeated when `timing` is given),
    and ratios to dense (paired per repeat when `timing` is given)."""
    cells = _with_labels(collection.cells)
    unit, factor = flops_unit(collection)
    names = {
        "equivalent_tokens": "tokens",
        "equivalent_tokens_input": "tokens (input)",
        "llm_input_tokens": "LLM tokens",
        "tflops_paper": unit,
        "tflops_full": f"{unit} full",
        "kv_cache_mb_per_sample": "KV MB/sample",
    }
    labels = _sorted_labels(cells)
    table = cells.groupby("label")[list(names)].mean().rename(columns=names).reindex(labels)
    table[[unit, f"{unit} full"]] *= factor
    dense = "dense" in table.index
    table[f"{unit} / dense"] = table[unit] / table.loc["dense", unit] if dense else float("nan")
    if timing is None:
        times = cells.groupby("label")[["prefill_ms_median", "e2e_ms_median"]].mean().reindex(labels)
        table["prefill ms (1 pass)"], table["e2e ms (1 pass)"] = times.prefill_ms_median, times.e2e_ms_median
        for name in ("prefill ms (1 pass)", "e2e ms (1 pass)"):
            table[f"{name.split(' ')[0]} / dense"] = table[name] / table.loc["dense", name] if dense else float("nan")
    else:
        frame = timing.frame.reindex(labels)
        for name in TIMED:
            table[_time_column(name, timing)] = frame[f"{name} median"]
        for name in TIMED:
            table[f"{name} / dense"] = frame[f"{name} / dense median"]
    table.index.name = "method"
    return table


def _time_column(name: str, timing: Timing) -> str:
    """The efficiency table's column of a repeated timing: 'prefill CPU ms', 'decode CPU ms/tok', ..."""
    return f"{name} {timing.unit}" + ("/tok" if name == "decode" else "")


def efficiency_errors(table: pd.DataFrame, timing: Timing | None) -> pd.DataFrame:
    """The ranges (min, max over the repeats) of the efficiency table's timing and ratio columns."""
    out = pd.DataFrame(index=table.index)
    if timing is None:
        return out
    frame = timing.frame.reindex(table.index)
    for name in TIMED:
        for bound in ("min", "max"):
            out[f"{_time_column(name, timing)} {bound}"] = frame[f"{name} {bound}"]
            out[f"{name} / dense {bound}"] = frame[f"{name} / dense {bound}"]
    return out


def with_reference(table: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Interleave published rows (marked with their source) under ours, and the delta ours - published."""
    out = []
    for label, row in table.iterrows():
        out.append(row.rename(f"{label} (measured here)"))
        ref = reference[reference["row"] == label]
        if ref.empty:
            continue
        published = ref.set_index("column")["value"].reindex(table.columns)
        sources = " + ".join(dict.fromkeys(ref["source"]))
        out.append(published.rename(f"{label} (published: {sources})"))
        out.append((row - published).rename(f"{label} (delta)"))
    return pd.DataFrame(out).rename_axis("method")


def reference_for(collection: Collection, reference: pd.DataFrame) -> tuple[pd.DataFrame | None, str | None]:
    """The published rows of the collection's model, or (None, a warning) when they are another model's."""
    models = sorted(set(collection.cells.model))
    theirs = sorted(set(reference["model"])) if "model" in reference else [UNKNOWN]
    if len(models) == 1 and models[0] in theirs:
        return reference[reference["model"] == models[0]], None
    return None, (
        f"published reference rows not shown: they are for {', '.join(theirs)}, this table is {', '.join(models)} "
        "(deltas between different models mean nothing)"
    )


def load_reference(path: Path = REFERENCE_CSV) -> pd.DataFrame:
    """results/reference/table1.csv: model, row, column, value, source, confidence."""
    return pd.read_csv(path)


def _fmt(value) -> str:
    """A table value: '—' when missing; floats to about three significant figures (1234 -> '1234', 12.34 -> '12.3',
    1.234 -> '1.23', 0.0012 -> '0.0012')."""
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return "—"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}" if abs(value) >= 0.1 or value == 0 else f"{value:.2g}"
    return str(value)


def _fmt_like(value: float, reference: str) -> str:
    """`value` with as many decimals as the formatted `reference` (a standard error or range next to its value)."""
    decimals = len(reference.split(".")[1]) if "." in reference and "e" not in reference else 0
    return f"{value:.{decimals}f}"


def hoist_notes(
    table: pd.DataFrame, notes: dict[tuple[str, str], str], incomplete: set[tuple[str, str]] | None = None
) -> tuple[pd.DataFrame, dict[tuple[str, str], str]]:
    """Move the parts of a note shared by every value of a column (e.g. n=40) into its header; returns (table,
    the other notes). A note's parts are separated by '; '; what is not shared stays in its cell.

    Avg % is then labelled as computed from partial cells if a moved column's cells are `incomplete` (a `limit` run,
    failed documents, absent metrics).
    """
    remaining, renames, hoisted_incomplete = dict(notes), {}, False
    for column in table.columns:
        labels = [str(label) for label, value in table[column].items() if pd.notna(value)]
        parts = [notes.get((label, str(column)), "").split("; ") for label in labels]
        shared = [p for p in parts[0] if p and all(p in other for other in parts[1:])] if parts else []
        if not shared:
            continue
        renames[column] = f"{column} ({'; '.join(shared)})"
        for label, own in zip(labels, parts, strict=True):
            rest = "; ".join(p for p in own if p not in shared)
            if rest:
                remaining[(label, str(column))] = rest
            else:
                del remaining[(label, str(column))]
        hoisted_incomplete |= any((label, str(column)) in (incomplete or set()) for label in labels)
    if hoisted_incomplete and "Avg %" in table.columns:
        renames["Avg %"] = "Avg % (of partial cells)"
    return table.rename(columns=renames), remaining


def _uncertainty(errors: pd.DataFrame | None, label: str, column: str, text: str) -> str:
    """' ± 2.5' from '<column> stderr', or ' (380.1–402.3)' from '<column> min/max', formatted like the value."""
    if errors is None or label not in errors.index or text == "—":
        return ""
    se = errors.get(f"{column} stderr")
    if se is not None and pd.notna(se[label]):
        return f" ± {_fmt_like(float(se[label]), text)}"
    low, high = errors.get(f"{column} min"), errors.get(f"{column} max")
    if low is not None and high is not None and pd.notna(low[label]) and pd.notna(high[label]):
        return f" ({_fmt_like(float(low[label]), text)}–{_fmt_like(float(high[label]), text)})"
    return ""


def _cell_text(
    notes: dict[tuple[str, str], str],
    incomplete: set[tuple[str, str]],
    label: str,
    column: str,
    value,
    errors: pd.DataFrame | None = None,
    key: str | None = None,
) -> str:
    """A value, its standard error or range, and what it does not cover in parentheses; Avg % says when its row has
    incomplete cells whose note stayed in the row. `key` is the column's name in `errors` (before hoisting)."""
    text = _fmt(value)
    text += _uncertainty(errors, label, key or column, text)
    if column.startswith("Avg %") and text != "—" and any(k[0] == label and k in incomplete for k in notes):
        return f"{text} (from partial cells)"
    note = notes.get((label, key or column))
    return f"{text} ({note})" if note and text != "—" else text


@dataclass(frozen=True)
class Marks:
    """What a table prints beside its values: notes, ± standard errors or (min–max) ranges from `errors`, which cells
    are partial, and `keys`, a shown (hoisted) column name -> its name in `errors` and `notes`."""

    notes: dict[tuple[str, str], str] = field(default_factory=dict)
    errors: pd.DataFrame | None = None
    incomplete: set[tuple[str, str]] = field(default_factory=set)
    keys: dict[str, str] = field(default_factory=dict)

    def rows(self, table: pd.DataFrame) -> list[tuple[str, list[str]]]:
        """Each row's label and the printed text of its cells."""
        return [
            (
                str(label),
                [
                    _cell_text(self.notes, self.incomplete, str(label), str(c), v, self.errors, self.keys.get(str(c)))
                    for c, v in row.items()
                ],
            )
            for label, row in table.iterrows()
        ]


def to_markdown(table: pd.DataFrame, marks: Marks | None = None) -> str:
    """A GitHub Markdown table ('—' for missing cells, the marks beside the values)."""
    header = [table.index.name or ""] + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, cells in (marks or Marks()).rows(table):
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame, marks: Marks | None = None) -> str:
    """A booktabs tabular ('--' for missing cells; ±, ranges and notes as in the Markdown table)."""
    cols = [str(c).replace("%", r"\%") for c in table.columns]
    lines = [
        r"\begin{tabular}{l" + "r" * len(cols) + "}",
        r"\toprule",
        " & ".join(["Method", *cols]) + r" \\",
        r"\midrule",
    ]
    for label, cells in (marks or Marks()).rows(table):
        values = [c.replace("—", "--").replace("–", "--").replace("±", r"$\pm$") for c in cells]
        lines.append(" & ".join([label.replace("_", r"\_"), *values]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def plot_title(collection: Collection, columns: list[str]) -> str:
    """'<model>: <column> (n=40), ...': the model(s) and the documents behind each benchmark column."""
    cells = collection.cells
    parts = []
    for column in columns:
        scored = cells[cells.column == column].n_docs.fillna(0) - cells[cells.column == column].n_failed.fillna(0)
        counts = sorted({int(v) for v in scored})
        parts.append(f"{column} (n={'/'.join(map(str, counts))})" if counts else column)
    return f"{', '.join(sorted(set(cells.model)))}: " + ", ".join(parts)


def pareto_figure(table: pd.DataFrame, errors: pd.DataFrame | None, title: str, flops_column: str):
    """Avg % of dense against FLOPs per sample: one line per method, budget labels, 95 % error bars, a dense line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    methods: dict[str, list[tuple[float, float, float, str]]] = {}
    for label, row in table.iterrows():
        method, _, budget = str(label).partition(" @")
        se = errors.at[label, "Avg % stderr"] if errors is not None and "Avg % stderr" in errors else float("nan")
        x, y = row.get(flops_column), row.get("Avg %")
        if method != "dense" and pd.notna(x) and pd.notna(y):
            methods.setdefault(method, []).append((x, y, se, budget.split(" ")[0]))
    dense = table.loc["dense"] if "dense" in table.index else None
    if dense is not None and pd.notna(dense.get("Avg %")):
        ax.axhline(100.0, color="0.3", linestyle="--", linewidth=1, label="dense (100 %)")
        ax.plot([dense[flops_column]], [100.0], marker="*", markersize=11, color="0.3", linestyle="none")
        ax.annotate(f"dense, {_fmt(float(dense[flops_column]))}", (dense[flops_column], 100.0),
                    textcoords="offset points", xytext=(-6, 6), ha="right", fontsize=7)  # fmt: skip
    families = list(dict.fromkeys(m.removesuffix(FLOPS_SUFFIX) for m in methods))  # "fastv-flops" is fastv's colour
    palette = plt.get_cmap("tab10" if len(families) <= 10 else "tab20")
    for method, points in methods.items():
        points.sort()
        xs, ys, ses, budgets = zip(*points, strict=True)
        yerr = [Z95 * s if pd.notna(s) else 0.0 for s in ses]
        matched = method.endswith(FLOPS_SUFFIX)  # FLOPs-matched rows: the method's colour, dotted, square markers
        color = palette(families.index(method.removesuffix(FLOPS_SUFFIX)))
        bars = ax.errorbar(xs, ys, yerr=yerr, marker="s" if matched else "o", linestyle=":" if matched else "-",
                           capsize=3, label=method, color=color)  # fmt: skip
        for x, y, budget in zip(xs, ys, budgets, strict=True):
            ax.annotate(f"@{budget}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7,
                        color=bars.lines[0].get_color())  # fmt: skip
    ax.set_xlabel(f"{flops_column} per sample (prefill, paper formula)")
    ax.set_ylabel("Avg % of dense (error bars: 95 % interval)")
    ax.set_title(title, fontsize=8, wrap=True)
    ax.grid(alpha=0.3)
    if len(methods) > 8:  # a zoo: the legend beside the axes, not over the points
        fig.set_size_inches(8.4, 4.6)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    elif methods or dense is not None:
        ax.legend(fontsize=8)
    if not methods:
        reason = "no dense row: Avg % of dense is undefined" if dense is None else "no pruned row has Avg % and FLOPs"
        ax.text(0.5, 0.5, reason, ha="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig


def pareto_plot(
    table: pd.DataFrame, path: Path, errors: pd.DataFrame | None = None, title: str = "", flops_column: str = "TFLOPs"
) -> Path:
    """Write pareto_figure as a PNG."""
    import matplotlib.pyplot as plt

    fig = pareto_figure(table, errors, title, flops_column)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _legend(table: pd.DataFrame, timing: Timing | None, efficiency: bool = False) -> str:
    """What ±, n and the timing columns mean, under the table."""
    lines = []
    if not efficiency:
        lines.append(
            "± one standard error: jackknife over documents (scoring groups such as MME pairs left out whole) of the "
            "task's own metric, combined over a column's tasks like the value; Avg %: propagated (delta method). "
            "n: documents scored."
        )
        lines.append(
            "Tokens: equivalent visual tokens (the mean over decoder layers of the visual tokens leaving each, the "
            "paper's convention); LLM tokens: visual tokens given to the LLM; FLOPs: decoder prefill (the paper's "
            "formula). All three are measured from each document's trace."
        )
    if timing is not None:
        what = "process CPU time" if timing.cpu else "CUDA time"
        lines.append(
            f"Times: {what} of one batch of {timing.batch} bundled questions, median of {timing.repeats} interleaved "
            f"repeats (min–max); ratios to dense are paired per repeat. Prefill: the decoder stack; decode: per new "
            f"token. Measured by `{timing.command}`, not by the cells."
        )
    elif any("(1 pass)" in str(c) for c in table.columns):
        lines.append(
            "Times (1 pass): one timed pass per document (per batch), the median over a cell's documents; not "
            "repeated, so no spread (`python -m eval.bench --model ...` gives repeated timings)."
        )
    return ("\n" + "\n".join(f"{line}\n" for line in lines)) if lines else ""


def write_reports(
    collection: Collection, out_dir: Path, reference: pd.DataFrame | None = None, timing: Timing | None = None
) -> dict[str, Path]:
    """Table 1 (md/csv/tex), efficiency table (md/csv), Pareto PNG, and a list of failed/missing cells."""
    out_dir.mkdir(parents=True, exist_ok=True)
    published_asked = reference is not None
    if reference is not None:
        reference, warning = reference_for(collection, reference)
        if warning:
            collection.warnings.append(warning)
    main = table1(collection, timing=timing)
    errors = table1_errors(collection, main, timing)
    unit, _ = flops_unit(collection)
    notes, incomplete = cell_notes(collection), incomplete_cells(collection)
    renamed = shown_labels(collection)
    shown, shown_errors = main.rename(index=renamed), errors.rename(index=renamed)
    notes = {(renamed.get(label, label), column): note for (label, column), note in notes.items()}
    incomplete = {(renamed.get(label, label), column) for label, column in incomplete}
    if reference is not None:  # our rows are relabelled "<label> (measured here)"
        ours = {label: f"{label} (measured here)" for label in shown.index}
        shown = with_reference(shown, reference)
        shown_errors = shown_errors.rename(index=ours)
        notes = {(ours[label], column): note for (label, column), note in notes.items()}
        incomplete = {(ours[label], column) for label, column in incomplete}
    eff = efficiency_table(collection, timing)
    eff_errors = efficiency_errors(eff, timing).rename(index=renamed)
    eff = eff.rename(index=renamed)
    paths = {
        name: out_dir / name
        for name in ("table1.md", "table1.csv", "table1.tex", "efficiency.md", "efficiency.csv", "pareto.png")
    }
    hoisted, remaining = hoist_notes(shown, notes, incomplete)
    keys = dict(zip(map(str, hoisted.columns), map(str, shown.columns), strict=True))
    markdown = to_markdown(hoisted, Marks(remaining, shown_errors, incomplete, keys))
    paths["table1.md"].write_text(markdown + _legend(main, timing) + _problems(collection))
    row_notes = ["; ".join(f"{c}: {n}" for (r, c), n in notes.items() if r == label) for label in shown.index]
    shown.join(shown_errors).assign(notes=row_notes).to_csv(paths["table1.csv"])
    tex_table, tex_notes = hoist_notes(main.rename(index=renamed), notes, incomplete)
    tex_keys = dict(zip(map(str, tex_table.columns), map(str, main.columns), strict=True))
    tex_marks = Marks(tex_notes, errors.rename(index=renamed), incomplete, tex_keys)
    paths["table1.tex"].write_text(to_latex(tex_table, tex_marks))
    eff_markdown = to_markdown(eff, Marks(errors=eff_errors))
    paths["efficiency.md"].write_text(eff_markdown + _legend(eff, timing, efficiency=True))
    eff.join(eff_errors).to_csv(paths["efficiency.csv"])
    title = plot_title(collection, [c for c in main.columns if c in set(collection.cells.column)])
    pareto_plot(main, paths["pareto.png"], errors, title, unit)
    if collection.cells.judge.notna().any():
        paths.update(_write_video_table(collection, out_dir, published_asked))
    return paths


def _write_video_table(collection: Collection, out_dir: Path, with_reference: bool) -> dict[str, Path]:
    """video.md / video.csv: the video table, the published video rows under it when asked (same model only)."""
    renamed = shown_labels(collection)
    shown = video_table(collection).rename(index=renamed)
    notes = {(renamed.get(label, label), f"{col} Acc"): note for (label, col), note in cell_notes(collection).items()}
    if with_reference:
        published, warning = reference_for(collection, load_reference(VIDEO_REFERENCE_CSV))
        if warning:
            collection.warnings.append(warning.replace("published reference rows", "published video rows"))
        else:
            shown = pd.concat([shown, video_reference_rows(shown, published)])
    legend = (
        "\nAcc: % of answers the judge calls correct; Score: the GPT judge's mean 0-5 score (Video-ChatGPT protocol). "
        f"Columns marked{NOT_COMPARABLE} use the offline match judge instead. Avg %: accuracy as % of dense.\n"
    )
    paths = {"video.md": out_dir / "video.md", "video.csv": out_dir / "video.csv"}
    paths["video.md"].write_text(to_markdown(shown, Marks(notes)) + legend + _problems(collection))
    shown.to_csv(paths["video.csv"])
    return paths


def _problems(collection: Collection) -> str:
    """Failed and missing cells, then every warning, as a Markdown list under the table."""
    lines = []
    for _, row in collection.failed.iterrows():
        lines.append(f"- failed: {_label(row.row, row.budget)} / {row.column}: {row.error}")
    lines += [f"- missing: {label} / {column}" for label, column in collection.missing]
    lines += [f"- warning: {warning}" for warning in collection.warnings]
    return ("\n" + "\n".join(lines) + "\n") if lines else ""


# ------------------------------------------------------------------------------------------ comparing two reports
def is_timing_column(column: str) -> bool:
    """Whether a report column holds a time, a time ratio or its range (machine-dependent), not a count or score."""
    return "FLOPs" not in column and ("ms" in column.split() or "ms/tok" in column or "/ dense" in column)


def _plain(value: Any) -> str:
    """A CSV value as written: floats without numpy's wrapper."""
    return repr(float(value)) if isinstance(value, int | float) else repr(value)


def _same(a: Any, b: Any) -> bool:
    return (pd.isna(a) and pd.isna(b)) or a == b


def compare_reports(fresh: Path, reference: Path) -> list[str]:
    """Differences between two report directories (empty when they agree).

    Every column but the timing ones must be equal: accuracies, their standard errors and n, Avg % and its stderr,
    FLOPs, tokens, KV MB. A time ratio to dense must lie within the measured spread: the [min, max] over repeats of
    one run intersects that of the other. Absolute times depend on the machine and are not compared.
    """
    problems = []
    for name in ("table1.csv", "efficiency.csv"):
        new, old = (pd.read_csv(Path(d) / name, index_col=0) for d in (fresh, reference))
        if list(new.index) != list(old.index):
            problems.append(f"{name}: rows differ: {list(new.index)} vs {list(old.index)}")
            continue
        for column in (c for c in old.columns if c != "notes"):
            if column not in new.columns:
                problems.append(f"{name}: column {column!r} missing")
            elif not is_timing_column(column):
                problems += [
                    f"{name}: {label} / {column}: {_plain(new.at[label, column])} != {_plain(old.at[label, column])}"
                    for label in old.index
                    if not _same(new.at[label, column], old.at[label, column])
                ]
            elif column.endswith("/ dense"):
                bounds = (f"{column} min", f"{column} max")
                if not all(b in old.columns and b in new.columns for b in bounds):
                    continue
                for label in old.index:
                    (lo_new, hi_new), (lo_old, hi_old) = new.loc[label, list(bounds)], old.loc[label, list(bounds)]
                    if not any(pd.isna(v) for v in (lo_new, hi_new, lo_old, hi_old)) and (
                        hi_new < lo_old or hi_old < lo_new
                    ):
                        problems.append(
                            f"{name}: {label} / {column}: {lo_new:.3f}-{hi_new:.3f} is outside the reference's "
                            f"{lo_old:.3f}-{hi_old:.3f}"
                        )
    return problems


def main(argv: list[str] | None = None) -> None:
    """CLI: build every report of one experiment from its records (and compare with another report directory)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True, help="experiment name (directory under --results-dir)")
    parser.add_argument("--results-dir", type=Path, default=Path("results/runs"), help="where run records live")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default results/<experiment>)")
    parser.add_argument("--reference", action="store_true", help="print published rows and deltas next to ours")
    parser.add_argument("--timing", type=Path, default=None, help="an eval.bench JSON of the same configurations")
    parser.add_argument("--compare", type=Path, default=None, help="a report directory to compare with; exit 1 if off")
    args = parser.parse_args(argv)
    collection = collect(args.results_dir, args.experiment)
    if collection.cells.empty:
        raise SystemExit(f"no ok records under {args.results_dir / args.experiment}")
    out = args.out or Path("results") / args.experiment
    timing = load_timing(args.timing) if args.timing else None
    paths = write_reports(collection, out, load_reference() if args.reference else None, timing)
    print(paths["table1.md"].read_text())
    print(paths["efficiency.md"].read_text())
    for name, path in paths.items():
        print(f"wrote {name}: {path}")
    if args.compare is not None:
        problems = compare_reports(out, args.compare)
        for problem in problems:
            print(f"differs from {args.compare}: {problem}")
        if problems:
            raise SystemExit(1)
        print(f"matches {args.compare}: accuracies, stderr, n, tokens and FLOPs equal; timing ratios overlap")


if __name__ == "__main__":
    main()

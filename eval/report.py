"""Reporters: record files -> Table 1, an efficiency table and a Pareto plot (pure functions of records).

python -m eval.report --experiment table1 [--results-dir results/runs] [--out results/table1] [--reference]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from eval.records import RecordError, load_record

METHOD_ORDER = ("dense", "sparsevlm", "fastv", "random")
COLUMN_ORDER = ("GQA", "MMB", "MME", "POPE", "SQA", "VQAv2", "TextVQA", "SEED", "MM-Vet")  # the papers' Table 1
REFERENCE_CSV = Path(__file__).resolve().parents[1] / "results" / "reference" / "table1.csv"


@dataclass
class Collection:
    """The record chosen for each cell (a full evaluation over a partial one, then the latest), and every problem."""

    cells: pd.DataFrame
    failed: pd.DataFrame
    missing: list[tuple[str, str]] = field(default_factory=list)  # (row label, column)
    warnings: list[str] = field(default_factory=list)  # unreadable records, running cells, mixed code versions, ...


EFFICIENCY_KEYS = (
    "equivalent_tokens",
    "equivalent_tokens_input",
    "tflops_paper",
    "tflops_full",
    "prefill_ms_median",
    "e2e_ms_median",
    "kv_cache_mb",
)
TOKEN_TOLERANCE = 0.02  # a row whose measured equivalent tokens differ from its budget by more is flagged


def _row_label(method: str, version: str | None) -> str:
    return f"{method}-v{version}" if method == "sparsevlm" and version else method


def _row(data: dict) -> dict:
    """The fields of one record that tables need."""
    grid, eff, primary = data["grid"], data.get("efficiency") or {}, data.get("primary") or {}
    config_task = (data.get("config") or {}).get("task") or {}
    documents = data.get("documents") or {}
    provenance = data.get("provenance") or {}
    return {
        "run_id": data["run_id"],
        "model": grid["model"],
        "method": grid["method"],
        "row": _row_label(grid["method"], grid.get("version")),
        "budget": grid.get("budget"),
        "task": grid["task"],
        # the column comes from the cell's config, so a failed record (no primary) still names its column
        "column": config_task.get("column") or primary.get("column") or grid["task"],
        "value": primary.get("value"),
        "missing_metrics": tuple(primary.get("missing") or ()),
        "status": data["status"],
        "error": data.get("error"),
        "is_full_eval": bool(data.get("is_full_eval")),
        "n_docs": documents.get("n", eff.get("n_samples")),
        "n_failed": documents.get("n_failed", 0),
        "code_hash": provenance.get("code_hash"),
        "finished_at": provenance.get("finished_at") or "",
        **{k: eff.get(k) for k in EFFICIENCY_KEYS},
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


def _consistency_warnings(cells: pd.DataFrame) -> list[str]:
    """Mixed code versions, and rows whose measured tokens are off their budget label."""
    warnings = []
    versions = cells.code_hash.fillna("unknown (schema 1)").value_counts()
    if len(versions) > 1:
        listed = ", ".join(f"{v} ({n} cells)" for v, n in versions.items())
        warnings.append(f"mixed code versions: {listed}; rerun with stale=rerun to make the table consistent")
    pruned = cells[cells.budget.notna() & cells.equivalent_tokens.notna()]
    for (label, budget), tokens in pruned.groupby(["label", "budget"]).equivalent_tokens.mean().items():
        if abs(tokens - budget) > TOKEN_TOLERANCE * budget:
            warnings.append(f"{label}: measured {tokens:.1f} equivalent tokens, not {int(budget)}")
    return warnings


def cell_notes(collection: Collection) -> dict[tuple[str, str], str]:
    """(row label, column) -> what the value does not cover: partial evaluation (n), failed documents, metrics."""
    notes = {}
    for _, cell in collection.cells.iterrows():
        parts = []
        if not cell.is_full_eval and cell.n_docs is not None and not pd.isna(cell.n_docs):
            parts.append(f"n={int(cell.n_docs) - int(cell.n_failed or 0)}")
        if cell.n_failed:
            parts.append(f"{int(cell.n_failed)} failed")
        if cell.missing_metrics:
            parts.append("without " + ", ".join(m.split("/")[-1] for m in cell.missing_metrics))
        if parts:
            notes[(cell.label, cell.column)] = "; ".join(parts)
    return notes


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
            (-(_budget(b) or 10**6), rank.get(r.split("-")[0], 99), r)
            for r, b in zip(cells.row, cells.budget, strict=True)
        ],
    )


def _sorted_labels(cells: pd.DataFrame) -> list[str]:
    return [label for _, label in sorted(set(zip(cells.order, cells.label, strict=True)))]


def table1(collection: Collection, columns: list[str] | None = None) -> pd.DataFrame:
    """Rows = method x budget (dense first), columns = benchmarks, Avg (% of dense, the paper's way), TFLOPs, ms."""
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
    names = {"tflops_paper": "TFLOPs", "prefill_ms_median": "Prefill ms", "equivalent_tokens": "Tokens"}
    effic = cells.groupby("label")[list(names)].mean().rename(columns=names)
    table = scores.join(effic)
    table.index.name = "method"
    return table


def efficiency_table(collection: Collection) -> pd.DataFrame:
    """Per method x budget: equivalent tokens, TFLOPs paper/full, prefill and e2e ms, KV MB, ratios to dense."""
    cells = _with_labels(collection.cells)
    names = {
        "equivalent_tokens": "tokens",
        "equivalent_tokens_input": "tokens (input)",
        "tflops_paper": "TFLOPs",
        "tflops_full": "TFLOPs full",
        "prefill_ms_median": "prefill ms",
        "e2e_ms_median": "e2e ms",
        "kv_cache_mb": "KV MB",
    }
    table = cells.groupby("label")[list(names)].mean().rename(columns=names).reindex(_sorted_labels(cells))
    if "dense" in table.index:
        for name in ("TFLOPs", "prefill ms", "e2e ms"):
            table[f"{name} / dense"] = table[name] / table.loc["dense", name]
    table.index.name = "method"
    return table


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


def load_reference(path: Path = REFERENCE_CSV) -> pd.DataFrame:
    """results/reference/table1.csv: row, column, value, source, confidence."""
    return pd.read_csv(path)


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return "—"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}" if abs(value) >= 0.1 or value == 0 else f"{value:.2g}"
    return str(value)


def hoist_notes(
    table: pd.DataFrame, notes: dict[tuple[str, str], str]
) -> tuple[pd.DataFrame, dict[tuple[str, str], str]]:
    """Move a note shared by every value of a column (e.g. all n=40) into its header; returns (table, other notes).

    Avg % is then labelled as computed from partial cells if any moved note is a partial evaluation.
    """
    remaining, renames = dict(notes), {}
    for column in table.columns:
        labels = [str(label) for label, value in table[column].items() if pd.notna(value)]
        shared = {notes.get((label, str(column))) for label in labels}
        if labels and len(shared) == 1 and None not in shared:
            renames[column] = f"{column} ({shared.pop()})"
            for label in labels:
                del remaining[(label, str(column))]
    if any(name.endswith(")") and "(n=" in name for name in renames.values()) and "Avg %" in table.columns:
        renames["Avg %"] = "Avg % (of partial cells)"
    return table.rename(columns=renames), remaining


def _cell_text(table: pd.DataFrame, notes: dict[tuple[str, str], str], label: str, column: str, value) -> str:
    """A formatted value with what it does not cover in parentheses; Avg % says when its row has such cells."""
    text = _fmt(value)
    if column.startswith("Avg %") and text != "—" and any(key[0] == label for key in notes):
        return f"{text} (from partial cells)"
    note = notes.get((label, column))
    return f"{text} ({note})" if note and text != "—" else text


def to_markdown(table: pd.DataFrame, notes: dict[tuple[str, str], str] | None = None) -> str:
    """A GitHub Markdown table ('—' for missing cells; a note in parentheses for partial or flagged cells)."""
    notes = notes or {}
    header = [table.index.name or ""] + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, row in table.iterrows():
        cells = [_cell_text(table, notes, str(label), str(c), v) for c, v in row.items()]
        lines.append("| " + " | ".join([str(label), *cells]) + " |")
    return "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame, notes: dict[tuple[str, str], str] | None = None) -> str:
    """A booktabs tabular ('--' for missing cells; notes in parentheses as in the Markdown table)."""
    notes = notes or {}
    cols = [str(c).replace("%", r"\%") for c in table.columns]
    lines = [
        r"\begin{tabular}{l" + "r" * len(cols) + "}",
        r"\toprule",
        " & ".join(["Method", *cols]) + r" \\",
        r"\midrule",
    ]
    for label, row in table.iterrows():
        values = [_cell_text(table, notes, str(label), str(c), v).replace("—", "--") for c, v in row.items()]
        lines.append(" & ".join([str(label).replace("_", r"\_"), *values]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def pareto_plot(table: pd.DataFrame, path: Path) -> Path:
    """Accuracy (Avg % of dense) against TFLOPs, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    methods = {}
    for label, row in table.iterrows():
        methods.setdefault(str(label).split(" @")[0], []).append((row.get("TFLOPs"), row.get("Avg %")))
    plotted = False
    for method, points in methods.items():
        points = sorted((x, y) for x, y in points if pd.notna(x) and pd.notna(y))
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=method)
            plotted = True
    ax.set_xlabel("TFLOPs (prefill, paper formula)")
    ax.set_ylabel("Avg % of dense")
    ax.grid(alpha=0.3)
    if plotted:
        ax.legend()
    else:  # e.g. a dense score of 0 leaves every Avg % undefined
        ax.text(0.5, 0.5, "no row has both Avg % and TFLOPs", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_reports(collection: Collection, out_dir: Path, reference: pd.DataFrame | None = None) -> dict[str, Path]:
    """Table 1 (md/csv/tex), efficiency table (md/csv), Pareto PNG, and a list of failed/missing cells."""
    out_dir.mkdir(parents=True, exist_ok=True)
    main = table1(collection)
    shown = with_reference(main, reference) if reference is not None else main
    eff = efficiency_table(collection)
    paths = {
        "table1.md": out_dir / "table1.md",
        "table1.csv": out_dir / "table1.csv",
        "table1.tex": out_dir / "table1.tex",
        "efficiency.md": out_dir / "efficiency.md",
        "efficiency.csv": out_dir / "efficiency.csv",
        "pareto.png": out_dir / "pareto.png",
    }
    notes = cell_notes(collection)
    if reference is not None:  # our rows are relabelled "<label> (measured here)"
        notes = {(f"{label} (measured here)", column): note for (label, column), note in notes.items()}
    paths["table1.md"].write_text(to_markdown(*hoist_notes(shown, notes)) + _problems(collection))
    row_notes = ["; ".join(f"{c}: {n}" for (r, c), n in notes.items() if r == label) for label in shown.index]
    shown.assign(notes=row_notes).to_csv(paths["table1.csv"])
    paths["table1.tex"].write_text(to_latex(*hoist_notes(main, notes)))
    paths["efficiency.md"].write_text(to_markdown(eff))
    eff.to_csv(paths["efficiency.csv"])
    pareto_plot(main, paths["pareto.png"])
    return paths


def _problems(collection: Collection) -> str:
    """Failed and missing cells, then every warning, as a Markdown list under the table."""
    lines = []
    for _, row in collection.failed.iterrows():
        lines.append(f"- failed: {_label(row.row, row.budget)} / {row.column}: {row.error}")
    lines += [f"- missing: {label} / {column}" for label, column in collection.missing]
    lines += [f"- warning: {warning}" for warning in collection.warnings]
    return ("\n" + "\n".join(lines) + "\n") if lines else ""


def main(argv: list[str] | None = None) -> None:
    """CLI: build every report of one experiment from its records."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True, help="experiment name (directory under --results-dir)")
    parser.add_argument("--results-dir", type=Path, default=Path("results/runs"), help="where run records live")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default results/<experiment>)")
    parser.add_argument("--reference", action="store_true", help="print published rows and deltas next to ours")
    args = parser.parse_args(argv)
    collection = collect(args.results_dir, args.experiment)
    if collection.cells.empty:
        raise SystemExit(f"no ok records under {args.results_dir / args.experiment}")
    paths = write_reports(
        collection, args.out or Path("results") / args.experiment, load_reference() if args.reference else None
    )
    print(paths["table1.md"].read_text())
    print(paths["efficiency.md"].read_text())
    for name, path in paths.items():
        print(f"wrote {name}: {path}")


if __name__ == "__main__":
    main()

"""Reporters: record files -> Table 1, an efficiency table and a Pareto plot (pure functions of records).

python -m eval.report --experiment table1 [--results-dir results/runs] [--out results/table1] [--reference]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

METHOD_ORDER = ("dense", "sparsevlm", "fastv", "random")
COLUMN_ORDER = ("GQA", "MMB", "MME", "POPE", "SQA", "VQAv2", "TextVQA", "SEED", "MM-Vet")  # the papers' Table 1
REFERENCE_CSV = Path(__file__).resolve().parents[1] / "results" / "reference" / "table1.csv"


@dataclass
class Collection:
    """The latest ok record per cell, plus what is failed or missing."""

    cells: pd.DataFrame
    failed: pd.DataFrame
    missing: list[tuple[str, str]] = field(default_factory=list)  # (row label, column)


def _row_label(method: str, version: str | None) -> str:
    return f"{method}-v{version}" if method == "sparsevlm" and version else method


def collect(results_dir: Path, experiment: str) -> Collection:
    """Glob an experiment's records; keep the latest ok record per run id; list failed and missing cells."""
    rows = []
    for path in sorted(Path(results_dir, experiment).glob("*/record.json")):
        data = json.loads(path.read_text())
        grid, eff, primary = data["grid"], data.get("efficiency") or {}, data.get("primary") or {}
        rows.append(
            {
                "run_id": data["run_id"],
                "model": grid["model"],
                "method": grid["method"],
                "row": _row_label(grid["method"], grid.get("version")),
                "budget": grid.get("budget"),
                "task": grid["task"],
                "column": primary.get("column") or grid["task"],
                "value": primary.get("value"),
                "status": data["status"],
                "error": data.get("error"),
                "is_full_eval": data.get("is_full_eval"),
                "finished_at": (data.get("provenance") or {}).get("finished_at") or "",
                **{
                    k: eff.get(k)
                    for k in (
                        "equivalent_tokens",
                        "equivalent_tokens_input",
                        "tflops_paper",
                        "tflops_full",
                        "prefill_ms_median",
                        "e2e_ms_median",
                        "kv_cache_mb",
                    )
                },
            }
        )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return Collection(frame, frame)
    frame = frame.sort_values("finished_at")
    ok = frame[frame.status == "ok"].drop_duplicates("run_id", keep="last")
    key = ["model", "row", "budget", "column"]
    ok = ok.drop_duplicates(key, keep="last")
    failed = frame[(frame.status != "ok") & ~frame.run_id.isin(ok.run_id)].drop_duplicates("run_id", keep="last")
    done = {(r, _budget(b), c) for r, b, c in zip(ok.row, ok.budget, ok.column, strict=True)}
    done |= {(r, _budget(b), c) for r, b, c in zip(failed.row, failed.budget, failed.column, strict=True)}
    columns = list(dict.fromkeys(frame.column))
    labels = {(r, _budget(b)) for r, b in zip(frame.row, frame.budget, strict=True)}
    missing = sorted((_label(r, b), c) for r, b in labels for c in columns if (r, b, c) not in done)
    return Collection(ok.reset_index(drop=True), failed.reset_index(drop=True), missing)


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


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table ('—' for missing cells)."""
    header = [table.index.name or ""] + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, row in table.iterrows():
        lines.append("| " + " | ".join([str(label)] + [_fmt(v) for v in row]) + " |")
    return "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame) -> str:
    """A booktabs tabular ('--' for missing cells)."""
    cols = [str(c).replace("%", r"\%") for c in table.columns]
    lines = [
        r"\begin{tabular}{l" + "r" * len(cols) + "}",
        r"\toprule",
        " & ".join(["Method", *cols]) + r" \\",
        r"\midrule",
    ]
    for label, row in table.iterrows():
        values = [_fmt(v).replace("—", "--") for v in row]
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
    paths["table1.md"].write_text(to_markdown(shown) + _problems(collection))
    shown.to_csv(paths["table1.csv"])
    paths["table1.tex"].write_text(to_latex(main))
    paths["efficiency.md"].write_text(to_markdown(eff))
    eff.to_csv(paths["efficiency.csv"])
    pareto_plot(main, paths["pareto.png"])
    return paths


def _problems(collection: Collection) -> str:
    lines = []
    for _, row in collection.failed.iterrows():
        lines.append(f"- failed: {_label(row.row, row.budget)} / {row.column}: {row.error}")
    lines += [f"- missing: {label} / {column}" for label, column in collection.missing]
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

"""Build results/reference/table1.csv (published Table-1 rows, in our model/row/column labels) from paper numbers.

python scripts/build_reference.py PAPER_NUMBERS.csv

The input has one published number per line, columns source, paper_version, model, method, budget, benchmark, metric,
value, confidence (docs/reference-numbers.md describes them and where the committed numbers come from).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

# (source id in paper-numbers.csv, paper method, our row label, what to take); each cell keeps its own source.
ROWS = [
    ("sparsevlm_v1_projpage", "Vanilla", "dense", "scores"),
    ("sparsevlm_icml_t1_transcribed", "Vanilla", "dense", "tflops"),
    ("sparsevlm_icml_t1_transcribed", "SparseVLM", "sparsevlm-v1.5", "all"),
    ("pio_fvlm_readme", "SparseVLM", "sparsevlm-v1.5", "scores"),
    ("sparsevlm_v1_projpage", "SparseVLM", "sparsevlm-v1.0", "scores"),
    ("sparsevlm_v1_projpage", "FastV", "fastv", "scores"),
    ("sparsevlm_v1_projpage", "ToMe", "tome", "scores"),
    ("visionzip_t1", "VisionZip", "visionzip", "scores"),
    ("dart_t1", "DART", "dart", "scores"),
    ("dart_t1", "PDrop (re-run by DART)", "pdrop", "scores"),
]
COLUMNS = {"GQA", "MMB", "MME", "POPE", "SQA", "TextVQA", "VQAv2", "SEED"}
MODELS = {"LLaVA-1.5-7B": "llava-1.5-7b"}  # paper model name -> our conf/model name (the reporter matches on it)


def build(source_csv: Path, out: Path) -> int:
    """Write the reference CSV; returns the number of rows written."""
    rows = []
    with open(source_csv) as handle:
        for item in csv.DictReader(handle):
            model = MODELS.get(item["model"])
            if model is None:
                continue
            for source, method, label, kinds in ROWS:
                if item["source"] != source or item["method"] != method:
                    continue
                budget = int(item["budget"]) if item["budget"].isdigit() else None
                row = label if label == "dense" else f"{label} @{budget}"
                if item["benchmark"] in COLUMNS and kinds in ("scores", "all"):
                    rows.append((model, row, item["benchmark"], item["value"], source, item["confidence"]))
                elif item["metric"] == "tflops" and item["benchmark"] == "efficiency" and kinds in ("tflops", "all"):
                    rows.append((model, row, "TFLOPs", item["value"], source, item["confidence"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "row", "column", "value", "source", "confidence"])
        writer.writerows(sorted(set(rows)))
    return len(set(rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a CSV of published numbers (see the module docstring)")
    parser.add_argument("--out", type=Path, default=Path("results/reference/table1.csv"))
    args = parser.parse_args()
    print(f"wrote {build(args.source, args.out)} rows to {args.out}")

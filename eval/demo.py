"""`make demo`: Table 1 on the embedded tiny LLaVA and the bundled synthetic data, offline, on CPU, in one command.

    python -m eval.demo [--limit N] [--results-dir DIR] [--out DIR] [--check REFERENCE_DIR]

Four steps, each a subprocess of this interpreter (nothing is installed): the dense cells (experiment=demo_dense),
the pruned grid (experiment=demo), a repeated, interleaved timing of the same configurations on one batch of the
bundled questions (`eval.bench --model`), and the reports. Records and tables go to gitignored directories
(results/runs/demo/ and results/runs/demo_report/), so the working tree stays clean; results/demo/ is the committed
reference: `--out results/demo` remakes it, `--check results/demo` compares a fresh demo with it (exit 1 if it
differs: accuracies, standard errors, n, tokens and FLOPs exactly, timing ratios within their measured spread).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
DEFAULT_RESULTS = Path("results/runs")
REPORT_DIR = "demo_report"  # under the results directory, next to the records (both gitignored)
EXPERIMENT = "demo"
TIMING_REPEATS = 5  # interleaved repeats of the timing step (each visits every configuration once)
TIMING_NEW_TOKENS = 8  # forced new tokens per timed generate (the same decode work for every configuration)


def demo_grid() -> dict:
    """The demo's configurations, read from conf/: model directory, batch size, budgets, SparseVLM versions and
    baselines (so a method added to conf/experiment/demo.yaml is also timed)."""
    demo = yaml.safe_load((CONF / "experiment" / "demo.yaml").read_text())
    params = demo["hydra"]["sweeper"]["params"]
    model = yaml.safe_load((CONF / "model" / "tiny-llava.yaml").read_text())
    versions, baselines = [], []
    for name in str(params["method"]).split(","):
        method = yaml.safe_load((CONF / "method" / f"{name.strip()}.yaml").read_text())
        if method["name"] == "sparsevlm":
            versions.append(str(method["options"]["version"]))
        else:
            baselines.append(method["name"])
    return {
        "model": model["pretrained"],
        "batch": int(demo["batch_size"]),
        "budgets": [int(b) for b in str(params["budget"]).split(",")],
        "versions": versions,
        "baselines": baselines,
    }


def steps(
    results_dir: Path,
    out: Path,
    limit: int | None,
    check: Path | None,
    repeats: int = TIMING_REPEATS,
    budgets: list[int] | None = None,
) -> list[list[str]]:
    """The demo's commands, in order (`budgets` narrows the grid's budgets, e.g. for a quick test)."""
    grid = demo_grid()
    if budgets:
        grid["budgets"] = budgets
    python = sys.executable
    limit_arg = [] if limit is None else [f"limit={limit}"]
    budget_arg = [] if not budgets else ["hydra.sweeper.params.budget=" + ",".join(map(str, budgets))]
    bench = [python, "-m", "eval.bench", "--model", grid["model"], "--batch", str(grid["batch"])]
    bench += ["--budgets", *map(str, grid["budgets"]), "--versions", *grid["versions"]]
    bench += ["--baselines", *grid["baselines"], "--repeats", str(repeats)]
    bench += ["--new-tokens", str(TIMING_NEW_TOKENS), "--out", str(out / "timing.json")]
    report = [python, "-m", "eval.report", "--experiment", EXPERIMENT, "--results-dir", str(results_dir)]
    report += ["--out", str(out), "--timing", str(out / "timing.json")]
    report += [] if check is None else ["--compare", str(check)]
    return [
        [python, "-m", "eval.run", "experiment=demo_dense", f"results_dir={results_dir}", *limit_arg],
        [python, "-m", "eval.run", "experiment=demo", f"results_dir={results_dir}", *limit_arg, *budget_arg],
        bench,
        report,
    ]


def _under_root(path: Path) -> Path:
    """An absolute path, shown relative to the repository root when inside it (the steps run there; the timing file
    and the tables quote the command, which should not name one machine's directories)."""
    path = path.resolve()
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def main(argv: list[str] | None = None) -> None:
    """Run the demo's steps; stop at the first that fails, with its exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="documents per task (default: the demo's 40)")
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS, help="where the cells' records go")
    parser.add_argument("--out", type=Path, default=None, help=f"tables and plot (default <results-dir>/{REPORT_DIR})")
    parser.add_argument("--check", type=Path, default=None, help="a committed demo report to compare with")
    parser.add_argument("--timing-repeats", type=int, default=TIMING_REPEATS, help="interleaved timing repeats")
    parser.add_argument("--budgets", type=int, nargs="*", default=None, help="only these of the grid's budgets")
    args = parser.parse_args(argv)
    results_dir = _under_root(args.results_dir)  # the steps run in the repository root (relative model, data paths)
    out = _under_root(args.out or args.results_dir / REPORT_DIR)
    check = None if args.check is None else _under_root(args.check)
    started = time.perf_counter()
    for command in steps(results_dir, out, args.limit, check, args.timing_repeats, args.budgets):
        print("+ " + " ".join(command[1:]), flush=True)
        code = subprocess.run(command, cwd=ROOT).returncode
        if code:
            raise SystemExit(code)
    print(f"make demo: done in {time.perf_counter() - started:.0f} s; tables in {out}")


if __name__ == "__main__":
    main()

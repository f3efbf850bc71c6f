"""`make demo` end to end with a smaller limit, run with this interpreter (never `make install`): the sweep, the
records, the timing pass, Table 1, the efficiency table and the plot; and the working tree stays clean."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from eval import demo

ROOT = Path(__file__).resolve().parents[1]
WATCHED = ("results", "models", "data")  # tracked paths a demo could write to (conf/ is edited by people meanwhile)


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)


def _tracked_status() -> str:
    """`git status --porcelain` of the tracked files under WATCHED (other edits in the tree are not the demo's)."""
    return _git("status", "--porcelain", "--untracked-files=no", "--", *WATCHED).stdout


def test_make_demo_writes_only_gitignored_paths() -> None:
    if _git("rev-parse", "--is-inside-work-tree").returncode:
        pytest.skip("not a git checkout")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}  # under `make test`
    dry = subprocess.run(
        ["make", "--no-print-directory", "-n", "demo"], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout
    command = shlex.split(dry.strip().splitlines()[-1])  # the recipe (install steps, if any, come before it)
    assert command[1:3] == ["-m", "eval.demo"] and "--out" not in command
    results = Path(command[command.index("--results-dir") + 1])
    for path in (results / demo.EXPERIMENT / "cell" / "record.json", results / demo.REPORT_DIR / "table1.md"):
        assert _git("check-ignore", "-q", str(path)).returncode == 0, f"{path} is not gitignored"


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "models" / "tiny-llava" / "config.json").exists(), reason="embedded model absent")
def test_demo_produces_every_report_and_leaves_the_tree_clean(tmp_path):
    before = _tracked_status()
    runs, report = tmp_path / "runs", tmp_path / "report"
    argv = ["--limit", "2", "--results-dir", str(runs), "--out", str(report), "--timing-repeats", "1"]
    argv += ["--budgets", "16"]  # one budget of the grid: every method and task, a third of the cells
    out = subprocess.run(
        [sys.executable, "-m", "eval.demo", *argv], cwd=ROOT, capture_output=True, text=True, timeout=1200
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for name in ("table1.md", "table1.csv", "table1.tex", "efficiency.md", "efficiency.csv", "pareto.png"):
        assert (report / name).stat().st_size > 0, name
    grid = demo.demo_grid()
    n_rows = len(grid["versions"]) + len(grid["baselines"])
    assert len(list((runs / "demo").glob("*/record.json"))) == 3 * (1 + n_rows)
    table = (report / "table1.md").read_text()
    assert "| dense |" in table and "sparsevlm-v1.5 @16" in table and "| fastv @16 |" in table
    assert " ± " in table and "(n=2)" in table and "median of 1 interleaved repeats" in table
    assert "failed:" not in table and "missing:" not in table
    assert "make demo: done in" in out.stdout
    assert _tracked_status() == before

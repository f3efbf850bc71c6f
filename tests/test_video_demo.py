"""`make demo-video` end to end on the embedded tiny Video-LLaVA and the bundled synthetic clips: the runner's dense and
pruned cells (the video branch, FastV) on the first questions, judged by `match`, then the video table."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "tiny-video-llava"
LIMIT = 8  # two videos' questions, one of each family per video


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)


def test_make_demo_video_runs_both_experiments_into_gitignored_paths() -> None:
    if _git("rev-parse", "--is-inside-work-tree").returncode:
        pytest.skip("not a git checkout")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}  # under `make test`
    dry = subprocess.run(
        ["make", "--no-print-directory", "-n", "demo-video"], cwd=ROOT, env=env, capture_output=True, text=True
    ).stdout.strip()
    commands = [shlex.split(line) for line in dry.splitlines()[-3:]]  # install steps, if any, come first
    assert [c[1:4] for c in commands[:2]] == [
        ["-m", "eval.run", "experiment=video_demo_dense"],
        ["-m", "eval.run", "experiment=video_demo"],
    ]
    report = commands[2]
    assert report[1:5] == ["-m", "eval.report", "--experiment", "video_demo"]
    out = Path(report[report.index("--out") + 1])
    results = Path(commands[0][4].removeprefix("results_dir="))
    for path in (results / "video_demo" / "cell" / "record.json", out / "video.md"):
        assert _git("check-ignore", "-q", str(path)).returncode == 0, f"{path} is not gitignored"


def _run(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _samples(cell: Path) -> list[dict]:
    return [json.loads(line) for line in (cell / "samples.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.skipif(not (MODEL / "config.json").exists(), reason="embedded video model absent")
def test_video_demo_cells_prune_the_embedded_video_model_and_report_the_video_table(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    common = [f"results_dir={runs}", f"limit={LIMIT}"]
    _run("eval.run", "experiment=video_demo_dense", *common)
    sweep = ['hydra.sweeper.params.method="sparsevlm_video,fastv"', "hydra.sweeper.params.budget=20"]
    _run("eval.run", "experiment=video_demo", *common, *sweep)
    _run("eval.report", "--experiment", "video_demo", "--results-dir", str(runs), "--out", str(tmp_path / "report"))

    cells = {json.loads((c / "record.json").read_text())["run_id"]: c for c in (runs / "video_demo").iterdir()}
    assert len(cells) == 3
    accuracy = {}
    for run_id, cell in cells.items():
        record = json.loads((cell / "record.json").read_text())
        rows = _samples(cell)
        assert record["status"] == "ok" and len(rows) == LIMIT
        assert all(r["status"] == "ok" and r["n_visual"] == 296 and r["judge"]["judge"] == "match" for r in rows)
        pruned = "_b20_" in run_id
        assert all((r["equivalent_tokens"] <= 20.5) == pruned for r in rows), run_id  # what ran, not the label
        accuracy[run_id.split("_")[1]] = record["metrics"]["msvd_qa"]["accuracy"]
    [video_branch] = [_samples(cell) for run_id, cell in cells.items() if "sparsevlm-vvideo" in run_id]
    assert all(len(set(r["visual_out"])) == 1 and r["visual_out"][0] < 296 for r in video_branch)  # one stage
    assert accuracy["dense"] >= 75.0  # the trained model sees the clips through the harness (random weights: ~0)
    table = (tmp_path / "report" / "video.md").read_text()
    assert "| dense |" in table and "| sparsevlm-video @20 |" in table and "| fastv @20 |" in table
    assert "not comparable to the paper" in table and f"(n={LIMIT})" in table

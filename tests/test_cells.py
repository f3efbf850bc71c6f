"""Process-level guarantees with a fake, instant evaluation (tests/fake_runner.py): exit codes, sweeps, locks, kills.

Every scenario ends by checking the same invariant over the results directory: each cell has exactly one readable
record, `ok`, whose samples.jsonl matches the hash the record vouches for, and no temp file is left behind
(0 lost, 0 duplicated, 0 corrupt).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from eval.records import file_sha256, read_record
from eval.sweep import Cell, SweepReport, settle

ROOT = Path(__file__).resolve().parents[1]
FAKE = ROOT / "tests" / "fake_runner.py"
CELL = ["model=tiny-llava", "method=fastv", "budget=48", "task=pope_synth"]
SWEEP = ["--multirun", "model=tiny-llava", "method=fastv,random", "budget=48", "task=pope_synth"]


def _command(tmp_path: Path, args: list[str], *fake: str) -> list[str]:
    return [sys.executable, str(FAKE), "--log", str(tmp_path / "computed.log"), *fake, "--",
            f"results_dir={tmp_path / 'runs'}", *args]  # fmt: skip


def _run(tmp_path: Path, args: list[str], *fake: str) -> subprocess.CompletedProcess:
    return subprocess.run(_command(tmp_path, args, *fake), capture_output=True, text=True, cwd=ROOT, timeout=120)


def _computed(tmp_path: Path) -> Counter:
    log = tmp_path / "computed.log"
    return Counter(line.split()[0] for line in log.read_text().splitlines()) if log.exists() else Counter()


def _check_cells(tmp_path: Path, expected_cells: int) -> None:
    """Exactly `expected_cells` cells, each with one ok record that vouches for its samples, and no temp files."""
    cells = [p for p in (tmp_path / "runs" / "adhoc").iterdir() if p.is_dir()]
    assert len(cells) == expected_cells
    for cell in cells:
        record = read_record(cell / "record.json")
        assert record is not None and record.status == "ok", cell
        assert file_sha256(cell / "samples.jsonl") == record.samples["sha256"], f"corrupt samples in {cell}"
        leftovers = [p.name for p in cell.iterdir() if p.name.startswith(".tmp-") or p.name == "running.json"]
        assert leftovers == [], f"{cell}: {leftovers}"


# ------------------------------------------------------------------------------------------------------ exit codes
def test_single_cell_exit_codes(tmp_path):
    ok = _run(tmp_path, CELL)
    assert ok.returncode == 0 and ok.stdout.strip().splitlines()[-1].startswith("ok: tiny-llava_fastv_b48_pope_synth")
    skipped = _run(tmp_path, CELL)
    assert skipped.returncode == 0 and "skipped: " in skipped.stdout
    failed = _run(tmp_path, [*CELL, "budget=16"], "--fail")
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1].endswith("RuntimeError: fake evaluation failure")
    rejected = _run(tmp_path, [*CELL, "budget=1000"])
    assert rejected.returncode == 2 and rejected.stderr.startswith("config error: budget: 1000 >= the model's 144")


def test_a_sweep_with_a_failed_cell_exits_1_and_lists_it(tmp_path):
    out = _run(tmp_path, SWEEP, "--fail")
    assert out.returncode == 1
    assert "sweep: 2 cells: 0 ok, 0 skipped (complete), 2 failed, 0 rejected (config), 0 lost" in out.stderr
    assert out.stderr.count("  failed: tiny-llava_") == 2 and "fake evaluation failure" in out.stderr


def test_a_sweep_with_a_rejected_cell_exits_1_and_runs_the_others(tmp_path):
    out = _run(tmp_path, [*SWEEP, "budget=48,500"])
    assert out.returncode == 1
    assert "sweep: 4 cells: 2 ok, 0 skipped (complete), 0 failed, 2 rejected (config), 0 lost" in out.stderr
    assert sum(_computed(tmp_path).values()) == 2


def test_a_misspelt_sweep_value_stops_the_sweep_before_anything_runs(tmp_path):
    out = _run(tmp_path, [*SWEEP, "method=fastv,fastvv"])
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert out.stderr.startswith("config error: ") and "method: no option 'fastvv'" in out.stderr
    assert _computed(tmp_path) == Counter()


def test_a_complete_sweep_launches_nothing_when_rerun(tmp_path):
    first = _run(tmp_path, SWEEP)
    assert first.returncode == 0, first.stderr[-2000:]
    again = _run(tmp_path, SWEEP)
    assert again.returncode == 0 and "sweep: 2 cells: 0 to run, 2 complete, 0 rejected" in again.stdout
    assert sum(_computed(tmp_path).values()) == 2
    _check_cells(tmp_path, 2)


def test_a_cell_without_record_or_result_is_lost():
    cell = Cell(["budget=48"], spec=None, status="pending")

    class Spec:
        run_dir = Path("/nonexistent/cell")

    cell.spec = Spec()
    settle(cell, ConnectionError("node died"), "2026-01-01T00:00:00+00:00")
    report = SweepReport([cell])
    assert cell.status == "lost" and "ConnectionError: node died" in cell.detail and report.exit_code == 1


# ------------------------------------------------------------------------------------------------------ kills
@pytest.mark.parametrize(("moment", "recomputed"), [("evaluate", True), ("samples", True), ("record", False)])
def test_kill_9_at_any_moment_loses_nothing_and_duplicates_nothing(tmp_path, moment, recomputed):
    killed = _run(tmp_path, CELL, "--die-at", moment)
    assert killed.returncode == -signal.SIGKILL
    rerun = _run(tmp_path, CELL)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert list(_computed(tmp_path).values()) == [2 if recomputed else 1]
    _check_cells(tmp_path, 1)


def test_kill_9_while_logging_to_wandb_relogs_without_recomputing(tmp_path):
    pytest.importorskip("wandb")
    killed = _run(tmp_path, [*CELL, "logger=wandb"], "--die-at", "wandb")
    assert killed.returncode == -signal.SIGKILL
    (path,) = (tmp_path / "runs" / "adhoc").glob("*/record.json")
    assert read_record(path).wandb == {"status": "pending"}
    rerun = _run(tmp_path, [*CELL, "logger=wandb", "logger.mode=offline"])
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert read_record(path).wandb["status"] == "ok" and sum(_computed(tmp_path).values()) == 1
    _check_cells(tmp_path, 1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_exit_non_zero_and_a_rerun_completes(tmp_path, sig):
    process = subprocess.Popen(_command(tmp_path, CELL, "--sleep", "30"), cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 60
    while not _computed(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(sig)
    assert process.wait(timeout=60) != 0
    rerun = _run(tmp_path, CELL)
    assert rerun.returncode == 0 and sum(_computed(tmp_path).values()) == 2
    _check_cells(tmp_path, 1)


# ------------------------------------------------------------------------------------------------------ locks
def test_two_processes_on_one_cell_compute_it_once(tmp_path):
    first = subprocess.Popen(_command(tmp_path, CELL, "--sleep", "3"), cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while not _computed(tmp_path) and time.monotonic() < deadline:  # the first one holds the cell's lock
        time.sleep(0.1)
    second = _run(tmp_path, CELL)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, err[-2000:]
    assert "is being computed by pid" in second.stdout + second.stderr  # it says why it waited
    assert second.stdout.strip().splitlines()[-1].startswith("skipped: ")
    assert sum(_computed(tmp_path).values()) == 1
    _check_cells(tmp_path, 1)


def test_two_identical_sweeps_compute_each_cell_once(tmp_path):
    sweeps = [
        subprocess.Popen(
            _command(tmp_path, SWEEP, "--sleep", "2"),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    for sweep in sweeps:
        sweep.communicate(timeout=180)
        assert sweep.returncode == 0
    assert sorted(_computed(tmp_path).values()) == [1, 1]
    _check_cells(tmp_path, 2)

"""Sweeps through a real single-node Slurm cluster (tests/slurm_cluster.py) with `launcher=slurm`.

The cluster has no accounting (no slurmdbd, so `sacct` fails): the path where hydra-submitit-launcher alone would wait
forever for a cancelled job. Cells run the embedded tiny model on the bundled synthetic POPE, one CPU each.
Skipped without the Slurm and MUNGE binaries (.ci/install-slurm installs them) or without root.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from slurm_cluster import SlurmCluster, slurm_cluster, unavailable_reason
from tiny_checkpoint import write_task

from eval.records import read_record

pytestmark = pytest.mark.slow  # minutes, not seconds: left out of `make test-fast`
ROOT = Path(__file__).resolve().parents[1]
SWEEP_TIMEOUT_S = 300
# every cell fits the 2-CPU test node: one CPU, 2 GB, no GPU; waiting settings short so a lost job shows in seconds
BASE_OVERRIDES = [
    "model=tiny-llava",
    "task=pope_synth",
    "limit=4",
    "batch_size=8",
    "cpu_threads=1",
    "launcher=slurm",
    "hydra.launcher.partition=debug",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    "hydra.launcher.timeout_min=10",
    "hydra.launcher.poll_s=1",
    "hydra.launcher.lost_grace_s=2",
    # reruns reuse the records of minutes before even if the tree was edited meanwhile (a record of other code would
    # rerun under the default stale=rerun): these tests are about Slurm, staleness has tests of its own
    "stale=keep",
]
GRID = ("experiment_name=grid", "method=sparsevlm,fastv", "budget=48,16")


@pytest.fixture(scope="session")
def cluster() -> Iterator[SlurmCluster]:
    """munged + slurmctld + slurmd for the whole session, stopped (by PID) afterwards even if tests fail."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with slurm_cluster() as running:
        yield running


def sweep_command(results: Path, sweep_dir: Path, *overrides: str) -> list[str]:
    """`python -m eval.run --multirun` with the test-node resources, results and sweep dir under tmp."""
    return [
        sys.executable,
        "-m",
        "eval.run",
        "--multirun",
        *BASE_OVERRIDES,
        f"results_dir={results}",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    ]


def sweep_env(cluster: SlurmCluster) -> dict[str, str]:
    """The cluster's client environment (SLURM_CONF), one thread per process."""
    return {**cluster.env, "OMP_NUM_THREADS": "1"}


def run_sweep(cluster: SlurmCluster, results: Path, sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """Run one sweep to its end; returns the finished process (output captured)."""
    return subprocess.run(
        sweep_command(results, sweep_dir, *overrides),
        cwd=ROOT,
        env=sweep_env(cluster),
        capture_output=True,
        text=True,
        timeout=SWEEP_TIMEOUT_S,
    )


def summary(sweep_dir: Path) -> dict:
    """The sweep's sweep_summary.json (written by the cells sweeper)."""
    return json.loads((sweep_dir / "sweep_summary.json").read_text())


def statuses(sweep_dir: Path) -> dict[str, str]:
    """run_id (or overrides of a rejected cell) -> status, from the sweep summary."""
    return {c["run_id"] or " ".join(c["overrides"]): c["status"] for c in summary(sweep_dir)["cells"]}


def records(results: Path, experiment: str = "grid") -> dict:
    """run_id -> RunRecord for every record.json of an experiment."""
    found = {}
    for path in sorted((results / experiment).glob("*/record.json")):
        record = read_record(path)
        found[record.run_id] = record
    return found


def computed_cells(sweep_dir: Path) -> list[str]:
    """run_ids of the cells this sweep's Slurm jobs computed to an ok record, from the jobs' logs."""
    done = []
    for log in sorted(sweep_dir.glob(".submitit/*/*_log.*")):
        for line in log.read_text(errors="replace").splitlines():
            if "[eval.run][INFO] - ok " in line:
                done.append(line.split(" - ok ", 1)[1].split()[0])
    return done


def explain(proc: subprocess.CompletedProcess) -> str:
    """The tail of a sweep's output, for assertion messages."""
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def grid(cluster: SlurmCluster, tmp_path_factory) -> dict:
    """A 2x2 sweep (sparsevlm, fastv x budget 48, 16) through Slurm; its paths, output and the jobs it ran."""
    base = tmp_path_factory.mktemp("grid")
    results, sweep_dir = base / "runs", base / "sweep1"
    jobs_before = len(cluster.jobcomp_records())
    proc = run_sweep(cluster, results, sweep_dir, *GRID)
    return {"results": results, "sweep_dir": sweep_dir, "proc": proc, "jobs": cluster.jobcomp_records()[jobs_before:]}


@pytest.mark.slurm
def test_grid_sweep_runs_every_cell_as_a_slurm_job(grid):
    proc = grid["proc"]
    assert proc.returncode == 0, explain(proc)
    found = records(grid["results"])
    assert len(found) == 4 and all(r.status == "ok" for r in found.values()), explain(proc)
    assert {(r.grid["method"], r.grid["budget"]) for r in found.values()} == {
        ("sparsevlm", 48),
        ("sparsevlm", 16),
        ("fastv", 48),
        ("fastv", 16),
    }
    # one array job, one task per cell, and each record names the job that computed it
    slurm = [r.provenance.slurm for r in found.values()]
    assert len({s["slurm_array_job_id"] for s in slurm}) == 1 and None not in {s["slurm_job_id"] for s in slurm}
    assert sorted(s["slurm_array_task_id"] for s in slurm) == ["0", "1", "2", "3"]
    assert {s["slurm_job_partition"] for s in slurm} == {"debug"}
    assert sorted(job["JobId"] for job in grid["jobs"]) == sorted(s["slurm_job_id"] for s in slurm)
    assert all(job["JobState"] == "COMPLETED" for job in grid["jobs"])
    # provenance names the cell's own command line, not submitit's job script
    for record in found.values():
        command = record.provenance.command
        assert command.startswith("python -m eval.run ") and "_submit" not in command, command
        assert f"method={record.grid['method']}" in command and f"budget={record.grid['budget']}" in command
    assert summary(grid["sweep_dir"])["counts"] == {"ok": 4, "skipped": 0, "failed": 0, "rejected": 0, "lost": 0}
    assert sorted(computed_cells(grid["sweep_dir"])) == sorted(found)


@pytest.mark.slurm
def test_rerun_skips_every_complete_cell_without_submitting(cluster, grid):
    assert grid["proc"].returncode == 0, explain(grid["proc"])
    before = {run_id: (r.provenance.slurm, r.provenance.finished_at) for run_id, r in records(grid["results"]).items()}
    jobs_before = len(cluster.jobcomp_records())
    sweep_dir = grid["sweep_dir"].parent / "sweep2"
    proc = run_sweep(cluster, grid["results"], sweep_dir, *GRID)
    assert proc.returncode == 0, explain(proc)
    assert summary(sweep_dir)["counts"] == {"ok": 0, "skipped": 4, "failed": 0, "rejected": 0, "lost": 0}
    assert not (sweep_dir / ".submitit").exists(), "a job was submitted although every cell was complete"
    assert len(cluster.jobcomp_records()) == jobs_before and not cluster.active_jobs()
    after = {run_id: (r.provenance.slurm, r.provenance.finished_at) for run_id, r in records(grid["results"]).items()}
    assert after == before


def _garbage_task(base: Path) -> Path:
    """A config dir with task/pope_garbage: 8 synthetic POPE rows, the third with bytes that are no image."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(ROOT / "data" / "synth" / "pope" / "test.parquet").slice(0, 8)
    images = table.column("image").to_pylist()
    images[2] = {"bytes": b"this is not an image", "path": None}
    column = table.schema.get_field_index("image")
    table = table.set_column(column, "image", pa.array(images, table.schema.field(column).type))
    data = base / "data" / "test.parquet"
    data.parent.mkdir(parents=True)
    pq.write_table(table, data)
    write_task(base / "tasks", data, task="pope_garbage")
    conf = base / "conf"
    (conf / "task").mkdir(parents=True)
    (conf / "task" / "pope_garbage.yaml").write_text(
        "name: pope_garbage\ncolumn: POPE-garbage\nlmms_tasks: [pope_garbage]\nmetrics: [pope_f1_score]\n"
        f"combine: mean\nscale: 100\ninclude_path: {base / 'tasks'}\n"
    )
    return conf


@pytest.mark.slurm
def test_bad_document_and_config_error_fail_alone_and_the_sweep_exits_nonzero(cluster, tmp_path):
    conf = _garbage_task(tmp_path)
    results, sweep_dir = tmp_path / "runs", tmp_path / "sweep"
    jobs_before = len(cluster.jobcomp_records())
    proc = run_sweep(
        cluster,
        results,
        sweep_dir,
        f"hydra.searchpath=[file://{conf}]",
        "experiment_name=bad",
        "method=fastv",
        "task=pope_synth,pope_garbage",
        "budget=16,100000",  # 100000 visual tokens: more than the tiny model has, a config error
        "limit=8",
    )
    assert proc.returncode == 1, explain(proc)
    counts = summary(sweep_dir)["counts"]
    assert counts == {"ok": 1, "skipped": 0, "failed": 1, "rejected": 2, "lost": 0}, explain(proc)
    found = records(results, "bad")
    assert len(found) == 2, "rejected cells must not be launched nor recorded"
    by_task = {r.grid["task"]: r for r in found.values()}
    assert by_task["pope_synth"].status == "ok"
    bad = by_task["pope_garbage"]
    assert bad.status == "failed" and "max_failed_fraction" in (bad.error or ""), bad.error
    assert bad.documents["n_failed"] == 1 and bad.documents["n"] == 8
    rows = [json.loads(line) for line in (results / "bad" / bad.run_id / "samples.jsonl").read_text().splitlines()]
    failed_rows = [row for row in rows if row["status"] == "failed"]
    assert len(failed_rows) == 1 and failed_rows[0]["task"] == "pope_garbage" and failed_rows[0]["error"]
    # only the two valid cells became Slurm jobs, and both ran to completion
    jobs = cluster.jobcomp_records()[jobs_before:]
    assert len(jobs) == 2 and all(job["JobState"] == "COMPLETED" for job in jobs), jobs


def _slurm_task_of(pid: int) -> str:
    """The `<array>_<task>` id of the Slurm array task running a process (read from its environment)."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    env = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
    # not SLURM_JOB_ID: one task of an array shares its id with the array, and `scancel <that id>` cancels them all
    return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"


def _hold_stopped(pid: int, released: threading.Event) -> None:
    """Keep a process stopped (re-sending SIGSTOP every 5 ms) until it has exited or `released` is set."""
    while not released.is_set():
        try:
            if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
                return
            os.kill(pid, signal.SIGSTOP)
        except (ProcessLookupError, FileNotFoundError):
            return
        time.sleep(0.005)


@pytest.mark.slurm
def test_cancelled_job_is_reported_lost_and_a_rerun_completes_the_sweep_once(cluster, tmp_path):
    results, first_dir, second_dir = tmp_path / "runs", tmp_path / "sweep1", tmp_path / "sweep2"
    cells = ("experiment_name=cancel", "method=sparsevlm,fastv", "budget=16")
    sweep = subprocess.Popen(
        sweep_command(results, first_dir, *cells),
        cwd=ROOT,
        env=sweep_env(cluster),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # a cell writes running.json (with its pid) once it holds its lock and starts computing
        running: list[Path] = []
        released = threading.Event()

        def cell_started() -> bool:
            running[:] = sorted((results / "cancel").glob("*/running.json"))
            return bool(running) and sweep.poll() is None

        cluster.wait_until(cell_started, SWEEP_TIMEOUT_S, "a running cell", interval=0.05)
        victim = running[0].parent.name
        pid = json.loads(running[0].read_text())["pid"]
        # hold the cell stopped until Slurm kills it: a quiet machine computes one in about a second, and scancel's
        # SIGCONT + SIGTERM (which submitit ignores) would otherwise let it finish within KillWait
        holder = threading.Thread(target=_hold_stopped, args=(pid, released), daemon=True)
        holder.start()
        job_id = _slurm_task_of(pid)
        cluster.run("scancel", job_id)
        out, err = sweep.communicate(timeout=SWEEP_TIMEOUT_S)
    finally:
        released.set()
        if sweep.poll() is None:
            sweep.send_signal(signal.SIGKILL)
            sweep.wait()
    first = subprocess.CompletedProcess(sweep.args, sweep.returncode, out, err)
    assert first.returncode == 1, explain(first)
    assert statuses(first_dir)[victim] == "lost", explain(first)
    assert list(statuses(first_dir).values()).count("ok") == 1, explain(first)
    assert f"Slurm job {job_id} ended without a result (CANCELLED)" in first.stdout + first.stderr, explain(first)

    second = run_sweep(cluster, results, second_dir, *cells)
    assert second.returncode == 0, explain(second)
    assert statuses(second_dir)[victim] == "ok" and list(statuses(second_dir).values()).count("skipped") == 1
    found = records(results, "cancel")
    assert len(found) == 2 and all(r.status == "ok" for r in found.values())
    # every cell computed exactly once over both sweeps: none lost, none computed twice
    assert sorted(computed_cells(first_dir) + computed_cells(second_dir)) == sorted(found)
    # Slurm's side: the first sweep's array had one task cancelled and one completed; the rerun's single job (a
    # plain job, not an array: submitit submits one cell that way) computed the lost cell
    array_id, task_id = job_id.split("_")
    jobs = {job["JobId"]: job for job in cluster.jobcomp_records()}
    first = {job["ArrayTaskId"]: job["JobState"] for job in jobs.values() if job.get("ArrayJobId") == array_id}
    assert first == {task_id: "CANCELLED", str(1 - int(task_id)): "COMPLETED"}
    rescued = found[victim].provenance.slurm["slurm_job_id"]
    assert jobs[rescued]["JobState"] == "COMPLETED" and jobs[rescued].get("ArrayJobId") != array_id


@pytest.mark.slurm
def test_request_larger_than_the_node_fails_at_submission_or_is_reported(cluster, tmp_path):
    results = tmp_path / "runs"
    # the shipped defaults (1 GPU, 8 CPUs, 64 GB) on the GPU-less test node: sbatch refuses, nothing pends
    refused = run_sweep(
        cluster,
        results,
        tmp_path / "sweep1",
        "experiment_name=big",
        "method=fastv",
        "budget=16",
        "hydra.launcher.gpus_per_node=1",
        "hydra.launcher.cpus_per_task=8",
        "hydra.launcher.mem_gb=64",
    )
    assert refused.returncode == 1, explain(refused)
    output = refused.stdout + refused.stderr
    assert "Slurm submission failed" in output and "Invalid generic resource (gres)" in output, explain(refused)
    assert list(statuses(tmp_path / "sweep1").values()) == ["lost"]
    assert not cluster.active_jobs()
    # more CPUs than the node has is accepted by sbatch but pends forever: the launcher says so, naming the job
    sweep = subprocess.Popen(
        sweep_command(results, tmp_path / "sweep2", "experiment_name=big", "method=fastv", "budget=16")
        + [f"hydra.launcher.cpus_per_task={cluster.cpus + 1}"],
        cwd=ROOT,
        env=sweep_env(cluster),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        cluster.wait_until(
            lambda: any(job["reason"] == "PartitionConfig" for job in cluster.active_jobs()), 120, "a pending job"
        )
        time.sleep(3)  # a few launcher polls
        cluster.cancel_all()
        out, _ = sweep.communicate(timeout=120)
    finally:
        if sweep.poll() is None:
            sweep.send_signal(signal.SIGKILL)
            sweep.wait()
    assert sweep.returncode == 1, out[-4000:]
    assert "pends with reason PartitionConfig" in out, out[-4000:]
    assert list(statuses(tmp_path / "sweep2").values()) == ["lost"]

"""A real single-node Slurm cluster for tests: munged, slurmctld and slurmd started as root from a temp dir.

Debian's `slurm-wlm` and `munge` packages (.ci/install-slurm) provide the binaries; nothing of theirs is configured or
started: every file (config, MUNGE key and socket, state, spool, pid and log files) lives in one temp dir, the ports are
free ones picked at start, and clients reach this cluster through Slurm's own SLURM_CONF variable (`cluster.env`).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BINARIES = ("munged", "munge", "unmunge", "slurmctld", "slurmd", "slurmstepd", "sbatch", "squeue", "sinfo", "scancel")
NODE = "localhost"
PARTITION = "debug"


def unavailable_reason() -> str | None:
    """Why a test cluster cannot start here (missing binaries, not root, no munge user), or None if it can."""
    missing = [name for name in BINARIES if shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin") is None]
    if missing:
        return f"Slurm/MUNGE binaries not found: {', '.join(missing)} (.ci/install-slurm installs them)"
    if os.geteuid() != 0:
        return "the test cluster runs slurmd as root: run as root"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no 'munge' user (install Debian's munge package)"
    return None


def _free_port() -> int:
    """A TCP port on localhost that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _which(name: str) -> str:
    """Absolute path of a Slurm/MUNGE binary (daemons live in /usr/sbin, which a non-login PATH may lack)."""
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin")
    if path is None:
        raise FileNotFoundError(name)
    return path


@dataclass
class SlurmCluster:
    """A running test cluster: its temp dir, config and the environment that points Slurm clients at it."""

    root: Path
    conf: Path
    env: dict[str, str]
    cpus: int
    memory_mb: int
    jobcomp: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def run(self, *command: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster; returns its completed process (text output)."""
        return subprocess.run(command, env=self.env, capture_output=True, text=True, check=check, timeout=timeout)

    def node_state(self) -> str:
        """The node's state as sinfo prints it (idle, mixed, allocated, down*, ...), '' if unknown."""
        out = self.run("sinfo", "-h", "-n", NODE, "-o", "%T", check=False)
        return out.stdout.strip() if out.returncode == 0 else ""

    def queue(self) -> list[dict[str, str]]:
        """Every job the controller still lists (array tasks expanded): id, state, reason and name."""
        out = self.run("squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%r|%j")
        rows = []
        for line in out.stdout.splitlines():
            job_id, state, reason, name = line.split("|", 3)
            rows.append({"id": job_id, "state": state, "reason": reason, "name": name})
        return rows

    def active_jobs(self) -> list[dict[str, str]]:
        """Jobs that are not finished yet (pending, running, completing, ...)."""
        done = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}
        return [job for job in self.queue() if job["state"] not in done]

    def wait_until(self, predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.5) -> None:
        """Poll predicate() until it is true; raise TimeoutError naming `what` (and the daemons' logs) otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            self.check_daemons()
            time.sleep(interval)
        raise TimeoutError(f"{what} not reached in {timeout:.0f} s\n{self.log_tail()}")

    def check_daemons(self) -> None:
        """Raise RuntimeError (with the logs) if a daemon this cluster started has exited."""
        dead = {name: proc.returncode for name, proc in self.processes.items() if proc.poll() is not None}
        if dead:
            raise RuntimeError(f"Slurm test daemons exited: {dead}\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of every daemon log in the temp dir, for error messages."""
        parts = []
        for log in sorted(self.root.glob("log/*")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(parts)

    def jobcomp_records(self, settle_timeout: float = 60) -> list[dict[str, str]]:
        """Finished jobs from the jobcomp/filetxt log, once no job is active: a dict (JobId, JobState, ...) each."""
        # a job's line is written when it has completed, a moment after its result file (which ends a sweep)
        self.wait_until(lambda: not self.active_jobs(), settle_timeout, "no active job")
        if not self.jobcomp.exists():
            return []
        records = []
        for line in self.jobcomp.read_text().splitlines():
            fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
            records.append(fields)
        return records

    def cancel_all(self, timeout: float = 60) -> None:
        """Cancel every job on this cluster and wait until none is active."""
        self.run("scancel", "--partition", PARTITION, check=False)
        self.wait_until(lambda: not self.active_jobs(), timeout, "an empty queue after scancel")


def _slurm_conf(root: Path, cpus: int, memory_mb: int, ports: tuple[int, int], munge_socket: Path) -> str:
    """A minimal single-node slurm.conf whose state, spool, pid and log files all live under root."""
    ctld_port, slurmd_port = ports
    return f"""\
ClusterName=sparsevlm-test
SlurmctldHost={NODE}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.txt
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# scancel sends SIGTERM, which submitit's jobs ignore, then SIGKILL after KillWait (30 s by default): kill sooner
KillWait=2
NodeName={NODE} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""


def _memory_mb() -> int:
    """The node's memory for slurm.conf, a little under what slurmd detects (more would mark the node invalid)."""
    with open("/proc/meminfo") as handle:
        total_kb = int(next(line for line in handle if line.startswith("MemTotal:")).split()[1])
    return int(total_kb / 1024 * 0.9)


def _start(name: str, command: list[str], log_dir: Path, **kwargs: Any) -> subprocess.Popen:
    """Start one daemon in the foreground of its own session, its output into log_dir/<name>.out."""
    with open(log_dir / f"{name}.out", "wb") as out:
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
        )


def _stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM one process we started, SIGKILL it if it is still there after timeout."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def _children_of_cluster(conf: Path) -> list[int]:
    """PIDs of processes left from this cluster (slurmstepd and job steps), found by SLURM_CONF in their environment."""
    marker = f"SLURM_CONF={conf}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _raise_system_exit(signum: int, frame: object) -> None:
    """SIGTERM handler: unwind like an exception so the cluster's finally-block stops the daemons."""
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def slurm_cluster(start_timeout: float = 60) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd on a fresh temp dir; yield the cluster; stop them all (by PID) on exit."""
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    # not pytest's tmp dir: that one is private to root (0700) and munged runs as the munge user
    root = Path(tempfile.mkdtemp(prefix="slurm-test-"))
    root.chmod(0o755)
    for sub in ("state", "spool", "run", "log"):
        (root / sub).mkdir()
    munge_user = pwd.getpwnam("munge")
    munge_dir = root / "munge"
    munge_dir.mkdir()
    munge_dir.chmod(0o755)  # munged insists that clients can reach its socket
    key = munge_dir / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    for path in (munge_dir, key):
        os.chown(path, munge_user.pw_uid, munge_user.pw_gid)
    munge_socket = munge_dir / "munge.socket"
    cpus = os.cpu_count() or 1
    memory_mb = _memory_mb()
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, cpus, memory_mb, (_free_port(), _free_port()), munge_socket))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    env["PATH"] = env.get("PATH", "") + ":/usr/sbin"
    cluster = SlurmCluster(root, conf, env, cpus, memory_mb, root / "jobcomp.txt")
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, _raise_system_exit) if in_main_thread else None
    try:
        cluster.processes["munged"] = _start(
            "munged",
            [
                _which("munged"),
                "--foreground",
                f"--socket={munge_socket}",
                f"--key-file={key}",
                f"--log-file={munge_dir / 'munged.log'}",
                f"--pid-file={munge_dir / 'munged.pid'}",
                f"--seed-file={munge_dir / 'munged.seed'}",
            ],
            root / "log",
            user=munge_user.pw_uid,
            group=munge_user.pw_gid,
            extra_groups=[],
        )
        cluster.wait_until(lambda: munge_socket.exists(), start_timeout, "the MUNGE socket")
        cluster.wait_until(lambda: _munge_roundtrip(munge_socket), start_timeout, "a MUNGE credential round trip")
        # -c: a fresh controller state (no jobs from an earlier cluster in this dir)
        cluster.processes["slurmctld"] = _start(
            "slurmctld", [_which("slurmctld"), "-D", "-c", "-f", str(conf)], root / "log", env=env
        )
        cluster.processes["slurmd"] = _start(
            "slurmd", [_which("slurmd"), "-D", "-N", NODE, "-f", str(conf)], root / "log", env=env
        )
        cluster.wait_until(lambda: cluster.node_state() == "idle", start_timeout, f"node {NODE} idle in sinfo")
        yield cluster
    finally:
        try:
            if "slurmd" in cluster.processes and cluster.processes["slurmctld"].poll() is None:
                with contextlib.suppress(Exception):
                    cluster.cancel_all()
        finally:
            for name in ("slurmd", "slurmctld", "munged"):
                if name in cluster.processes:
                    _stop(cluster.processes[name])
            for pid in _children_of_cluster(conf):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
            shutil.rmtree(root, ignore_errors=True)


def _munge_roundtrip(munge_socket: Path) -> bool:
    """Whether `munge -n | unmunge` succeeds against the socket (munged accepts and decodes credentials)."""
    cred = subprocess.run(
        [_which("munge"), "-n", f"--socket={munge_socket}"], capture_output=True, check=False, timeout=10
    )
    if cred.returncode != 0:
        return False
    decoded = subprocess.run(
        [_which("unmunge"), f"--socket={munge_socket}"], input=cred.stdout, capture_output=True, timeout=10
    )
    return decoded.returncode == 0

"""Run records: one typed, atomically written record.json per cell -- the source of truth for every table.

Schema (version 2):
  run_id, experiment, grid {model, method, version, budget, task}, config (the resolved Hydra config),
  metrics {lmms task: {metric: value}}, primary {column, value, metrics, combine, scale, missing, and, when the
  evaluation produced standard errors, stderr (combined like the value; None when a metric has none), stderr_method,
  stderr_missing (task/metric pairs without one)},
  efficiency (Efficiency: means/medians over samples, computed from the per-sample traces),
  status "ok" | "failed", error, is_full_eval (limit is null),
  documents {n, n_failed, n_warned, failed_examples}: a failed document is left out of every metric,
  samples {file, sha256, rows}: the per-document file this record vouches for (a mismatch means an interrupted write),
  provenance (Provenance: git SHA + dirty flag, a content hash of the harness code, package versions, device, seed,
  Slurm ids, start/end times, a fingerprint of a local checkpoint),
  wandb {status, dir, error} when a W&B logger ran.
Version 1 records (no documents/samples/code hash) are read with those fields empty.

A record is written once, when its cell ends (never "running"): while a cell runs, its directory holds `running.json`
and an exclusive lock on `.lock`; see eval.run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import functools
import hashlib
import json
import os
import platform
import socket
import statistics
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2
PACKAGES = ("sparsevlm-harness", "torch", "transformers", "lmms_eval", "hydra-core", "wandb")
FILE_MODE = 0o644  # records live on shared cluster storage: readable by the group and others
TEMP_PREFIX = ".tmp-"
# What a cell's result depends on in this repository: the library, the harness (task YAMLs included) and the configs.
CODE_DIRS = ("sparsevlm", "eval", "conf")
CODE_SUFFIXES = (".py", ".yaml", ".yml")
SITE_CONF = "conf/local"  # machine-specific settings (partition, paths): they do not change results


@dataclass
class Provenance:
    """Where and with what a record was produced."""

    git_sha: str | None
    git_dirty: bool | None
    packages: dict[str, str | None]
    python: str
    device: str
    hostname: str
    seed: int
    slurm: dict[str, str | None]
    command: str
    started_at: str
    finished_at: str | None = None
    model_fingerprint: str | None = None  # of a local checkpoint directory (see model_fingerprint); None for hub ids
    code_hash: str | None = None  # content hash of the harness code (see code_hash); None in version-1 records


@dataclass
class Efficiency:
    """Aggregates over the samples of one cell; every number comes from what ran (the per-sample traces)."""

    n_samples: int = 0
    equivalent_tokens: float | None = None  # paper convention (output side)
    equivalent_tokens_input: float | None = None  # input side (Gumpest/SparseVLMs#35)
    llm_input_tokens: float | None = None  # visual tokens given to the LLM (fewer only when pruned before it)
    prompt_tokens: float | None = None
    tflops_paper: float | None = None  # 4nd^2 + 2n^2d + 3ndm over decoder layers, MAC = 1 FLOP, prefill
    tflops_full: float | None = None  # + vision tower, projector, lm_head, method overhead
    prefill_ms_mean: float | None = None
    prefill_ms_median: float | None = None
    e2e_ms_mean: float | None = None
    e2e_ms_median: float | None = None
    peak_memory_mb: float | None = None
    kv_cache_mb: float | None = None  # the KV cache of the batch a document ran in (mean over documents)
    kv_cache_mb_per_sample: float | None = None  # the same divided by that batch's size (None in older records)


@dataclass
class RunRecord:
    """One cell of an experiment."""

    run_id: str
    experiment: str
    grid: dict[str, Any]
    config: dict[str, Any]
    status: str
    provenance: Provenance
    is_full_eval: bool
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    primary: dict[str, Any] = field(default_factory=dict)
    efficiency: Efficiency = field(default_factory=Efficiency)
    error: str | None = None
    documents: dict[str, Any] = field(default_factory=dict)  # n, n_failed, n_warned, failed_examples
    samples: dict[str, Any] = field(default_factory=dict)  # file, sha256, rows
    wandb: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        """Inverse of to_dict; reads older schema versions, refuses newer ones (RecordError)."""
        if not isinstance(data, dict):
            raise RecordError("not a JSON object")
        version = data.get("schema_version", 1)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise RecordError(f"schema_version {version!r} is newer than this harness reads ({SCHEMA_VERSION})")
        try:
            data = {k: v for k, v in data.items() if k in {f.name for f in dataclasses.fields(cls)}}
            data["provenance"] = Provenance(**data["provenance"])
            data["efficiency"] = Efficiency(**data.get("efficiency") or {})
            return cls(**data)
        except (KeyError, TypeError) as err:
            raise RecordError(f"missing or unexpected field ({err})") from None


class RecordError(ValueError):
    """A record file that exists but cannot be read as a record."""


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write via a temp file in the same directory, fsync, chmod 0644, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_record(record: RunRecord, path: Path) -> None:
    """Write record.json atomically (readers never see a partial file)."""
    _atomic_write(path, lambda handle: json.dump(record.to_dict(), handle, indent=2, sort_keys=True, default=str))


def write_json(data: dict[str, Any], path: Path) -> None:
    """Write a small JSON file atomically."""
    _atomic_write(path, lambda handle: json.dump(data, handle, indent=2, sort_keys=True, default=str))


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> str:
    """Write one JSON object per line atomically; returns the file's sha256."""
    lines = "".join(json.dumps(row) + "\n" for row in rows)
    _atomic_write(path, lambda handle: handle.write(lines))
    return hashlib.sha256(lines.encode()).hexdigest()


def file_sha256(path: Path) -> str | None:
    """sha256 of a file's bytes, or None if it cannot be read."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def load_record(path: Path) -> RunRecord:
    """The record at path; OSError if it cannot be read, RecordError if it is empty, corrupt or of a newer schema."""
    raw = path.read_text()
    if not raw.strip():
        raise RecordError("empty file")
    try:
        data = json.loads(raw)
    except ValueError as err:
        raise RecordError(f"not valid JSON ({err})") from None
    return RunRecord.from_dict(data)


def read_record(path: Path) -> RunRecord | None:
    """The record at path, or None if it is missing or unreadable (callers that must say why use load_record)."""
    try:
        return load_record(path)
    except (OSError, RecordError):
        return None


@contextlib.contextmanager
def cell_lock(run_dir: Path, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive flock on run_dir/.lock; if another process holds it, call on_wait(holder) and wait.

    The kernel releases the lock when its holder dies (kill -9 included), so a crashed cell never blocks a rerun.
    The lock file itself is never deleted: deleting it would let two processes lock two different files.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ".lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            if on_wait is not None:
                handle.seek(0)
                on_wait(handle.read().strip() or "another process")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {now()}\n")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_temp_files(run_dir: Path) -> list[Path]:
    """Delete temp files left by interrupted writes (call while holding the cell's lock); returns what was removed."""
    removed = [p for p in run_dir.glob(f"{TEMP_PREFIX}*") if p.is_file()]
    removed += [p for p in run_dir.glob(".record-*.json") if p.is_file()]  # schema-1 temp files
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


@functools.lru_cache(maxsize=1)
def code_hash() -> str:
    """Content hash of the harness code this process runs: every .py/.yaml under sparsevlm/, eval/ and conf/.

    Site settings (conf/local/) are left out: they choose where a cell runs, not what it computes.
    """
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for directory in CODE_DIRS:
        for path in sorted((root / directory).rglob("*")):
            relative = path.relative_to(root).as_posix()
            if path.suffix in CODE_SUFFIXES and path.is_file() and not relative.startswith(SITE_CONF):
                digest.update(f"{relative}\0".encode() + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def model_fingerprint(pretrained: str, sample_bytes: int = 1 << 20) -> str | None:
    """A hash identifying a local checkpoint directory's contents; None for a hub id (its revision names it).

    Covers every file's name and size, config files whole, and the first and last ``sample_bytes`` of weight files, so
    retraining a local model invalidates its records without hashing gigabytes.
    """
    root = Path(pretrained)
    if not root.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(root)}\0{size}\0".encode())
        with path.open("rb") as f:
            if path.suffix in (".safetensors", ".bin", ".pt", ".pth") and size > 2 * sample_bytes:
                digest.update(f.read(sample_bytes))
                f.seek(size - sample_bytes)
            digest.update(f.read())
    return digest.hexdigest()[:16]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def capture_provenance(seed: int, device: str, command: str, model_fingerprint: str | None = None) -> Provenance:
    """Git state, package versions, host, Slurm ids and the start time of this process's run."""
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    status = _git("status", "--porcelain", "--untracked-files=no")
    slurm_keys = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_PARTITION")
    return Provenance(
        git_sha=_git("rev-parse", "HEAD"),
        git_dirty=None if status is None else bool(status),
        packages=packages,
        python=platform.python_version(),
        device=device,
        hostname=socket.gethostname(),
        seed=seed,
        slurm={key.lower(): os.environ.get(key) for key in slurm_keys},
        command=command,
        started_at=now(),
        model_fingerprint=model_fingerprint,
        code_hash=code_hash(),
    )


def now() -> str:
    """UTC timestamp, ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def aggregate_efficiency(samples: list[dict[str, Any]]) -> Efficiency:
    """Means/medians of the per-sample efficiency rows (keys as written by the lmms-eval plugin)."""

    def column(key: str) -> list[float]:
        return [float(s[key]) for s in samples if s.get(key) is not None]

    peak = column("peak_memory_mb")
    kv = column("kv_cache_mb")
    kv_per_sample = [
        float(s["kv_cache_mb"]) / int(s["batch_size"]) for s in samples if s.get("kv_cache_mb") and s.get("batch_size")
    ]
    return Efficiency(
        n_samples=len(samples),
        equivalent_tokens=_mean(column("equivalent_tokens")),
        equivalent_tokens_input=_mean(column("equivalent_tokens_input")),
        llm_input_tokens=_mean(column("llm_input_tokens")),
        prompt_tokens=_mean(column("prompt_tokens")),
        tflops_paper=_mean(column("tflops_paper")),
        tflops_full=_mean(column("tflops_full")),
        prefill_ms_mean=_mean(column("prefill_ms")),
        prefill_ms_median=_median(column("prefill_ms")),
        e2e_ms_mean=_mean(column("e2e_ms")),
        e2e_ms_median=_median(column("e2e_ms")),
        peak_memory_mb=max(peak) if peak else None,
        kv_cache_mb=_mean(kv),
        kv_cache_mb_per_sample=_mean(kv_per_sample),
    )

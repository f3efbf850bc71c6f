"""Run records: one typed, atomically written record.json per cell -- the source of truth for every table.

Schema (version 1):
  run_id, experiment, grid {model, method, version, budget, task}, config (the resolved Hydra config),
  metrics {lmms task: {metric: value}}, primary {column, value, metrics, combine, scale},
  efficiency (Efficiency: means/medians over samples, computed from the per-sample traces),
  status "ok" | "failed" | "running", error, is_full_eval (limit is null),
  provenance (Provenance: git SHA + dirty flag, package versions, device, seed, Slurm ids, start/end times,
  a fingerprint of a local checkpoint),
  wandb {status, dir, error} when a W&B logger ran.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import statistics
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
PACKAGES = ("sparsevlm-harness", "torch", "transformers", "lmms_eval", "hydra-core", "wandb")


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


@dataclass
class Efficiency:
    """Aggregates over the samples of one cell; every number comes from what ran (the per-sample traces)."""

    n_samples: int = 0
    equivalent_tokens: float | None = None  # paper convention (output side)
    equivalent_tokens_input: float | None = None  # input side (Gumpest/SparseVLMs#35)
    prompt_tokens: float | None = None
    tflops_paper: float | None = None  # 4nd^2 + 2n^2d + 3ndm over decoder layers, MAC = 1 FLOP, prefill
    tflops_full: float | None = None  # + vision tower, projector, lm_head, method overhead
    prefill_ms_mean: float | None = None
    prefill_ms_median: float | None = None
    e2e_ms_mean: float | None = None
    e2e_ms_median: float | None = None
    peak_memory_mb: float | None = None
    kv_cache_mb: float | None = None


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
    wandb: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        """Inverse of to_dict."""
        data = dict(data)
        data["provenance"] = Provenance(**data["provenance"])
        data["efficiency"] = Efficiency(**data.get("efficiency") or {})
        return cls(**data)


def write_record(record: RunRecord, path: Path) -> None:
    """Write record.json atomically: a temp file in the same directory, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".record-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(record.to_dict(), handle, indent=2, sort_keys=True, default=str)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_record(path: Path) -> RunRecord | None:
    """The record at path, or None if it is missing or unreadable."""
    try:
        return RunRecord.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None


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
    return Efficiency(
        n_samples=len(samples),
        equivalent_tokens=_mean(column("equivalent_tokens")),
        equivalent_tokens_input=_mean(column("equivalent_tokens_input")),
        prompt_tokens=_mean(column("prompt_tokens")),
        tflops_paper=_mean(column("tflops_paper")),
        tflops_full=_mean(column("tflops_full")),
        prefill_ms_mean=_mean(column("prefill_ms")),
        prefill_ms_median=_median(column("prefill_ms")),
        e2e_ms_mean=_mean(column("e2e_ms")),
        e2e_ms_median=_median(column("e2e_ms")),
        peak_memory_mb=max(peak) if peak else None,
        kv_cache_mb=_mean(kv),
    )

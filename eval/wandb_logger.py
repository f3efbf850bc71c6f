"""Optional W&B sink: one W&B run per cell, grouped by experiment. Never the source of truth, never fatal.

- `mode: disabled` never imports wandb and claims no directory.
- `mode: online` first checks that the W&B server answers (a TCP connect, a few seconds); if not, the cell is logged
  offline with a warning instead of blocking for minutes (`wandb sync` uploads it later).
- A log interrupted by a kill leaves the record's `wandb.status` at "pending"; the next run of the sweep logs the cell
  again from its record and samples.jsonl (the incomplete offline run directory is replaced), without recomputing it.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from eval.records import RunRecord

log = logging.getLogger("eval.wandb")
SAMPLE_COLUMNS = ("task", "doc_id", "status", "prediction", "target", "equivalent_tokens", "tflops_paper", "e2e_ms")
PROBE_TIMEOUT_S = 3.0


def server_problem() -> str | None:
    """None if the W&B server accepts a TCP connection within a few seconds, else why not."""
    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    try:
        socket.create_connection(
            (url.hostname, url.port or (443 if url.scheme == "https" else 80)), PROBE_TIMEOUT_S
        ).close()
    except OSError as err:
        return f"{url.hostname} unreachable ({err.strerror or err})"
    return None


def _remove_incomplete_runs(run_dir: Path, run_id: str) -> None:
    """Delete offline run directories of this cell left by an interrupted log (they would sync twice)."""
    for stale in (run_dir / "wandb").glob(f"offline-run-*-{run_id}"):
        shutil.rmtree(stale, ignore_errors=True)


def log_run(record: RunRecord, rows: list[dict[str, Any]], settings: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Log config, metrics, efficiency and a per-sample table; return {status, mode, dir | error} for the record."""
    mode = settings.get("mode", "offline")
    if mode == "disabled":
        return {"status": "disabled"}
    outcome: dict[str, Any] = {}
    if mode == "online":
        problem = server_problem()
        if problem:
            log.warning(
                "W&B server unreachable (%s): logging %s offline; upload later with wandb sync", problem, record.run_id
            )
            mode, outcome["fallback"] = "offline", f"online requested, {problem}"
    try:
        import wandb  # imported here so that logger=none never loads it

        _remove_incomplete_runs(run_dir, record.run_id)
        grid = record.grid
        run = wandb.init(
            project=settings.get("project", "sparsevlm-harness"),
            entity=settings.get("entity"),
            mode=mode,
            group=record.experiment,
            name=record.run_id,
            id=record.run_id,
            tags=[f"{k}={v}" for k, v in grid.items() if v is not None] + list(settings.get("tags") or []),
            config=record.config,
            dir=str(run_dir),
            reinit="finish_previous",
        )
        try:
            summary = {
                f"metric/{task}/{name}": value
                for task, metrics in record.metrics.items()
                for name, value in metrics.items()
                if isinstance(value, int | float)
            }
            summary.update({f"efficiency/{k}": v for k, v in vars(record.efficiency).items() if v is not None})
            if record.primary.get("value") is not None:
                summary[f"primary/{record.primary['column']}"] = record.primary["value"]
            run.log(summary)
            table = wandb.Table(columns=list(SAMPLE_COLUMNS), data=[[r.get(c) for c in SAMPLE_COLUMNS] for r in rows])
            run.log({"samples": table})
            directory = getattr(run, "dir", None)
        finally:
            run.finish()
        return {**outcome, "status": "ok", "mode": mode, "dir": str(Path(directory).parent) if directory else None}
    except Exception as err:  # W&B problems must never lose the local record
        return {
            **outcome,
            "status": "failed",
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(limit=3),
        }

"""Optional W&B sink: one W&B run per cell, grouped by experiment. Never the source of truth, never fatal."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

from eval.records import RunRecord

SAMPLE_COLUMNS = ("task", "doc_id", "prediction", "target", "equivalent_tokens", "tflops_paper", "e2e_ms")


def log_run(record: RunRecord, rows: list[dict[str, Any]], settings: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Log config, metrics, efficiency and a per-sample table; return {status, dir | error} for the record."""
    try:
        import wandb  # imported here so that logger=none never loads it

        grid = record.grid
        run = wandb.init(
            project=settings.get("project", "sparsevlm-harness"),
            entity=settings.get("entity"),
            mode=settings.get("mode", "offline"),
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
        return {"status": "ok", "dir": str(Path(directory).parent) if directory else None}
    except Exception as err:  # W&B problems must never lose the local record
        return {"status": "failed", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=3)}

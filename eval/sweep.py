"""Sweeps: validate every cell, launch only the incomplete ones, then account for every cell and set the exit status.

Used by the Hydra sweeper plugin `hydra/sweeper: cells` (hydra_plugins/sparsevlm_harness/sweeper.py). The outcome of a
launched cell comes from what its job returned or, when the job died (scancel, timeout, OOM kill), from its record on
disk; a cell with neither is "lost". Nothing here trusts a launcher to report every job.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from eval.cli import describe_error
from eval.config import ConfigError, RunSpec, spec_from_config
from eval.preflight import preflight
from eval.records import model_fingerprint, now, read_record, write_json

log = logging.getLogger("eval.sweep")
STATUSES = ("ok", "skipped", "failed", "rejected", "lost")


@dataclass
class Cell:
    """One cell of a sweep: its overrides, validated spec (None if rejected) and what happened to it."""

    overrides: list[str]
    spec: RunSpec | None = None
    status: str = "pending"  # pending -> ok | skipped | failed | rejected | lost
    detail: str = ""

    @property
    def run_id(self) -> str | None:
        """The cell's run id, if it passed validation."""
        return self.spec.run_id if self.spec else None

    def label(self) -> str:
        """Run id, or the overrides of a rejected cell."""
        return self.run_id or " ".join(self.overrides)


@dataclass
class SweepReport:
    """Every cell of a sweep with its final status."""

    cells: list[Cell]
    started_at: str = field(default_factory=now)

    def count(self, status: str) -> int:
        """Cells with this status."""
        return sum(c.status == status for c in self.cells)

    @property
    def exit_code(self) -> int:
        """0 only when every cell is ok or was already complete."""
        return 0 if all(c.status in ("ok", "skipped") for c in self.cells) else 1

    def summary(self) -> str:
        """Counts, then one line per cell that is not ok."""
        counts = ", ".join(f"{self.count(s)} {name}" for s, name in zip(STATUSES, _NAMES, strict=True))
        lines = [f"sweep: {len(self.cells)} cells: {counts}"]
        for cell in self.cells:
            if cell.status not in ("ok", "skipped"):
                lines.append(f"  {cell.status}: {cell.label()}: {cell.detail}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (written as sweep_summary.json)."""
        return {
            "started_at": self.started_at,
            "finished_at": now(),
            "counts": {s: self.count(s) for s in STATUSES},
            "cells": [
                {"run_id": c.run_id, "overrides": c.overrides, "status": c.status, "detail": c.detail}
                for c in self.cells
            ],
        }


_NAMES = ("ok", "skipped (complete)", "failed", "rejected (config)", "lost")


def plan(cell: Cell, config: DictConfig, check_device: bool) -> None:
    """Validate a composed cell and decide whether it must run (pending) or is complete (skipped) or rejected."""
    from eval.run import rerun_reason

    try:
        _, cell.spec = preflight(spec_from_config(config), check_device=check_device)
    except ConfigError as err:
        cell.status, cell.detail = "rejected", str(err)
        return
    spec = cell.spec
    previous = read_record(spec.run_dir / "record.json")
    reason = rerun_reason(previous, spec, model_fingerprint(spec.model.pretrained), spec.run_dir)
    if reason is None:
        cell.status, cell.detail = "skipped", "complete record"
    else:
        cell.detail = reason


def settle(cell: Cell, returned: Any, started_at: str) -> None:
    """Final status of a launched cell: its job's own report, else its record written during this sweep, else lost."""
    if isinstance(returned, dict) and returned.get("status") in STATUSES:
        cell.status, cell.detail = returned["status"], returned.get("detail", "")
        return
    record = read_record(cell.spec.run_dir / "record.json")
    if record is not None and (record.provenance.finished_at or "") >= started_at:
        cell.status = "ok" if record.status == "ok" else "failed"
        cell.detail = record.error or "recorded (its job's return value was lost)"
        return
    why = f"{type(returned).__name__}: {returned}" if isinstance(returned, BaseException) else "no result"
    cell.status, cell.detail = "lost", f"no record was written during this sweep ({why})"


def run_sweep(
    cells: list[Cell],
    compose: Callable[[Sequence[str]], DictConfig],
    launch: Callable[[list[list[str]]], Sequence[Any]],
    check_device: bool,
    out_dir: Path,
) -> SweepReport:
    """Compose and validate every cell, launch the incomplete ones, settle all, write sweep_summary.json."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    report = SweepReport(cells)
    configs = []
    for cell in cells:  # every cell composes before any is planned: a misspelt value stops the sweep untouched
        try:
            configs.append(compose(cell.overrides))
        except (HydraException, OmegaConfBaseException) as err:
            raise SweepConfigError(f"{' '.join(cell.overrides)}: {describe_error(err, [])}") from None
    for cell, config in zip(cells, configs, strict=True):
        plan(cell, config, check_device)
    pending = [c for c in cells if c.status == "pending"]
    print(
        f"sweep: {len(cells)} cells: {len(pending)} to run, {report.count('skipped')} complete, "
        f"{report.count('rejected')} rejected",
        flush=True,
    )
    stop_on_failure = any(c.spec.fail_fast for c in pending)
    batches = [[c] for c in pending] if stop_on_failure else ([pending] if pending else [])
    for batch in batches:
        try:
            returns = list(launch([c.overrides for c in batch]))
        except Exception as err:  # a launcher that gave up (e.g. a failed Slurm job): records decide
            log.error("launcher failed: %s", err)
            returns = [err] * len(batch)
        for cell, returned in zip(batch, returns + [None] * (len(batch) - len(returns)), strict=True):
            settle(cell, _value(returned), report.started_at)
        if stop_on_failure and any(c.status != "ok" for c in batch):
            for cell in pending:
                if cell.status == "pending":
                    cell.status, cell.detail = "lost", "not launched: fail_fast stopped the sweep"
            break
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(report.to_dict(), out_dir / "sweep_summary.json")
    return report


def _value(returned: Any) -> Any:
    """A JobReturn's value, or the exception its job raised (never raises itself)."""
    from hydra.core.utils import JobReturn, JobStatus

    if isinstance(returned, JobReturn):
        return returned._return_value if returned.status in (JobStatus.COMPLETED, JobStatus.FAILED) else None
    return returned


class SweepConfigError(ValueError):
    """A sweep value that does not compose (a misspelt group option or key)."""


def finish(report: SweepReport) -> None:
    """Print the summary; exit 1 unless every cell is ok or complete."""
    print(report.summary(), file=sys.stderr if report.exit_code else sys.stdout, flush=True)
    if report.exit_code:
        sys.exit(report.exit_code)


def load_summary(path: Path) -> dict[str, Any]:
    """A sweep_summary.json (for tests and tools)."""
    return json.loads(path.read_text())

"""The Hydra runner: validate -> lock -> (skip if complete) -> load model -> lmms-eval -> samples + record (+ W&B).

python -m eval.run model=llava-1.5-7b method=sparsevlm budget=64 task=pope
python -m eval.run --multirun method=sparsevlm,fastv budget=64,192 task=pope launcher=submitit_local
python -m eval.run experiment=table1 launcher=slurm

Exit status: 0 when every cell is ok or already complete, 1 when a cell failed (or, in a sweep, was rejected or lost),
2 for a configuration error (one line on stderr, before any model loads). A sweep validates every cell first, launches
only the cells that are not complete and ends with a summary (hydra_plugins/sparsevlm_harness/sweeper.py).

A cell's files (results_dir/experiment/run_id/): `.lock` (held while the cell runs: two processes never compute one
cell), `running.json` (who runs it, removed at the end), `samples.jsonl` then `record.json`, each written atomically,
record last. A rerun forced over an ok record keeps that record until the new result is complete; if the rerun fails,
the ok record stays and the failure is written to `failed_attempt.json`.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import socket
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from eval.cli import CONF_DIR
from eval.config import ConfigError, RunSpec, spec_from_config
from eval.preflight import preflight
from eval.records import (
    RecordError,
    RunRecord,
    aggregate_efficiency,
    capture_provenance,
    cell_lock,
    code_hash,
    file_sha256,
    load_record,
    model_fingerprint,
    now,
    remove_temp_files,
    write_json,
    write_jsonl,
    write_record,
)

log = logging.getLogger("eval.run")
EXIT_CODES = {"ok": 0, "skipped": 0, "failed": 1, "lost": 1, "rejected": 2}
FAILED_EXAMPLES = 5  # failed documents quoted in a record's error and documents.failed_examples
# The jackknife recomputes a task's aggregation once per left-out block: at most this many blocks keeps it well under
# a second on 10,000 documents while a block still holds whole scoring groups (MME pairs).
JACKKNIFE_BLOCKS = 200
STDERR_SUFFIX = "_stderr_jackknife"  # results[task][metric + STDERR_SUFFIX + ",none"]


@dataclass
class CellOutcome:
    """What happened to one cell: ok (computed now), skipped (complete record reused), failed or rejected (config)."""

    status: str
    run_id: str | None
    detail: str = ""
    record: RunRecord | None = None

    def to_dict(self) -> dict[str, Any]:
        """Picklable summary (what a launcher hands back to the sweeper)."""
        return {"status": self.status, "run_id": self.run_id, "detail": self.detail}


# ------------------------------------------------------------------------------------------------------ results
def primary_value(results: dict[str, Any], spec: RunSpec) -> tuple[float | None, list[str]]:
    """The cell's Table-1 number from the metrics that exist (combined, scaled), and the task/metric pairs missing.

    A missing metric (e.g. MME cognition on data without cognition questions) is left out and listed, so the record
    and the tables can say the value covers less than the column's definition.
    """
    values, missing = [], []
    for task in spec.task.lmms_tasks:
        for metric in spec.task.metrics:
            value = results.get(task, {}).get(f"{metric},none")
            if isinstance(value, int | float) and not isinstance(value, bool):
                values.append(float(value))
            else:
                missing.append(f"{task}/{metric}")
    if not values:
        return None, missing
    combined = sum(values) if spec.task.combine == "sum" else sum(values) / len(values)
    return combined * spec.task.scale, missing


def jackknife_stderr(
    items: list[Any], aggregate: Callable[[list[Any]], float], groups: list[int], blocks: int = JACKKNIFE_BLOCKS
) -> float | None:
    """Delete-a-block jackknife standard error of aggregate(items); items of one scoring group stay together.

    groups[i] is the scoring group of items[i] (MME: its question pair). With one item per group and as many blocks as
    items, the jackknife of a mean is exactly std(ddof=1) / sqrt(n), lmms-eval's `_stderr_clt`; unlike that value it
    is also the standard error of aggregations that are not means (POPE F1, MME's acc + acc+ score). None with fewer
    than two groups.
    """
    order = list(dict.fromkeys(groups))
    k = min(blocks, len(order))
    if k < 2:
        return None
    block = {group: i % k for i, group in enumerate(order)}
    estimates = [float(aggregate([it for it, g in zip(items, groups, strict=True) if block[g] != j])) for j in range(k)]
    mean = sum(estimates) / k
    return math.sqrt((k - 1) / k * sum((e - mean) ** 2 for e in estimates))


def add_stderrs(results: dict[str, Any], samples: dict[str, list[dict]], tasks: dict[str, Any], spec: RunSpec) -> None:
    """Add the jackknife standard error of each of the cell's metrics to lmms-eval's results (in place).

    The per-document metric items lmms-eval logs with each sample are re-aggregated with the task's own aggregation
    function; documents are grouped by task.limit_multiple (doc_id // limit_multiple), so pairs are left out whole.
    A metric whose items are missing or whose aggregation fails on a subset gets no stderr (the tables say so).
    """
    from loguru import logger  # lmms-eval's logger: MME's aggregation logs every category score on each call

    for name, task in tasks.items():
        logged = sorted(samples.get(name) or [], key=lambda sample: sample.get("doc_id", 0))
        for metric in spec.task.metrics:
            aggregate = task.aggregation().get(metric)
            rows = [s for s in logged if metric in s]
            if aggregate is None or not rows:
                continue
            if "args" in inspect.signature(aggregate).parameters:
                aggregate = _with_args(aggregate, task.args)
            groups = [int(s["doc_id"]) // spec.task.limit_multiple for s in rows]
            logger.disable("lmms_eval")
            try:
                stderr = jackknife_stderr([s[metric] for s in rows], aggregate, groups)
            except Exception as err:  # an aggregation that cannot take a subset: no stderr, said in the tables
                log.warning("%s/%s: no jackknife stderr (%s: %s)", name, metric, type(err).__name__, err)
                stderr = None
            finally:
                logger.enable("lmms_eval")
            if stderr is not None:
                results.setdefault(name, {})[f"{metric}{STDERR_SUFFIX},none"] = stderr


def _with_args(aggregate: Callable[..., float], args: Any) -> Callable[[list[Any]], float]:
    """An aggregation that takes the task's args (lmms-eval passes them by keyword), bound to them."""
    return lambda items: aggregate(items, args=args)


def primary_stderr(results: dict[str, Any], spec: RunSpec) -> dict[str, Any]:
    """The standard error of the primary value, combined like the value (mean or sum of the task metrics, x scale).

    Combining the task stderrs linearly treats the tasks as fully correlated (POPE's three splits share their images):
    an upper bound, exact for one task. Returns {} when no metric carries a stderr (e.g. a faked evaluation);
    otherwise {"stderr": value or None, "stderr_method", "stderr_missing": task/metric pairs without one}.
    """
    present, missing = [], []
    for task in spec.task.lmms_tasks:
        for metric in spec.task.metrics:
            if not isinstance(results.get(task, {}).get(f"{metric},none"), int | float):
                continue  # a missing metric is listed in primary.missing already
            stderr = results[task].get(f"{metric}{STDERR_SUFFIX},none")
            if isinstance(stderr, int | float) and not isinstance(stderr, bool):
                present.append(float(stderr))
            else:
                missing.append(f"{task}/{metric}")
    if not present:
        return {}
    combined = None
    if not missing:
        combined = (sum(present) if spec.task.combine == "sum" else sum(present) / len(present)) * spec.task.scale
    return {"stderr": combined, "stderr_method": "jackknife over documents", "stderr_missing": missing}


def _clean_metrics(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """lmms-eval's per-task results without the ',none' filter suffix and non-JSON values."""
    clean = {}
    for task, metrics in results.items():
        clean[task] = {
            key.split(",")[0]: value
            for key, value in metrics.items()
            if isinstance(value, int | float | str) and not key.endswith("_stderr,none")
        }
    return clean


def _sample_rows(samples: dict[str, list[dict]], efficiency: list[dict], guard: Any) -> list[dict[str, Any]]:
    """One JSON row per document: prediction, target and efficiency numbers, or the reason it failed."""
    by_doc = {(e.get("task"), e.get("doc_id")): e for e in efficiency}
    rows = []
    for task, items in (samples or {}).items():
        for item in items:
            key = (task, item.get("doc_id"))
            if guard.failed(*key):  # e.g. a scorer error: it has a logged sample but no metric
                continue
            resps = item.get("filtered_resps") or item.get("resps") or [None]
            row = {"task": task, "doc_id": key[1], "status": "ok", "prediction": resps[0], "target": item.get("target")}
            judged = [v["judge"] for v in item.values() if isinstance(v, dict) and isinstance(v.get("judge"), dict)]
            if judged:  # a judged answer (video QA): which judge, its model and its raw reply
                row["judge"] = judged[0]
            if key in guard.warnings:
                row["warnings"] = guard.warnings[key]
            row.update({k: v for k, v in by_doc.get(key, {}).items() if k not in row})
            rows.append(json.loads(json.dumps(row, default=str)))
    for (task, doc_id), reason in sorted(guard.failures.items()):
        rows.append({"task": task, "doc_id": doc_id, "status": "failed", "error": reason})
    return rows


def evaluate(spec: RunSpec, device: str, guard: Any) -> tuple[dict[str, Any], dict[str, list[dict]], list[dict]]:
    """Run the cell's lmms-eval tasks with the method attached; returns (results, samples, efficiency rows).

    Each task is loaded on its own, so a dataset that cannot be loaded is named; every task is wrapped by the guard,
    so a bad document fails alone.
    """
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager, get_task_dict

    from eval.lmms_model import SparseVLMModel

    include = [spec.task.include_path] if spec.task.include_path else None
    manager = TaskManager(include_path=include, include_defaults=include is None)
    tasks = {}
    for name in spec.task.lmms_tasks:
        # a video-QA task takes the cell's data folder, protocol and judge as task options (video_qa_utils.py)
        request = {"task": name, "video_qa": spec.video_qa_options()} if spec.task.video else name
        try:
            loaded = get_task_dict([request], manager, "simple")
        except Exception as err:
            cause = err.last_attempt.exception() if hasattr(err, "last_attempt") else err  # tenacity.RetryError
            raise RuntimeError(f"task {name}: cannot load its dataset: {type(cause).__name__}: {cause}") from cause
        tasks[name] = guard.attach(name, loaded[name])
    lm = SparseVLMModel.from_spec(spec, device)
    lm.doc_guard = guard
    output = simple_evaluate(
        model=lm,
        tasks=list(tasks.values()),
        limit=spec.limit,
        batch_size=spec.batch_size,
        log_samples=True,  # per-document rows are this harness's record of what ran
        task_manager=manager,
        random_seed=spec.seed,
        numpy_random_seed=spec.seed,
        torch_random_seed=spec.seed,
    )
    if output is None:
        raise RuntimeError("lmms-eval returned no results")
    add_stderrs(output["results"], output.get("samples") or {}, tasks, spec)
    return output["results"], output.get("samples") or {}, lm.efficiency_records


# ------------------------------------------------------------------------------------------------------ one cell
def _command() -> str:
    """The command that reproduces this cell: its own overrides (also right under Slurm, where argv is submitit's)."""
    if HydraConfig.initialized():
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("hydra.")]
        return "python -m eval.run " + " ".join(overrides)
    return " ".join(sys.argv)


def rerun_reason(previous: RunRecord | None, spec: RunSpec, fingerprint: str | None, run_dir: Path) -> str | None:
    """Why a cell must be (re)computed, or None when its record is complete and current."""
    if previous is None:
        return "no record"
    if previous.status != "ok":
        return f"the last attempt {previous.status}"
    if spec.force:
        return "force=true"
    n_docs, n_failed = previous.documents.get("n") or 0, previous.documents.get("n_failed") or 0
    if n_docs and n_failed / n_docs > spec.max_failed_fraction:
        return f"{n_failed} of {n_docs} documents failed, more than max_failed_fraction={spec.max_failed_fraction}"
    if previous.provenance.model_fingerprint != fingerprint:
        return f"the checkpoint {spec.model.pretrained} changed since its record"
    expected = previous.samples.get("sha256")
    if expected and file_sha256(run_dir / previous.samples.get("file", "samples.jsonl")) != expected:
        return "samples.jsonl does not match its record (an interrupted or corrupted write)"
    if previous.provenance.code_hash != code_hash():
        stale = f"recorded with code {previous.provenance.code_hash}, this is {code_hash()}"
        if spec.stale == "rerun":
            return f"stale: {stale} (stale=keep or stale=warn reuse it)"
        if spec.stale == "warn":
            log.warning("reusing %s although it is stale: %s", spec.run_id, stale)
    return None


def _read_previous(path: Path) -> RunRecord | None:
    try:
        return load_record(path)
    except FileNotFoundError:
        return None
    except (OSError, RecordError) as err:
        log.warning("unreadable record %s (%s): the cell reruns", path, err)
        return None


def _document_summary(guard: Any) -> dict[str, Any]:
    examples = [f"{task} doc {doc_id}: {reason}" for (task, doc_id), reason in sorted(guard.failures.items())]
    return {
        "n": guard.n_docs,
        "n_failed": len(guard.failures),
        "n_warned": len(guard.warnings),
        "failed_examples": examples[:FAILED_EXAMPLES],
    }


def _compute(spec: RunSpec, record: RunRecord, device: str) -> tuple[list[dict[str, Any]], Exception | None]:
    """Evaluate into `record` (status ok, or failed with the reason); returns the per-document rows and the error."""
    from eval.docguard import DocGuard

    guard = DocGuard(group_size=spec.task.limit_multiple)
    rows: list[dict[str, Any]] = []
    error = None
    try:
        results, samples, efficiency = evaluate(spec, device, guard)
        rows = _sample_rows(samples, efficiency, guard)
        record.metrics = _clean_metrics(results)
        value, missing = primary_value(results, spec)
        record.primary = {
            "column": spec.task.column,
            "value": value,
            "metrics": list(spec.task.metrics),
            "combine": spec.task.combine,
            "scale": spec.task.scale,
            "missing": missing,
            **primary_stderr(results, spec),
        }
        record.efficiency = aggregate_efficiency(efficiency)
        record.documents = _document_summary(guard)
        n_docs, n_failed = record.documents["n"], record.documents["n_failed"]
        if n_docs and n_failed / n_docs > spec.max_failed_fraction:
            raise RuntimeError(
                f"{n_failed} of {n_docs} documents failed ({n_failed / n_docs:.1%} > max_failed_fraction "
                f"{spec.max_failed_fraction:.1%}): " + "; ".join(record.documents["failed_examples"])
            )
        if value is None:
            raise RuntimeError(f"lmms-eval results lack {', '.join(missing)}")
        record.status = "ok"
    except Exception as err:
        error = err
        record.status = "failed"
        record.error = f"{type(err).__name__}: {str(err).strip()}"
        record.documents = record.documents or _document_summary(guard)
        rows = rows or _sample_rows({}, [], guard)
        log.error("cell %s failed: %s\n%s", spec.run_id, record.error, traceback.format_exc())
    return rows, error


def _finish(spec: RunSpec, record: RunRecord, rows: list[dict[str, Any]], keep_previous_ok: bool) -> None:
    """Write samples.jsonl then record.json (atomically, record last); an I/O error becomes the cell's failure."""
    run_dir = spec.run_dir
    record.provenance.finished_at = now()
    target = run_dir / ("failed_attempt.json" if keep_previous_ok and record.status != "ok" else "record.json")
    try:
        if target.name == "record.json" and (rows or spec.log_samples):
            sha = write_jsonl(rows if spec.log_samples else [], run_dir / "samples.jsonl")
            record.samples = {"file": "samples.jsonl", "sha256": sha, "rows": len(rows) if spec.log_samples else 0}
        write_record(record, target)
    except OSError as err:  # e.g. ENOSPC: say so in the record if there is still room for that
        record.status, record.error = "failed", f"OSError writing the cell's files: {err}"
        record.samples = {}
        write_record(record, target)


def _log_wandb(spec: RunSpec, record: RunRecord, rows: list[dict[str, Any]] | None) -> None:
    """Log an ok cell to W&B (rows read back from samples.jsonl when resuming) and store the outcome in its record."""
    from eval.wandb_logger import log_run

    if rows is None:
        path = spec.run_dir / record.samples.get("file", "samples.jsonl")
        rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    record.wandb = {"status": "pending"}  # if this process dies while logging, the next run logs again
    write_record(record, spec.run_dir / "record.json")
    record.wandb = log_run(record, rows, spec.logger, spec.run_dir)
    write_record(record, spec.run_dir / "record.json")


def run_cell(cfg: DictConfig, check_device: bool = True) -> CellOutcome:
    """Run (or skip) one cell under its lock; never raises for a config error or a failed cell (unless fail_fast)."""
    try:
        spec = spec_from_config(cfg)
        device, spec = preflight(spec, check_device=check_device)
    except ConfigError as err:
        return CellOutcome("rejected", None, str(err))
    run_dir, record_path = spec.run_dir, spec.run_dir / "record.json"
    fingerprint = model_fingerprint(spec.model.pretrained)
    with cell_lock(
        run_dir,
        on_wait=lambda holder: log.info(
            "%s is being computed by %s: waiting for it, then skipping it if it completes", spec.run_id, holder
        ),
    ):
        removed = remove_temp_files(run_dir)
        if (run_dir / "running.json").exists():  # we hold the lock: whoever wrote it is gone
            removed.append(run_dir / "running.json")
            (run_dir / "running.json").unlink()
        if removed:
            log.info("%s: cleaned up after an interrupted run: %s", spec.run_id, ", ".join(p.name for p in removed))
        previous = _read_previous(record_path)
        reason = rerun_reason(previous, spec, fingerprint, run_dir)
        if reason is None:
            log.info("skip %s: complete record at %s (force=true reruns)", spec.run_id, record_path)
            if spec.logger["name"] == "wandb" and (previous.wandb or {}).get("status") not in ("ok", "disabled"):
                _log_wandb(spec, previous, None)
            return CellOutcome("skipped", spec.run_id, "complete", previous)
        log.info("run %s -> %s (%s)", spec.run_id, run_dir, reason)
        if spec.cpu_threads is not None:
            import torch

            torch.set_num_threads(spec.cpu_threads)
        attempt = uuid.uuid4().hex[:8]
        write_json(
            {"attempt": attempt, "pid": os.getpid(), "host": socket.gethostname(), "started_at": now()},
            run_dir / "running.json",
        )
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        record = RunRecord(
            run_id=spec.run_id,
            experiment=spec.experiment,
            grid=spec.grid,
            config=OmegaConf.to_container(cfg, resolve=True),
            status="failed",
            provenance=capture_provenance(spec.seed, device, _command(), fingerprint),
            is_full_eval=spec.limit is None,
        )
        started = time.perf_counter()
        rows, error = _compute(spec, record, device)
        keep_previous_ok = previous is not None and previous.status == "ok"
        _finish(spec, record, rows, keep_previous_ok)
        (run_dir / "running.json").unlink(missing_ok=True)
        log.info(
            "%s %s in %.1f s: %s = %s",
            record.status,
            spec.run_id,
            time.perf_counter() - started,
            spec.task.column,
            record.primary.get("value"),
        )
        if record.status == "ok" and spec.logger["name"] == "wandb":
            _log_wandb(spec, record, rows)
    if error is not None and spec.fail_fast:
        raise error
    if record.status != "ok":
        kept = " (the previous ok record is kept; see failed_attempt.json)" if keep_previous_ok else ""
        return CellOutcome("failed", spec.run_id, (record.error or "") + kept, record)
    return CellOutcome("ok", spec.run_id, f"{spec.task.column} = {record.primary['value']:.4g}", record)


# ------------------------------------------------------------------------------------------------------ CLI
def describe_outcome(outcome: CellOutcome) -> str:
    """One line for a cell's outcome."""
    return f"{outcome.status}: {outcome.run_id or '(no run id)'}: {outcome.detail}"


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")  # absolute: any caller works
def hydra_main(cfg: DictConfig) -> dict[str, Any]:
    """One cell per call; a single run exits with the cell's status, a sweep's cells return it to the sweeper."""
    outcome = run_cell(cfg)
    if HydraConfig.get().mode == RunMode.RUN:
        if outcome.status == "rejected":
            print(f"config error: {outcome.detail}", file=sys.stderr)
        else:
            print(describe_outcome(outcome), file=sys.stderr if outcome.status == "failed" else sys.stdout)
        sys.exit(EXIT_CODES[outcome.status])
    return outcome.to_dict()


def main(argv: list[str] | None = None) -> None:
    """CLI: check that the config composes (one line, exit 2, if not), then hand over to Hydra."""
    from eval.cli import composition_error

    args = sys.argv[1:] if argv is None else argv
    error = composition_error(args)
    if error is not None:
        print(f"config error: {error}", file=sys.stderr)
        sys.exit(2)
    multirun = [a for a in args if a in ("-m", "--multirun")]  # Hydra's parser wants flags before the overrides
    sys.argv = [sys.argv[0], *multirun, *(a for a in args if a not in multirun)]
    hydra_main()


if __name__ == "__main__":
    main()

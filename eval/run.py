"""The Hydra runner: validate -> (skip if done) -> load model -> lmms-eval -> record.json (+ optional W&B).

python -m eval.run model=llava-1.5-7b method=sparsevlm budget=64 task=pope
python -m eval.run --multirun method=sparsevlm,fastv budget=64,192 task=pope launcher=submitit_local
python -m eval.run experiment=table1 launcher=slurm
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from eval.config import ConfigError, RunSpec, spec_from_config
from eval.records import (
    RunRecord,
    aggregate_efficiency,
    capture_provenance,
    model_fingerprint,
    now,
    read_record,
    write_record,
)

log = logging.getLogger("eval.run")


def resolve_device(device: str) -> str:
    """'auto' -> cuda when available, else cpu."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def primary_value(results: dict[str, Any], spec: RunSpec) -> float | None:
    """The cell's Table-1 number: task metrics combined (mean or sum) and scaled, or None if any is missing."""
    values = []
    for task in spec.task.lmms_tasks:
        for metric in spec.task.metrics:
            value = results.get(task, {}).get(f"{metric},none")
            if not isinstance(value, int | float):
                return None
            values.append(float(value))
    combined = sum(values) if spec.task.combine == "sum" else sum(values) / len(values)
    return combined * spec.task.scale


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


def _sample_rows(samples: dict[str, list[dict]], efficiency: list[dict]) -> list[dict[str, Any]]:
    """One JSON row per evaluated document: prediction, target, and that document's efficiency numbers."""
    by_doc = {(e.get("task"), e.get("doc_id")): e for e in efficiency}
    rows = []
    for task, items in (samples or {}).items():
        for item in items:
            resps = item.get("filtered_resps") or item.get("resps") or [None]
            row = {"task": task, "doc_id": item.get("doc_id"), "prediction": resps[0], "target": item.get("target")}
            row.update({k: v for k, v in by_doc.get((task, item.get("doc_id")), {}).items() if k not in row})
            rows.append(json.loads(json.dumps(row, default=str)))
    return rows


def evaluate(spec: RunSpec, device: str) -> tuple[dict[str, Any], dict[str, list[dict]], list[dict[str, Any]]]:
    """Run the cell's lmms-eval tasks with the method attached; returns (results, samples, efficiency rows)."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from eval.lmms_model import SparseVLMModel

    lm = SparseVLMModel.from_spec(spec, device)
    include = [spec.task.include_path] if spec.task.include_path else None
    manager = TaskManager(include_path=include, include_defaults=include is None)
    output = simple_evaluate(
        model=lm,
        tasks=list(spec.task.lmms_tasks),
        limit=spec.limit,
        batch_size=spec.batch_size,
        log_samples=spec.log_samples,
        task_manager=manager,
        random_seed=spec.seed,
        numpy_random_seed=spec.seed,
        torch_random_seed=spec.seed,
    )
    if output is None:
        raise RuntimeError("lmms-eval returned no results")
    return output["results"], output.get("samples") or {}, lm.efficiency_records


def preflight(spec: RunSpec) -> None:
    """Check the method against the checkpoint's config (depth, heads, visual tokens) before loading weights."""
    import warnings

    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(spec.model.pretrained, revision=spec.model.revision)
    except (OSError, ValueError):
        return  # no config reachable yet (e.g. hub offline): the model load reports it
    text = getattr(config, "text_config", None)
    n_visual = getattr(config, "image_seq_length", None)
    if text is None or n_visual is None:
        return
    try:
        spec.method.check_model(text.num_hidden_layers, text.num_attention_heads)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            spec.method.plan(text.num_hidden_layers, n_visual)
    except ValueError as err:
        raise ConfigError(
            f"{err} ({spec.model.pretrained}: {text.num_hidden_layers} layers, {n_visual} visual tokens)"
        ) from None


def run_cell(cfg: DictConfig) -> RunRecord:
    """Run (or skip) one cell and write its record; a failure is recorded and, unless fail_fast, not raised."""
    spec = spec_from_config(cfg)
    preflight(spec)
    record_path = spec.run_dir / "record.json"
    fingerprint = model_fingerprint(spec.model.pretrained)
    previous = read_record(record_path)
    if not spec.force and previous is not None and previous.status == "ok":
        if previous.provenance.model_fingerprint == fingerprint:
            log.info("skip %s: complete record at %s (force=true reruns)", spec.run_id, record_path)
            return previous
        log.info("rerun %s: the checkpoint %s changed since its record", spec.run_id, spec.model.pretrained)
    device = resolve_device(spec.model.device)
    if spec.cpu_threads is not None:
        import torch

        torch.set_num_threads(spec.cpu_threads)
    config = OmegaConf.to_container(cfg, resolve=True)
    record = RunRecord(
        run_id=spec.run_id,
        experiment=spec.experiment,
        grid=spec.grid,
        config=config,
        status="running",
        provenance=capture_provenance(spec.seed, device, " ".join(sys.argv), fingerprint),
        is_full_eval=spec.limit is None,
    )
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    (spec.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    write_record(record, record_path)
    log.info("run %s -> %s", spec.run_id, spec.run_dir)
    rows: list[dict[str, Any]] = []
    error: BaseException | None = None
    started = time.perf_counter()
    try:
        results, samples, efficiency = evaluate(spec, device)
        record.metrics = _clean_metrics(results)
        record.primary = {
            "column": spec.task.column,
            "value": primary_value(results, spec),
            "metrics": list(spec.task.metrics),
            "combine": spec.task.combine,
            "scale": spec.task.scale,
        }
        record.efficiency = aggregate_efficiency(efficiency)
        rows = _sample_rows(samples, efficiency)
        if record.primary["value"] is None:
            raise RuntimeError(f"lmms-eval results lack {spec.task.metrics} for {spec.task.lmms_tasks}")
        record.status = "ok"
    except Exception as err:
        error = err
        record.status = "failed"
        record.error = f"{type(err).__name__}: {err}"
        log.error("cell %s failed: %s\n%s", spec.run_id, record.error, traceback.format_exc())
    record.provenance.finished_at = now()
    if rows:
        with open(spec.run_dir / "samples.jsonl", "w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
    write_record(record, record_path)
    log.info(
        "%s %s in %.1f s: %s = %s",
        record.status,
        spec.run_id,
        time.perf_counter() - started,
        spec.task.column,
        record.primary.get("value"),
    )
    if spec.logger["name"] == "wandb":
        from eval.wandb_logger import log_run

        record.wandb = log_run(record, rows, spec.logger, spec.run_dir)
        write_record(record, record_path)
    if error is not None and spec.fail_fast:
        raise error
    return record


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point: one cell per call (Hydra's launcher loops over sweeps)."""
    try:
        record = run_cell(cfg)
    except ConfigError as err:
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # one bad combination must not stop the other cells
            log.error("config error, cell skipped: %s", err)
            return None
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    return record.primary.get("value")


if __name__ == "__main__":
    main()

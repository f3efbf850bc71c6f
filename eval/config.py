"""Validate a composed Hydra config into a typed RunSpec -- before any model or dataset is loaded."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, MissingMandatoryValue, OmegaConf

from eval.registry import describe, make_method
from sparsevlm import PruningMethod

DTYPES = ("float32", "float16", "bfloat16")
ATTENTION = ("sdpa", "eager", "flash_attention_2")
LOGGERS = ("none", "wandb")
WANDB_MODES = ("offline", "online", "disabled")


class ConfigError(ValueError):
    """A one-line, user-facing configuration error."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    pretrained: str
    revision: str | None
    dtype: str
    attn_implementation: str
    device: str


@dataclass(frozen=True)
class TaskSpec:
    name: str
    column: str
    lmms_tasks: tuple[str, ...]
    metrics: tuple[str, ...]
    combine: str
    scale: float
    include_path: str | None


@dataclass(frozen=True)
class RunSpec:
    """Everything a cell needs, validated."""

    experiment: str
    model: ModelSpec
    method: PruningMethod
    budget: int | None
    task: TaskSpec
    limit: int | None
    batch_size: int
    seed: int
    cpu_threads: int | None
    force: bool
    fail_fast: bool
    log_samples: bool
    results_dir: Path
    logger: dict[str, Any]

    @property
    def grid(self) -> dict[str, Any]:
        """The keys reporters pivot on."""
        version = getattr(self.method, "version", None)
        return {
            "model": self.model.name,
            "method": self.method.name,
            "version": version,
            "budget": self.budget,
            "task": self.task.name,
        }

    @property
    def run_id(self) -> str:
        """Readable and unique: grid keys plus a digest of everything that changes the result."""
        identity = {
            "model": asdict(self.model),
            "method": describe(self.method),
            "task": asdict(self.task),
            "limit": self.limit,
            "batch_size": self.batch_size,
            "seed": self.seed,
        }
        digest = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]
        label = self.method.name + (f"-v{self.grid['version']}" if self.grid["version"] else "")
        budget = "full" if self.budget is None else f"b{self.budget}"
        return f"{self.model.name}_{label}_{budget}_{self.task.name}_{digest}"

    @property
    def run_dir(self) -> Path:
        return self.results_dir / self.experiment / self.run_id


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: got {value!r}, allowed: {', '.join(map(str, allowed))}")


def _positive_int(name: str, value: Any, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}: expected a positive int{' or null' if nullable else ''}, got {value!r}")


def spec_from_config(cfg: DictConfig) -> RunSpec:
    """Check every field of a composed config and build the RunSpec; raises ConfigError with one line."""
    try:
        model_cfg = OmegaConf.to_container(cfg.model, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        raise ConfigError(f"model.{err.key}: missing; set it on the command line, e.g. model.{err.key}=/path") from None
    model = ModelSpec(**{k: model_cfg.get(k) for k in ModelSpec.__dataclass_fields__})
    if not model.pretrained:
        raise ConfigError("model.pretrained: missing; give a HF hub id or a local checkpoint directory")
    _choice("model.dtype", model.dtype, DTYPES)
    _choice("model.attn_implementation", model.attn_implementation, ATTENTION)
    if not (model.device in ("auto", "cpu", "cuda") or str(model.device).startswith("cuda:")):
        raise ConfigError(f"model.device: got {model.device!r}, allowed: auto, cpu, cuda, cuda:N")

    budget = cfg.budget
    options_cfg = cfg.method.get("options")
    options = OmegaConf.to_container(options_cfg, resolve=True) if options_cfg is not None else {}
    try:
        method = make_method(cfg.method.name, budget, **options)
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from None

    task_cfg = OmegaConf.to_container(cfg.task, resolve=True)
    task = TaskSpec(
        name=task_cfg.get("name"),
        column=task_cfg.get("column") or task_cfg.get("name"),
        lmms_tasks=tuple(task_cfg.get("lmms_tasks") or ()),
        metrics=tuple(task_cfg.get("metrics") or ()),
        combine=task_cfg.get("combine", "mean"),
        scale=float(task_cfg.get("scale", 1)),
        include_path=task_cfg.get("include_path"),
    )
    if not task.lmms_tasks or not task.metrics:
        raise ConfigError(f"task.{task.name}: lmms_tasks and metrics must both be non-empty lists")
    _choice("task.combine", task.combine, ("mean", "sum"))
    if task.include_path is not None and not Path(task.include_path).is_dir():
        raise ConfigError(f"task.include_path: {task.include_path!r} is not a directory")

    _positive_int("limit", cfg.limit, nullable=True)
    _positive_int("batch_size", cfg.batch_size)
    _positive_int("cpu_threads", cfg.get("cpu_threads"), nullable=True)
    logger = OmegaConf.to_container(cfg.logger, resolve=True)
    _choice("logger", logger.get("name"), LOGGERS)
    if logger["name"] == "wandb":
        _choice("logger.mode", logger.get("mode"), WANDB_MODES)
    return RunSpec(
        experiment=str(cfg.experiment_name),
        model=model,
        method=method,
        budget=budget,
        task=task,
        limit=cfg.limit,
        batch_size=cfg.batch_size,
        seed=int(cfg.seed),
        cpu_threads=cfg.get("cpu_threads"),
        force=bool(cfg.force),
        fail_fast=bool(cfg.fail_fast),
        log_samples=bool(cfg.log_samples),
        results_dir=Path(cfg.results_dir),
        logger=logger,
    )

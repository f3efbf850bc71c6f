"""Validate a composed Hydra config into a typed RunSpec -- before any model or dataset is loaded.

Every field is type-checked (no silent coercion: `seed=1.5` or `force=no` are errors, not seed 1 and force=True), names
that become paths are checked so that no cell can write outside `results_dir`, and method options are checked against
the method's own field types. Checks that need the checkpoint, the runtime or lmms-eval's task index are in
eval.preflight; both raise ConfigError with one line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, MissingMandatoryValue, OmegaConf

from eval.registry import METHODS, describe, make_method
from sparsevlm.arch import ATTENTION_IMPLEMENTATIONS
from sparsevlm.methods.base import PruningMethod

DTYPES = ("float32", "float16", "bfloat16")
ATTENTION = ATTENTION_IMPLEMENTATIONS
LOGGERS = ("none", "wandb")
WANDB_MODES = ("offline", "online", "disabled")
STALE_POLICIES = ("rerun", "warn", "keep")
BUDGET_CONVENTIONS = ("native", "flops")
# A name that becomes one path component: no separators, no "..", no leading dot or dash.
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=-]*$")

ROOT_KEYS = {
    "model",
    "method",
    "task",
    "launcher",
    "logger",
    "experiment_name",
    "budget",
    "retain_ratio",
    "limit",
    "batch_size",
    "seed",
    "cpu_threads",
    "force",
    "fail_fast",
    "results_dir",
    "log_samples",
    "max_failed_fraction",
    "stale",
    "allow_unpruned",
    "budget_convention",
    "flops_reference",
    "flops_text_tokens",
}
MODEL_KEYS = {"name", "pretrained", "revision", "dtype", "attn_implementation", "device"}
TASK_KEYS = {"name", "column", "lmms_tasks", "metrics", "combine", "scale", "include_path", "limit_multiple"}
LOGGER_KEYS = {"name", "project", "entity", "mode", "tags"}
METHOD_KEYS = {"name", "options"}


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
    limit_multiple: int = 1  # documents scored in groups (MME: question pairs); a limit must be a multiple of it


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
    max_failed_fraction: float = 0.05
    stale: str = "rerun"
    allow_unpruned: bool = False
    budget_convention: str = "native"  # "flops": the method's budget is resolved to match flops_reference's FLOPs
    flops_reference: str = "sparsevlm"
    flops_text_tokens: int = 118
    retain_ratio: float | None = None  # a per-sample budget: round(ratio * the sample's visual tokens)

    def with_method(self, method: PruningMethod) -> RunSpec:
        """The same cell with another method object (a budget resolved to a convention)."""
        return dataclasses.replace(self, method=method)

    @property
    def grid(self) -> dict[str, Any]:
        """The keys reporters pivot on (the budget as configured; the method holds the one that ran)."""
        version = getattr(self.method, "version", None)
        grid = {
            "model": self.model.name,
            "method": self.method.name,
            "version": version,
            "budget": self.budget,
            "task": self.task.name,
        }
        if self.retain_ratio is not None:
            grid["retain_ratio"] = self.retain_ratio
        if self.budget_convention != "native":  # the budget the method ran with, resolved from the configured one
            grid |= {"budget_convention": self.budget_convention, "method_budget": self.method.budget}
        return grid

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
        if self.budget_convention != "native":
            identity["budget_convention"] = [self.budget_convention, self.flops_reference, self.flops_text_tokens]
        digest = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]
        label = self.method.name + (f"-v{self.grid['version']}" if self.grid["version"] else "")
        label += "-flops" if self.budget_convention == "flops" else ""
        budget = "full" if self.budget is None else f"b{self.budget}"
        budget = f"r{self.retain_ratio:g}" if self.retain_ratio is not None else budget
        return f"{self.model.name}_{label}_{budget}_{self.task.name}_{digest}"

    @property
    def run_dir(self) -> Path:
        """The cell's directory: results_dir/experiment/run_id (checked to stay inside results_dir)."""
        return self.results_dir / self.experiment / self.run_id


# ------------------------------------------------------------------------------------------------ typed field checks
def choice(name: str, value: Any, allowed: tuple) -> Any:
    """The value if it is one of `allowed`, else a ConfigError naming the field and the allowed values."""
    if value not in allowed or isinstance(value, bool) != any(isinstance(a, bool) for a in allowed):
        raise ConfigError(f"{name}: got {value!r}, allowed: {', '.join(map(str, allowed))}")
    return value


def integer(name: str, value: Any, minimum: int | None = None, nullable: bool = False) -> int | None:
    """An int (bools and floats such as 1.5 are rejected, never truncated), optionally >= minimum or null."""
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        what = "an int" if minimum is None else ("a positive int" if minimum == 1 else f"an int >= {minimum}")
        raise ConfigError(f"{name}: expected {what}{' or null' if nullable else ''}, got {value!r}")
    return value


def boolean(name: str, value: Any) -> bool:
    """A real boolean: `force=no` or `force="false"` are errors, not truthy strings."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    return value


def number(name: str, value: Any, low: float, high: float) -> float:
    """A float (ints accepted) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ConfigError(f"{name}: expected a number in [{low}, {high}], got {value!r}")
    return float(value)


def text(name: str, value: Any, nullable: bool = False) -> str | None:
    """A non-empty string (or null when allowed)."""
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name}: expected a non-empty string{' or null' if nullable else ''}, got {value!r}")
    return value


def path_name(name: str, value: Any) -> str:
    """A string usable as one path component (it names a directory under results_dir)."""
    text(name, value)
    if not SAFE_NAME.match(value) or value in (".", ".."):
        raise ConfigError(
            f"{name}: {value!r} must be a plain name (letters, digits, '_', '.', '-', '+', '='; no '/' or '..'), "
            "because it names a directory under results_dir"
        )
    return value


def _unknown_keys(section: str, data: dict, allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        where = f"{section}." if section else ""
        raise ConfigError(f"{where}{unknown[0]}: not a config key; allowed: {', '.join(sorted(allowed))}")


def _container(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.to_container(cfg[key], resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        raise ConfigError(f"{key}.{err.key}: missing; set it on the command line, e.g. {key}.{err.key}=...") from None


def _model(cfg: DictConfig) -> ModelSpec:
    data = _container(cfg, "model")
    if not isinstance(data, dict):
        raise ConfigError(f"model: expected a model config group, got {data!r}")
    _unknown_keys("model", data, MODEL_KEYS)
    if not data.get("pretrained"):
        raise ConfigError("model.pretrained: missing; give a HF hub id or a local checkpoint directory")
    device = text("model.device", data.get("device"))
    if not (device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", device)):
        raise ConfigError(f"model.device: got {device!r}, allowed: auto, cpu, cuda, cuda:N (N a device index)")
    return ModelSpec(
        name=path_name("model.name", data.get("name")),
        pretrained=text("model.pretrained", data["pretrained"]),
        revision=text("model.revision", data.get("revision"), nullable=True),
        dtype=choice("model.dtype", data.get("dtype"), DTYPES),
        attn_implementation=choice("model.attn_implementation", data.get("attn_implementation"), ATTENTION),
        device=device,
    )


def _task(cfg: DictConfig) -> TaskSpec:
    data = _container(cfg, "task")
    if not isinstance(data, dict):
        raise ConfigError(f"task: expected a task config group, got {data!r}")
    _unknown_keys("task", data, TASK_KEYS)
    name = path_name("task.name", data.get("name"))
    tasks, metrics = data.get("lmms_tasks"), data.get("metrics")
    for key, values in (("lmms_tasks", tasks), ("metrics", metrics)):
        if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
            raise ConfigError(f"task.{key}: expected a non-empty list of names, got {values!r}")
    include = text("task.include_path", data.get("include_path"), nullable=True)
    if include is not None and not Path(include).is_dir():
        raise ConfigError(f"task.include_path: {include!r} is not a directory")
    return TaskSpec(
        name=name,
        column=text("task.column", data.get("column") or name),
        lmms_tasks=tuple(tasks),
        metrics=tuple(metrics),
        combine=choice("task.combine", data.get("combine", "mean"), ("mean", "sum")),
        scale=number("task.scale", data.get("scale", 1), 1e-9, 1e9),
        include_path=include,
        limit_multiple=integer("task.limit_multiple", data.get("limit_multiple", 1), minimum=1),
    )


def _logger(cfg: DictConfig) -> dict[str, Any]:
    data = _container(cfg, "logger")
    if not isinstance(data, dict):
        raise ConfigError(f"logger: expected a logger config group, got {data!r}")
    _unknown_keys("logger", data, LOGGER_KEYS)
    choice("logger", data.get("name"), LOGGERS)
    if data["name"] == "wandb":
        choice("logger.mode", data.get("mode"), WANDB_MODES)
        text("logger.project", data.get("project"))
        if not isinstance(data.get("tags") or [], list):
            raise ConfigError(f"logger.tags: expected a list, got {data.get('tags')!r}")
    return data


def _method(cfg: DictConfig, budget: int | None, retain_ratio: float | None = None) -> PruningMethod:
    data = _container(cfg, "method")
    if not isinstance(data, dict):
        raise ConfigError(f"method: expected a method config group, got {data!r}")
    _unknown_keys("method", data, METHOD_KEYS)
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"method.options: expected a mapping of method fields, got {options!r}")
    name = text("method.name", data.get("name"))
    if retain_ratio is not None:
        if "retain_ratio" not in getattr(METHODS.get(name), "__dataclass_fields__", {}):
            raise ConfigError(f"retain_ratio: method {name} has no budget to set per sample; use retain_ratio=null")
        options = {**options, "retain_ratio": retain_ratio}
    try:
        return make_method(name, budget, **options)
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err).splitlines()[0]) from None


def spec_from_config(cfg: DictConfig) -> RunSpec:
    """Check every field of a composed config and build the RunSpec; raises ConfigError with one line."""
    _unknown_keys("", {k: None for k in cfg if k != "hydra"}, ROOT_KEYS)
    model = _model(cfg)
    budget = integer("budget", cfg.get("budget"), minimum=1, nullable=True)
    retain_ratio = cfg.get("retain_ratio")
    if retain_ratio is not None:
        retain_ratio = number("retain_ratio", retain_ratio, 0.0, 1.0)
        if not 0 < retain_ratio < 1:
            raise ConfigError(
                f"retain_ratio: expected null or a share of the visual tokens in (0, 1), got {retain_ratio}"
            )
        if budget is not None:
            raise ConfigError(
                "retain_ratio: set budget=null with it (a cell's budget is either equivalent tokens or a share)"
            )
    method = _method(cfg, budget, retain_ratio)
    task = _task(cfg)
    limit = integer("limit", cfg.get("limit"), minimum=1, nullable=True)
    if limit is not None and limit % task.limit_multiple:
        raise ConfigError(
            f"limit: task {task.name} scores documents in groups of {task.limit_multiple} (e.g. MME's question pairs), "
            f"so limit must be a multiple of {task.limit_multiple}; got {limit}"
        )
    results_dir = Path(text("results_dir", cfg.get("results_dir")))
    spec = RunSpec(
        experiment=path_name("experiment_name", cfg.get("experiment_name")),
        model=model,
        method=method,
        budget=budget,
        task=task,
        limit=limit,
        batch_size=integer("batch_size", cfg.get("batch_size"), minimum=1),
        seed=integer("seed", cfg.get("seed")),
        cpu_threads=integer("cpu_threads", cfg.get("cpu_threads"), minimum=1, nullable=True),
        force=boolean("force", cfg.get("force")),
        fail_fast=boolean("fail_fast", cfg.get("fail_fast")),
        log_samples=boolean("log_samples", cfg.get("log_samples")),
        results_dir=results_dir,
        logger=_logger(cfg),
        max_failed_fraction=number("max_failed_fraction", cfg.get("max_failed_fraction", 0.05), 0.0, 1.0),
        stale=choice("stale", cfg.get("stale", "rerun"), STALE_POLICIES),
        allow_unpruned=boolean("allow_unpruned", cfg.get("allow_unpruned", False)),
        budget_convention=choice("budget_convention", cfg.get("budget_convention", "native"), BUDGET_CONVENTIONS),
        flops_reference=choice("flops_reference", cfg.get("flops_reference", "sparsevlm"), tuple(METHODS)),
        flops_text_tokens=integer("flops_text_tokens", cfg.get("flops_text_tokens", 118), minimum=0),
        retain_ratio=retain_ratio,
    )
    if spec.retain_ratio is not None and spec.budget_convention != "native":
        raise ConfigError(
            "budget_convention: flops matches a budget in tokens; it cannot be combined with retain_ratio"
        )
    if spec.budget_convention == "flops" and spec.budget is None:
        raise ConfigError("budget_convention: flops needs a budget (the reference method's nominal budget)")
    if not spec.run_dir.resolve().is_relative_to(results_dir.resolve()):
        raise ConfigError(f"run_id: {spec.run_id!r} would write outside results_dir {str(results_dir)!r}")
    return spec

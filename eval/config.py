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

from eval.judges import DEFAULT_MODEL, JUDGES
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
    "judge",
    "video_data_dir",
}
MODEL_KEYS = {"name", "pretrained", "revision", "dtype", "attn_implementation", "device"}
TASK_KEYS = {"name", "column", "lmms_tasks", "metrics", "combine", "scale", "include_path", "limit_multiple", "video"}
VIDEO_KEYS = {"folder", "data_root", "first_n", "questions", "answers", "video_dir", "video_prefix"}
JUDGE_KEYS = {
    "none": {"name"},
    "match": {"name"},
    "gpt": {"name", "model", "base_url", "api_key_env", "temperature", "max_tokens", "timeout_s", "max_retries",
            "backoff_s", "cache_dir"},
}  # fmt: skip
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
class VideoSpec:
    """Where a video-QA task's files are and which of its questions a cell scores (eval/tasks/video_qa_utils.py)."""

    folder: str  # the dataset's folder under video_data_dir (Video-LLaVA's names, e.g. MSVD_Zero_Shot_QA)
    data_root: str | None = None  # the dataset folder itself; overrides video_data_dir/folder
    first_n: int | None = None  # the first N questions in file order (the paper's protocol: 1000); null = all
    questions: str | None = None  # file-name overrides of the task's layout (null: the task YAML's)
    answers: str | None = None
    video_dir: str | None = None
    video_prefix: str | None = None


@dataclass(frozen=True)
class JudgeSpec:
    """How a video-QA cell's answers are judged (eval/judges.py); `none` for tasks that lmms-eval scores itself."""

    name: str
    model: str | None = None
    base_url: str | None = None  # null: OPENAI_BASE_URL, else https://api.openai.com/v1
    api_key_env: str | None = None  # the environment variable holding the key (never written to a record)
    temperature: float | None = None  # null: not sent (the endpoint's default, as in the authors' script)
    max_tokens: int | None = None
    timeout_s: float = 60.0
    max_retries: int = 5
    backoff_s: float = 2.0
    cache_dir: str | None = None

    def options(self) -> dict[str, Any]:
        """The `video_qa.judge` options of the lmms-eval task (eval.judges.make_judge)."""
        return asdict(self) if self.name == "gpt" else {"name": self.name}

    def identity(self) -> dict[str, Any]:
        """What changes a judged result: the judge, its model, endpoint and sampling (not retries or the cache)."""
        keys = ("name", "model", "base_url", "temperature", "max_tokens")
        return {k: v for k, v in asdict(self).items() if k in keys}


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
    video: VideoSpec | None = None  # video-QA tasks only


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
    judge: JudgeSpec | None = None  # video-QA tasks only
    video_data_dir: str | None = None  # the folder of the video datasets' folders (Video-LLaVA's GPT_Zero_Shot_QA)

    @property
    def video_root(self) -> Path | None:
        """The video-QA task's data folder: task.video.data_root, else video_data_dir/task.video.folder."""
        video = self.task.video
        if video is None:
            return None
        if video.data_root:
            return Path(video.data_root)
        return Path(self.video_data_dir) / video.folder if self.video_data_dir else None

    def video_qa_options(self) -> dict[str, Any]:
        """The `video_qa` options handed to a video-QA lmms-eval task (eval/tasks/video_qa_utils.py)."""
        video = self.task.video
        layout = {k: getattr(video, k) for k in ("questions", "answers", "video_dir", "video_prefix")}
        return {
            "data_root": str(self.video_root),
            "first_n": video.first_n,
            "judge": self.judge.options(),
            **{k: v for k, v in layout.items() if v is not None},
        }

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
        if self.judge is not None:
            grid["judge"] = self.judge.name
        return grid

    @property
    def run_id(self) -> str:
        """Readable and unique: grid keys plus a digest of everything that changes the result."""
        task = asdict(self.task)
        if self.task.video is None:
            del task["video"]  # the identities of image cells stay what they were before video tasks existed
        else:
            del task["video"]["data_root"]  # where the data lies is not what is measured
        identity = {
            "model": asdict(self.model),
            "method": describe(self.method),
            "task": task,
            "limit": self.limit,
            "batch_size": self.batch_size,
            "seed": self.seed,
        }
        if self.budget_convention != "native":
            identity["budget_convention"] = [self.budget_convention, self.flops_reference, self.flops_text_tokens]
        if self.judge is not None:
            identity["judge"] = self.judge.identity()
        digest = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]
        label = self.method.name + (f"-v{self.grid['version']}" if self.grid["version"] else "")
        label += "-flops" if self.budget_convention == "flops" else ""
        budget = "full" if self.budget is None else f"b{self.budget}"
        budget = f"r{self.retain_ratio:g}" if self.retain_ratio is not None else budget
        task = self.task.name + (f"-{self.judge.name}" if self.judge else "")
        return f"{self.model.name}_{label}_{budget}_{task}_{digest}"

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
    video = _video(data["video"]) if data.get("video") is not None else None
    return TaskSpec(
        name=name,
        column=text("task.column", data.get("column") or name),
        lmms_tasks=tuple(tasks),
        metrics=tuple(metrics),
        combine=choice("task.combine", data.get("combine", "mean"), ("mean", "sum")),
        scale=number("task.scale", data.get("scale", 1), 1e-9, 1e9),
        include_path=include,
        limit_multiple=integer("task.limit_multiple", data.get("limit_multiple", 1), minimum=1),
        video=video,
    )


def _video(data: Any) -> VideoSpec:
    if not isinstance(data, dict):
        raise ConfigError(f"task.video: expected a mapping (folder, data_root, first_n, ...), got {data!r}")
    _unknown_keys("task.video", data, VIDEO_KEYS)
    names = {k: text(f"task.video.{k}", data.get(k), nullable=True) for k in ("questions", "answers", "video_dir")}
    prefix = data.get("video_prefix")
    if prefix is not None and not isinstance(prefix, str):
        raise ConfigError(f"task.video.video_prefix: expected a string or null, got {prefix!r}")
    return VideoSpec(
        folder=text("task.video.folder", data.get("folder")),
        data_root=text("task.video.data_root", data.get("data_root"), nullable=True),
        first_n=integer("task.video.first_n", data.get("first_n"), minimum=1, nullable=True),
        video_prefix=prefix,
        **names,
    )


def _judge(cfg: DictConfig, task: TaskSpec) -> JudgeSpec | None:
    """The judge group: `none` for tasks lmms-eval scores itself, `gpt` or `match` for video-QA tasks."""
    data = _container(cfg, "judge") if "judge" in cfg else {"name": "none"}
    if not isinstance(data, dict):
        raise ConfigError(f"judge: expected a judge config group, got {data!r}")
    name = choice("judge", data.get("name"), ("none", *JUDGES))
    _unknown_keys("judge", data, JUDGE_KEYS[name])
    if task.video is None:
        if name != "none":
            raise ConfigError(f"judge: task {task.name} is scored by lmms-eval's own metrics; use judge=none")
        return None
    if name == "none":
        raise ConfigError(f"judge: task {task.name} needs a judge; allowed: {', '.join(JUDGES)} (docs/video.md)")
    if name == "match":
        return JudgeSpec(name)
    base_url = text("judge.base_url", data.get("base_url"), nullable=True)
    if base_url is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", base_url):
        raise ConfigError(f"judge.base_url: expected an http(s) URL such as http://127.0.0.1:8000/v1, got {base_url!r}")
    temperature = data.get("temperature")
    return JudgeSpec(
        name=name,
        model=text("judge.model", data.get("model", DEFAULT_MODEL)),
        base_url=base_url,
        api_key_env=text("judge.api_key_env", data.get("api_key_env"), nullable=True),
        temperature=None if temperature is None else number("judge.temperature", temperature, 0.0, 2.0),
        max_tokens=integer("judge.max_tokens", data.get("max_tokens"), minimum=1, nullable=True),
        timeout_s=number("judge.timeout_s", data.get("timeout_s", 60), 0.001, 3600),
        max_retries=integer("judge.max_retries", data.get("max_retries", 5), minimum=0),
        backoff_s=number("judge.backoff_s", data.get("backoff_s", 2), 0.0, 600),
        cache_dir=text("judge.cache_dir", data.get("cache_dir")),
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
    judge = _judge(cfg, task)
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
        judge=judge,
        video_data_dir=text("video_data_dir", cfg.get("video_data_dir"), nullable=True),
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

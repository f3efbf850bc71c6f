"""Checks that need the outside world, done before any weights load: checkpoint, runtime, task index, budget.

All are fast (no torch, no transformers, no lmms_eval import) and raise ConfigError with one line:
- the checkpoint: a local directory holds a readable config.json of a supported model type, a tokenizer and complete
  weight files (sizes checked against the safetensors headers); a hub id is in the local cache or the hub answers;
- the runtime: the device exists (CUDA probed through the driver library), the attention kernel is importable;
- the tasks: every lmms-eval task exists in the runner's search roots and declares the configured metrics;
- video-QA data and judge: the data folder holds the task's question and answer files and its video folder; an
  OpenAI judge has its key in the environment;
- the method: fits the model's depth and heads, and its budget is below the model's visual token count (a budget at
  or above it would record an unpruned run under a budget label), unless allow_unpruned is set.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib.util
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from eval.config import ConfigError, RunSpec
from eval.judges import DEFAULT_BASE_URL
from eval.task_index import find_task, task_config
from sparsevlm.arch import (
    FAMILIES,
    check_hook_points,
    check_positions,
    check_supported,
    fixed_visual_count,
    nominal_visual_tokens,
    text_config_of,
)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
# transformers' defaults for fields a LLaVA config.json may omit (LlamaConfig and LlavaConfig defaults)
LLAMA_DEFAULTS = {"num_hidden_layers": 32, "num_attention_heads": 32, "hidden_size": 4096, "intermediate_size": 11008}
CLIP_L_LAYERS, LLAVA_FEATURE_LAYER = 24, -2  # LlavaConfig's defaults: CLIP ViT-L, the second-to-last layer
HUB_PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class ModelFacts:
    """What the checks read from a checkpoint's config.json."""

    model_type: str
    n_layers: int
    n_heads: int
    n_visual: int
    source: str  # "local" | "hub cache" | "hub"
    n_tower_layers: int = 0  # vision layers up to the one the LLM reads (where tower-merging methods act)
    hidden: int = 4096  # the LLM's width and MLP width (the FLOPs formula)
    intermediate: int = 11008
    visual_varies: bool = False  # the count depends on the input (anyres, dynamic resolution): n_visual is typical


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise ConfigError(f"model.pretrained: cannot read {what} {path}: {err.strerror}") from None
    except ValueError as err:
        raise ConfigError(f"model.pretrained: {what} {path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"model.pretrained: {what} {path} is not a JSON object")
    return data


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is incomplete (its size is below what its header declares), or None if it is whole."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            return f"{size} bytes, too short for a safetensors header"
        header_len = int.from_bytes(raw, "little")
        if 8 + header_len > size:
            return f"{size} bytes, but its header alone needs {8 + header_len}"
        try:
            header = json.loads(handle.read(header_len))
        except ValueError:
            return "its header is not valid JSON"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    expected = 8 + header_len + max(ends, default=0)
    return None if size >= expected else f"{size} bytes, its header declares {expected}"


def check_local_files(root: Path) -> None:
    """A tokenizer and complete weight files are present in a local checkpoint directory."""
    if not any((root / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(f"model.pretrained: {root} has no tokenizer ({', '.join(TOKENIZER_FILES)})")
    present = [name for name in WEIGHT_FILES if (root / name).is_file()]
    if not present:
        raise ConfigError(f"model.pretrained: {root} has no weight files ({', '.join(WEIGHT_FILES)})")
    shards: list[Path] = []
    for index_name in (n for n in present if n.endswith(".index.json")):
        index = _read_json(root / index_name, "weight index")
        shards += [root / name for name in sorted(set((index.get("weight_map") or {}).values()))]
    shards += [root / name for name in present if not name.endswith(".index.json")]
    for shard in shards:
        if not shard.is_file():
            raise ConfigError(f"model.pretrained: weight shard {shard} listed in the index is missing")
        if shard.suffix == ".safetensors":
            problem = safetensors_problem(shard)
            if problem:
                raise ConfigError(f"model.pretrained: weight file {shard} is truncated ({problem})")


def _hub_reachable() -> str | None:
    """None if the hub answers a TCP connect within a few seconds, else why not (offline mode, DNS, timeout)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as err:
        return f"{endpoint.hostname} unreachable ({err.strerror or err})"
    return None


def _config_json(pretrained: str, revision: str | None) -> tuple[dict[str, Any], str]:
    """config.json of a local checkpoint or a hub model (local cache first), and where it came from."""
    root = Path(pretrained).expanduser()
    if root.exists():
        if not root.is_dir():
            raise ConfigError(f"model.pretrained: {pretrained} is a file; expected a checkpoint directory")
        if not (root / "config.json").is_file():
            empty = not any(root.iterdir())
            raise ConfigError(
                f"model.pretrained: {pretrained} {'is empty' if empty else 'has no config.json'} "
                "(expected a Hugging Face checkpoint directory)"
            )
        return _read_json(root / "config.json", "config"), "local"
    if not HUB_ID.match(pretrained):
        raise ConfigError(f"model.pretrained: {pretrained} does not exist (and is not a hub id like org/name)")
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(pretrained, "config.json", revision=revision)
    if isinstance(cached, str):
        return _read_json(Path(cached), "config"), "hub cache"
    problem = _hub_reachable()
    if problem:
        raise ConfigError(
            f"model.pretrained: {pretrained!r} is neither a local directory nor a cached hub model, and the hub "
            f"cannot be reached ({problem})"
        )
    try:
        path = hf_hub_download(pretrained, "config.json", revision=revision)
    except Exception as err:  # huggingface_hub raises many types (404, gated, revision not found)
        reason = str(err).splitlines()[0]
        raise ConfigError(f"model.pretrained: cannot fetch config.json of {pretrained!r}: {reason}") from None
    return _read_json(Path(path), "config"), "hub"


def model_facts(pretrained: str, revision: str | None) -> ModelFacts:
    """The model type, depth, heads and visual token count a checkpoint declares; ConfigError if unsupported."""
    config, source = _config_json(pretrained, revision)
    text = text_config_of(config)
    vision = config.get("vision_config") or {}
    try:
        check_supported(config.get("model_type"), text["model_type"])
    except ValueError as err:
        raise ConfigError(f"model.pretrained: {pretrained}: {str(err).removeprefix('model: ')}") from None
    n_visual = nominal_visual_tokens(config)
    n_vision = int(vision.get("num_hidden_layers", CLIP_L_LAYERS))
    feature = config.get("vision_feature_layer", LLAVA_FEATURE_LAYER)
    feature = feature[-1] if isinstance(feature, list) else feature
    return ModelFacts(
        n_tower_layers=n_vision + feature + 1 if feature < 0 else feature,
        model_type=config["model_type"],
        n_layers=int(text.get("num_hidden_layers", LLAMA_DEFAULTS["num_hidden_layers"])),
        n_heads=int(text.get("num_attention_heads", LLAMA_DEFAULTS["num_attention_heads"])),
        n_visual=int(n_visual),
        source=source,
        hidden=int(text.get("hidden_size", LLAMA_DEFAULTS["hidden_size"])),
        intermediate=int(text.get("intermediate_size", LLAMA_DEFAULTS["intermediate_size"])),
        visual_varies=not fixed_visual_count(config),
    )


def cuda_device_count() -> int:
    """CUDA devices the driver reports (0 without a driver), via libcuda: no torch import needed."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a CUDA device exists, else 'cpu'; other values unchanged."""
    if device != "auto":
        return device
    return "cuda" if cuda_device_count() > 0 else "cpu"


def check_runtime(spec: RunSpec) -> str:
    """The resolved device, after checking that it exists and that the attention kernel can run there."""
    device = resolve_device(spec.model.device)
    if device.startswith("cuda"):
        count = cuda_device_count()
        index = int(device.partition(":")[2] or 0)
        if count == 0:
            raise ConfigError(f"model.device: {device} requested but no CUDA device is available; use cpu or auto")
        if index >= count:
            raise ConfigError(f"model.device: {device} requested but only {count} CUDA device(s) exist")
    if spec.model.attn_implementation == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            raise ConfigError(
                "model.attn_implementation: flash_attention_2 needs the flash-attn package (not installed)"
            )
        if not device.startswith("cuda"):
            raise ConfigError(f"model.attn_implementation: flash_attention_2 runs on CUDA only, not on {device}")
        if spec.model.dtype == "float32":
            raise ConfigError("model.attn_implementation: flash_attention_2 needs dtype float16 or bfloat16")
    return device


def check_tasks(spec: RunSpec) -> None:
    """Every lmms-eval task of the cell exists and declares the metrics the cell combines."""
    for name in spec.task.lmms_tasks:
        try:
            entry = find_task(name, spec.task.include_path)
        except LookupError as err:
            raise ConfigError(f"task.lmms_tasks: {err}") from None
        if entry.metrics is not None:
            missing = [m for m in spec.task.metrics if m not in entry.metrics]
            if missing:
                raise ConfigError(
                    f"task.metrics: {missing[0]!r} is not a metric of {name}; it declares: {', '.join(entry.metrics)}"
                )


def check_video_data(spec: RunSpec) -> None:
    """A video-QA cell's data folder holds its tasks' question and answer files and video folder (docs/video.md)."""
    video = spec.task.video
    if video is None:
        return
    where = "task.video.data_root" if video.data_root else "video_data_dir"
    root = spec.video_root
    if root is None:
        raise ConfigError(
            f"video_data_dir: missing; the folder holding {video.folder}/ (Video-LLaVA's eval/GPT_Zero_Shot_QA, "
            "docs/video.md), or set task.video.data_root"
        )
    if not root.is_dir():
        raise ConfigError(f"{where}: {root} is not a directory (expected {video.folder}/, as Video-LLaVA ships it)")
    overrides = {k: getattr(video, k) for k in ("questions", "answers", "video_dir") if getattr(video, k) is not None}
    for name in spec.task.lmms_tasks:
        layout = {**(task_config(name, spec.task.include_path).get("video_layout") or {}), **overrides}
        for key in ("questions", "answers"):
            if layout.get(key) and not (root / layout[key]).is_file():
                raise ConfigError(f"{where}: {root} has no {layout[key]} (the {key} of {name}; docs/video.md)")
        if not (root / layout["video_dir"]).is_dir():
            raise ConfigError(f"{where}: {root} has no video folder {layout['video_dir']}/ ({name}; docs/video.md)")


def check_judge(spec: RunSpec) -> None:
    """An OpenAI-hosted GPT judge has its API key in the environment (other endpoints may need none)."""
    judge = spec.judge
    if judge is None or judge.name != "gpt":
        return
    base_url = judge.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    key_env = judge.api_key_env or "OPENAI_API_KEY"
    if urlparse(base_url).hostname == urlparse(DEFAULT_BASE_URL).hostname and not os.environ.get(key_env):
        raise ConfigError(
            f"judge.api_key_env: {key_env} is not set, and the judge at {base_url} needs a key "
            "(or point judge.base_url at a local OpenAI-compatible server, or use judge=match offline)"
        )


def check_method(spec: RunSpec, facts: ModelFacts) -> None:
    """The method fits the model, and its budget prunes something (unless allow_unpruned)."""
    where = f"({spec.model.pretrained}: {facts.n_layers} layers, {facts.n_visual} visual tokens)"
    if facts.visual_varies:
        where = where.replace(" visual tokens)", " visual tokens in a typical input)")
    if spec.budget is not None and spec.budget >= facts.n_visual and not spec.allow_unpruned:
        raise ConfigError(
            f"budget: {spec.budget} >= the model's {facts.n_visual} visual tokens, so nothing would be pruned {where}; "
            "use a smaller budget, method=dense, or allow_unpruned=true"
        )
    try:
        check_hook_points(facts.model_type, spec.method)
        spec.method.check_model(facts.n_layers, facts.n_heads)
        if FAMILIES[facts.model_type].vision_stage:
            spec.method.check_tower(facts.n_tower_layers, facts.n_visual)
        plan = spec.method.for_sample(facts.n_visual).plan(facts.n_layers, facts.n_visual)
        check_positions(FAMILIES[facts.model_type].positions, plan)
    except ValueError as err:
        raise ConfigError(f"{err} {where}") from None


def resolve_budget(spec: RunSpec, facts: ModelFacts) -> RunSpec:
    """The cell with its method's budget resolved to the configured convention (FLOPs-matched or as written)."""
    if spec.budget_convention != "flops":
        return spec
    from sparsevlm.budgets import flops_matched_budget
    from sparsevlm.registry import make_method

    try:
        reference = make_method(spec.flops_reference, spec.budget)
        budget = flops_matched_budget(
            spec.method,
            reference,
            facts.n_layers,
            facts.n_visual,
            spec.flops_text_tokens,
            facts.hidden,
            facts.intermediate,
        )
    except ValueError as err:
        raise ConfigError(f"budget_convention: flops: {err}") from None
    return spec.with_method(dataclasses.replace(spec.method, budget=budget))


def preflight(spec: RunSpec, check_device: bool = True) -> tuple[str, RunSpec]:
    """Run every check that needs the outside world, cheapest first; returns the device and the resolved cell.

    check_device=False skips the device and kernel checks, for a process that only launches cells elsewhere (a Slurm
    login node has no GPU); the cell checks them again where it runs.
    """
    device = check_runtime(spec) if check_device else spec.model.device
    check_tasks(spec)
    check_video_data(spec)
    check_judge(spec)
    facts = model_facts(spec.model.pretrained, spec.model.revision)
    spec = resolve_budget(spec, facts)
    check_method(spec, facts)
    if facts.source == "local":  # last: the only check that reads weight files (their headers)
        check_local_files(Path(spec.model.pretrained).expanduser())
    return device, spec

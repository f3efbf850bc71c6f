"""Bad configurations through the real CLI: each one line on stderr, exit 2, fast, and nothing heavy loaded.

All cases run in one child interpreter (eval.run's CLI called once per case, output captured at the file-descriptor
level), which also proves that no case imports torch or opens a weight file: a rejection never loads a model. Two real
command lines are timed separately, and `python -X importtime` shows what a rejection imports.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eval.preflight import cuda_device_count

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "models" / "tiny-llava"

# (arguments after the results_dir, expected start of the message after "config error: ")
CASES: list[tuple[list[str], str]] = [
    (["method=dense", "budget=64"], "budget: dense keeps every visual token, so budget must be null (got 64)"),
    (["budget=0"], "budget: expected a positive int or null, got 0"),
    (["budget=abc"], "budget: expected a positive int or null, got 'abc'"),
    (["budget=1.5"], "budget: expected a positive int or null, got 1.5"),
    (["method=sparsevlm", "budget=null"], "budget: method 'sparsevlm' needs a token budget"),
    (["model=local"], "model.pretrained: missing"),
    (["model.dtype=float8"], "model.dtype: got 'float8', allowed: float32, float16, bfloat16"),
    (["model.device=tpu"], "model.device: got 'tpu', allowed: auto, cpu, cuda, cuda:N"),
    (["model.device=cuda:abc"], "model.device: got 'cuda:abc'"),
    (["model.attn_implementation=magic"], "model.attn_implementation: got 'magic'"),
    (["model.revision=123"], "model.revision: expected a non-empty string or null, got 123"),
    (["limit=0"], "limit: expected a positive int or null, got 0"),
    (["limit=2.5"], "limit: expected a positive int or null, got 2.5"),
    (["batch_size=-2"], "batch_size: expected a positive int, got -2"),
    (["batch_size=true"], "batch_size: expected a positive int, got True"),
    (["seed=1.5"], "seed: expected an int, got 1.5"),
    (["seed=abc"], "seed: expected an int, got 'abc'"),
    (["force=no"], "force: expected true or false, got 'no'"),
    (["force=off"], "force: expected true or false, got 'off'"),
    (['force="false"'], "force: expected true or false, got 'false'"),
    (["fail_fast=maybe"], "fail_fast: expected true or false, got 'maybe'"),
    (["log_samples=1"], "log_samples: expected true or false, got 1"),
    (["allow_unpruned=yes"], "allow_unpruned: expected true or false, got 'yes'"),
    (["cpu_threads=0"], "cpu_threads: expected a positive int or null, got 0"),
    (["stale=sometimes"], "stale: got 'sometimes', allowed: rerun, warn, keep"),
    (["max_failed_fraction=2"], "max_failed_fraction: expected a number in [0.0, 1.0], got 2"),
    (["experiment_name=../../x"], "experiment_name: '../../x' must be a plain name"),
    (["experiment_name=a/b"], "experiment_name: 'a/b' must be a plain name"),
    (["model.name=../x"], "model.name: '../x' must be a plain name"),
    (["method.options.version=3"], "method.options.version: got 3, allowed: '1.0', '1.5', '2.0'"),
    (["+method.options.colour=red"], "method.options.colour: not an option of 'sparsevlm'"),
    (["+method.options.prune_layers=[6,2]"], "method.options.prune_layers: expected strictly increasing layers"),
    (["+method.options.positions=diagonal"], "method.options.positions: got 'diagonal'"),
    (["method=sparsevlm_v1", "+method.options.scale=2.0"], "scale, bias: give both"),
    (["method=random", "method.options.seed=abc"], "method.options.seed: expected int, got 'abc'"),
    (["method=random", "+method.options.seed=1"], "method.options.seed: already a config key"),
    (["method=fastv", "method.options.layer=abc"], "method.options.layer: expected int | None, got 'abc'"),
    (["method=fastv", "method.options.layer=40"], "layer: K=40 must be < the model's 8 decoder layers"),
    (["method=fastv", "budget=2", "+method.options.convention=input"], "budget=2 is unreachable when pruning after"),
    (["method=sparsevlm_v2", "+method.options.heads=14"], "heads: top-14 head selection needs >= 14 attention heads"),
    (["method=fastv", "budget=144"], "budget: 144 >= the model's 144 visual tokens, so nothing would be pruned"),
    (["budget=10000"], "budget: 10000 >= the model's 144 visual tokens, so nothing would be pruned"),
    (["budget_convention=energy"], "budget_convention: got 'energy', allowed: native, flops"),
    (["flops_reference=foo"], "flops_reference: got 'foo', allowed: dense, sparsevlm, fastv"),
    (["flops_text_tokens=-1"], "flops_text_tokens: expected an int >= 0, got -1"),
    (["method=dense", "budget=null", "budget_convention=flops"], "budget_convention: flops needs a budget"),
    (["method=sparsevlm_v1", "budget_convention=flops"], "budget_convention: flops: budgets: this plan's keep counts"),
    (["task.combine=max"], "task.combine: got 'max', allowed: mean, sum"),
    (["task=mme_synth", "limit=3"], "limit: task mme_synth scores documents in groups of 2"),
    (["task.lmms_tasks=[x]"], "task.lmms_tasks: no task 'x' among lmms-eval's built-in tasks"),
    (["task.lmms_tasks=[pope_ad]"], "task.lmms_tasks: no task 'pope_ad' among lmms-eval's built-in tasks"),
    (["task.lmms_tasks=[pope_full]"], "task.lmms_tasks: 'pope_full' is a task group"),
    (["task.metrics=[foo]"], "task.metrics: 'foo' is not a metric of pope_adv"),
    (["task.include_path=/nonexistent"], "task.include_path: '/nonexistent' is not a directory"),
    (["logger=wandb", "logger.mode=cloud"], "logger.mode: got 'cloud', allowed: offline, online, disabled"),
    (["method=foo"], "method: no option 'foo'; available: cdpruner, dart, dense, divprune, fastv, pdrop"),
    (["task=foo"], "task: no option 'foo'; available:"),
    (["budgte=3"], "budgte: not a config key (did you mean budget?"),
    (["model.dtyp=float16"], "model.dtyp: not a config key (did you mean model.dtype?"),
    (["+foo=1"], "foo: not a config key; allowed:"),
    (["x=["], "override 'x=[':"),
    (["method=sparsevlm,fastv"], "method=sparsevlm,fastv: several values need --multirun"),
    (["--multirun", "method=sparsevlm,foo"], "results_dir="),  # a swept value checked by the sweeper, same line
    (["model=local", "model.pretrained=/nonexistent/ckpt"], "model.pretrained: /nonexistent/ckpt does not exist"),
    (["model=local", "model.pretrained=nobody/no-such-model"], "model.pretrained: 'nobody/no-such-model' is neither"),
    (["model=local", "model.pretrained={empty}"], "model.pretrained: {empty} is empty"),
    (["model=local", "model.pretrained={bert}"], "model.pretrained: {bert}: unsupported model_type='bert'"),
    (["model=local", "model.pretrained={bad_json}"], "model.pretrained: config {bad_json}/config.json is not valid"),
    (["model=local", "model.pretrained={no_weights}"], "model.pretrained: {no_weights} has no weight files"),
    (["model=local", "model.pretrained={no_tokenizer}"], "model.pretrained: {no_tokenizer} has no tokenizer"),
    (["model=local", "model.pretrained={truncated}"], "model.pretrained: weight file {truncated}/model.safetensors"),
    (["retain_ratio=0.2"], "retain_ratio: set budget=null with it"),
    (["budget=null", "retain_ratio=1.5"], "retain_ratio: expected a number in [0.0, 1.0], got 1.5"),
    (["budget=null", "retain_ratio=0"], "retain_ratio: expected null or a share of the visual tokens in (0, 1)"),
    (["method=dense", "budget=null", "retain_ratio=0.2"], "retain_ratio: method dense has no budget to set per sample"),
    (["model=local", "model.pretrained={qwen}", "budget=256"], "positions: 'contiguous' renumbers survivors"),
    (
        ["model=local", "model.pretrained={qwen}", "budget=256", "method=sparsevlm_v2", "+method.options.heads=12"],
        "gravity: SparseVLM+'s RoPE distance prior is defined for 1-D positions",
    ),
    (
        ["model=local", "model.pretrained={next}", "method=visionzip", "budget=320"],
        "method: visionzip acts on the vision tower's per-image output, which llava_next reshapes",
    ),
    (
        ["model=local", "model.pretrained={next}", "method=pooling", "budget=320"],
        "method: pooling pools the visual block as one square patch grid",
    ),
    (["task=msvd_qa"], "judge: task msvd_qa needs a judge; allowed: gpt, match"),
    (["judge=gpt"], "judge: task pope is scored by lmms-eval's own metrics; use judge=none"),
    (["judge=foo"], "judge: no option 'foo'; available: gpt, match, none"),
    (["task=msvd_qa", "judge=match"], "video_data_dir: missing; the folder holding MSVD_Zero_Shot_QA/"),
    (
        ["task=tgif_qa", "judge=match", "video_data_dir=/nonexistent"],
        "video_data_dir: /nonexistent/TGIF_Zero_Shot_QA is",
    ),
    (
        ["task=msvd_qa", "judge=match", "task.video.data_root={empty}"],
        "task.video.data_root: {empty} has no test_q.json",
    ),
    (
        ["task=msvd_qa", "judge=match", "task.video.data_root={no_videos}"],
        "task.video.data_root: {no_videos} has no video",
    ),
    (["task=msvd_qa", "judge=match", "task.video.first_n=0"], "task.video.first_n: expected a positive int or null"),
    (["task=msvd_qa", "judge=match", "+task.video.frames=4"], "task.video.frames: not a config key; allowed:"),
    (["task=msvd_qa", "judge=gpt", "judge.temperature=hot"], "judge.temperature: expected a number in [0.0, 2.0]"),
    (["task=msvd_qa", "judge=gpt", "judge.base_url=localhost:8000"], "judge.base_url: expected an http(s) URL"),
    (["task=msvd_qa", "judge=gpt", "judge.max_retries=-1"], "judge.max_retries: expected an int >= 0, got -1"),
    (["task=msvd_qa", "judge=gpt", "+judge.api_key=sk-x"], "judge.api_key: not a config key; allowed: api_key_env"),
    (["task=msvd_qa", "judge=gpt", "task.video.data_root={video}"], "judge.api_key_env: OPENAI_API_KEY is not set"),
]
if cuda_device_count() == 0:  # errors only on a machine without CUDA (CI)
    CASES.append((["model.device=cuda"], "model.device: cuda requested but no CUDA device is available"))
    CASES.append((["model.device=cuda:1"], "model.device: cuda:1 requested but no CUDA device is available"))
if importlib.util.find_spec("flash_attn") is None:
    CASES.append(
        (["model.attn_implementation=flash_attention_2"], "model.attn_implementation: flash_attention_2 needs the")
    )
# Cases that must read a weight file's header (and nothing more) to find the problem.
READS_HEADER = {"{truncated}"}

DRIVER = r"""
import json, os, sys, tempfile, time
opened = []
def watch(event, args):
    if event == "open" and str(args[0]).endswith(".safetensors"):
        opened.append(args[0])
sys.addaudithook(watch)
import eval.run as runner
results = []
for args in json.loads(sys.stdin.read()):
    del opened[:]
    saved = os.dup(1), os.dup(2)
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    sys.stdout.flush(); sys.stderr.flush()
    os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
    started = time.perf_counter()
    try:
        runner.main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    elapsed = time.perf_counter() - started
    sys.stdout.flush(); sys.stderr.flush()
    os.dup2(saved[0], 1); os.dup2(saved[1], 2)
    out.seek(0); err.seek(0)
    results.append({"code": code, "stdout": out.read().decode(), "stderr": err.read().decode(), "elapsed": elapsed,
                    "opened": list(opened), "heavy": [m for m in ("torch", "lmms_eval", "transformers.modeling_utils")
                                                       if m in sys.modules]})
print(json.dumps(results))
"""


def _checkpoints(base: Path) -> dict[str, str]:
    """Broken checkpoint directories, one per way a local checkpoint can be wrong."""
    broken = ("bert", "bad_json", "no_weights", "no_tokenizer", "truncated", "qwen", "next")
    dirs = {name: base / name for name in ("empty", *broken)}
    dirs["empty"].mkdir(parents=True)
    dirs["video"], dirs["no_videos"] = base / "video", base / "no_videos"
    for name in ("video", "no_videos"):  # Video-LLaVA's MSVD layout; no_videos lacks its videos/ folder
        (dirs[name] / "videos").mkdir(parents=True, exist_ok=name == "video")
        (dirs[name] / "test_q.json").write_text("[]")
        (dirs[name] / "test_a.json").write_text("[]")
    (dirs["no_videos"] / "videos").rmdir()
    for name in broken:
        shutil.copytree(TINY, dirs[name])
    config = json.loads((TINY / "config.json").read_text())
    # Qwen2.5-VL-7B-Instruct's released config.json keeps the text model's settings at the top level
    qwen = {"model_type": "qwen2_5_vl", "num_hidden_layers": 28, "num_attention_heads": 28, "hidden_size": 3584,
            "intermediate_size": 18944, "vision_config": {"patch_size": 14, "spatial_merge_size": 2}}  # fmt: skip
    (dirs["qwen"] / "config.json").write_text(json.dumps(qwen))
    (dirs["next"] / "config.json").write_text(json.dumps({**config, "model_type": "llava_next"}))
    (dirs["bert"] / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    (dirs["bad_json"] / "config.json").write_text('{"model_type": "llava",')
    (dirs["no_weights"] / "model.safetensors").unlink()
    (dirs["no_tokenizer"] / "tokenizer.json").unlink()
    weights = (TINY / "model.safetensors").read_bytes()
    (dirs["truncated"] / "model.safetensors").write_bytes(weights[: len(weights) - 1000])
    return {name: str(path) for name, path in dirs.items()}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> list[dict]:
    base = tmp_path_factory.mktemp("bad_configs")
    paths = _checkpoints(base / "ckpt")
    runs = [
        [f"results_dir={base / 'runs'}", "model=tiny-llava", "budget=48", *(a.format(**paths) for a in args)]
        for args, _ in CASES
    ]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(base), "HF_HUB_OFFLINE": "1", "HF_HOME": str(base / "hf")}
    out = subprocess.run(
        [sys.executable, "-c", DRIVER], input=json.dumps(runs), capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    for result, (args, expected) in zip(results, CASES, strict=True):
        result["expected"] = expected.format(**paths)
        result["reads_header"] = any(marker in " ".join(args) for marker in READS_HEADER)
    return results


def test_there_are_at_least_45_cases():
    assert len(CASES) >= 45 and len({tuple(args) for args, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[" ".join(args) for args, _ in CASES])
def test_bad_config_is_one_line_exit_2_and_loads_nothing(outcomes, index):
    result = outcomes[index]
    lines = result["stderr"].strip().splitlines()
    assert result["code"] == 2, result
    assert len(lines) == 1, result["stderr"]
    assert lines[0].startswith("config error: " + result["expected"]), lines[0]
    assert result["heavy"] == [], f"imported {result['heavy']}"
    if not result["reads_header"]:
        assert result["opened"] == [], f"opened weight files: {result['opened']}"
    assert result["elapsed"] < 3.0, f"took {result['elapsed']:.1f} s"


@pytest.mark.parametrize("args", [["seed=1.5"], ["model=tiny-llava", "budget=10000"]])
def test_a_real_command_line_rejects_in_under_3_seconds(tmp_path, args):
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "eval.run", f"results_dir={tmp_path}", *args], capture_output=True, text=True, cwd=ROOT
    )
    elapsed = time.perf_counter() - started
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and out.stderr.startswith("config error: ")
    assert elapsed < 3.0, f"{elapsed:.2f} s"


def test_rejection_imports_neither_lmms_eval_nor_model_code(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "eval.run",
            f"results_dir={tmp_path}",
            "model=tiny-llava",
            "budget=500",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 2
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "eval.preflight" in imported  # the validation ran
    heavy = sorted(m for m in imported if m.split(".")[0] in ("lmms_eval", "torch") or m.startswith("transformers."))
    assert heavy == []

"""The lmms-eval plugin (eval/lmms_model.py) on a tiny random LLaVA and a local POPE-shaped task, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tiny_checkpoint import save_tiny_checkpoint, write_pope_fixture, write_task

torch.set_num_threads(1)
pytest.importorskip("lmms_eval")

from eval.config import ConfigError  # noqa: E402
from eval.lmms_model import SparseVLMModel, build_method  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N_DOCS = 6
GEN_KWARGS = "max_new_tokens=3"
POPE_METRICS = ("pope_accuracy", "pope_precision", "pope_recall", "pope_f1_score", "pope_yes_ratio")


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> SimpleNamespace:
    """A tiny checkpoint on disk and a `pope_local` task (eval/tasks/pope_local.yaml) pointed at a 6-row fixture."""
    root = tmp_path_factory.mktemp("lmms")
    data = write_pope_fixture(root / "data", n=N_DOCS)
    return SimpleNamespace(
        checkpoint=save_tiny_checkpoint(root / "tiny-llava"), tasks=write_task(root / "tasks", data).parent, root=root
    )


def evaluate(lm: SparseVLMModel, tasks_dir: Path) -> dict:
    """simple_evaluate on pope_local with only our task folder indexed."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    manager = TaskManager(include_path=[str(tasks_dir)], include_defaults=False)
    out = simple_evaluate(
        model=lm,
        tasks=["pope_local"],
        limit=N_DOCS,
        task_manager=manager,
        log_samples=True,
        gen_kwargs=GEN_KWARGS,
        bootstrap_iters=0,
    )
    assert out is not None
    return out


@pytest.fixture(scope="module")
def pruned_run(assets) -> tuple[SparseVLMModel, dict]:
    """SparseVLM v1.5 at budget 64 (of 256 visual tokens), batch size 1, loaded from the checkpoint path."""
    lm = SparseVLMModel(pretrained=str(assets.checkpoint), method="sparsevlm", budget=64, version=1.5)
    return lm, evaluate(lm, assets.tasks)


def image_of(doc: dict) -> list:
    """doc_to_visual for hand-made requests."""
    return [doc["image"]]


def answers(output: dict) -> dict[int, str]:
    return {s["doc_id"]: s["filtered_resps"][0] for s in output["samples"]["pope_local"]}


def test_pope_local_gives_the_official_metrics(pruned_run):
    lm, out = pruned_run
    metrics = out["results"]["pope_local"]
    assert all(f"{m},none" in metrics for m in POPE_METRICS)
    samples = out["samples"]["pope_local"]
    assert sorted(s["doc_id"] for s in samples) == list(range(N_DOCS))
    correct = [s["filtered_resps"][0].lower().strip() == s["target"] for s in samples]
    assert metrics["pope_accuracy,none"] == pytest.approx(sum(correct) / N_DOCS)
    assert metrics["pope_yes_ratio,none"] == pytest.approx(0.5)  # official: from the ground truth (balanced fixture)
    assert len(set(answers(out).values())) > 1  # the tiny model's answers depend on the input


def test_pruned_run_records_per_sample_efficiency(pruned_run):
    lm, out = pruned_run
    rows = {r["doc_id"]: r for r in lm.efficiency_records}
    assert sorted(rows) == list(range(N_DOCS)) and len(lm.efficiency_records) == N_DOCS
    for row in rows.values():
        assert row["task"] == "pope_local" and row["method"] == "sparsevlm" and row["n_visual"] == 256
        assert abs(row["equivalent_tokens"] - 64) <= 1
        assert row["equivalent_tokens"] == pytest.approx(sum(row["visual_out"]) / 8)
        assert row["equivalent_tokens_input"] > row["equivalent_tokens"]
        assert len(row["tokens_in"]) == 8 and row["tokens_in"][0] == row["prompt_tokens"]
        assert row["tokens_in"][-1] == row["prompt_tokens"] - 256 + row["visual_out"][-2]
        assert 1 <= row["output_tokens"] <= 3 and row["e2e_ms"] > 0 and row["batch_size"] == 1
    for sample in out["samples"]["pope_local"]:
        row = rows[sample["doc_id"]]
        assert sample["token_counts"][0] == {
            "input_tokens": row["prompt_tokens"] - 256 + round(row["equivalent_tokens"]),
            "output_tokens": row["output_tokens"],
        }
    throughput = out["throughput"]
    assert throughput["total_gen_tokens"] == sum(r["output_tokens"] for r in rows.values())
    assert throughput["avg_equivalent_tokens"] == pytest.approx(sum(r["equivalent_tokens"] for r in rows.values()) / 6)


def test_batch_size_2_gives_the_same_answers(assets, pruned_run):
    first, single = pruned_run
    lm = SparseVLMModel(model=first.model, processor=first.processor, method=first.method, batch_size=2)
    batched = evaluate(lm, assets.tasks)
    assert answers(batched) == answers(single)
    assert {r["batch_size"] for r in lm.efficiency_records} == {2}
    one = {r["doc_id"]: r["visual_out"] for r in first.efficiency_records}
    assert {r["doc_id"]: r["visual_out"] for r in lm.efficiency_records} == one
    assert first.model is lm.model and hasattr(first, "model")  # lmms-eval's clean() must not drop our model


def test_generation_kwargs_are_honoured_per_group(pruned_run):
    first, _ = pruned_run
    lm = SparseVLMModel(model=first.model, processor=first.processor, method=first.method, batch_size=2)
    lm.task_dict = first.task_dict

    def request(doc_id: int, kwargs: dict) -> SimpleNamespace:
        question = lm.task_dict["pope_local"]["test"][doc_id]["question"]
        return SimpleNamespace(args=(question, kwargs, image_of, doc_id, "pope_local", "test"))

    long, short = {"max_new_tokens": 3, "until": ["\n\n"]}, {"max_new_tokens": 1}
    alone = [r.text for r in lm.generate_until([request(i, long) for i in range(4)])]
    mixed = lm.generate_until([request(0, long), request(1, short), request(2, long), request(3, short)])
    assert [r.text for r in mixed[::2]] == alone[::2]  # answers come back in request order
    assert [r.token_counts.output_tokens for r in mixed] == [3, 1, 3, 1]
    assert [r.text for r in mixed[1::2]] == [t[: len(r.text)] for t, r in zip(alone[1::2], mixed[1::2], strict=True)]
    stopped = lm.generate_until([request(0, {"max_new_tokens": 3, "until": [alone[0][0]]})])[0]
    assert stopped.text == ""  # cut at the stop string
    beams = lm.generate_until([request(i, {"max_new_tokens": 2, "num_beams": 2}) for i in range(2)])
    sampled = lm.generate_until(
        [request(i, {"max_new_tokens": 2, "temperature": 0.7, "do_sample": True}) for i in (0, 1)]
    )
    assert len(beams) == len(sampled) == 2
    assert all(abs(r["equivalent_tokens"] - 64) <= 1 for r in lm.efficiency_records)  # one trace row per request
    assert len(lm.efficiency_records) == 4 + 4 + 1 + 2 + 2

    image_id = lm.model.config.image_token_id

    def favour_image_token(module, args, logits):
        logits = logits.clone()
        logits[..., image_id] += 1e4
        return logits

    handle = lm.model.lm_head.register_forward_hook(favour_image_token)
    try:  # a generated <image> would look like a second image to the engine: the plugin never emits it
        assert lm.generate_until([request(0, {"max_new_tokens": 2})])[0].token_counts.output_tokens == 2
    finally:
        handle.remove()


def test_loglikelihood_and_multi_round(pruned_run):
    first, _ = pruned_run
    dense = SparseVLMModel(model=first.model, processor=first.processor)
    pruned = SparseVLMModel(model=first.model, processor=first.processor, method=first.method)
    doc = {"image": first.task_dict["pope_local"]["test"][0]["image"]}
    for lm in (dense, pruned):
        lm.task_dict = {"t": {"test": [doc]}}

    context = "Is there a dog in the image?"
    gen = pruned.generate_until([SimpleNamespace(args=(context, {"max_new_tokens": 1}, image_of, 0, "t", "test"))])[0]
    multi = pruned.generate_until_multi_round(
        [SimpleNamespace(args=(context, {"max_new_tokens": 1}, image_of, None, 0, "t", "test"))]
    )[0]
    assert multi.text == gen.text

    # dense: the summed log-prob equals -(HF's mean label loss) x continuation length
    proc = dense.processor
    prompt = dense.build_prompt(context, 1)
    inputs = proc(images=[doc["image"]], text=[prompt + " no"], return_tensors="pt")
    n_cont = (
        inputs["input_ids"].shape[1]
        - proc(images=[doc["image"]], text=[prompt], return_tensors="pt")["input_ids"].shape[1]
    )
    labels = inputs["input_ids"].clone()
    labels[:, :-n_cont] = -100
    with torch.no_grad():
        loss = float(dense.model(**inputs, labels=labels).loss)
    (logprob, _), _ = dense.loglikelihood([SimpleNamespace(args=(context, "no", image_of, 0, "t", "test"))] * 2)
    assert logprob == pytest.approx(-loss * n_cont, rel=1e-4)
    assert dense.efficiency_records[0]["equivalent_tokens"] == 256

    # pruned: same request, the method attached to the prefill (different log-prob, budget in the trace)
    ((ll_pruned, greedy),) = pruned.loglikelihood([SimpleNamespace(args=(context, "no", image_of, 0, "t", "test"))])
    assert isinstance(greedy, bool)
    assert ll_pruned != pytest.approx(logprob)
    assert abs(pruned.efficiency_records[-1]["equivalent_tokens"] - 64) <= 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("method=sparsvlm,budget=64", "method: got 'sparsvlm', allowed: "),  # the list: test_unknown_method_...
        ("method=dense,budget=64", "budget: dense keeps every visual token"),
        ("method=fastv", "budget: method 'fastv' needs a token budget"),
        ("method=sparsevlm,budget=-3", "budget: expected a positive int, got -3"),
        ("method=sparsevlm,budget=64,version=3.0", "version: got '3.0', allowed: '1.0', '1.5', '2.0'"),
        ("method=fastv,budget=64,version=2.0", "version: only method=sparsevlm has versions"),
        ("method=sparsevlm,budget=64,heads_top=3", "method.options.heads_top: not an option of 'sparsevlm'"),
        ("method=dense,dtype=float8", "dtype: got 'float8', allowed: float32, float16, bfloat16"),
        ("method=dense,attn_implementation=flex", "attn_implementation: got 'flex', allowed: sdpa, eager"),
        ("method=dense,batch_size=0", "batch_size: expected a positive int, got 0"),
        ("method=dense,device=tpu", "device: got 'tpu', allowed: auto, cpu, cuda, cuda:N, mps"),
        ("method=dense,prompt=chatml", "prompt: got 'chatml', allowed: auto, llava, vicuna_v1"),
    ],
)
def test_bad_model_args_fail_with_one_line_before_loading(args, message, tmp_path):
    missing = tmp_path / "never-loaded"  # loading weights first would raise OSError instead
    with pytest.raises(ValueError) as err:
        SparseVLMModel.create_from_arg_string(f"pretrained={missing},{args}")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_method_lists_every_registered_method(tmp_path):
    with pytest.raises(ValueError) as err:
        SparseVLMModel.create_from_arg_string(f"pretrained={tmp_path / 'never-loaded'},method=sparsvlm,budget=64")
    allowed = str(err.value).split("allowed: ")[1].split(", ")
    assert {"dense", "fastv", "random", "sparsevlm"} <= set(allowed) and allowed == sorted(allowed)


def test_method_options_from_cli_strings():
    method = build_method("sparsevlm", 64, "2.0", prune_layers="[1,3,5]", gravity="false")
    assert method.version == "2.0" and method.prune_layers == (1, 3, 5) and method.gravity is False
    assert build_method("fastv", "128", layer=3).budget == 128
    assert build_method("fastv", " 64 ").budget == 64
    for bad in ("1.5", "064", "+64", "0", 1.5, True):  # parsed, then refused by the runner's own check
        with pytest.raises(ConfigError, match=r"^budget: expected a positive int, got "):
            build_method("fastv", bad)


def test_prompt_styles(pruned_run):
    lm = SparseVLMModel(model=pruned_run[0].model, processor=pruned_run[0].processor)
    assert lm.build_prompt("Q?\nA.", 1) == "USER: <image>\nQ?\nA. ASSISTANT:"  # the checkpoint's chat template
    lm.prompt = "vicuna_v1"
    assert lm.build_prompt("Q?", 1).endswith("polite answers to the human's questions. USER: <image>\nQ? ASSISTANT:")
    lm.prompt = "llava"
    assert lm.build_prompt("Q?", 0) == "USER: Q? ASSISTANT:"


def test_bundled_local_tasks_run(pruned_run):
    """Every task in eval/tasks loads its bundled data (data/synth) and scores with the official functions."""
    lm = SparseVLMModel(model=pruned_run[0].model, processor=pruned_run[0].processor, batch_size=2)
    expected = {
        "pope_local": "pope_f1_score",
        "pope_local_adv": "pope_f1_score",
        "pope_local_pop": "pope_f1_score",
        "pope_local_random": "pope_f1_score",
        "mme_local": "mme_perception_score",
        "gqa_local": "exact_match",
    }
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    manager = TaskManager(include_path=[str(ROOT / "eval" / "tasks")], include_defaults=False)
    assert set(expected) <= set(manager.all_tasks)
    out = simple_evaluate(
        model=lm, tasks=list(expected), limit=2, task_manager=manager, gen_kwargs="max_new_tokens=1", bootstrap_iters=0
    )
    for task, metric in expected.items():
        assert isinstance(out["results"][task][f"{metric},none"], int | float), task
    assert len(lm.efficiency_records) == 2 * len(expected)


def test_the_wheel_registers_no_lmms_eval_entry_point():
    """The harness is not in the wheel, so an entry point naming eval.lmms_model would break lmms-eval's plugins."""
    points = {ep.name: ep.value for ep in metadata.entry_points(group="lmms_eval.models")}
    assert "sparsevlm" not in points


def test_lmms_eval_cli_route(assets):
    """`python -m eval.lmms_cli --model sparsevlm ...` is lmms-eval's CLI with our model; it writes results."""
    out_dir = assets.root / "cli"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    model_args = f"pretrained={assets.checkpoint},method=sparsevlm,budget=64"
    command = [sys.executable, "-m", "eval.lmms_cli", "--model", "sparsevlm", "--model_args", model_args]
    command += ["--tasks", "pope_local", "--include_path", str(assets.tasks), "--limit", "4", "--batch_size", "2"]
    command += ["--gen_kwargs", GEN_KWARGS, "--output_path", str(out_dir)]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    files = list(out_dir.rglob("*_results.json"))
    assert len(files) == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(files[0].read_text())
    assert all(f"{m},none" in results["results"]["pope_local"] for m in POPE_METRICS)
    assert results["config"]["model"] == "sparsevlm" and "budget=64" in results["config"]["model_args"]
    assert results["throughput"]["avg_equivalent_tokens"] == pytest.approx(64, abs=1)

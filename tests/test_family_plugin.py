"""Every family end to end through the lmms-eval plugin: a tiny random checkpoint on disk (its own processor and chat
template) loaded by model_type, pruned, on the bundled synthetic tasks. Accuracy is meaningless on random weights;
the path is what is tested."""

from __future__ import annotations

from pathlib import Path

import pytest
from family_checkpoints import save_family_checkpoint

from eval.lmms_model import SparseVLMModel

ROOT = Path(__file__).resolve().parents[1]
TASKS = {"pope_local": "pope_f1_score", "gqa_local": "exact_match"}
BUDGET = 8


@pytest.mark.parametrize("family", ["video_llava", "llava_next", "llava_onevision", "qwen2_5_vl"])
def test_a_family_checkpoint_runs_the_bundled_tasks_pruned(tmp_path, family):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    checkpoint = save_family_checkpoint(family, tmp_path / family)
    options = {"positions": "original"} if family == "qwen2_5_vl" else {}  # M-RoPE: see docs/architectures.md
    lm = SparseVLMModel(pretrained=str(checkpoint), method="sparsevlm", budget=BUDGET, device="cpu", **options)
    assert (
        type(lm.model).__name__
        == {
            "video_llava": "VideoLlavaForConditionalGeneration",
            "llava_next": "LlavaNextForConditionalGeneration",
            "llava_onevision": "LlavaOnevisionForConditionalGeneration",
            "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
        }[family]
    )
    manager = TaskManager(include_path=[str(ROOT / "eval" / "tasks")], include_defaults=False)
    out = simple_evaluate(
        model=lm, tasks=list(TASKS), limit=2, task_manager=manager, gen_kwargs="max_new_tokens=2", bootstrap_iters=0
    )
    for task, metric in TASKS.items():
        assert isinstance(out["results"][task][f"{metric},none"], int | float), task
    records = lm.efficiency_records
    assert len(records) == 2 * len(TASKS)
    for record in records:
        assert record["n_visual"] > BUDGET
        assert abs(record["equivalent_tokens"] - BUDGET) < 1
        assert record["tflops_paper"] > 0

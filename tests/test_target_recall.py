"""Target-token recall: trace indices map to the right patches, and a real prefill gives recall per stage."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

import sparsevlm
from eval import synth
from eval.chat import question_inputs
from eval.target_recall import FirstStageRecorder, attention_stats, item_recall, kept_patches

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "tiny-llava"


def test_kept_patches_maps_prefill_indices_to_patches() -> None:
    stage = sparsevlm.StageRecord(
        layer=1, visual_in=144, kept=[0, 2, 95], kept_original=[5, 7, 100, -1], merged_groups=[[1, 3]]
    )
    sample = sparsevlm.SampleTrace(
        n_layers=8,
        n_visual=144,
        prompt_tokens=160,
        tokens_in=[],
        visual_in=[],
        visual_out=[],
        stages=[stage],
        image_start=5,
    )
    assert kept_patches(sample) == [{0, 2, 95}]


def test_attention_stats_of_known_maps() -> None:
    uniform = torch.full((144,), 1 / 144)
    assert attention_stats(uniform, {3}, {3, 50}, grid=12) == pytest.approx(
        {"target_lift": 1.0, "object_lift": 1.0, "last_rows_share": 24 / 144}
    )
    peaked = torch.zeros(144)
    peaked[140] = 1.0
    stats = attention_stats(peaked, {140}, {3, 140}, grid=12)
    assert stats == pytest.approx({"target_lift": 144.0, "object_lift": 72.0, "last_rows_share": 1.0})


@pytest.fixture(scope="module")
def tiny() -> tuple[LlavaForConditionalGeneration, AutoProcessor]:
    """The committed tiny model and its processor (skips when absent)."""
    if not (MODEL_DIR / "model.safetensors").exists():
        pytest.skip("no committed tiny model")
    torch.set_num_threads(1)
    model = LlavaForConditionalGeneration.from_pretrained(MODEL_DIR, local_files_only=True).eval()
    return model, AutoProcessor.from_pretrained(MODEL_DIR, local_files_only=True)


def test_recorder_keeps_the_decisions_and_the_first_map(tiny) -> None:
    model, processor = tiny
    item = next(it for it in synth.eval_items(n_pope=2, n_mme=2, n_gqa=2) if it["family"] == "attribute")
    method = sparsevlm.SparseVLM(budget=32)
    res = item_recall(model, processor, item, method)
    assert res["scores"].shape == (144,) and res["scores"].sum().item() < 1.0 + 1e-4
    assert res["target_lift"] > 0 and 0 <= res["last_rows_share"] <= 1
    assert res["raters"] and all(isinstance(t, str) for t in res["raters"])
    inputs = question_inputs(processor, item["prompt"], item["image"]["bytes"])
    stages = []
    for wrapped in (method, FirstStageRecorder(method)):
        with torch.no_grad(), sparsevlm.attach(model, wrapped) as trace:
            model(**inputs)
        stages.append([(s.layer, s.kept, s.merged_groups) for s in trace.last.stages])
    assert stages[0] == stages[1]
    assert item_recall(model, processor, item, sparsevlm.RandomPrune(budget=32))["scores"] is None


def test_recall_of_a_real_prefill(tiny) -> None:
    model, processor = tiny
    item = next(it for it in synth.eval_items(n_pope=2, n_mme=2, n_gqa=2) if it["family"] == "relation")
    # dropping one of 144 tokens removes at most one of the two related objects, and which one depends on the seed
    near_full = [item_recall(model, processor, item, sparsevlm.RandomPrune(budget=143, seed=s)) for s in range(6)]
    assert all(r["recall"] in ([1.0], [0.5]) and r["all_kept"] == (r["recall"] == [1.0]) for r in near_full)
    assert [1.0] in [r["recall"] for r in near_full]
    tiny = item_recall(model, processor, item, sparsevlm.RandomPrune(budget=2))
    assert len(tiny["recall"]) == 1 and tiny["object_share"] <= 1.0
    no_target = {**item, "prompt": "Is there a green ring in the image?"}
    scene = synth.decode_scene(item["image"]["bytes"])
    if ("green", "ring") not in scene.types():
        assert item_recall(model, processor, no_target, sparsevlm.RandomPrune(budget=16)) is None

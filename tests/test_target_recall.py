"""Target-token recall: trace indices map to the right patches, and a real prefill gives recall per stage."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

import sparsevlm
from eval import synth
from eval.target_recall import item_recall, kept_patches

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


@pytest.mark.skipif(not (MODEL_DIR / "model.safetensors").exists(), reason="no committed tiny model")
def test_recall_of_a_real_prefill() -> None:
    torch.set_num_threads(1)
    model = LlavaForConditionalGeneration.from_pretrained(MODEL_DIR, local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(MODEL_DIR, local_files_only=True)
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

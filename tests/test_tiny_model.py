"""The committed tiny LLaVA loads offline with from_pretrained and answers fixed held-out questions (dense, greedy)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from eval import synth
from eval.chat import greedy_answer

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "tiny-llava"
PER_FAMILY = 8  # the first held-out questions of each family
# Families the committed model has learned (docs/tiny-model.md: held-out accuracy 0.83-1.00), with the fewest right
# answers of PER_FAMILY accepted; relation questions (0.42) and MME pairs (0.81) are not checked here.
MIN_CORRECT = {"existence": 7, "attribute": 6, "counting": 6}
N_SCENES, MIN_CAPTIONS_RIGHT = 8, 7

pytestmark = pytest.mark.skipif(
    not (MODEL_DIR / "model.safetensors").exists(), reason=f"trained model not present at {MODEL_DIR}"
)


@pytest.fixture(scope="module")
def loaded() -> tuple[LlavaForConditionalGeneration, AutoProcessor]:
    """Model and processor loaded from the local directory only."""
    torch.set_num_threads(1)
    model = LlavaForConditionalGeneration.from_pretrained(MODEL_DIR, local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(MODEL_DIR, local_files_only=True)
    return model, processor


def test_model_shape_and_size(loaded: tuple) -> None:
    model, processor = loaded
    assert model.config.text_config.model_type == "llama"
    assert model.config.text_config.num_hidden_layers >= 8
    size = sum(f.stat().st_size for f in MODEL_DIR.iterdir() if f.is_file())
    assert size <= 20 * 2**20
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}],
        add_generation_prompt=True,
    )
    assert prompt == "USER: <image>\nDescribe the image. ASSISTANT:"
    inputs = processor(images=Image.new("RGB", (96, 96)), text=prompt, return_tensors="pt")
    n_image_tokens = int((inputs.input_ids == model.config.image_token_id).sum())
    assert n_image_tokens == model.config.image_seq_length == 144  # 12 x 12 patches of 8 px


def test_describes_held_out_scenes(loaded: tuple) -> None:
    """Captions of unseen scenes list every object (colour and shape) in raster order."""
    model, processor = loaded
    rng = random.Random(synth.eval_seed("captions"))
    right = []
    for _ in range(N_SCENES):
        scene = synth.sample_scene(rng, 3, 8)
        right.append(
            greedy_answer(model, processor, "Describe the image.", synth.png_bytes(scene), 24) == synth.caption(scene)
        )
    assert sum(right) >= MIN_CAPTIONS_RIGHT, right


@pytest.mark.parametrize("family", sorted(MIN_CORRECT))
def test_answers_fixed_held_out_questions(loaded: tuple, family: str) -> None:
    model, processor = loaded
    fixed = [x for x in synth.eval_items() if x["family"] == family][:PER_FAMILY]
    wrong = []
    for item in fixed:
        got = greedy_answer(model, processor, item["prompt"], item["image"]["bytes"])
        if got.lower() != item["answer"].lower():
            wrong.append((item["prompt"].splitlines()[0], got, item["answer"]))
    assert len(fixed) - len(wrong) >= MIN_CORRECT[family], wrong

"""The tiny Video-LLaVA trainer: the conversion from the tiny LLaVA keeps its weights and token ids, and packed video
turns give the same logits as plain single-question forwards."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlavaForConditionalGeneration, PreTrainedTokenizerFast

from eval import synth_video
from eval.tiny_train.packing import turn_ids
from eval.tiny_train.probes import ClassProbe
from eval.tiny_train.video import (
    VideoPacker,
    packed_video_forward,
    patch_token_mask,
    tokens_per_frame,
    video_llava_from_llava,
)

IMAGE_MODEL = Path(__file__).resolve().parents[1] / "models" / "tiny-llava"

pytestmark = pytest.mark.skipif(not (IMAGE_MODEL / "model.safetensors").exists(), reason="tiny LLaVA not present")


@pytest.fixture(scope="module")
def converted() -> tuple:
    torch.set_num_threads(1)
    return video_llava_from_llava(IMAGE_MODEL, synth_video.GRID, seed=0)


def test_conversion_keeps_the_image_model_and_adds_the_video_token(converted: tuple) -> None:
    model, processor = converted
    llava = LlavaForConditionalGeneration.from_pretrained(IMAGE_MODEL, local_files_only=True)
    old = PreTrainedTokenizerFast.from_pretrained(IMAGE_MODEL, local_files_only=True)
    new_vocab = processor.tokenizer.get_vocab()
    assert all(new_vocab[token] == i for token, i in old.get_vocab().items())
    assert {"<video>", "appeared", "disappeared", "direction", "up", "down"} <= set(new_vocab)
    assert model.config.video_token_id == new_vocab["<video>"] and model.config.image_token_id == old.image_token_id
    embeddings = model.get_input_embeddings().weight
    torch.testing.assert_close(embeddings[: len(old)], llava.get_input_embeddings().weight)
    assert model.lm_head.weight.data_ptr() == embeddings.data_ptr()  # tied, as the tiny LLaVA
    torch.testing.assert_close(
        model.model.language_model.layers[3].mlp.up_proj.weight, llava.model.language_model.layers[3].mlp.up_proj.weight
    )
    old_table = llava.model.vision_tower.embeddings.position_embedding.weight
    new_table = model.model.video_tower.embeddings.position_embedding.weight
    assert new_table.shape == (tokens_per_frame(synth_video.GRID), old_table.shape[1])
    torch.testing.assert_close(new_table[0], old_table[0])  # CLS
    torch.testing.assert_close(new_table[1 + 6 + 2], old_table[1 + 12 + 2])  # patch (1, 2) of the 6x6 and 12x12 grids
    torch.testing.assert_close(
        model.model.image_tower.encoder.layers[1].mlp.fc1.weight,
        llava.model.vision_tower.encoder.layers[1].mlp.fc1.weight,
    )


def test_packed_video_turns_equal_plain_forwards(converted: tuple) -> None:
    model, processor = converted
    model.eval()
    n_video = synth_video.FRAMES * tokens_per_frame(synth_video.GRID)
    packer = VideoPacker(processor, n_video)
    rng = random.Random(0)
    videos = [synth_video.sample_video(rng) for _ in range(2)]
    bundles = [[(qa.question, qa.answer, qa.cells) for qa in synth_video.questions(v, rng)][:3] for v in videos]
    with torch.no_grad():
        batch = packer.batch([synth_video.render(v) for v in videos], bundles)
        logits, [hidden] = packed_video_forward(model, batch, (0,))
        offset = len(packer.prefix)
        for question, answer, _ in bundles[1]:
            text = f"USER: <video>\n{question} ASSISTANT:"
            inputs = processor(videos=[synth_video.render(videos[1])], text=text, return_tensors="pt")
            assert inputs.input_ids[0].tolist() == packer.prefix + turn_ids(packer.tok, question)[0]
            turn, _ = turn_ids(packer.tok, question, answer)
            ids = torch.tensor([packer.prefix + turn])
            plain = model(input_ids=ids, pixel_values_videos=inputs.pixel_values_videos).logits[0, len(packer.prefix) :]
            torch.testing.assert_close(logits[1, offset : offset + len(turn)], plain, atol=1e-4, rtol=1e-4)
            offset += len(turn)
    answer_cells = batch["answer_cells"].tolist()
    # one cell per object answer, two (first, last) for the direction, none for the count: in each row
    assert [slot for row, _, slot, _ in answer_cells if row == 0] == [0, 0, 0, 1]
    for row, index, slot, cell in answer_cells:
        assert batch["input_ids"][row, index + 1] == batch["targets"][row, index] != -100  # predicts the answer
        question, answer, cells = bundles[row][len({i for r, i, _, _ in answer_cells if r == row and i < index})]
        assert cells[slot] == cell
    assert hidden[batch["input_ids"] == model.config.video_token_id].shape[0] == 2 * n_video


def test_event_probe_reads_the_patch_tokens_in_frame_order(converted: tuple) -> None:
    model, processor = converted
    packer = VideoPacker(processor, synth_video.FRAMES * tokens_per_frame(synth_video.GRID))
    videos = [synth_video.sample_video(random.Random(seed)) for seed in (1, 2)]
    batch = packer.batch([synth_video.render(v) for v in videos], [[("What appeared last?", "red square", ())]] * 2)
    is_patch = batch["input_ids"] == model.config.video_token_id
    is_patch[is_patch.clone()] = patch_token_mask(synth_video.GRID, len(videos))
    pixels = batch["pixel_values_videos"].flatten(0, 1)  # (video, frame) in order
    events = torch.from_numpy(np.concatenate([synth_video.token_events(v).ravel() for v in videos]))
    # a patch token's pixels: the patch of its frame; an "appeared" token shows an object, a "vanished" one does not
    patches = pixels.unfold(2, 8, 8).unfold(3, 8, 8).permute(0, 2, 3, 1, 4, 5).flatten(0, 2).flatten(1)
    assert is_patch.sum() == len(events) == len(patches)
    background = patches[events == 0].min(0).values
    shows_object = (patches - background).abs().amax(1) > 0.5
    appeared, vanished = synth_video.EVENTS.index("appeared"), synth_video.EVENTS.index("vanished")
    assert shows_object[events == appeared].all() and not shows_object[events == vanished].any()
    probe = ClassProbe(hidden=len(synth_video.EVENTS), n_classes=len(synth_video.EVENTS), n_layers=1, rare_weight=10)
    with torch.no_grad():
        probe.heads[0].weight.copy_(torch.eye(len(synth_video.EVENTS)))
        probe.heads[0].bias.zero_()
    readable = 30 * torch.nn.functional.one_hot(events, len(synth_video.EVENTS)).float()
    assert probe.loss([readable], events).item() < 1e-6 and probe.rare_accuracy(readable, events) == 1.0
    assert probe.loss([readable], (events + 1) % len(synth_video.EVENTS)).item() > 10

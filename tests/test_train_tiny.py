"""The tiny-model trainer: packed batches match plain forwards, and the position probe reads the right labels."""

from __future__ import annotations

import random

import torch

from eval import synth
from eval.tiny_train.config import TrainConfig
from eval.tiny_train.model import build_model, build_processor
from eval.tiny_train.packing import Packer, packed_forward
from eval.tiny_train.probes import PositionProbe


def test_packed_turns_equal_plain_forwards_and_expose_visual_hidden_states() -> None:
    torch.set_num_threads(1)
    cfg = TrainConfig(text_layers=2, init_std=0.08)
    processor = build_processor(cfg)
    model = build_model(cfg, processor.tokenizer).eval()
    packer = Packer(cfg, processor)
    rng = random.Random(0)
    scenes = [synth.sample_scene(rng, 2, 4) for _ in range(2)]
    bundles = [[(qa.question, qa.answer) for qa in synth.training_turns(s, rng, alignment=False)][:3] for s in scenes]
    with torch.no_grad():
        batch = packer.batch(scenes, bundles)
        logits, hidden = packed_forward(model, batch, (0, 1))
        is_image = batch["input_ids"] == model.config.image_token_id
        hidden = [h[is_image] for h in hidden]
        assert [h.shape[0] for h in hidden] == [2 * 144, 2 * 144]
        features = model.model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
        torch.testing.assert_close(hidden[0], torch.cat(list(features)))
        offset = len(packer.prefix)
        for question, answer in bundles[1]:
            turn, _ = packer.turn_ids(question, answer)
            plain = model(input_ids=torch.tensor([packer.prefix + turn]), pixel_values=batch["pixel_values"][1:])
            plain = plain.logits[0, len(packer.prefix) :]
            torch.testing.assert_close(logits[1, offset : offset + len(turn)], plain, atol=1e-4, rtol=1e-4)
            offset += len(turn)

        dropped = packer.batch(scenes, bundles, keep_background=0.2, rng=random.Random(1))
        _, hidden = packed_forward(model, dropped, (0,))
        visual = hidden[0][dropped["input_ids"] == model.config.image_token_id]
        assert visual.shape[0] == sum(map(len, dropped["kept"])) < 2 * 144


def test_position_probe_labels_are_row_and_column() -> None:
    grid = 12
    probe = PositionProbe(hidden=2 * grid + 2, grid=grid, n_layers=1)
    with torch.no_grad():
        probe.heads[0].weight.copy_(torch.eye(2 * grid + 2))
        probe.heads[0].bias.zero_()
    cells = torch.arange(grid * grid)
    rows, cols = cells // grid, cells % grid
    readable = torch.cat(
        [
            30 * torch.nn.functional.one_hot(rows, grid),
            30 * torch.nn.functional.one_hot(cols, grid),
            torch.stack([rows, cols], dim=-1) / (grid - 1) * 2 - 1,
        ],
        dim=-1,
    ).float()
    assert probe.loss([readable], cells).item() < 1e-6
    assert probe.loss([readable], cells.flip(0)).item() > 10


def test_mentions_and_pairs_point_at_named_objects_and_the_answer() -> None:
    scene = synth.Scene(
        (synth.Obj("red", "circle", 1, 2), synth.Obj("red", "square", 5, 7), synth.Obj("blue", "ring", 9, 0))
    )
    cfg = TrainConfig()
    packer = Packer(cfg, build_processor(cfg))
    bundle = [
        ("Is the red circle to the left of the blue ring?", "left"),
        ("How many circles are there? What color is the ring? Is there a red object?", "1"),
        ("What shape is the blue object? Is there a green circle?", "ring"),
    ]
    batch = packer.batch([scene], [bundle])
    tokens = packer.tok.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    found = [(tokens[i - 1], tokens[i], divmod(cell, 12)) for _, i, cell in batch["mentions"].tolist()]
    assert found == [
        ("red", "circle", (1, 2)),
        ("blue", "ring", (9, 0)),
        ("the", "ring", (9, 0)),
        ("blue", "object", (9, 0)),
    ]
    [(_, answer_at, first, second)] = batch["pairs"].tolist()
    assert tokens[answer_at : answer_at + 2] == [":", "left"] and (first, second) == (1 * 12 + 2, 9 * 12 + 0)

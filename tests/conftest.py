"""Tiny random-init LLaVA models built in-process (no hub), and prompts shaped like LLaVA-1.5's."""

from __future__ import annotations

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from eval.shapes import Shape, llava_config

torch.set_num_threads(1)

IMAGE_TOKEN = 250
VOCAB = 256


def build_llava(
    n_layers: int = 32,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int | None = None,
    image_size: int = 48,
    patch: int = 2,
    attn: str = "sdpa",
    seed: int = 0,
) -> LlavaForConditionalGeneration:
    """A LLaVA-1.5-shaped model with random weights: (image_size / patch)^2 visual tokens, `n_layers` LLaMA layers."""
    torch.manual_seed(seed)
    shape = Shape(
        "test",
        hidden=hidden,
        intermediate=2 * hidden,
        layers=n_layers,
        heads=heads,
        kv_heads=kv_heads,
        vision_hidden=32,
        vision_intermediate=64,
        vision_layers=2,
        vision_heads=2,
        image_size=image_size,
        patch_size=patch,
        vocab=VOCAB,
    )
    # LlamaConfig's default eps and positions, which these test models have always been built with
    config = llava_config(shape, image_token=IMAGE_TOKEN, max_positions=2048, rms_norm_eps=1e-6)
    model = LlavaForConditionalGeneration._from_config(config, attn_implementation=attn)
    return model.eval()


def make_inputs(
    n_visual: int = 576, pre: int = 5, question_lengths: tuple[int, ...] = (12,), image_size: int = 48, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Left-padded batch: [pad] [pre-prompt] [image tokens] [question], one row per question length."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for q_len in question_lengths:
        ids = torch.randint(3, IMAGE_TOKEN, (pre + q_len,), generator=gen)
        rows.append(torch.cat([ids[:pre], torch.full((n_visual,), IMAGE_TOKEN), ids[pre:]]))
    width = max(r.numel() for r in rows)
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, width - r.numel() :] = r
        mask[i, width - r.numel() :] = 1
    pixels = torch.randn(len(rows), 3, image_size, image_size, generator=gen)
    return {"input_ids": input_ids, "attention_mask": mask, "pixel_values": pixels}


@pytest.fixture(scope="session")
def llava32() -> LlavaForConditionalGeneration:
    """32 decoder layers and 576 visual tokens: the paper's schedule runs unmodified."""
    return build_llava()

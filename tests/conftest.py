"""Tiny random-init LLaVA models built in-process (no hub), and prompts shaped like LLaVA-1.5's."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

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
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
    )
    text = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        vocab_size=VOCAB,
        pad_token_id=0,
        max_position_embeddings=2048,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=IMAGE_TOKEN,
        image_seq_length=(image_size // patch) ** 2,
    )
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

"""LLaVA-1.5-style model shapes, the one LlavaConfig builder, random-init models and LLaVA-1.5-shaped prompts.

llava_config is the config builder of the benchmark's named shapes, the tiny-model trainer (eval.tiny_train) and the
tests. No weights, tokenizer or processor are needed for the benchmark: it measures cost, which depends only on shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerBase,
)

IMAGE_TOKEN = 32000  # llava-hf's <image> id
# vicuna_v1 system prompt + "USER: " before the image (docs/method.md, "The sequence the reference prunes")
PRE_PROMPT = 35
# llava-hf's LLaVA-1.5 text configs (Vicuna): the defaults of llava_config, so the named shapes match the checkpoints
LLAVA_MAX_POSITIONS = 4096
LLAVA_RMS_NORM_EPS = 1e-5
LLAVA_VISION_FEATURE_LAYER = -2  # LLaVA-1.5 reads the penultimate CLIP layer
LLAMA_INIT_STD = 0.02  # LlamaConfig's initializer range


@dataclass(frozen=True)
class Shape:
    """Decoder (LLaMA) and vision tower (CLIP-ViT) dimensions of one LLaVA-1.5-style model."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    image_size: int = 336
    patch_size: int = 14
    vocab: int = 32064
    kv_heads: int | None = None  # None: one key/value head per query head (no grouped-query attention)

    @property
    def n_visual(self) -> int:
        """Visual tokens given to the LLM (CLS dropped)."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        """Per-head width of the decoder's attention."""
        return self.hidden // self.heads


SHAPES: dict[str, Shape] = {
    shape.name: shape
    for shape in (
        # LLaVA-1.5-7B: Vicuna-7B (4096/11008, 32 layers) + CLIP ViT-L/14-336; for a GPU
        Shape("llava-1.5-7b", 4096, 11008, 32, 32, 1024, 4096, 24, 16),
        # LLaVA-1.5-13B: Vicuna-13B (5120/13824, 40 layers) + CLIP ViT-L/14-336; for a GPU
        Shape("llava-1.5-13b", 5120, 13824, 40, 40, 1024, 4096, 24, 16),
        # CPU-sized: 32 decoder layers (hidden 256, 4 heads of 64) and 576 visual tokens, so the 2/6/15 schedule and
        # every budget run unchanged; small CLIP tower
        Shape("cpu-32l", 256, 688, 32, 4, 128, 512, 2, 2),
        # Smoke-test size: 32 decoder layers (hidden 128, 2 heads of 64), 576 visual tokens from 48 px / 2 px patches
        Shape("tiny", 128, 344, 32, 2, 32, 64, 1, 2, image_size=48, patch_size=2, vocab=1024),
    )
}


def llava_config(
    shape: Shape,
    *,
    image_token: int | None = None,
    pad_token: int | None = 0,
    bos_token: int = 1,
    eos_token: int = 2,
    max_positions: int = LLAVA_MAX_POSITIONS,
    rms_norm_eps: float = LLAVA_RMS_NORM_EPS,
    vision_feature_layer: int = LLAVA_VISION_FEATURE_LAYER,
    tie_embeddings: bool = False,
    init_std: float = LLAMA_INIT_STD,
) -> LlavaConfig:
    """The LlavaConfig of a shape: LLaMA text model, CLIP vision tower, llava-hf's LLaVA-1.5 settings by default.

    image_token None means llava-hf's 32000, or the last id when the vocabulary is smaller. The token ids can come from
    a tokenizer (tokenizer_ids); init_std is the text model's initializer range.
    """
    vision = CLIPVisionConfig(
        hidden_size=shape.vision_hidden,
        intermediate_size=shape.vision_intermediate,
        num_hidden_layers=shape.vision_layers,
        num_attention_heads=shape.vision_heads,
        image_size=shape.image_size,
        patch_size=shape.patch_size,
        hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads or shape.heads,
        vocab_size=shape.vocab,
        rms_norm_eps=rms_norm_eps,
        pad_token_id=pad_token,
        bos_token_id=bos_token,
        eos_token_id=eos_token,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie_embeddings,
        initializer_range=init_std,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=min(IMAGE_TOKEN, shape.vocab - 1) if image_token is None else image_token,
        image_seq_length=shape.n_visual,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy="default",
        tie_word_embeddings=tie_embeddings,
    )


def tokenizer_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int | None]:
    """llava_config's token-id arguments read from a tokenizer that has an `<image>` token."""
    return {
        "image_token": tokenizer.convert_tokens_to_ids("<image>"),
        "pad_token": tokenizer.pad_token_id,
        "bos_token": tokenizer.bos_token_id,
        "eos_token": tokenizer.eos_token_id,
    }


def build_model(
    shape: Shape, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", seed: int = 0
) -> LlavaForConditionalGeneration:
    """A random-init model of the shape, SDPA attention everywhere, in eval mode on `device`."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(llava_config(shape), attn_implementation="sdpa", dtype=dtype)
    return model.eval()


def make_batch(
    shape: Shape,
    batch: int = 1,
    prompt_len: int = 694,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """`batch` prompts of exactly `prompt_len` tokens: 35 pre-prompt ids, the image block, the question ids.

    The default 694 = 35 + 576 + 83 (118 text tokens) is the prompt length at which the paper formula gives the
    paper's 4.62 T for dense LLaVA-1.5-7B. All rows have the same length, so there is no padding.
    """
    n_text = prompt_len - shape.n_visual - PRE_PROMPT
    if n_text < 1:
        raise ValueError(f"prompt_len: {prompt_len} leaves no question tokens after {PRE_PROMPT} + {shape.n_visual}")
    config = llava_config(shape)
    image_token = config.image_token_index
    gen = torch.Generator().manual_seed(seed)
    text = torch.randint(3, min(image_token, shape.vocab), (batch, PRE_PROMPT + n_text), generator=gen)
    image = torch.full((batch, shape.n_visual), image_token)
    input_ids = torch.cat([text[:, :PRE_PROMPT], image, text[:, PRE_PROMPT:]], dim=1)
    pixels = torch.randn(batch, 3, shape.image_size, shape.image_size, generator=gen)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones_like(input_ids).to(device),
        "pixel_values": pixels.to(device=device, dtype=dtype),
    }

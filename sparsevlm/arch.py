"""Where the pieces the engine touches live in each supported Hugging Face architecture."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

# (multimodal model_type, text model_type) -> the text model's RoPE function, as "module:function". Strings, so that
# checking a checkpoint's config against this table imports neither torch nor transformers.
SUPPORTED: dict[tuple[str, str], str] = {
    ("llava", "llama"): "transformers.models.llama.modeling_llama:apply_rotary_pos_emb",
}
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


def check_supported(mm_type: object, text_type: object) -> None:
    """Raise a one-line ValueError unless (multimodal model_type, text model_type) is a supported pair."""
    if (mm_type, text_type) not in SUPPORTED:
        supported = ", ".join(f"{m} with a {t} text model" for m, t in SUPPORTED)
        raise ValueError(
            f"model: unsupported model_type={mm_type!r} with text model {text_type!r}; supported: {supported} "
            "(e.g. transformers.LlavaForConditionalGeneration, llava-hf/llava-1.5-7b-hf)"
        )


def _rope_function(mm_type: str, text_type: str) -> Callable:
    module, name = SUPPORTED[(mm_type, text_type)].split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class ArchSpec:
    """Handles on one model instance: the multimodal wrapper, the decoder stack and its attention geometry."""

    mm_model: nn.Module  # receives input_ids (to locate image tokens)
    text_model: nn.Module  # receives inputs_embeds with the image features scattered in
    layers: nn.ModuleList
    rotary: nn.Module
    apply_rope: Callable
    image_token_id: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    scaling: float
    attn_implementation: str
    projector: nn.Module  # vision features -> LLM embeddings
    vision_layers: nn.ModuleList  # the vision tower's encoder layers
    vision_feature_index: int  # the encoder layer whose output the LLM reads (LLaVA: the second to last)
    n_image_tokens: int  # image tokens per image in input_ids (LLaVA-1.5: 576)

    @property
    def n_layers(self) -> int:
        return len(self.layers)


def resolve(model: nn.Module) -> ArchSpec:
    """Find the hook points of a supported model, or raise a one-line error saying what is supported."""
    config = getattr(model, "config", None)
    mm_type = getattr(config, "model_type", None)
    text_type = getattr(getattr(config, "text_config", None), "model_type", None)
    try:
        check_supported(mm_type, text_type)
    except ValueError as err:
        raise ValueError(f"{err} [got a {type(model).__name__}]") from None
    mm_model = model.model
    text_model = mm_model.language_model
    text_config = config.text_config
    attn = text_config._attn_implementation
    if attn not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation: got {attn!r} for the text model, allowed: {', '.join(ATTENTION_IMPLEMENTATIONS)}"
        )
    attention = text_model.layers[0].self_attn
    tower = mm_model.vision_tower
    vision_layers = getattr(tower, "vision_model", tower).encoder.layers  # transformers 5 flattened CLIPVisionModel
    feature_layer = config.vision_feature_layer
    if not isinstance(feature_layer, int):
        feature_layer = feature_layer[-1]  # several feature layers: vision-stage methods read the last one
    return ArchSpec(
        mm_model=mm_model,
        text_model=text_model,
        layers=text_model.layers,
        rotary=text_model.rotary_emb,
        apply_rope=_rope_function(mm_type, text_type),
        image_token_id=config.image_token_id,
        n_heads=text_config.num_attention_heads,
        n_kv_heads=text_config.num_key_value_heads,
        head_dim=attention.head_dim,
        scaling=attention.scaling,
        attn_implementation=attn,
        projector=mm_model.multi_modal_projector,
        vision_layers=vision_layers,
        # hidden_states[k] is the output of layer k - 1 (hidden_states[0] is the patch embedding)
        vision_feature_index=feature_layer + len(vision_layers) if feature_layer < 0 else feature_layer - 1,
        n_image_tokens=config.image_seq_length,
    )

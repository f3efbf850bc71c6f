"""Where the pieces the engine touches live in each supported Hugging Face architecture.

This is the one module that knows model families: which token ids mark visual tokens, how position ids are laid out
(1-D, or Qwen's multimodal RoPE rows), which RoPE function the text model applies, and whether the vision tower's
output reaches the LLM unchanged (so vision-stage methods can act on it).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

# The text model's RoPE function per text model_type, as "module:function". Strings, so that checking a checkpoint's
# config against these tables imports neither torch nor transformers.
ROPE_FUNCTIONS = {
    "llama": "transformers.models.llama.modeling_llama:apply_rotary_pos_emb",
    "qwen2": "transformers.models.qwen2.modeling_qwen2:apply_rotary_pos_emb",
    "qwen2_5_vl_text": "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl:apply_rotary_pos_emb",
}


@dataclass(frozen=True)
class Family:
    """What differs between multimodal model families, as far as pruning is concerned."""

    model_class: str  # the transformers class that loads a checkpoint of this family
    text_types: tuple[str, ...]  # text model_types the family ships with
    visual_token_fields: tuple[str, ...]  # config fields holding the ids of visual placeholder tokens
    positions: str  # "1d": one position per token | "mrope": Qwen's (t, h, w) rows, gathered with the tokens
    vision_stage: bool  # the projector's output rows are the LLM's visual block, one row per image (LLaVA-1.5)
    example: str  # a hub id, for messages
    square_grid: bool = False  # every visual block is one square patch grid


FAMILIES: dict[str, Family] = {
    "llava": Family(
        "LlavaForConditionalGeneration",
        ("llama",),
        ("image_token_id",),
        "1d",
        True,
        "llava-hf/llava-1.5-7b-hf",
        square_grid=True,
    ),
    "video_llava": Family(
        "VideoLlavaForConditionalGeneration",
        ("llama",),
        ("image_token_id", "video_token_id"),
        "1d",
        False,  # frames and images share one projector call shape: a row is a frame, not a sample
        "LanguageBind/Video-LLaVA-7B-hf",
    ),
    "llava_next": Family(
        "LlavaNextForConditionalGeneration",
        ("llama",),
        ("image_token_id",),
        "1d",
        False,  # anyres crops are unpadded and interleaved with image_newline after the projector
        "llava-hf/llava-v1.6-vicuna-7b-hf",
    ),
    "llava_onevision": Family(
        "LlavaOnevisionForConditionalGeneration",
        ("qwen2",),
        ("image_token_id", "video_token_id"),
        "1d",
        False,
        "llava-hf/llava-onevision-qwen2-7b-ov-hf",
    ),
    "qwen2_5_vl": Family(
        "Qwen2_5_VLForConditionalGeneration",
        ("qwen2_5_vl_text",),
        ("image_token_id", "video_token_id"),
        "mrope",
        False,  # Qwen's tower merges 2 x 2 patches and has fused qkv projections: no CLS, no per-image rows
        "Qwen/Qwen2.5-VL-7B-Instruct",
    ),
}
# (multimodal model_type, text model_type) -> RoPE function, for every supported pairing
SUPPORTED: dict[tuple[str, str], str] = {
    (mm, text): ROPE_FUNCTIONS[text] for mm, family in FAMILIES.items() for text in family.text_types
}
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
# Families whose visual count depends on the input: a typical count is known from the config (for an up-front check of a
# checkpoint's budget), but each sample is planned for its own count. Typical inputs: LLaVA-NeXT's anyres base + 4 crops
# (5 x 576 = 2880, DART's setting), OneVision's base + 9 crops, Qwen2.5-VL's 896 x 896 image (32 x 32 merged patches).
VARIABLE_CROPS = {"llava_next": 5, "llava_onevision": 10}
QWEN_TYPICAL_SIDE = 896


def check_supported(mm_type: object, text_type: object) -> None:
    """Raise a one-line ValueError unless (multimodal model_type, text model_type) is a supported pair."""
    if (mm_type, text_type) not in SUPPORTED:
        supported = ", ".join(f"{m} ({FAMILIES[m].example}) with a {t} text model" for m, t in SUPPORTED)
        raise ValueError(
            f"model: unsupported model_type={mm_type!r} with text model {text_type!r}; supported: {supported}"
        )


def fixed_visual_count(config: dict[str, Any]) -> bool:
    """Whether every input of this checkpoint has the same visual-token count (LLaVA-1.5; Video-LLaVA per modality)."""
    return config.get("model_type") in ("llava", "video_llava")


def nominal_visual_tokens(config: dict[str, Any]) -> int:
    """Visual tokens of one typical input of a checkpoint, from its config.json (a video for Video-LLaVA)."""
    mm_type = config.get("model_type")
    vision = config.get("vision_config") or {}
    if mm_type == "qwen2_5_vl":
        merged_patch = vision.get("patch_size", 14) * vision.get("spatial_merge_size", 2)
        return (QWEN_TYPICAL_SIDE // merged_patch) ** 2
    if mm_type == "video_llava":
        return int(config.get("video_seq_length", 8 * 257))
    per_image = (vision.get("image_size", 336) // vision.get("patch_size", 14)) ** 2
    if mm_type in VARIABLE_CROPS:
        return VARIABLE_CROPS[mm_type] * per_image
    if config.get("image_seq_length") is not None:
        return int(config["image_seq_length"])
    return per_image  # LLaVA drops the CLS token


def check_hook_points(model_type: str, method: Any) -> None:
    """Raise a one-line ValueError if the method acts where this family has no hook point."""
    family = FAMILIES[model_type]
    if (method.hook == "vision" or method.merges_in_tower) and not family.vision_stage:
        raise ValueError(
            f"method: {method.name} acts on the vision tower's per-image output, which {model_type} reshapes "
            "before the LLM (anyres crops, video frames or patch merging); it runs on llava (LLaVA-1.5) models"
        )
    if method.needs_grid and not family.square_grid:
        raise ValueError(
            f"method: {method.name} pools the visual block as one square patch grid; {model_type} inputs are "
            "anyres crops, frames or rectangular grids (it runs on llava models)"
        )


def check_positions(layout: str, plan: Any) -> None:
    """Raise a one-line ValueError for what 1-D positions mean on a model with M-RoPE rows (layout "mrope")."""
    if layout != "mrope" or not plan.prune_layers:
        return
    if plan.positions == "contiguous":
        raise ValueError(
            "positions: 'contiguous' renumbers survivors as a 1-D sequence, but M-RoPE positions are (t, h, w) "
            "coordinates of each patch; use positions='original' on this model"
        )
    if plan.gravity:
        raise ValueError("gravity: SparseVLM+'s RoPE distance prior is defined for 1-D positions; use gravity=False")


def text_config_of(config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's text-model settings from its config.json: `text_config`, or the top level where a family keeps
    them flat (Qwen2.5-VL's released config.json), with the family's text model_type filled in."""
    family = FAMILIES.get(config.get("model_type"))
    text = config.get("text_config") or (config if family and family.positions == "mrope" else {})
    default_type = family.text_types[0] if family else "llama"
    return {**text, "model_type": (config.get("text_config") or {}).get("model_type", default_type)}


@dataclass(frozen=True)
class TowerWork:
    """What one sample's vision tower ran on, for the FLOPs count (sparsevlm.flops.vision_flops)."""

    passes: int  # CLIP/SigLIP tower passes: 1 per image, per video frame, per anyres crop (the base image included)
    projector_rows: int  # rows the projector maps (LLaVA-NeXT/OneVision: every crop's patches, before unpadding)
    grids: tuple[tuple[int, int, int], ...] = ()  # Qwen2.5-VL: the (t, h, w) patch grid of each image or video


def _vit_tokens(config: Any) -> tuple[int, bool]:
    """(patch tokens of one tower pass, whether the tower adds a CLS token) of a CLIP/SigLIP-tower config."""
    vision = config.vision_config
    return (vision.image_size // vision.patch_size) ** 2, vision.model_type == "clip_vision_model"


def fixed_tower_work(config: Any, n_visual: int) -> TowerWork:
    """The tower's work behind n_visual tokens where the family fixes it: LLaVA-1.5's one image, Video-LLaVA's image
    (CLS dropped) or video (every frame's CLS kept); a one-line ValueError for families whose work varies per input."""
    mm_type = config.model_type
    if mm_type not in ("llava", "video_llava"):
        raise ValueError(
            f"tower: {mm_type}'s vision work depends on the input (anyres crops, image resolution); pass "
            "tower=sparsevlm.arch.tower_work(model.config, inputs)[row]"
        )
    patches, cls = _vit_tokens(config)
    if mm_type == "llava" or n_visual == patches:
        return TowerWork(passes=1, projector_rows=n_visual)
    frames, rest = divmod(n_visual, patches + cls)
    if rest:
        raise ValueError(f"n_visual: {n_visual} is neither an image ({patches}) nor whole frames of {patches + cls}")
    return TowerWork(passes=frames, projector_rows=n_visual)


def tower_work(config: Any, inputs: dict[str, Any]) -> list[TowerWork]:
    """Per batch row, the vision tower's work on these model inputs (images and videos are assigned to rows in order,
    one per visual span of the row's input_ids)."""
    return _per_row(_input_work(config, inputs), _spans_per_row(config, inputs["input_ids"]))


def _input_work(config: Any, inputs: dict[str, Any]) -> list[TowerWork]:
    """The tower's work on each image or video of the inputs, in order."""
    mm_type = config.model_type
    if mm_type == "qwen2_5_vl":
        merge = config.vision_config.spatial_merge_size
        grids = inputs.get("image_grid_thw")
        grids = inputs.get("video_grid_thw") if grids is None else grids
        return [
            TowerWork(1, int(grid.prod()) // merge**2, (tuple(grid.tolist()),))
            for grid in ([] if grids is None else grids)
        ]
    patches, cls = _vit_tokens(config)
    keep_cls = cls and config.vision_feature_select_strategy == "full"
    videos = inputs.get("pixel_values_videos")
    if videos is not None:  # Video-LLaVA keeps every frame's CLS token
        frames = videos.shape[1]
        return [TowerWork(frames, frames * (patches + (cls if mm_type == "video_llava" else keep_cls)))] * len(videos)
    if mm_type in VARIABLE_CROPS:
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        crops = [
            image_size_to_num_patches(size.tolist(), config.image_grid_pinpoints, config.vision_config.image_size)
            for size in inputs.get("image_sizes", [])
        ]
        return [TowerWork(n, n * (patches + keep_cls)) for n in crops]
    images = inputs.get("pixel_values", inputs.get("pixel_values_images"))
    return [TowerWork(1, patches + keep_cls)] * (0 if images is None else len(images))


def _spans_per_row(config: Any, input_ids: Any) -> list[int]:
    """Runs of visual placeholder tokens in each row (one per image or video)."""
    import torch

    family = FAMILIES[config.model_type]
    ids = torch.tensor([getattr(config, name) for name in family.visual_token_fields], device=input_ids.device)
    visual = torch.isin(input_ids, ids).int()
    starts = visual[:, 1:] > visual[:, :-1]
    return (starts.sum(dim=1) + visual[:, 0]).tolist()


def _per_row(works: list[TowerWork], spans: list[int]) -> list[TowerWork]:
    """Sum consecutive works into rows of `spans` works each."""
    if sum(spans) != len(works):
        raise ValueError(f"inputs: {sum(spans)} visual spans in input_ids but {len(works)} images or videos")
    rows, at = [], 0
    for count in spans:
        group = works[at : at + count]
        at += count
        rows.append(
            TowerWork(
                sum(w.passes for w in group),
                sum(w.projector_rows for w in group),
                tuple(grid for w in group for grid in w.grids),
            )
        )
    return rows


def _rope_function(text_type: str) -> Callable:
    module, name = ROPE_FUNCTIONS[text_type].split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class ArchSpec:
    """Handles on one model instance: the multimodal wrapper, the decoder stack and its attention geometry."""

    model_type: str
    mm_model: nn.Module  # receives input_ids (to locate visual tokens)
    text_model: nn.Module  # receives inputs_embeds with the visual features scattered in
    layers: nn.ModuleList
    rotary: nn.Module
    apply_rope: Callable
    visual_token_ids: tuple[int, ...]  # image and video placeholder ids
    positions: str  # "1d" | "mrope" (Family.positions)
    square_grid: bool  # every visual block is one square patch grid (Family.square_grid)
    n_heads: int
    n_kv_heads: int
    head_dim: int
    scaling: float
    attn_implementation: str
    projector: nn.Module | None  # vision features -> LLM embeddings; None where vision-stage methods cannot act
    vision_layers: nn.ModuleList | None  # the vision tower's encoder layers (vision-stage families only)
    vision_feature_index: int  # the encoder layer whose output the LLM reads (LLaVA: the second to last)
    n_image_tokens: int | None  # visual tokens of every input (LLaVA-1.5: 576); None where they vary per input

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def image_token_id(self) -> int:
        return self.visual_token_ids[0]

    def position_rows(
        self, position_ids: torch.Tensor | None, batch: int, length: int, past: int, device: torch.device
    ) -> torch.Tensor:
        """[R, B, L] the text model's position ids as rows (R = 1 for 1-D; 3 or 4 for M-RoPE, as transformers
        passes them: an optional text row, then t, h, w); None means what the text model computes itself."""
        import torch

        if position_ids is None:
            position_ids = (torch.arange(length, device=device) + past)[None]
        if self.positions == "1d":
            return position_ids.expand(batch, length)[None].clone()
        if position_ids.dim() == 2:
            position_ids = position_ids[None].expand(3, -1, -1)
        return position_ids.expand(-1, batch, length).clone()

    def text_position_ids(self, rows: torch.Tensor) -> torch.Tensor:
        """The position_ids the text model takes, from rows (position_rows' inverse)."""
        return rows[0] if self.positions == "1d" else rows

    def layer_position_ids(self, rows: torch.Tensor) -> torch.Tensor | None:
        """The position_ids a decoder layer receives: the 1-D positions, or M-RoPE's text row when there is one."""
        if self.positions == "1d":
            return rows[0]
        return rows[0] if rows.shape[0] == 4 else None

    def rotary_terms(self, hidden: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (cos, sin) every decoder layer receives, [B, L, d], for tokens at these position rows."""
        return self.rotary(hidden, rows[0] if self.positions == "1d" else rows[-3:])


def _vision_stage_handles(mm_model: nn.Module, config: Any) -> tuple[nn.Module, nn.ModuleList, int]:
    """Projector, tower layers and the index of the layer the LLM reads, for a LLaVA-1.5-style tower."""
    tower = mm_model.vision_tower
    vision_layers = getattr(tower, "vision_model", tower).encoder.layers  # transformers 5 flattened CLIPVisionModel
    feature_layer = config.vision_feature_layer
    if not isinstance(feature_layer, int):
        feature_layer = feature_layer[-1]  # several feature layers: vision-stage methods read the last one
    # hidden_states[k] is the output of layer k - 1 (hidden_states[0] is the patch embedding)
    index = feature_layer + len(vision_layers) if feature_layer < 0 else feature_layer - 1
    return mm_model.multi_modal_projector, vision_layers, index


def resolve(model: nn.Module) -> ArchSpec:
    """Find the hook points of a supported model, or raise a one-line error saying what is supported."""
    config = getattr(model, "config", None)
    mm_type = getattr(config, "model_type", None)
    text_type = getattr(getattr(config, "text_config", None), "model_type", None)
    try:
        check_supported(mm_type, text_type)
    except ValueError as err:
        raise ValueError(f"{err} [got a {type(model).__name__}]") from None
    family = FAMILIES[mm_type]
    as_dict = config.to_dict()
    mm_model = model.model
    text_model = mm_model.language_model
    text_config = config.text_config
    attn = text_config._attn_implementation
    if attn not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation: got {attn!r} for the text model, allowed: {', '.join(ATTENTION_IMPLEMENTATIONS)}"
        )
    attention = text_model.layers[0].self_attn
    projector, vision_layers, feature_index = (
        _vision_stage_handles(mm_model, config) if family.vision_stage else (None, None, -1)
    )
    return ArchSpec(
        model_type=mm_type,
        mm_model=mm_model,
        text_model=text_model,
        layers=text_model.layers,
        rotary=text_model.rotary_emb,
        apply_rope=_rope_function(text_type),
        visual_token_ids=tuple(getattr(config, name) for name in family.visual_token_fields),
        positions=family.positions,
        square_grid=family.square_grid,
        n_heads=text_config.num_attention_heads,
        n_kv_heads=text_config.num_key_value_heads,
        head_dim=attention.head_dim,
        scaling=attention.scaling,
        attn_implementation=attn,
        projector=projector,
        vision_layers=vision_layers,
        vision_feature_index=feature_index,
        n_image_tokens=nominal_visual_tokens(as_dict) if fixed_visual_count(as_dict) else None,
    )

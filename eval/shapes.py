"""Model shapes of every supported family, the config builders, random-init models and prompts shaped like each
family's.

llava_config is the config builder of the LLaVA-1.5 shapes, the tiny-model trainer (eval.tiny_train) and the tests;
family_config builds any shape's config. No weights, tokenizer or processor are needed for the benchmark: it measures
cost, which depends only on shapes and on the visual tokens an input makes (counted by the model's own code).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import transformers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)

from sparsevlm.arch import FAMILIES

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
    """Decoder and vision tower dimensions of one model, and the visual input the benchmark gives it.

    family: an arch.FAMILIES key. llava, video_llava, llava_next: LLaMA + CLIP; llava_onevision: Qwen2 + SigLIP;
    qwen2_5_vl: Qwen2.5-VL's text model + its ViT (vision_* fields are the ViT's; vision_layers is its depth).
    """

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
    family: str = "llava"
    input_size: tuple[int, int] | None = None  # (height, width) in pixels of the benchmark's anyres or Qwen image
    frames: int = 0  # video frames of the benchmark's input (Video-LLaVA); 0: an image
    full_attention_blocks: tuple[int, ...] = ()  # Qwen's ViT: the blocks with full attention (the others: windows)
    budgets: tuple[int, ...] = (192, 128, 64)  # paper-style budgets of this shape's input (the benchmark's default)

    @property
    def n_visual(self) -> int:
        """Visual tokens LLaVA-1.5 gives the LLM (CLS dropped); other families count theirs per input."""
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
        # Video-LLaVA-7B: Vicuna-7B + CLIP ViT-L/14 at 224 px; 8 frames x 257 tokens (each frame's CLS kept) = 2056,
        # the paper's 2048; budgets 194 and 135 (the paper's video setting)
        Shape(
            "video-llava-7b",
            4096,
            11008,
            32,
            32,
            1024,
            4096,
            24,
            16,
            224,
            family="video_llava",
            frames=8,
            budgets=(194, 135),
        ),
        # LLaVA-NeXT-7B (v1.6 Vicuna): CLIP ViT-L/14-336, anyres; a 672 x 672 image is the base + 2 x 2 crops (5 tower
        # passes, DART's nominal 5 x 576 = 2880; 2928 in transformers: unpadded crops + 48 image_newline tokens)
        Shape(
            "llava-next-7b",
            4096,
            11008,
            32,
            32,
            1024,
            4096,
            24,
            16,
            family="llava_next",
            input_size=(672, 672),
            budgets=(320,),
        ),
        # LLaVA-OneVision-7B: Qwen2-7B (GQA 28 / 4) + SigLIP so400m/384 (26 layers read, no head), anyres_max_9; a
        # 1152 x 1152 image is the base + 3 x 3 crops: 729 + 81 x 82 = 7371 tokens; budgets 33 / 22 / 11 % of them
        Shape(
            "llava-onevision-7b",
            3584,
            18944,
            28,
            28,
            1152,
            4304,
            26,
            16,
            384,
            vocab=152128,
            kv_heads=4,
            family="llava_onevision",
            input_size=(1152, 1152),
            budgets=(2457, 1638, 819),
        ),
        # Qwen2.5-VL-7B-Instruct: 28 layers, GQA 28 / 4, M-RoPE; ViT depth 32 (1280, SwiGLU 3420, 16 heads), windows of
        # 112 px, full attention in blocks 7 / 15 / 23 / 31; an 896 x 896 image: 64 x 64 patches -> 1024 tokens
        Shape(
            "qwen2.5-vl-7b",
            3584,
            18944,
            28,
            28,
            1280,
            3420,
            32,
            16,
            vocab=152064,
            kv_heads=4,
            family="qwen2_5_vl",
            input_size=(896, 896),
            full_attention_blocks=(7, 15, 23, 31),
            budgets=(341, 228, 114),
        ),
        # CPU-sized variants of each family (width 256, 4 heads of 64, the real depth and visual layout, small towers)
        Shape(
            "cpu-video-llava", 256, 688, 32, 4, 128, 512, 2, 2, 224, family="video_llava", frames=8, budgets=(194, 135)
        ),
        Shape(
            "cpu-llava-next",
            256,
            688,
            32,
            4,
            128,
            512,
            2,
            2,
            family="llava_next",
            input_size=(672, 672),
            budgets=(320,),
        ),
        # a 384 x 768 image (base + 1 x 2 crops: 729 + 27 x 55 = 2214 tokens), so it runs in minutes on one thread
        Shape(
            "cpu-llava-onevision",
            256,
            688,
            28,
            4,
            128,
            512,
            2,
            2,
            384,
            vocab=1024,
            kv_heads=2,
            family="llava_onevision",
            input_size=(384, 768),
            budgets=(738, 492, 246),
        ),
        Shape(
            "cpu-qwen2.5-vl",
            256,
            688,
            28,
            4,
            128,
            344,
            4,
            2,
            vocab=1024,
            kv_heads=2,
            family="qwen2_5_vl",
            input_size=(896, 896),
            full_attention_blocks=(1, 3),
            budgets=(341, 228, 114),
        ),
    )  # fmt: skip
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


def _text_dict(shape: Shape, model_type: str) -> dict:
    """The text model's config fields of a family shape (pad 0, BOS 1, EOS 2 as the LLaVA shapes)."""
    return dict(
        model_type=model_type,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads or shape.heads,
        vocab_size=shape.vocab,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        max_position_embeddings=32768,
        tie_word_embeddings=False,
    )


def _vit_dict(shape: Shape, model_type: str) -> dict:
    """A CLIP or SigLIP tower's config fields (SigLIP without the pooling head, as LLaVA-OneVision ships it)."""
    siglip = model_type == "siglip_vision_model"
    return dict(
        model_type=model_type,
        hidden_size=shape.vision_hidden,
        intermediate_size=shape.vision_intermediate,
        num_hidden_layers=shape.vision_layers,
        num_attention_heads=shape.vision_heads,
        image_size=shape.image_size,
        patch_size=shape.patch_size,
        hidden_act="gelu_pytorch_tanh" if siglip else "quick_gelu",
        **({"vision_use_head": False} if siglip else {}),
    )


def visual_token_ids(shape: Shape) -> tuple[int, int, int, int]:
    """(image, video, vision start, vision end) ids of a family shape: the vocabulary's last four (cost only)."""
    return shape.vocab - 4, shape.vocab - 3, shape.vocab - 2, shape.vocab - 1


def family_config(shape: Shape) -> PretrainedConfig:
    """The multimodal config of any shape: llava_config for LLaVA-1.5, the family's own config otherwise."""
    if shape.family == "llava":
        return llava_config(shape)
    image, video, start, end = visual_token_ids(shape)
    side = shape.image_size
    if shape.family == "video_llava":
        return transformers.VideoLlavaConfig(
            vision_config=_vit_dict(shape, "clip_vision_model"),
            text_config=_text_dict(shape, "llama"),
            image_token_id=image,
            video_token_id=video,
            image_seq_length=shape.n_visual,
            video_seq_length=shape.frames * (shape.n_visual + 1),
        )
    if shape.family == "llava_next":  # llava-v1.6's five pinpoints
        pinpoints = [[side, 2 * side], [2 * side, side], [2 * side, 2 * side], [3 * side, side], [side, 3 * side]]
        return transformers.LlavaNextConfig(
            vision_config=_vit_dict(shape, "clip_vision_model"),
            text_config=_text_dict(shape, "llama"),
            image_token_id=image,
            image_grid_pinpoints=pinpoints,
            image_seq_length=shape.n_visual,
        )
    if shape.family == "llava_onevision":  # anyres_max_9 over a 6 x 6 grid of pinpoints
        pinpoints = [[side * i, side * j] for i in range(1, 7) for j in range(1, 7)]
        return transformers.LlavaOnevisionConfig(
            vision_config=_vit_dict(shape, "siglip_vision_model"),
            text_config=_text_dict(shape, "qwen2") | {"rope_theta": 1e6},
            image_token_id=image,
            video_token_id=video,
            image_grid_pinpoints=pinpoints,
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
            vision_aspect_ratio="anyres_max_9",
        )
    if shape.family == "qwen2_5_vl":
        unit = shape.head_dim // 16  # Qwen2.5-VL-7B splits its 64 rotary frequencies (t, h, w) as [16, 24, 24]
        rope = dict(rope_type="default", rope_theta=1e6, mrope_section=[2 * unit, 3 * unit, 3 * unit])
        vision = dict(
            depth=shape.vision_layers,
            hidden_size=shape.vision_hidden,
            intermediate_size=shape.vision_intermediate,
            num_heads=shape.vision_heads,
            patch_size=shape.patch_size,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            out_hidden_size=shape.hidden,
            fullatt_block_indexes=list(shape.full_attention_blocks),
        )
        return transformers.Qwen2_5_VLConfig(
            text_config=_text_dict(shape, "qwen2_5_vl_text") | {"rope_parameters": rope},
            vision_config=vision,
            image_token_id=image,
            video_token_id=video,
            vision_start_token_id=start,
            vision_end_token_id=end,
        )
    raise ValueError(f"family: got {shape.family!r}, allowed: {', '.join(FAMILIES)}")


def build_family_model(
    shape: Shape, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", seed: int = 0
) -> torch.nn.Module:
    """A random-init model of any shape (the family's model class), SDPA attention everywhere, in eval mode."""
    torch.manual_seed(seed)
    model_class = getattr(transformers, FAMILIES[shape.family].model_class)
    with torch.device(device):
        model = model_class._from_config(family_config(shape), attn_implementation="sdpa", dtype=dtype)
    return model.eval()


def _visual_inputs(model, shape: Shape, batch: int, gen: torch.Generator) -> tuple[dict[str, torch.Tensor], int]:
    """Pixel inputs of `batch` copies of the shape's image or video, and the visual tokens the model makes of one."""
    side, patch = shape.image_size, shape.patch_size
    if shape.family == "video_llava":
        pixels = torch.randn(batch, shape.frames, 3, side, side, generator=gen)
        return {"pixel_values_videos": pixels}, shape.frames * (shape.n_visual + 1)
    height, width = shape.input_size
    if shape.family == "qwen2_5_vl":
        grid = torch.tensor([[1, height // patch, width // patch]] * batch)
        pixels = torch.randn(int(grid.prod(dim=1).sum()), 3 * 2 * patch * patch, generator=gen)
        return {"pixel_values": pixels, "image_grid_thw": grid}, int(grid[0].prod()) // 4
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    crops = image_size_to_num_patches((height, width), model.config.image_grid_pinpoints, side)
    pixels = torch.randn(1, crops, 3, side, side, generator=gen)
    sizes = torch.tensor([[height, width]])
    with torch.no_grad():  # the count of unpadded crop tokens and image_newline rows, from the model's own code
        features = model.model.get_image_features(pixel_values=pixels.to(model.device, model.dtype), image_sizes=sizes)
    count = sum(f.shape[0] for f in features.pooler_output)
    return {"pixel_values": pixels.expand(batch, -1, -1, -1, -1), "image_sizes": sizes.expand(batch, -1)}, count


def make_family_batch(
    model: torch.nn.Module,
    shape: Shape,
    batch: int = 1,
    question: int = 83,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """`batch` equal prompts for a non-LLaVA-1.5 shape: 35 pre-prompt ids, the visual block (between Qwen's start and
    end markers), `question` ids; the visual count is what the model makes of the shape's input."""
    gen = torch.Generator().manual_seed(seed)
    pixels, count = _visual_inputs(model, shape, batch, gen)
    image, video, start, end = visual_token_ids(shape)
    marks = shape.family == "qwen2_5_vl"
    text = torch.randint(3, image, (batch, PRE_PROMPT + question), generator=gen)
    visual = torch.full((batch, count), video if shape.frames else image)
    parts = [text[:, :PRE_PROMPT], *([torch.full((batch, 1), start)] if marks else []), visual]
    parts += [*([torch.full((batch, 1), end)] if marks else []), text[:, PRE_PROMPT:]]
    input_ids = torch.cat(parts, dim=1)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), **pixels}
    if marks:
        inputs["mm_token_type_ids"] = (input_ids == image).int()
    return {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()}

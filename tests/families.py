"""Random-init models of every supported family, small widths, each checkpoint's structural settings, and inputs whose
visual-token counts come from the model itself (no processor needed): the test bed of the multi-family engine."""

from __future__ import annotations

import torch

VOCAB = 96
IMAGE, VIDEO, PAD, BOS = 90, 91, 0, 1
VISION_START, VISION_END = 92, 93  # Qwen's <|vision_start|> / <|vision_end|>
FAMILIES = ("llava", "video_llava", "llava_next", "llava_onevision", "qwen2_5_vl")


def _llama(kv_heads: int = 4, vocab: int = VOCAB, pad: int = PAD, bos: int = BOS, eos: int = 2) -> dict:
    return dict(
        model_type="llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        vocab_size=vocab,
        pad_token_id=pad,
        bos_token_id=bos,
        eos_token_id=eos,
        max_position_embeddings=4096,
    )


def _clip(image_size: int = 28, patch: int = 7) -> dict:
    return dict(
        model_type="clip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
        hidden_act="quick_gelu",
    )


def build(family: str, attn: str = "sdpa", seed: int = 0, ids: dict | None = None) -> torch.nn.Module:
    """A random-init model of the family with small widths (eval mode, fp32); `ids` overrides the vocabulary size and
    special token ids (keys vocab, pad, bos, eos, image, video, vision_start, vision_end), e.g. from a tokenizer."""
    import transformers as tf

    ids = {"vocab": VOCAB, "pad": PAD, "bos": BOS, "eos": 2, "image": IMAGE, "video": VIDEO} | (ids or {})
    ids = {"vision_start": VISION_START, "vision_end": VISION_END} | ids
    image, video = ids["image"], ids["video"]
    text_ids = {key: ids[key] for key in ("vocab", "pad", "bos", "eos")}
    torch.manual_seed(seed)
    if family == "llava":
        config = tf.LlavaConfig(
            vision_config=_clip(), text_config=_llama(**text_ids), image_token_id=image, image_seq_length=16
        )
        model = tf.LlavaForConditionalGeneration(config)
    elif family == "video_llava":  # Video-LLaVA-7B-hf: LLaMA, CLIP towers for images and frames
        config = tf.VideoLlavaConfig(
            vision_config=_clip(),
            text_config=_llama(**text_ids),
            image_token_id=image,
            video_token_id=video,
            image_seq_length=16,
            video_seq_length=8 * 17,
        )
        model = tf.VideoLlavaForConditionalGeneration(config)
    elif family == "llava_next":  # llava-v1.6-vicuna: anyres grid pinpoints, image_newline, LLaMA
        config = tf.LlavaNextConfig(
            vision_config=_clip(),
            text_config=_llama(**text_ids),
            image_token_id=image,
            image_grid_pinpoints=[[28, 56], [56, 28], [56, 56]],
            image_seq_length=16,
        )
        model = tf.LlavaNextForConditionalGeneration(config)
    elif family == "llava_onevision":  # onevision-qwen2: anyres_max_9, Qwen2 with GQA and qkv biases
        text = _llama(kv_heads=2, **text_ids) | dict(model_type="qwen2")
        config = tf.LlavaOnevisionConfig(
            vision_config=_clip() | dict(model_type="siglip_vision_model", hidden_act="gelu_pytorch_tanh"),
            text_config=text,
            image_token_id=image,
            video_token_id=video,
            image_grid_pinpoints=[[28, 56], [56, 28], [56, 56]],
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
        )
        model = tf.LlavaOnevisionForConditionalGeneration(config)
    elif family == "qwen2_5_vl":  # Qwen2.5-VL: M-RoPE (t, h, w), GQA, qkv biases, 2 x 2 patch merger
        text = _llama(kv_heads=2, **text_ids) | dict(
            model_type="qwen2_5_vl_text",
            rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 3, 3]),
        )
        vision = dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            patch_size=7,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=28,
            out_hidden_size=64,
            fullatt_block_indexes=[1],
        )
        config = tf.Qwen2_5_VLConfig(
            text_config=text,
            vision_config=vision,
            image_token_id=image,
            video_token_id=video,
            vision_start_token_id=ids["vision_start"],
            vision_end_token_id=ids["vision_end"],
        )
        model = tf.Qwen2_5_VLForConditionalGeneration(config)
    else:
        raise ValueError(family)
    model.config.text_config._attn_implementation = attn
    model.config._attn_implementation = attn
    return model.eval()


def _visual(model: torch.nn.Module, family: str, size: tuple[int, int], video: bool, seed: int) -> tuple[dict, int]:
    """Pixel inputs of one image (size = height, width) or video, and the visual tokens the model makes of it."""
    generator = torch.Generator().manual_seed(seed)
    if family == "qwen2_5_vl":
        patch, temporal = 7, 2
        grid = torch.tensor([[1, size[0] // patch, size[1] // patch]])
        pixels = torch.randn(int(grid.prod()), 3 * temporal * patch * patch, generator=generator)
        return {"pixel_values": pixels, "image_grid_thw": grid}, int(grid.prod()) // 4
    if family == "video_llava" and video:
        pixels = torch.randn(1, 8, 3, 28, 28, generator=generator)
        return {"pixel_values_videos": pixels}, 8 * 17
    if family == "video_llava":
        return {"pixel_values_images": torch.randn(1, 3, 28, 28, generator=generator)}, 16
    if family == "llava":
        return {"pixel_values": torch.randn(1, 3, 28, 28, generator=generator)}, 16
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    image_sizes = torch.tensor([list(size)])
    n_patches = image_size_to_num_patches(size, model.config.image_grid_pinpoints, 28)
    pixels = torch.randn(1, n_patches, 3, 28, 28, generator=generator)
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=pixels, image_sizes=image_sizes)
    pooled = features.pooler_output if hasattr(features, "pooler_output") else features
    return {"pixel_values": pixels, "image_sizes": image_sizes}, int(sum(f.shape[0] for f in pooled))


def sample(model, family: str, question_length: int = 6, size=(28, 28), video: bool = False, seed: int = 0) -> dict:
    """One prompt: BOS, a few text tokens, the visual block (between Qwen's start/end markers), the question."""
    pixels, count = _visual(model, family, size, video, seed)
    generator = torch.Generator().manual_seed(100 + seed)
    token = VIDEO if video else IMAGE
    before = torch.tensor([BOS, 5, 6, 7] + ([VISION_START] if family == "qwen2_5_vl" else []))
    after = torch.tensor(([VISION_END] if family == "qwen2_5_vl" else []) + [8])
    question = torch.randint(10, 80, (question_length,), generator=generator)
    ids = torch.cat([before, torch.full((count,), token), after, question])[None]
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), **pixels}
    if family == "qwen2_5_vl":
        inputs["mm_token_type_ids"] = (ids == IMAGE).int()
    return inputs


def batch(model, family: str, samples: list[dict]) -> dict:
    """Left-pad single-sample inputs into one batch (pixel inputs concatenated, anyres patches padded)."""
    length = max(s["input_ids"].shape[1] for s in samples)
    out: dict = {}
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        if key in samples[0]:
            out[key] = torch.cat(
                [torch.nn.functional.pad(s[key], (length - s[key].shape[1], 0), value=0) for s in samples]
            )
    for key in samples[0]:
        if key in out:
            continue
        values = [s[key] for s in samples]
        if key == "pixel_values" and values[0].dim() == 5:  # anyres: pad the patch axis as the processor does
            most = max(v.shape[1] for v in values)
            values = [torch.nn.functional.pad(v, (0, 0, 0, 0, 0, 0, 0, most - v.shape[1])) for v in values]
        out[key] = torch.cat(values)
    return out


def two_images(model, family: str, question_length: int = 6, seed: int = 0) -> dict:
    """One prompt with two images separated by text: BOS, image 1, a few words, image 2, the question."""
    first, count_a = _visual(model, family, (28, 56) if family != "llava" else (28, 28), False, seed)
    second, count_b = _visual(model, family, (56, 28) if family != "llava" else (28, 28), False, seed + 1)
    generator = torch.Generator().manual_seed(200 + seed)
    start, end = ([VISION_START], [VISION_END]) if family == "qwen2_5_vl" else ([], [])
    block_a = torch.tensor(start + [IMAGE] * count_a + end)
    block_b = torch.tensor(start + [IMAGE] * count_b + end)
    question = torch.randint(10, 80, (question_length,), generator=generator)
    ids = torch.cat([torch.tensor([BOS, 5]), block_a, torch.tensor([6, 7, 8]), block_b, question])[None]
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    for key in first:
        inputs[key] = torch.cat([first[key], second[key]])
    if family == "llava_next":  # two anyres images: their patch counts differ, the processor pads the patch axis
        most = max(first["pixel_values"].shape[1], second["pixel_values"].shape[1])
        pad = [torch.nn.functional.pad(v["pixel_values"], (0, 0, 0, 0, 0, 0, 0, most - v["pixel_values"].shape[1]))
               for v in (first, second)]  # fmt: skip
        inputs["pixel_values"] = torch.cat(pad)
    if family == "qwen2_5_vl":
        inputs["mm_token_type_ids"] = (ids == IMAGE).int()
    return inputs

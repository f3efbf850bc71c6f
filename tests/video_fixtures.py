"""Offline video fixtures: tiny MJPEG AVI files (written here: no encoder package needed) in Video-LLaVA's QA layout.

Each frame is one solid colour whose red channel is 20 x its frame index, so a decoded frame tells which frame it is.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 64  # decord mis-sizes some small non-multiple-of-32 MJPEG frames; 64 x 64 decodes exactly


def frame_colour(index: int) -> tuple[int, int, int]:
    """The RGB colour of frame `index` of a fixture video."""
    return (20 * index % 256, 255 - 20 * index % 256, 128)


def _chunk(fourcc: bytes, data: bytes) -> bytes:
    return fourcc + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")


def _list(kind: bytes, payload: bytes) -> bytes:
    return _chunk(b"LIST", kind + payload)


def write_avi(path: str | Path, n_frames: int, fps: int = 4) -> Path:
    """An MJPEG AVI of `n_frames` solid-colour SIDE x SIDE frames (frame i has frame_colour(i))."""
    jpegs = []
    for i in range(n_frames):
        buffer = io.BytesIO()
        Image.fromarray(np.full((SIDE, SIDE, 3), frame_colour(i), np.uint8)).save(buffer, format="JPEG", quality=95)
        jpegs.append(buffer.getvalue())
    avih = struct.pack("<IIIIIIIIII4I", 1_000_000 // fps, 0, 0, 0x10, n_frames, 0, 1, 0, SIDE, SIDE, 0, 0, 0, 0)
    strh = b"vidsMJPG" + struct.pack(
        "<IHHIIIIIIIIhhhh", 0, 0, 0, 0, 1, fps, 0, n_frames, 0, 0xFFFFFFFF, 0, 0, 0, SIDE, SIDE
    )
    strf = struct.pack("<IiiHH4sIiiII", 40, SIDE, SIDE, 1, 24, b"MJPG", SIDE * SIDE * 3, 0, 0, 0, 0)
    header = _list(b"hdrl", _chunk(b"avih", avih) + _list(b"strl", _chunk(b"strh", strh) + _chunk(b"strf", strf)))
    movi, index, offset = b"", b"", 4
    for jpeg in jpegs:
        frame = _chunk(b"00dc", jpeg)
        index += b"00dc" + struct.pack("<III", 0x10, offset, len(jpeg))
        movi, offset = movi + frame, offset + len(frame)
    body = b"AVI " + header + _list(b"movi", movi) + _chunk(b"idx1", index)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


QUESTIONS = [
    ("what is the man doing?", "cooking"),
    ("how many dogs are there?", "two"),
    ("what color is the car?", "red"),
    ("who is singing?", "a woman"),
    ("where is the cat?", "sofa"),
    ("what is the woman slicing?", "onion"),
]


def write_layout(
    root: str | Path,
    n: int = 6,
    corrupt: tuple[int, ...] = (),
    missing: tuple[int, ...] = (),
    video_dir: str = "videos",
    prefix: str = "",
) -> Path:
    """Video-LLaVA's MSVD layout under root: test_q.json, test_a.json (answers in reverse order: joined by id) and
    video_dir/<prefix>video<i>.avi with 10 + i frames; `corrupt` videos hold garbage bytes, `missing` ones no file."""
    root = Path(root)
    questions, answers = [], []
    for i in range(n):
        question, answer = QUESTIONS[i % len(QUESTIONS)]
        questions.append({"video_name": f"video{i}", "question": question, "question_id": f"v{i}_{i}"})
        answers.append({"answer": answer, "question_id": f"v{i}_{i}"})
        path = root / video_dir / f"{prefix}video{i}.avi"
        if i in corrupt:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(bytes(range(256)) * 8)
        elif i not in missing:
            write_avi(path, 10 + i)
    (root / "test_q.json").write_text(json.dumps(questions))
    (root / "test_a.json").write_text(json.dumps(answers[::-1]))
    return root


def build_video_llava(seed: int = 0):
    """A tiny random-init VideoLlavaForConditionalGeneration and its VideoLlavaProcessor, offline.

    CLIP tower 32 x 32 px, patch 8 (16 patches + CLS = 17 tokens per frame, 8 frames = 136 `<video>` tokens), a 2-layer
    LLaMA of width 32, and a word-level tokenizer over the fixture questions with `<image>` and `<video>` tokens.
    """
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        PreTrainedTokenizerFast,
        VideoLlavaConfig,
        VideoLlavaForConditionalGeneration,
        VideoLlavaImageProcessor,
        VideoLlavaProcessor,
        VideoLlavaVideoProcessor,
    )

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>", "<video>"]
    words = {w for q, a in QUESTIONS for w in f"{q} {a}".replace("?", " ?").split()} | {"user", "assistant", ":"}
    vocab = {token: i for i, token in enumerate(specials + sorted(words))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
        padding_side="left",
    )
    side, patch = 32, 8
    pixels = {"size": {"shortest_edge": side}, "crop_size": {"height": side, "width": side}}
    processor = VideoLlavaProcessor(
        image_processor=VideoLlavaImageProcessor(**pixels),
        video_processor=VideoLlavaVideoProcessor(**pixels),
        tokenizer=tokenizer,
        patch_size=patch,
    )
    config = VideoLlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=side,
            patch_size=patch,
        ),
        text_config=LlamaConfig(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=512, pad_token_id=vocab["<pad>"], bos_token_id=1,
            eos_token_id=2,
        ),
        image_token_index=vocab["<image>"],
        video_token_index=vocab["<video>"],
        vision_feature_layer=-1,
    )  # fmt: skip
    torch.manual_seed(seed)
    return VideoLlavaForConditionalGeneration(config).eval(), processor

"""Offline test fixtures: a tiny random-init LLaVA checkpoint on disk, and a tiny POPE-shaped local dataset."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import CLIPImageProcessor, LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast

from eval.shapes import Shape, llava_config, tokenizer_ids
from eval.tiny_train.model import SPECIALS, llama_tokenizer, llava_processor

IMAGE_SIZE = 64
PATCH = 4  # (64 / 4)^2 = 256 visual tokens
OBJECTS = ["person", "dog", "cat", "car", "chair", "bottle", "cup", "bird", "tree", "bus"]
CORPUS = [
    f"USER: Is there a {o} in the image? Answer the question using a single word or phrase. ASSISTANT: {a}"
    for o in OBJECTS
    for a in ("Yes", "No", "yes", "no")
]


def build_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on a few POPE-like sentences; `<image>` and `<pad>` are special tokens."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return llama_tokenizer(tok)


def build_processor() -> LlavaProcessor:
    """LlavaProcessor for 64x64 images, patch 4 (256 `<image>` tokens per image), with the LLaVA-1.5 chat template."""
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    return llava_processor(build_tokenizer(), image_processor, PATCH)


def build_model(
    tokenizer: PreTrainedTokenizerFast, n_layers: int = 8, seed: int = 0, std: float = 0.5
) -> LlavaForConditionalGeneration:
    """Random LLaVA: 2-layer CLIP tower (64x64, patch 4), `n_layers`-layer LLaMA (hidden 64), matrices ~ N(0, std).

    The large std makes greedy answers depend on the image and question (the default init answers the same everywhere).
    """
    # decoder hidden 64, MLP 128, n_layers layers, 4 heads; CLIP tower hidden 32, MLP 64, 2 layers, 2 heads
    shape = Shape("tiny-checkpoint", 64, 128, n_layers, 4, 32, 64, 2, 2, IMAGE_SIZE, PATCH, vocab=len(tokenizer))
    # LlamaConfig's default eps, the last vision layer: the settings these fixtures have always had
    config = llava_config(
        shape, **tokenizer_ids(tokenizer), max_positions=1024, rms_norm_eps=1e-6, vision_feature_layer=-1
    )
    torch.manual_seed(seed)  # biases and norms come from the default init
    model = LlavaForConditionalGeneration(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model


def save_tiny_checkpoint(path: str | Path, n_layers: int = 8, seed: int = 0) -> Path:
    """Write a loadable tiny LLaVA checkpoint (model, tokenizer, processor, chat template) to `path`."""
    path = Path(path)
    processor = build_processor()
    model = build_model(processor.tokenizer, n_layers=n_layers, seed=seed)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _png_bytes(image) -> bytes:
    """A PIL image encoded as PNG bytes."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# What write_pope_fixture can break in a row (the bad-data cases the runner must isolate per document).
CORRUPTIONS = ("garbage_image", "null_image", "null_question", "null_answer", "truncated_image")


def write_pope_fixture(
    directory: str | Path, n: int = 8, seed: int = 0, corrupt: dict[int, str] | None = None, name: str = "test"
) -> Path:
    """Write `n` POPE-shaped rows (official columns, random images, balanced answers) to directory/<name>.parquet.

    corrupt maps a row index to one of CORRUPTIONS; that row is broken that way (images are stored as PNG bytes).
    """
    import datasets
    import numpy as np
    from PIL import Image

    rng = random.Random(seed)
    pixels = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        image = Image.fromarray(pixels.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8))
        row = {
            "id": str(i),
            "question_id": str(i),
            "question": f"Is there a {rng.choice(OBJECTS)} in the image?",
            "answer": "yes" if i % 2 == 0 else "no",
            "image_source": f"synthetic_{i // 2:04d}",
            "image": {"bytes": _png_bytes(image), "path": None},
            "category": ("adversarial", "popular", "random")[i % 3],
        }
        kind = (corrupt or {}).get(i)
        if kind == "garbage_image":
            row["image"] = {"bytes": bytes(range(256)) * 4, "path": None}
        elif kind == "truncated_image":
            row["image"] = {"bytes": row["image"]["bytes"][: len(row["image"]["bytes"]) * 2 // 3], "path": None}
        elif kind == "null_image":
            row["image"] = None
        elif kind == "null_question":
            row["question"] = None
        elif kind == "null_answer":
            row["answer"] = None
        elif kind is not None:
            raise ValueError(f"corrupt: got {kind!r}, allowed: {', '.join(CORRUPTIONS)}")
        rows.append(row)
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "question_id": datasets.Value("string"),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "image_source": datasets.Value("string"),
            "image": datasets.Image(),
            "category": datasets.Value("string"),
        }
    )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{name}.parquet"
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(out))
    return out


def write_task(
    directory: str | Path, data_file: str | Path, task: str = "pope_local", base: str = "pope_local"
) -> Path:
    """Write directory/<task>.yaml: the project's eval/tasks/<base>.yaml with its data swapped for `data_file`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    included = Path(__file__).resolve().parents[1] / "eval" / "tasks" / f"{base}.yaml"
    out = directory / f"{task}.yaml"
    out.write_text(
        f"task: {task}\ninclude: {included}\ndataset_path: parquet\n"
        f"dataset_kwargs:\n  data_files:\n    test: {Path(data_file).resolve()}\ntest_split: test\n"
    )
    return out

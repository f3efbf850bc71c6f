"""Tokenizer, processor and random-init model of the tiny LLaVA, built offline from the synthetic vocabulary."""

from __future__ import annotations

import random
import re

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPImageProcessor, LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast

from eval import synth
from eval.shapes import Shape, llava_config, tokenizer_ids
from eval.tiny_train.config import TrainConfig

# LLaMA's special tokens and LLaVA's image token; their order is their ids (<unk> 0, <s> 1, </s> 2, <pad> 3, <image> 4)
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
# The llava-1.5-hf template without the {% generation %} tags: "USER: <image>\n{text} ASSISTANT:".
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
WORD = re.compile(r"\w+|[^\w\s]")  # a word or one punctuation mark: how pre_tokenizers.Whitespace splits text
VOCAB_SCENES = 400  # random scenes whose training questions and answers make up the vocabulary
VOCAB_NUMBERS = 32  # "0" .. "31": every row, column and count a question or answer can name on grids up to 32
CLIP_MLP_RATIO = 4  # CLIP's MLP width over its hidden width
MAX_POSITIONS = 1024  # room for the image prefix (147 tokens) and any turn: each turn restarts after the prefix
# LlamaConfig's default, which the committed tiny model was trained with (llava-hf's LLaVA-1.5 uses 1e-5)
RMS_NORM_EPS = 1e-6
# the tower's last layer: the one vision pre-training (train.pretrain_vision) teaches to say what each patch holds
VISION_FEATURE_LAYER = -1


def llama_tokenizer(
    tokenizer: Tokenizer, extra_special_tokens: dict[str, str] | None = None
) -> PreTrainedTokenizerFast:
    """A transformers tokenizer over `tokenizer` with LLaMA's special tokens, LLaVA's `<image>` (plus any named
    `extra_special_tokens`) and left padding."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"} | (extra_special_tokens or {}),
        padding_side="left",
    )


def word_tokenizer(words: set[str]) -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer: SPECIALS, then `words` sorted; `<s>` starts every encoded text."""
    vocab = {token: i for i, token in enumerate(SPECIALS + sorted(words))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", SPECIALS.index("<s>"))]
    )
    return llama_tokenizer(tokenizer)


def extend_word_tokenizer(
    tokenizer: PreTrainedTokenizerFast, words: set[str], extra_special_tokens: dict[str, str]
) -> PreTrainedTokenizerFast:
    """`tokenizer` (a word_tokenizer) with the new `extra_special_tokens` and then the new `words` appended: every
    old token keeps its id, so a trained model's embeddings stay valid."""
    vocab = dict(sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]))
    for token in list(extra_special_tokens.values()) + sorted(words):
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    old = tokenizer.backend_tokenizer
    backend.normalizer, backend.pre_tokenizer, backend.post_processor = (
        old.normalizer,
        old.pre_tokenizer,
        old.post_processor,
    )
    return llama_tokenizer(backend, extra_special_tokens)


def synth_words() -> set[str]:
    """Every lower-case word and punctuation mark of the chat template, the post-prompts and the synthetic turns."""
    words = set("user assistant : ? . , \n".split()) | {str(i) for i in range(VOCAB_NUMBERS)}
    words |= set(WORD.findall((synth.GQA_POST_PROMPT + synth.MME_SUFFIX).lower()))
    rng = random.Random(0)
    for _ in range(VOCAB_SCENES):
        scene = synth.sample_scene(rng, 1, 8)
        turns = synth.training_turns(scene, rng, alignment=False, bootstrap=True)
        for qa in turns + synth.training_turns(scene, rng, alignment=True, bootstrap=True):
            words |= set(WORD.findall(f"{qa.question} {qa.answer}".lower()))
    return words


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny LLaVA's tokenizer: word level over the synthetic vocabulary, with LLaMA-style special tokens."""
    return word_tokenizer(synth_words())


def llava_processor(
    tokenizer: PreTrainedTokenizerFast, image_processor: CLIPImageProcessor, patch: int
) -> LlavaProcessor:
    """A LlavaProcessor with LLaVA-1.5's layout (one `<image>` token per patch, CLS dropped) and chat template."""
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
        image_token="<image>",
    )


def build_processor(cfg: TrainConfig) -> LlavaProcessor:
    """LlavaProcessor with a CLIP image processor at the native image size and a LLaVA-1.5 chat template."""
    size = cfg.grid * cfg.patch
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}, do_convert_rgb=True
    )
    return llava_processor(build_tokenizer(), image_processor, cfg.patch)


def model_shape(cfg: TrainConfig, vocab: int) -> Shape:
    """The configured model's dimensions: one patch per grid cell, so grid x grid visual tokens."""
    return Shape(
        "tiny-llava",
        hidden=cfg.text_hidden,
        intermediate=cfg.text_intermediate,
        layers=cfg.text_layers,
        heads=cfg.text_heads,
        vision_hidden=cfg.vision_hidden,
        vision_intermediate=CLIP_MLP_RATIO * cfg.vision_hidden,
        vision_layers=cfg.vision_layers,
        vision_heads=cfg.vision_heads,
        image_size=cfg.grid * cfg.patch,
        patch_size=cfg.patch,
        vocab=vocab,
    )


def build_model(cfg: TrainConfig, tokenizer: PreTrainedTokenizerFast) -> LlavaForConditionalGeneration:
    """A randomly initialised LlavaForConditionalGeneration of the configured size."""
    config = llava_config(
        model_shape(cfg, len(tokenizer)),
        **tokenizer_ids(tokenizer),
        max_positions=MAX_POSITIONS,
        rms_norm_eps=RMS_NORM_EPS,
        vision_feature_layer=VISION_FEATURE_LAYER,
        tie_embeddings=True,  # one matrix for input and output embeddings, as the committed model was trained
        init_std=cfg.init_std,
    )
    torch.manual_seed(cfg.seed)
    model = LlavaForConditionalGeneration._from_config(config, attn_implementation="sdpa")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model

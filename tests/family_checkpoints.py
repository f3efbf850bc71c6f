"""Loadable tiny checkpoints of every family on disk (random weights, each family's own processor, tokenizer and chat
template, built offline): what the lmms-eval plugin loads with AutoConfig / the family's class / AutoProcessor."""

from __future__ import annotations

from pathlib import Path

import families as fam
from tiny_checkpoint import CORPUS
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

QWEN_SPECIALS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
}
LLAVA_SPECIALS = {"image_token": "<image>", "video_token": "<video>"}
BASE_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
CLIP_NORM = dict(image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])
PINPOINTS = [[28, 56], [56, 28], [56, 56]]  # tests/families.py's anyres grid (28-pixel crops, patch 7)


def _template(user: str, image: str, video: str, end_user: str, assistant: str) -> str:
    """A chat template: user turn (visual placeholders first, then text), then the assistant's opening."""
    return (
        "{% for message in messages %}" + user + "{% for content in message['content'] %}"
        "{% if content['type'] == 'image' %}" + image + "{% elif content['type'] == 'video' %}" + video + "{% endif %}"
        "{% endfor %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
        "{{ content['text'] }}{% endfor %}" + end_user + "{% endfor %}"
        "{% if add_generation_prompt %}" + assistant + "{% endif %}"
    )


VICUNA = _template("USER: ", "<image>\n", "<video>\n", " ", "ASSISTANT:")
QWEN_CHAT = _template(
    "<|im_start|>user\n",
    "<|vision_start|><|image_pad|><|vision_end|>",
    "<|vision_start|><|video_pad|><|vision_end|>",
    "<|im_end|>\n",
    "<|im_start|>assistant\n",
)
ONEVISION_CHAT = _template("<|im_start|>user ", "<image>\n", "<video>\n", "<|im_end|>", "<|im_start|>assistant\n")


def _tokenizer(specials: dict[str, str]) -> PreTrainedTokenizerFast:
    """Byte-level BPE on POPE-like sentences, with the family's visual placeholders as special tokens."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=BASE_SPECIALS + list(specials.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens=specials,
        padding_side="left",
    )


def _processor(family: str, tokenizer: PreTrainedTokenizerFast):
    import transformers as tf

    if family == "llava_next":
        images = tf.LlavaNextImageProcessor(
            size={"shortest_edge": 28},
            crop_size={"height": 28, "width": 28},
            image_grid_pinpoints=PINPOINTS,
            **CLIP_NORM,
        )
        return tf.LlavaNextProcessor(
            images, tokenizer, patch_size=7, vision_feature_select_strategy="default", chat_template=VICUNA,
            num_additional_image_tokens=1,
        )  # fmt: skip
    if family == "llava_onevision":
        images = tf.LlavaOnevisionImageProcessor(size={"height": 28, "width": 28}, image_grid_pinpoints=PINPOINTS)
        videos = tf.LlavaOnevisionVideoProcessor(size={"height": 28, "width": 28})
        return tf.LlavaOnevisionProcessor(
            images, tokenizer, videos, num_image_tokens=16, vision_feature_select_strategy="full",
            chat_template=ONEVISION_CHAT,
        )  # fmt: skip
    if family == "qwen2_5_vl":
        pixels = dict(patch_size=7, merge_size=2, temporal_patch_size=2, min_pixels=28 * 28, max_pixels=112 * 112)
        images = tf.Qwen2VLImageProcessor(**pixels)
        videos = tf.Qwen2VLVideoProcessor(**pixels)
        return tf.Qwen2_5_VLProcessor(images, tokenizer, videos, chat_template=QWEN_CHAT)
    if family == "video_llava":
        images = tf.VideoLlavaImageProcessor(
            size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}, **CLIP_NORM
        )
        return tf.VideoLlavaProcessor(images, tf.VideoLlavaVideoProcessor(
            size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}, **CLIP_NORM
        ), tokenizer, patch_size=7, chat_template=VICUNA)  # fmt: skip
    raise ValueError(family)


def save_family_checkpoint(family: str, path: str | Path, seed: int = 0) -> Path:
    """Write a loadable tiny checkpoint of the family (model, processor, tokenizer, chat template) to `path`."""
    path = Path(path)
    tokenizer = _tokenizer(QWEN_SPECIALS if family == "qwen2_5_vl" else LLAVA_SPECIALS)
    vocab = tokenizer.get_vocab()
    specials = QWEN_SPECIALS if family == "qwen2_5_vl" else LLAVA_SPECIALS
    ids = {
        "vocab": len(tokenizer),
        "pad": tokenizer.pad_token_id,
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "image": vocab[specials["image_token"]],
        "video": vocab[specials["video_token"]],
    }
    if family == "qwen2_5_vl":
        ids |= {"vision_start": vocab["<|vision_start|>"], "vision_end": vocab["<|vision_end|>"]}
    model = fam.build(family, seed=seed, ids=ids)
    model.save_pretrained(path)
    _processor(family, tokenizer).save_pretrained(path)
    return path

"""The tiny Video-LLaVA: built from the trained tiny LLaVA (its LLM, projector and vision tower), then fine-tuned on
the synthetic videos of eval/synth_video.py with packed question bundles (docs/tiny-video-model.md).
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from transformers import (
    CLIPVisionConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
    VideoLlavaConfig,
    VideoLlavaForConditionalGeneration,
    VideoLlavaImageProcessor,
    VideoLlavaProcessor,
    VideoLlavaVideoProcessor,
)

from eval import synth, synth_video
from eval.tiny_train.config import VideoTrainConfig
from eval.tiny_train.model import WORD, extend_word_tokenizer
from eval.tiny_train.packing import IGNORE_INDEX, forward_with_features, pack_turns, pad_packed
from eval.tiny_train.probes import ClassProbe, PositionProbe, probe_layers
from eval.tiny_train.train import (
    ADAM_BETAS,
    LOG_EVERY,
    MAX_GRAD_NORM,
    WEIGHT_DECAY,
    format_prompt,
    lr_at,
    normalise,
    save,
    save_progress,
)

# Video-LLaVA's llava-hf template: "USER: <video>\n{text} ASSISTANT:" (and "<image>\n" for an image)
VIDEO_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
VIDEO_TOKEN = "<video>"
VOCAB_VIDEOS = 300  # random videos whose questions and answers make up the added vocabulary
CLS_TOKENS = 1  # Video-LLaVA keeps each frame's CLS token among the video tokens
QUICK_EVAL_PER_FAMILY = 25  # held-out questions per family evaluated every eval_every steps


def video_words() -> set[str]:
    """Every lower-case word of the video questions and answers, and of the word "video"."""
    words = {"video"}
    rng = random.Random(0)
    for _ in range(VOCAB_VIDEOS):
        for qa in synth_video.questions(synth_video.sample_video(rng), rng):
            words |= set(WORD.findall(f"{qa.question} {qa.answer}".lower()))
    return words


def tokens_per_frame(grid: int) -> int:
    """Video tokens of one frame: one per patch plus the CLS token."""
    return grid * grid + CLS_TOKENS


def build_video_processor(tokenizer: PreTrainedTokenizerFast, grid: int, patch: int) -> VideoLlavaProcessor:
    """VideoLlavaProcessor at the native frame size (no resize or crop changes the frames), CLIP normalisation."""
    size = grid * patch
    sizes = {"size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}}
    return VideoLlavaProcessor(
        image_processor=VideoLlavaImageProcessor(**sizes),
        video_processor=VideoLlavaVideoProcessor(**sizes),
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=CLS_TOKENS,
        chat_template=VIDEO_CHAT_TEMPLATE,
    )


def _crop_position_embedding(table: torch.Tensor, old_grid: int, new_grid: int) -> torch.Tensor:
    """CLS row plus the top-left new_grid x new_grid block of a (1 + old_grid^2, D) CLIP position table: a small frame
    then looks to the tower exactly like the top-left corner of the scenes it was trained on."""
    patches = table[CLS_TOKENS:].reshape(old_grid, old_grid, -1)[:new_grid, :new_grid].reshape(new_grid * new_grid, -1)
    return torch.cat([table[:CLS_TOKENS], patches])


def video_llava_from_llava(
    image_model_dir: Path | str, grid: int, seed: int
) -> tuple[VideoLlavaForConditionalGeneration, VideoLlavaProcessor]:
    """A VideoLlavaForConditionalGeneration with the tiny LLaVA's LLM and projector, its vision tower (position
    embeddings cropped to grid x grid patches) as both image and video tower, and `<video>` plus the video questions'
    words added to the tokenizer (new embeddings drawn like the old ones)."""
    llava = LlavaForConditionalGeneration.from_pretrained(image_model_dir, local_files_only=True)
    old_tokenizer = PreTrainedTokenizerFast.from_pretrained(image_model_dir, local_files_only=True)
    tokenizer = extend_word_tokenizer(old_tokenizer, video_words(), {"video_token": VIDEO_TOKEN})
    vision = llava.config.vision_config
    patch, old_grid = vision.patch_size, vision.image_size // vision.patch_size
    vision_config = CLIPVisionConfig(**(vision.to_dict() | {"image_size": grid * patch}))
    text_config = llava.config.text_config.__class__(
        **(llava.config.text_config.to_dict() | {"vocab_size": len(tokenizer)})
    )
    config = VideoLlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
        projector_hidden_act=llava.config.projector_hidden_act,
        vision_feature_select_strategy="default",
        vision_feature_layer=llava.config.vision_feature_layer,
        image_seq_length=grid * grid,
        video_seq_length=synth_video.FRAMES * tokens_per_frame(grid),
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = VideoLlavaForConditionalGeneration._from_config(config, attn_implementation="sdpa")
    tower_state = llava.model.vision_tower.state_dict()
    key = "embeddings.position_embedding.weight"
    tower_state[key] = _crop_position_embedding(tower_state[key], old_grid, grid)
    tower_state.pop("embeddings.position_ids", None)
    for tower in (model.model.image_tower, model.model.video_tower):
        tower.load_state_dict(tower_state, strict=False)
    model.model.multi_modal_projector.load_state_dict(llava.model.multi_modal_projector.state_dict())
    text_state = llava.model.language_model.state_dict()
    old_embeddings = text_state.pop("embed_tokens.weight")
    model.model.language_model.load_state_dict(text_state, strict=False)
    with torch.no_grad():
        embeddings = model.get_input_embeddings().weight
        embeddings.normal_(0.0, old_embeddings.std().item())
        embeddings[: len(old_embeddings)] = old_embeddings
    model.tie_weights()
    for name, value in (
        ("pad", tokenizer.pad_token_id),
        ("eos", tokenizer.eos_token_id),
        ("bos", tokenizer.bos_token_id),
    ):
        setattr(model.generation_config, f"{name}_token_id", value)
    return model, build_video_processor(tokenizer, grid, patch)


def video_pixels(processor: VideoLlavaProcessor, videos: list[np.ndarray]) -> torch.Tensor:
    """[B, frames, 3, H, W] pixel values of (frames, H, W, 3) uint8 videos through the processor's video processor."""
    return processor.video_processor(videos=videos, return_tensors="pt").pixel_values_videos


class VideoPacker:
    """Packs each video's question turns after one video prefix ("USER: <video>\\n" with the video tokens)."""

    def __init__(self, processor: VideoLlavaProcessor, n_video_tokens: int):
        self.processor = processor
        self.tok = processor.tokenizer
        self.video_id = self.tok.convert_tokens_to_ids(VIDEO_TOKEN)
        head = self.tok(f"USER: {VIDEO_TOKEN}\n").input_ids
        i = head.index(self.video_id)
        self.prefix = head[:i] + [self.video_id] * n_video_tokens + head[i + 1 :]

    def batch(self, videos: list[np.ndarray], bundles: list[list[tuple[str, str, tuple[int, ...]]]]) -> dict:
        """Pack (prompt, answer, answer cells) turns; ``answer_cells`` lists (row, index of the token predicting the
        answer, slot, video-token index) for every cell a turn's answer is read from (slot: 0 first, 1 second)."""
        rows, answer_cells = [], []
        for row, bundle in enumerate(bundles):
            packed = pack_turns(self.tok, self.prefix, [(q, a) for q, a, _ in bundle])
            rows.append(packed)
            for (_, _, cells), answer_at in zip(bundle, packed.answer_starts, strict=True):
                answer_cells += [(row, answer_at - 1, slot, cell) for slot, cell in enumerate(cells)]
        return pad_packed(rows, self.tok.pad_token_id) | {
            "pixel_values_videos": video_pixels(self.processor, videos),
            "answer_cells": torch.tensor(answer_cells, dtype=torch.long).reshape(-1, 4),
        }


def video_features(model: VideoLlavaForConditionalGeneration, pixel_values_videos: torch.Tensor) -> torch.Tensor:
    """[B, frames x tokens per frame, D] projected video features, in the order the video tokens take them."""
    feats = model.model.get_video_features(
        pixel_values_videos=pixel_values_videos, vision_feature_layer=model.config.vision_feature_layer
    ).pooler_output
    return feats.reshape(pixel_values_videos.shape[0], -1, feats.shape[-1])


def packed_video_forward(
    model: VideoLlavaForConditionalGeneration, batch: dict, hidden_layers: tuple[int, ...] = ()
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits for a packed batch and its hidden states at `hidden_layers`; video features fill the video tokens."""
    feats = video_features(model, batch["pixel_values_videos"]).flatten(0, 1)
    return forward_with_features(model, batch, model.config.video_token_id, feats, hidden_layers)


def patch_token_mask(grid: int, n_videos: int) -> torch.Tensor:
    """Over the video tokens of n_videos videos in order: True for patch tokens, False for each frame's CLS."""
    frame = torch.tensor([False] * CLS_TOKENS + [True] * (grid * grid))
    return frame.repeat(synth_video.FRAMES * n_videos)


@torch.no_grad()
def greedy_video_answer(
    model: VideoLlavaForConditionalGeneration, processor: VideoLlavaProcessor, question: str, frames: np.ndarray
) -> str:
    """The model's greedy answer to one question about one video, through the chat template, as a user would ask."""
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}],
        add_generation_prompt=True,
    )
    inputs = processor(videos=[frames], text=prompt, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    return processor.decode(out[0, inputs.input_ids.shape[1] :], skip_special_tokens=True).strip()


def evaluate_videos(
    model: VideoLlavaForConditionalGeneration,
    processor: VideoLlavaProcessor,
    items: list[dict],
    video_dir: Path,
    post_prompt: str = synth.GQA_POST_PROMPT,
) -> dict:
    """Accuracy per family (exact match of the normalised answer) of greedy answers on held-out items
    (synth_video.load_eval_set), each video decoded from its file."""
    was_training = model.training
    model.eval()
    hits: dict[str, list[int]] = defaultdict(list)
    for item in items:
        frames = synth_video.read_video(video_dir / f"{item['video_name']}.mp4")
        pred = greedy_video_answer(model, processor, item["question"] + post_prompt, frames)
        hits[item["family"]].append(int(normalise(pred) == normalise(item["answer"])))
    model.train(was_training)
    res = {family: {"acc": sum(v) / len(v), "n": len(v)} for family, v in sorted(hits.items())}
    res["all"] = {"acc": sum(sum(v) for v in hits.values()) / len(items), "n": len(items)}
    return res


def per_family(items: list[dict], n: int) -> list[dict]:
    """The first n items of each family."""
    counts: dict[str, int] = defaultdict(int)
    out = []
    for item in items:
        counts[item["family"]] += 1
        if counts[item["family"]] <= n:
            out.append(item)
    return out


def train_video(cfg: VideoTrainConfig, out: Path, eval_dir: Path) -> dict:
    """Fine-tune the tiny Video-LLaVA built from cfg.init_from; checkpoint; evaluate on the held-out set."""
    torch.set_num_threads(cfg.threads)
    if cfg.resume_from:
        model = VideoLlavaForConditionalGeneration.from_pretrained(cfg.resume_from, local_files_only=True)
        processor = VideoLlavaProcessor.from_pretrained(cfg.resume_from, local_files_only=True)
    else:
        model, processor = video_llava_from_llava(cfg.init_from, cfg.grid, cfg.seed)
    grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
    packer = VideoPacker(processor, synth_video.FRAMES * tokens_per_frame(grid))
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    held_out = synth_video.load_eval_set(eval_dir)
    quick = per_family(held_out, QUICK_EVAL_PER_FAMILY)
    model.model.image_tower.requires_grad_(False)
    model.model.video_tower.requires_grad_(not cfg.freeze_vision)
    hidden_size = model.config.text_config.hidden_size
    answer_layers = probe_layers(cfg.answer_aux_layers, cfg.answer_aux)
    event_layers = probe_layers(cfg.event_aux_layers, cfg.event_aux)
    hidden_layers = tuple(sorted(set(answer_layers) | set(event_layers)))
    # one head set for the first cell an answer is read from, one for the second (the mover's last cell)
    probes = [PositionProbe(hidden_size, grid, len(answer_layers)) for _ in range(2)]
    event_probe = ClassProbe(hidden_size, len(synth_video.EVENTS), len(event_layers), cfg.event_weight)
    trainable = [p for p in model.parameters() if p.requires_grad]
    trainable += [p for head in (*probes, event_probe) for p in head.parameters()]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=WEIGHT_DECAY, betas=ADAM_BETAS)
    rng = random.Random(cfg.seed)
    log: dict = {"config": dataclasses.asdict(cfg), "history": [], "evals": []}
    t0 = last_save = time.time()
    model.train()
    running: dict[str, float] = defaultdict(float)
    done = 0
    for step in range(cfg.steps):
        if time.time() - t0 > cfg.max_minutes * 60 or (cfg.stop_after and step >= cfg.stop_after):
            break
        videos = [synth_video.sample_video(rng, grid) for _ in range(cfg.batch)]
        bundles = [
            [(format_prompt(qa, rng), qa.answer, qa.cells) for qa in synth_video.questions(v, rng)] for v in videos
        ]
        batch = packer.batch([synth_video.render(v) for v in videos], bundles)
        is_patch = batch["input_ids"] == model.config.video_token_id
        is_patch[is_patch.clone()] = patch_token_mask(grid, len(videos))
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        logits, hidden = packed_video_forward(model, batch, hidden_layers)
        hidden_at = dict(zip(hidden_layers, hidden, strict=True))
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=IGNORE_INDEX
        )
        running["loss"] += loss.item()
        if answer_layers:
            rows, index, slot, cells = batch["answer_cells"].unbind(-1)
            aux = sum(
                probe.loss([hidden_at[n][rows[slot == k], index[slot == k]] for n in answer_layers], cells[slot == k])
                for k, probe in enumerate(probes)
                if (slot == k).any()
            )
            running["answer_aux"] += aux.item()
            loss = loss + cfg.answer_aux * aux
        if event_layers:
            events = torch.from_numpy(np.concatenate([synth_video.token_events(v).ravel() for v in videos]))
            at_patches = [hidden_at[n][is_patch] for n in event_layers]
            aux = event_probe.loss(at_patches, events)
            running["event_aux"] += aux.item()
            running["event_acc"] += event_probe.rare_accuracy(at_patches[-1], events)
            loss = loss + cfg.event_aux * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
        opt.step()
        done = step + 1
        if done % LOG_EVERY == 0:
            entry = {"step": done, "elapsed_s": round(time.time() - t0, 1)}
            entry |= {k: round(v / LOG_EVERY, 4) for k, v in running.items()}
            print(json.dumps(entry), flush=True)
            log["history"].append(entry)
            running = defaultdict(float)
        if done % cfg.eval_every == 0:
            res = evaluate_videos(model, processor, quick, eval_dir / "videos")
            print(f"eval@{done} " + json.dumps(res), flush=True)
            log["evals"].append({"step": done, **res})
        if time.time() - last_save > cfg.save_every_s:
            save_progress(model, processor, out, log, done, t0)
            last_save = time.time()
    save_progress(model, processor, out, log, done, t0)
    t1 = time.time()
    log["final_eval"] = evaluate_videos(model, processor, held_out, eval_dir / "videos")
    log["final_eval_seconds"] = round(time.time() - t1, 1)
    print("final " + json.dumps(log["final_eval"]), flush=True)
    save(model, processor, out, log)
    return log

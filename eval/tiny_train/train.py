"""The tiny-LLaVA training run: vision-tower pre-training, then LLaVA stages on packed question bundles.

The schedules (curriculum, background-patch dropout, learning rate) are functions of the step and TrainConfig; train()
runs them with the auxiliary position probes, periodic held-out evaluation and checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import time
from collections import defaultdict
from pathlib import Path

import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from eval import synth
from eval.chat import greedy_answer
from eval.tiny_train.config import TrainConfig
from eval.tiny_train.model import build_model, build_processor
from eval.tiny_train.packing import IGNORE_INDEX, Packer, packed_forward
from eval.tiny_train.probes import PositionProbe, probe_layers

# Objects per scene: few during the alignment stage, ramped up to the held-out sets' 3..8 (synth.build_*)
ALIGN_OBJECTS, FULL_OBJECTS = (1, 3), (3, 8)
VISION_OBJECTS = (1, 8)  # vision pre-training sees every scene size
# Share of MME questions asked as lmms-eval's MME task asks them (synth.mme_prompt); the rest keep "Please answer yes
# or no.", so the model answers both phrasings
MME_PROMPT_SHARE = 0.7
# Share of the other (non-alignment) questions asked without GQA's short-answer post-prompt, which lmms-eval's tasks
# append: the model then answers with and without it
BARE_QUESTION_SHARE = 0.3
# Object patches are rare (1-8 of 144 per scene); this weight on their colour / shape / position losses in vision
# pre-training keeps them from being drowned by background patches
OBJECT_PATCH_WEIGHT = 10.0
VISION_WARMUP = 50  # steps of linear learning-rate warm-up in vision pre-training
VISION_LOG_EVERY = 50  # vision pre-training steps per logged line
LOG_EVERY = 25  # LLaVA-stage steps per logged mean loss
FINAL_LR_FRACTION = 0.1  # both learning-rate schedules decay to this fraction of the peak
WEIGHT_DECAY = 0.01
ADAM_BETAS = (0.9, 0.98)  # beta2 below the 0.999 default: the second-moment estimate follows the last ~50 steps
MAX_GRAD_NORM = 1.0
QUICK_EVAL_PER_FAMILY, QUICK_EVAL_SEED = 30, 1  # the held-out subset evaluated every eval_every steps
FINAL_EVAL_SEED = 2  # the held-out subset evaluated at the end (eval_per_family items of each family)


def format_prompt(qa: synth.QA, rng: random.Random) -> str:
    """The question text as the lmms-eval tasks send it (post-prompt added to most questions)."""
    if qa.family == "mme":
        return synth.mme_prompt(qa.question) if rng.random() < MME_PROMPT_SHARE else qa.question
    if qa.family == "align" or rng.random() < BARE_QUESTION_SHARE:
        return qa.question
    return qa.question + synth.GQA_POST_PROMPT


def curriculum(cfg: TrainConfig, step: int) -> tuple[int, int, bool]:
    """(min objects, max objects, alignment stage?) at a training step."""
    frac = step / cfg.steps
    if frac < cfg.align_frac:
        return *ALIGN_OBJECTS, True
    ramp = min(1.0, (frac - cfg.align_frac) / cfg.ramp_frac)
    (low, high), (full_low, full_high) = ALIGN_OBJECTS, FULL_OBJECTS
    return low + round((full_low - low) * ramp), high + round((full_high - high) * ramp), False


def keep_background_at(cfg: TrainConfig, step: int) -> float:
    """Fraction of background patches kept: low first, ramped to all of them for the final part of training."""
    frac = step / cfg.steps
    if frac < cfg.dropout_until:
        return cfg.min_keep
    ramp = min(1.0, (frac - cfg.dropout_until) / cfg.dropout_ramp)
    return cfg.min_keep + (1.0 - cfg.min_keep) * ramp


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up then cosine decay to FINAL_LR_FRACTION of cfg.lr."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * frac)))


def vision_lr_at(cfg: TrainConfig, step: int) -> float:
    """Vision pre-training: linear warm-up over VISION_WARMUP steps, times a linear decay to FINAL_LR_FRACTION."""
    warm = min(1.0, (step + 1) / VISION_WARMUP)
    return cfg.vision_lr * warm * (FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * (1 - step / cfg.vision_steps))


def patch_labels(scene: synth.Scene) -> torch.Tensor:
    """Per-patch targets (colour or 0, shape or 0, row, column) for the raster-ordered patches of a scene."""
    n = scene.grid * scene.grid
    labels = torch.zeros(n, 4, dtype=torch.long)
    labels[:, 2], labels[:, 3] = synth.patch_cell(torch.arange(n), scene.grid)
    for o in scene.objects:
        i = synth.patch_index(o.row, o.col, scene.grid)
        labels[i, 0] = synth.COLOUR_NAMES.index(o.colour) + 1
        labels[i, 1] = synth.SHAPES.index(o.shape) + 1
    return labels


def pretrain_vision(
    model: LlavaForConditionalGeneration, processor: LlavaProcessor, cfg: TrainConfig, rng: random.Random
) -> dict:
    """Teach the vision tower what every patch holds (colour, shape, row, column) with linear heads, then drop them.

    LLaVA starts from a trained CLIP; this is our stand-in, so the LLaVA stages only have to learn to look things up.
    """
    tower = model.model.vision_tower
    sizes = (len(synth.COLOUR_NAMES) + 1, len(synth.SHAPES) + 1, cfg.grid, cfg.grid)
    head = torch.nn.Linear(cfg.vision_hidden, sum(sizes))
    params = list(tower.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.vision_lr, weight_decay=WEIGHT_DECAY)
    t0, log = time.time(), []
    for step in range(cfg.vision_steps):
        scenes = [synth.sample_scene(rng, *VISION_OBJECTS, cfg.grid, cfg.patch) for _ in range(cfg.vision_batch)]
        pixels = processor.image_processor(
            [Image.fromarray(synth.render(s)) for s in scenes], return_tensors="pt"
        ).pixel_values
        labels = torch.stack([patch_labels(s) for s in scenes])
        feats = tower(pixels, output_hidden_states=True).hidden_states[model.config.vision_feature_layer][:, 1:]
        logits = head(feats).split(sizes, dim=-1)
        weight = torch.where(labels[..., 0] > 0, OBJECT_PATCH_WEIGHT, 1.0)
        losses = [
            (
                torch.nn.functional.cross_entropy(part.flatten(0, 1), labels[..., k].flatten(), reduction="none")
                * weight.flatten()
            ).sum()
            / weight.sum()
            for k, part in enumerate(logits)
        ]
        for group in opt.param_groups:
            group["lr"] = vision_lr_at(cfg, step)
        opt.zero_grad(set_to_none=True)
        sum(losses).backward()
        opt.step()
        if (step + 1) % VISION_LOG_EVERY == 0:
            with torch.no_grad():
                obj = labels[..., 0] > 0
                acc = [(part.argmax(-1) == labels[..., k])[obj].float().mean().item() for k, part in enumerate(logits)]
            entry = {"step": step + 1, "loss": round(sum(losses).item(), 4), "elapsed_s": round(time.time() - t0, 1)}
            entry |= dict(
                zip(("colour_acc", "shape_acc", "row_acc", "col_acc"), (round(a, 4) for a in acc), strict=True)
            )
            log.append(entry)
            print("vision " + json.dumps(entry), flush=True)
    return {"history": log, "seconds": round(time.time() - t0, 1)}


def normalise(text: str) -> str:
    """Lower-case, strip punctuation and spaces (how the official scorers compare short answers)."""
    return re.sub(r"[^\w\s]", "", text.lower()).strip()


@torch.no_grad()
def evaluate(model: LlavaForConditionalGeneration, processor: LlavaProcessor, items: list[dict]) -> dict:
    """Greedy generation through the processor, one question at a time; accuracy per family."""
    model.eval()
    hits: dict[str, list[int]] = defaultdict(list)
    pairs: dict[str, list[int]] = defaultdict(list)
    for item in items:
        pred = greedy_answer(model, processor, item["prompt"], item["image"]["bytes"])
        ok = int(normalise(pred) == normalise(item["answer"]))
        hits[item["family"]].append(ok)
        if "pair" in item:
            pairs[item["pair"]].append(ok)
    model.train()
    res = {family: {"acc": sum(v) / len(v), "n": len(v)} for family, v in sorted(hits.items())}
    if pairs:
        res["mme"]["acc_plus"] = sum(all(v) for v in pairs.values()) / len(pairs)
    return res


def subsample(items: list[dict], per_family: int, seed: int) -> list[dict]:
    """A fixed subset with at most per_family items of each family (MME pairs kept whole)."""
    rng = random.Random(seed)
    out = []
    for family in sorted({item["family"] for item in items}):
        members = [item for item in items if item["family"] == family]
        if family == "mme":
            out += members[: 2 * (per_family // 2)]
        else:
            out += rng.sample(members, min(per_family, len(members)))
    return out


def save(model: LlavaForConditionalGeneration, processor: LlavaProcessor, out: Path, log: dict) -> None:
    """save_pretrained model + processor and the training log."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "training_log.json").write_text(json.dumps(log, indent=1))


def save_progress(
    model: LlavaForConditionalGeneration, processor: LlavaProcessor, out: Path, log: dict, done: int, t0: float
) -> None:
    """Record the steps done and the seconds since t0 in the log, then save (a checkpoint, or the final model)."""
    log |= {"steps_done": done, "train_seconds": round(time.time() - t0, 1)}
    save(model, processor, out, log)


def train(cfg: TrainConfig, out: Path, eval_per_family: int) -> dict:
    """Run training; checkpoint periodically; return the log with final held-out accuracy."""
    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    processor = build_processor(cfg)
    model = build_model(cfg, processor.tokenizer)
    if cfg.init_from:
        model = LlavaForConditionalGeneration.from_pretrained(cfg.init_from, local_files_only=True)
    packer = Packer(cfg, processor)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params / 1e6:.2f} M, prefix {len(packer.prefix)} tokens", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    held_out = synth.eval_items(grid=cfg.grid, cell=cfg.patch)
    quick = subsample(held_out, QUICK_EVAL_PER_FAMILY, seed=QUICK_EVAL_SEED)
    rng = random.Random(cfg.seed)
    log: dict = {"config": dataclasses.asdict(cfg), "params": n_params, "history": [], "evals": []}
    if cfg.vision_steps:
        log["vision_pretraining"] = pretrain_vision(model, processor, cfg, rng)
    if cfg.freeze_vision:
        model.model.vision_tower.requires_grad_(False)
    aux_layers = probe_layers(cfg.position_aux_layers, cfg.position_aux)
    mention_layers = probe_layers(cfg.mention_aux_layers, cfg.mention_aux)
    answer_layers = probe_layers(cfg.answer_aux_layers, cfg.answer_aux)
    probe = PositionProbe(cfg.text_hidden, cfg.grid, len(aux_layers))
    mention_probe = PositionProbe(cfg.text_hidden, cfg.grid, len(mention_layers))
    # one head set for the first-named object, one for the second
    answer_probe = PositionProbe(cfg.text_hidden, cfg.grid, 2 * len(answer_layers))
    hidden_layers = tuple(sorted(set(aux_layers) | set(mention_layers) | set(answer_layers)))
    trainable = [p for p in model.parameters() if p.requires_grad]
    for head in (probe, mention_probe, answer_probe):
        trainable += list(head.parameters())
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=WEIGHT_DECAY, betas=ADAM_BETAS)
    t0 = last_save = time.time()
    model.train()
    done, running = 0, 0.0
    running_aux: dict[str, float] = defaultdict(float)
    for step in range(cfg.steps):
        if time.time() - t0 > cfg.max_minutes * 60:
            print(f"time budget reached at step {step}", flush=True)
            break
        if cfg.stop_after and step >= cfg.stop_after:
            break
        n_min, n_max, align = curriculum(cfg, step)
        scenes = [synth.sample_scene(rng, n_min, n_max, cfg.grid, cfg.patch) for _ in range(cfg.batch)]
        bundles = [
            [
                (format_prompt(qa, rng), qa.answer)
                for qa in synth.training_turns(scene, rng, align, cfg.bootstrap, cfg.position_turns)
            ]
            for scene in scenes
        ]
        batch = packer.batch(scenes, bundles, keep_background_at(cfg, step), rng)
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        logits, hidden = packed_forward(model, batch, hidden_layers)
        hidden_at = dict(zip(hidden_layers, hidden, strict=True))
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=IGNORE_INDEX
        )
        running += loss.item()
        if aux_layers:
            is_image = batch["input_ids"] == model.config.image_token_id
            cells = torch.tensor([i for kept in batch["kept"] for i in kept])
            aux = probe.loss([hidden_at[k][is_image] for k in aux_layers], cells)
            running_aux["position_aux"] += aux.item()
            loss = loss + cfg.position_aux * aux
        if mention_layers and len(batch["mentions"]):
            rows, index, cells = batch["mentions"].unbind(-1)
            at_mentions = [hidden_at[k][rows, index] for k in mention_layers]
            aux = mention_probe.loss(at_mentions, cells)
            running_aux["mention_aux"] += aux.item()
            running_aux["mention_col_acc"] += mention_probe.column_accuracy(at_mentions[-1], cells)
            loss = loss + cfg.mention_aux * aux
        if answer_layers and len(batch["pairs"]):
            rows, index, first, second = batch["pairs"].unbind(-1)
            at_answer = [hidden_at[k][rows, index] for k in answer_layers]
            n = len(answer_layers)
            aux = answer_probe.loss(at_answer + at_answer, [first] * n + [second] * n)
            running_aux["answer_aux"] += aux.item()
            loss = loss + cfg.answer_aux * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
        opt.step()
        done = step + 1
        if done % LOG_EVERY == 0:
            elapsed = time.time() - t0
            aux_means = {k: round(v / LOG_EVERY, 4) for k, v in running_aux.items()}
            aux_text = "".join(f" {k} {v:.4f}" for k, v in aux_means.items())
            mean_loss = running / LOG_EVERY
            print(f"step {done} loss {mean_loss:.4f}{aux_text} lr {lr_at(cfg, step):.2e} {elapsed:.0f}s", flush=True)
            log["history"].append({"step": done, "loss": mean_loss, "elapsed_s": round(elapsed, 1)} | aux_means)
            running, running_aux = 0.0, defaultdict(float)
        if done % cfg.eval_every == 0:
            res = evaluate(model, processor, quick)
            print(f"eval@{done} " + json.dumps(res), flush=True)
            log["evals"].append({"step": done, **res})
        if time.time() - last_save > cfg.save_every_s:
            save_progress(model, processor, out, log, done, t0)
            last_save = time.time()
    save_progress(model, processor, out, log, done, t0)
    final = subsample(held_out, eval_per_family, seed=FINAL_EVAL_SEED)
    t1 = time.time()
    log["final_eval"] = evaluate(model, processor, final)
    log["final_eval_seconds"] = round(time.time() - t1, 1)
    print("final " + json.dumps(log["final_eval"]), flush=True)
    save(model, processor, out, log)
    return log

"""Train a tiny LLaVA (CLIP tower + 8-layer LLaMA) from scratch on CPU on the synthetic scenes of eval/synth.py.

Example (the committed model; defaults are its recipe): python scripts/train_tiny_llava.py --out models/tiny-llava
Each training image carries a bundle of questions packed as separate turns that attend only to the shared image prefix
(block mask, per-turn position ids), so training matches single-question inference exactly.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import random
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from PIL import Image
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eval import synth  # noqa: E402
from eval.chat import greedy_answer  # noqa: E402

CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run."""

    seed: int = synth.TRAIN_SEED
    grid: int = 12
    patch: int = 8
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    text_hidden: int = 128
    text_layers: int = 8
    text_heads: int = 4
    text_intermediate: int = 384
    # LLaMA's 0.02 suits width 4096; at width 128 it leaves attention logits ~0 and stalls learning for thousands of
    # steps, while ~1/sqrt(width) lets look-ups form within a few hundred
    init_std: float = 0.08
    steps: int = 2800
    batch: int = 8
    lr: float = 2e-3
    warmup: int = 100
    align_frac: float = 0.05
    min_keep: float = 0.05
    dropout_until: float = 0.3
    dropout_ramp: float = 0.3
    ramp_frac: float = 0.4
    max_minutes: float = 62.0
    stop_after: int = 0  # stop after this many steps (0: all of them); the schedules still span `steps`
    save_every_s: float = 300.0
    eval_every: int = 400
    init_from: str = ""  # continue from a saved model directory instead of a random init
    vision_steps: int = 300  # supervised per-patch pre-training steps of the vision tower before the LLaVA stages
    vision_batch: int = 32
    vision_lr: float = 3e-3
    freeze_vision: bool = True  # keep the (pre-trained) vision tower fixed in the LLaVA stages, like LLaVA's CLIP
    threads: int = 1
    bootstrap: bool = True  # add "Where is the X?" and single-attribute existence questions to every bundle
    position_turns: int = 0  # extra questions per bundle that need positions (where / relation / MME position)
    # weight of an auxiliary loss keeping each visual token's row and column linearly readable (12-way and ordinal)
    # from the LLM's residual stream at these layers; the probe heads are dropped after training
    position_aux: float = 0.0
    position_aux_layers: str = "0,2,4"
    # weight of an auxiliary loss making the question token that names an object (the "circle" of "the red circle")
    # carry that object's row and column at these layers: supervises the look-up that relation questions need
    mention_aux: float = 0.0
    mention_aux_layers: str = "2,4"
    # weight of an auxiliary loss making the token that predicts the answer of a two-object question carry the row and
    # column of the first- and of the second-named object at these layers: the role-bound read-out a relation needs
    answer_aux: float = 0.0
    answer_aux_layers: str = "5,6"


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A lower-cased word-level tokenizer over the synthetic vocabulary, with LLaMA-style special tokens."""
    words = set("user assistant : ? . , \n".split()) | {str(i) for i in range(32)}
    words |= set(re.findall(r"\w+|[^\w\s]", (synth.GQA_POST_PROMPT + synth.MME_SUFFIX).lower()))
    rng = random.Random(0)
    for _ in range(400):
        sc = synth.sample_scene(rng, 1, 8)
        turns = synth.training_turns(sc, rng, alignment=False, bootstrap=True)
        for qa in turns + synth.training_turns(sc, rng, alignment=True, bootstrap=True):
            words |= set(re.findall(r"\w+|[^\w\s]", f"{qa.question} {qa.answer}".lower()))
    vocab = {t: i for i, t in enumerate(SPECIALS + sorted(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
    )
    return fast


def build_processor(cfg: TrainConfig) -> LlavaProcessor:
    """LlavaProcessor with a CLIP image processor at the native image size and a LLaVA-1.5 chat template."""
    size = cfg.grid * cfg.patch
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}, do_convert_rgb=True
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(),
        patch_size=cfg.patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
        image_token="<image>",
    )


def build_model(cfg: TrainConfig, tokenizer: PreTrainedTokenizerFast) -> LlavaForConditionalGeneration:
    """A randomly initialised LlavaForConditionalGeneration of the configured size."""
    vc = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden,
        intermediate_size=4 * cfg.vision_hidden,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.grid * cfg.patch,
        patch_size=cfg.patch,
    )
    tc = LlamaConfig(
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_intermediate,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_heads,
        vocab_size=len(tokenizer),
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        initializer_range=cfg.init_std,
    )
    lc = LlavaConfig(
        vision_config=vc,
        text_config=tc,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=cfg.grid * cfg.grid,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=True,
    )
    torch.manual_seed(cfg.seed)
    model = LlavaForConditionalGeneration._from_config(lc, attn_implementation="sdpa")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def mention_cells(tokens: list[str], scene: synth.Scene) -> list[tuple[int, int]]:
    """(token index, cell) for each token closing a name of exactly one object of the scene ("red circle", "circle",
    "red object"); plurals and names of absent or repeated objects are skipped."""
    out = []
    for i, colour, shape, plural in synth.object_names(tokens):
        if plural or (colour is None and shape is None):
            continue
        named = [o for o in scene.objects if o.matches(colour, shape)]
        if len(named) == 1:
            out.append((i, named[0].row * scene.grid + named[0].col))
    return out


def format_prompt(qa: synth.QA, rng: random.Random) -> str:
    """The question text as the lmms-eval tasks send it (post-prompt added to most questions)."""
    if qa.family == "mme":
        return synth.mme_prompt(qa.question) if rng.random() < 0.7 else qa.question
    if qa.family == "align" or rng.random() < 0.3:
        return qa.question
    return qa.question + synth.GQA_POST_PROMPT


class Packer:
    """Turns scenes and question bundles into packed, block-masked training batches."""

    def __init__(self, cfg: TrainConfig, processor: LlavaProcessor):
        self.cfg = cfg
        self.processor = processor
        self.tok = processor.tokenizer
        n_img = cfg.grid * cfg.grid
        image_id = self.tok.convert_tokens_to_ids("<image>")
        head = self.tok("USER: <image>\n").input_ids
        i = head.index(image_id)
        self.prefix = head[:i] + [image_id] * n_img + head[i + 1 :]
        self._check(n_img)

    def _check(self, n_img: int) -> None:
        scene = synth.sample_scene(random.Random(0), 3, 3, self.cfg.grid, self.cfg.patch)
        qa = synth.attribute_qa(scene, random.Random(0))
        prompt = f"USER: <image>\n{qa.question} ASSISTANT:"
        ids = self.processor(images=to_pil(synth.png_bytes(scene)), text=prompt).input_ids[0]
        assert ids == self.prefix + self.turn_ids(qa.question)[0], "packed layout differs from processor output"

    def turn_ids(self, question: str, answer: str | None = None) -> tuple[list[int], int]:
        """Token ids of one turn and the index where the answer starts."""
        q = self.tok(f"{question} ASSISTANT:", add_special_tokens=False).input_ids
        if answer is None:
            return q, len(q)
        a = self.tok(answer, add_special_tokens=False).input_ids + [self.tok.eos_token_id]
        return q + a, len(q)

    def batch(
        self,
        scenes: list[synth.Scene],
        bundles: list[list[tuple[str, str]]],
        keep_background: float = 1.0,
        rng: random.Random | None = None,
    ) -> dict[str, torch.Tensor]:
        """Pack each scene's (prompt, answer) turns after its image prefix.

        ``mentions`` lists (row, sequence index, cell) for each question token naming one object (see mention_cells);
        ``pairs`` lists (row, index of the token predicting the answer, first cell, second cell) for each question
        naming exactly two objects.

        With keep_background < 1, background patches are dropped at random (object patches always stay) while every
        kept token keeps its full-sequence position id: a token-dropout curriculum that makes early training easier.
        """
        image_id = self.tok.convert_tokens_to_ids("<image>")
        first = self.prefix.index(image_id)
        n_img = self.cfg.grid * self.cfg.grid
        p = len(self.prefix)
        seqs, pos, seg, tgt, kept_lists, mentions, pairs = [], [], [], [], [], [], []
        for row, (scene, bundle) in enumerate(zip(scenes, bundles, strict=True)):
            objects = {o.row * scene.grid + o.col for o in scene.objects}
            kept = [i for i in range(n_img) if i in objects or keep_background >= 1 or rng.random() < keep_background]
            ids = self.prefix[:first] + [image_id] * len(kept) + self.prefix[first + n_img :]
            positions = list(range(first)) + [first + i for i in kept] + list(range(first + n_img, p))
            segments, targets = [0] * len(ids), [-100] * len(ids)
            for k, (question, answer) in enumerate(bundle, start=1):
                t, a0 = self.turn_ids(question, answer)
                tokens = self.tok.convert_ids_to_tokens(t[:a0])
                named = mention_cells(tokens, scene)
                mentions += [(row, len(ids) + i, cell) for i, cell in named]
                cells = list(dict.fromkeys(cell for _, cell in named))
                if len(cells) == 2:
                    pairs.append((row, len(ids) + a0 - 1, *cells))
                ids += t
                positions += list(range(p, p + len(t)))
                segments += [k] * len(t)
                # target at index j is the token at j + 1; answer tokens are predicted from a0 - 1 onwards
                targets += [-100] * (a0 - 1) + t[a0:] + [-100]
            seqs.append(ids)
            pos.append(positions)
            seg.append(segments)
            tgt.append(targets)
            kept_lists.append(kept)
        length = max(map(len, seqs))
        pad = self.tok.pad_token_id
        input_ids = torch.tensor([s + [pad] * (length - len(s)) for s in seqs])
        position_ids = torch.tensor([q + [0] * (length - len(q)) for q in pos])
        segment = torch.tensor([s + [-1] * (length - len(s)) for s in seg])
        targets = torch.tensor([t + [-100] * (length - len(t)) for t in tgt])
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        same = segment[:, :, None] == segment[:, None, :]
        to_prefix = (segment[:, None, :] == 0) & (segment[:, :, None] >= 0)
        mask = causal & (same | to_prefix)
        mask |= torch.eye(length, dtype=torch.bool)
        pixel_values = self.processor.image_processor(
            [to_pil(synth.png_bytes(s)) for s in scenes], return_tensors="pt"
        ).pixel_values
        return {
            "input_ids": input_ids,
            "position_ids": position_ids,
            "attention_mask": mask[:, None],
            "targets": targets,
            "pixel_values": pixel_values,
            "kept": kept_lists,
            "mentions": torch.tensor(mentions, dtype=torch.long).reshape(-1, 3),
            "pairs": torch.tensor(pairs, dtype=torch.long).reshape(-1, 4),
        }


def packed_forward(
    model: LlavaForConditionalGeneration, b: dict, hidden_layers: tuple[int, ...] = ()
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits for a packed batch, and its hidden states at `hidden_layers` ([B, L, D] each).

    Image features of the kept patches are scattered into the image-token slots.
    """
    feats = model.model.get_image_features(
        pixel_values=b["pixel_values"],
        vision_feature_layer=model.config.vision_feature_layer,
        vision_feature_select_strategy=model.config.vision_feature_select_strategy,
    ).pooler_output
    selected = torch.cat([f[kept] for f, kept in zip(feats, b["kept"], strict=True)])
    is_image = b["input_ids"] == model.config.image_token_id
    embeds = model.get_input_embeddings()(b["input_ids"].masked_fill(is_image, 0))
    embeds = embeds.masked_scatter(is_image[..., None].expand_as(embeds), selected.to(embeds.dtype))
    out = model(
        inputs_embeds=embeds,
        attention_mask=b["attention_mask"],
        position_ids=b["position_ids"],
        output_hidden_states=bool(hidden_layers),
    )
    return out.logits, [out.hidden_states[k] for k in hidden_layers]


class PositionProbe(torch.nn.Module):
    """Training-only heads reading row and column from visual-token hidden states: 12-way and ordinal (scalar)."""

    def __init__(self, hidden: int, grid: int, n_layers: int):
        super().__init__()
        self.grid = grid
        self.heads = torch.nn.ModuleList(torch.nn.Linear(hidden, 2 * grid + 2) for _ in range(n_layers))

    def loss(self, hidden_states: list[torch.Tensor], cells: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """Mean over heads of cross-entropy (row, column) + MSE of the scaled row and column.

        ``cells`` [N] labels every head's input alike; a list gives each head its own labels.
        """
        labels = cells if isinstance(cells, list) else [cells] * len(self.heads)
        total = torch.zeros(())
        for head, h, cell in zip(self.heads, hidden_states, labels, strict=True):
            rows, cols = cell // self.grid, cell % self.grid
            scalar = torch.stack([rows, cols], dim=-1).float() / (self.grid - 1) * 2 - 1
            row_logits, col_logits, ordinal = head(h).split([self.grid, self.grid, 2], dim=-1)
            total = total + torch.nn.functional.cross_entropy(row_logits, rows)
            total = total + torch.nn.functional.cross_entropy(col_logits, cols)
            total = total + torch.nn.functional.mse_loss(ordinal, scalar)
        return total / len(self.heads)

    @torch.no_grad()
    def column_accuracy(self, hidden: torch.Tensor, cells: torch.Tensor) -> float:
        """Share of cells whose column the last head reads right from `hidden` [N, D]."""
        col_logits = self.heads[-1](hidden)[:, self.grid : 2 * self.grid]
        return (col_logits.argmax(-1) == cells % self.grid).float().mean().item()


def probe_layers(layers: str, weight: float) -> tuple[int, ...]:
    """Hidden-state indices ("0,2,4": 0 is the LLM's input) an auxiliary probe reads; none when its weight is 0."""
    return tuple(int(k) for k in layers.split(",")) if weight else ()


def to_pil(png: bytes) -> Image.Image:
    """Decode PNG bytes to an RGB PIL image."""
    return Image.open(io.BytesIO(png)).convert("RGB")


def curriculum(cfg: TrainConfig, step: int) -> tuple[int, int, bool]:
    """(min objects, max objects, alignment stage?) at a training step."""
    frac = step / cfg.steps
    if frac < cfg.align_frac:
        return 1, 3, True
    ramp = min(1.0, (frac - cfg.align_frac) / cfg.ramp_frac)
    return 1 + round(2 * ramp), 3 + round(5 * ramp), False


def keep_background_at(cfg: TrainConfig, step: int) -> float:
    """Fraction of background patches kept: low first, ramped to all of them for the final part of training."""
    frac = step / cfg.steps
    if frac < cfg.dropout_until:
        return cfg.min_keep
    ramp = min(1.0, (frac - cfg.dropout_until) / cfg.dropout_ramp)
    return cfg.min_keep + (1.0 - cfg.min_keep) * ramp


def patch_labels(scene: synth.Scene) -> torch.Tensor:
    """Per-patch targets (colour or 0, shape or 0, row, column) for the raster-ordered patches of a scene."""
    n = scene.grid * scene.grid
    labels = torch.zeros(n, 4, dtype=torch.long)
    labels[:, 2] = torch.arange(n) // scene.grid
    labels[:, 3] = torch.arange(n) % scene.grid
    for o in scene.objects:
        i = o.row * scene.grid + o.col
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
    opt = torch.optim.AdamW(params, lr=cfg.vision_lr, weight_decay=0.01)
    t0, log = time.time(), []
    for step in range(cfg.vision_steps):
        scenes = [synth.sample_scene(rng, 1, 8, cfg.grid, cfg.patch) for _ in range(cfg.vision_batch)]
        pixels = processor.image_processor(
            [Image.fromarray(synth.render(s)) for s in scenes], return_tensors="pt"
        ).pixel_values
        labels = torch.stack([patch_labels(s) for s in scenes])
        feats = tower(pixels, output_hidden_states=True).hidden_states[model.config.vision_feature_layer][:, 1:]
        logits = head(feats).split(sizes, dim=-1)
        # object patches are rare; weight their colour/shape terms so they are not drowned by background
        weight = torch.where(labels[..., 0] > 0, 10.0, 1.0)
        losses = [
            (
                torch.nn.functional.cross_entropy(lg.flatten(0, 1), labels[..., k].flatten(), reduction="none")
                * weight.flatten()
            ).sum()
            / weight.sum()
            for k, lg in enumerate(logits)
        ]
        for g in opt.param_groups:
            g["lr"] = cfg.vision_lr * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * (1 - step / cfg.vision_steps))
        opt.zero_grad(set_to_none=True)
        sum(losses).backward()
        opt.step()
        if (step + 1) % 50 == 0:
            with torch.no_grad():
                obj = labels[..., 0] > 0
                acc = [(lg.argmax(-1) == labels[..., k])[obj].float().mean().item() for k, lg in enumerate(logits)]
            entry = {"step": step + 1, "loss": round(sum(losses).item(), 4), "elapsed_s": round(time.time() - t0, 1)}
            entry |= dict(
                zip(("colour_acc", "shape_acc", "row_acc", "col_acc"), (round(a, 4) for a in acc), strict=True)
            )
            log.append(entry)
            print("vision " + json.dumps(entry), flush=True)
    return {"history": log, "seconds": round(time.time() - t0, 1)}


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up then cosine decay to 10 %."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def normalise(text: str) -> str:
    """Lower-case, strip punctuation and spaces (how the official scorers compare short answers)."""
    return re.sub(r"[^\w\s]", "", text.lower()).strip()


@torch.no_grad()
def evaluate(model: LlavaForConditionalGeneration, processor: LlavaProcessor, items: list[dict]) -> dict:
    """Greedy generation through the processor, one question at a time; accuracy per family."""
    model.eval()
    hits: dict[str, list[int]] = defaultdict(list)
    pairs: dict[str, list[int]] = defaultdict(list)
    for it in items:
        pred = greedy_answer(model, processor, it["prompt"], it["image"]["bytes"])
        ok = int(normalise(pred) == normalise(it["answer"]))
        hits[it["family"]].append(ok)
        if "pair" in it:
            pairs[it["pair"]].append(ok)
    model.train()
    res = {fam: {"acc": sum(v) / len(v), "n": len(v)} for fam, v in sorted(hits.items())}
    if pairs:
        res["mme"]["acc_plus"] = sum(all(v) for v in pairs.values()) / len(pairs)
    return res


def subsample(items: list[dict], per_family: int, seed: int) -> list[dict]:
    """A fixed subset with at most per_family items of each family (MME pairs kept whole)."""
    rng = random.Random(seed)
    out = []
    for fam in sorted({it["family"] for it in items}):
        xs = [it for it in items if it["family"] == fam]
        if fam == "mme":
            out += xs[: 2 * (per_family // 2)]
        else:
            out += rng.sample(xs, min(per_family, len(xs)))
    return out


def save(model: LlavaForConditionalGeneration, processor: LlavaProcessor, out: Path, log: dict) -> None:
    """save_pretrained model + processor and the training log."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "training_log.json").write_text(json.dumps(log, indent=1))


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
    quick = subsample(held_out, 30, seed=1)
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
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
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
                for qa in synth.training_turns(s, rng, align, cfg.bootstrap, cfg.position_turns)
            ]
            for s in scenes
        ]
        b = packer.batch(scenes, bundles, keep_background_at(cfg, step), rng)
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        logits, hidden = packed_forward(model, b, hidden_layers)
        hidden_at = dict(zip(hidden_layers, hidden, strict=True))
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), b["targets"].flatten(), ignore_index=-100)
        running += loss.item()
        if aux_layers:
            is_image = b["input_ids"] == model.config.image_token_id
            cells = torch.tensor([i for kept in b["kept"] for i in kept])
            aux = probe.loss([hidden_at[k][is_image] for k in aux_layers], cells)
            running_aux["position_aux"] += aux.item()
            loss = loss + cfg.position_aux * aux
        if mention_layers and len(b["mentions"]):
            rows, index, cells = b["mentions"].unbind(-1)
            at_mentions = [hidden_at[k][rows, index] for k in mention_layers]
            aux = mention_probe.loss(at_mentions, cells)
            running_aux["mention_aux"] += aux.item()
            running_aux["mention_col_acc"] += mention_probe.column_accuracy(at_mentions[-1], cells)
            loss = loss + cfg.mention_aux * aux
        if answer_layers and len(b["pairs"]):
            rows, index, first, second = b["pairs"].unbind(-1)
            at_answer = [hidden_at[k][rows, index] for k in answer_layers]
            n = len(answer_layers)
            aux = answer_probe.loss(at_answer + at_answer, [first] * n + [second] * n)
            running_aux["answer_aux"] += aux.item()
            loss = loss + cfg.answer_aux * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        done = step + 1
        if (step + 1) % 25 == 0:
            el = time.time() - t0
            aux_means = {k: round(v / 25, 4) for k, v in running_aux.items()}
            aux_text = "".join(f" {k} {v:.4f}" for k, v in aux_means.items())
            print(f"step {step + 1} loss {running / 25:.4f}{aux_text} lr {lr_at(cfg, step):.2e} {el:.0f}s", flush=True)
            log["history"].append({"step": step + 1, "loss": running / 25, "elapsed_s": round(el, 1)} | aux_means)
            running, running_aux = 0.0, defaultdict(float)
        if (step + 1) % cfg.eval_every == 0:
            res = evaluate(model, processor, quick)
            print(f"eval@{step + 1} " + json.dumps(res), flush=True)
            log["evals"].append({"step": step + 1, **res})
        if time.time() - last_save > cfg.save_every_s:
            log["steps_done"] = done
            log["train_seconds"] = round(time.time() - t0, 1)
            save(model, processor, out, log)
            last_save = time.time()
    log["steps_done"] = done
    log["train_seconds"] = round(time.time() - t0, 1)
    save(model, processor, out, log)
    final = subsample(held_out, eval_per_family, seed=2)
    t1 = time.time()
    log["final_eval"] = evaluate(model, processor, final)
    log["final_eval_seconds"] = round(time.time() - t1, 1)
    print("final " + json.dumps(log["final_eval"]), flush=True)
    save(model, processor, out, log)
    return log


def main() -> None:
    """Parse arguments (every TrainConfig field is a flag) and train."""
    ap = argparse.ArgumentParser(description=__doc__)
    for f in dataclasses.fields(TrainConfig):
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(f.default, bool):
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            ap.add_argument(flag, type=type(f.default), default=f.default)
    ap.add_argument("--out", type=Path, default=Path("models/tiny-llava"))
    ap.add_argument("--eval-per-family", type=int, default=300)
    args = vars(ap.parse_args())
    out, per_family = args.pop("out"), args.pop("eval_per_family")
    train(TrainConfig(**args), out, per_family)


if __name__ == "__main__":
    main()

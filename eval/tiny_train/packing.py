"""Packed training batches: each image's question turns follow one image prefix and attend only to that prefix.

Each training image carries a bundle of questions packed as separate turns (block mask, per-turn position ids), so
training on a bundle matches single-question inference exactly.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerBase

from eval import synth
from eval.tiny_train.config import TrainConfig

IGNORE_INDEX = -100  # cross_entropy's ignore_index: a position with nothing to predict
PREFIX_SEGMENT, PAD_SEGMENT = 0, -1  # segment ids of the image prefix and of padding; turns are 1, 2, ...


def to_pil(png: bytes) -> Image.Image:
    """Decode PNG bytes to an RGB PIL image."""
    return Image.open(io.BytesIO(png)).convert("RGB")


def mention_cells(tokens: list[str], scene: synth.Scene) -> list[tuple[int, int]]:
    """(token index, cell) for each token closing a name of exactly one object of the scene ("red circle", "circle",
    "red object"); plurals and names of absent or repeated objects are skipped."""
    out = []
    for i, colour, shape, plural in synth.object_names(tokens):
        if plural or (colour is None and shape is None):
            continue
        named = [o for o in scene.objects if o.matches(colour, shape)]
        if len(named) == 1:
            out.append((i, synth.patch_index(named[0].row, named[0].col, scene.grid)))
    return out


def block_mask(segment: torch.Tensor) -> torch.Tensor:
    """[B, L, L] attention mask of packed rows from their [B, L] segment ids: causal; each turn sees itself and the
    prefix, padding only padding (the diagonal keeps every softmax row finite)."""
    length = segment.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    same = segment[:, :, None] == segment[:, None, :]
    to_prefix = (segment[:, None, :] == PREFIX_SEGMENT) & (segment[:, :, None] > PAD_SEGMENT)
    mask = causal & (same | to_prefix)
    mask |= torch.eye(length, dtype=torch.bool)
    return mask


def turn_ids(tok: PreTrainedTokenizerBase, question: str, answer: str | None = None) -> tuple[list[int], int]:
    """Token ids of one turn ("{question} ASSISTANT:", then the answer and `</s>`) and where its answer starts."""
    q = tok(f"{question} ASSISTANT:", add_special_tokens=False).input_ids
    if answer is None:
        return q, len(q)
    a = tok(answer, add_special_tokens=False).input_ids + [tok.eos_token_id]
    return q + a, len(q)


@dataclass
class PackedRow:
    """One packed sequence: a prefix then turns; ``answer_starts`` are the indices where the turns' answers start."""

    ids: list[int]
    positions: list[int]
    segments: list[int]
    targets: list[int]
    answer_starts: list[int]

    def add_turn(self, turn: list[int], answer_start: int, prefix_len: int) -> None:
        """Append a turn that sees only the prefix, its positions continuing the prefix's."""
        self.answer_starts.append(len(self.ids) + answer_start)
        self.positions += list(range(prefix_len, prefix_len + len(turn)))
        self.segments += [max(self.segments) + 1] * len(turn)
        # the target at index j is the token at j + 1; answer tokens are predicted from answer_start - 1 on
        self.targets += [IGNORE_INDEX] * (answer_start - 1) + turn[answer_start:] + [IGNORE_INDEX]
        self.ids += turn


def pack_turns(tok: PreTrainedTokenizerBase, prefix: list[int], bundle: list[tuple[str, str]]) -> PackedRow:
    """(question, answer) turns packed after a prefix, each turn attending to the prefix and itself only."""
    row = PackedRow(
        list(prefix), list(range(len(prefix))), [PREFIX_SEGMENT] * len(prefix), [IGNORE_INDEX] * len(prefix), []
    )
    for question, answer in bundle:
        row.add_turn(*turn_ids(tok, question, answer), len(prefix))
    return row


def pad_packed(rows: list[PackedRow], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, position_ids, targets and the [B, 1, L, L] block attention mask of packed rows."""
    length = max(len(r.ids) for r in rows)

    def padded(values: list[list[int]], fill: int) -> torch.Tensor:
        return torch.tensor([v + [fill] * (length - len(v)) for v in values])

    segment = padded([r.segments for r in rows], PAD_SEGMENT)
    return {
        "input_ids": padded([r.ids for r in rows], pad_id),
        "position_ids": padded([r.positions for r in rows], 0),
        "attention_mask": block_mask(segment)[:, None],
        "targets": padded([r.targets for r in rows], IGNORE_INDEX),
    }


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
        self._check()

    def _check(self) -> None:
        """Raise if the packed layout of one question differs from what the processor gives for it."""
        scene = synth.sample_scene(random.Random(0), 3, 3, self.cfg.grid, self.cfg.patch)
        qa = synth.attribute_qa(scene, random.Random(0))
        prompt = f"USER: <image>\n{qa.question} ASSISTANT:"
        ids = self.processor(images=to_pil(synth.png_bytes(scene)), text=prompt).input_ids[0]
        if ids != self.prefix + self.turn_ids(qa.question)[0]:
            raise RuntimeError("packed layout differs from processor output")

    def turn_ids(self, question: str, answer: str | None = None) -> tuple[list[int], int]:
        """Token ids of one turn and the index where the answer starts (packing.turn_ids)."""
        return turn_ids(self.tok, question, answer)

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
        prefix_len = len(self.prefix)
        rows, kept_lists, mentions, pairs = [], [], [], []
        for row, (scene, bundle) in enumerate(zip(scenes, bundles, strict=True)):
            objects = {synth.patch_index(o.row, o.col, scene.grid) for o in scene.objects}
            kept = [i for i in range(n_img) if i in objects or keep_background >= 1 or rng.random() < keep_background]
            ids = self.prefix[:first] + [image_id] * len(kept) + self.prefix[first + n_img :]
            positions = list(range(first)) + [first + i for i in kept] + list(range(first + n_img, prefix_len))
            packed = PackedRow(ids, positions, [PREFIX_SEGMENT] * len(ids), [IGNORE_INDEX] * len(ids), [])
            for question, answer in bundle:
                turn, answer_start = self.turn_ids(question, answer)
                tokens = self.tok.convert_ids_to_tokens(turn[:answer_start])
                named = mention_cells(tokens, scene)
                mentions += [(row, len(packed.ids) + i, cell) for i, cell in named]
                cells = list(dict.fromkeys(cell for _, cell in named))
                if len(cells) == 2:
                    pairs.append((row, len(packed.ids) + answer_start - 1, *cells))
                packed.add_turn(turn, answer_start, prefix_len)
            rows.append(packed)
            kept_lists.append(kept)
        pixel_values = self.processor.image_processor(
            [to_pil(synth.png_bytes(s)) for s in scenes], return_tensors="pt"
        ).pixel_values
        return pad_packed(rows, self.tok.pad_token_id) | {
            "pixel_values": pixel_values,
            "kept": kept_lists,
            "mentions": torch.tensor(mentions, dtype=torch.long).reshape(-1, 3),
            "pairs": torch.tensor(pairs, dtype=torch.long).reshape(-1, 4),
        }


def packed_forward(
    model: LlavaForConditionalGeneration, batch: dict, hidden_layers: tuple[int, ...] = ()
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits for a packed batch, and its hidden states at `hidden_layers` ([B, L, D] each).

    Image features of the kept patches are scattered into the image-token slots.
    """
    feats = model.model.get_image_features(
        pixel_values=batch["pixel_values"],
        vision_feature_layer=model.config.vision_feature_layer,
        vision_feature_select_strategy=model.config.vision_feature_select_strategy,
    ).pooler_output
    selected = torch.cat([f[kept] for f, kept in zip(feats, batch["kept"], strict=True)])
    return forward_with_features(model, batch, model.config.image_token_id, selected, hidden_layers)


def forward_with_features(
    model: torch.nn.Module, batch: dict, token_id: int, features: torch.Tensor, hidden_layers: tuple[int, ...] = ()
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and hidden states at `hidden_layers` of a packed batch whose `token_id` slots hold `features` in order."""
    is_visual = batch["input_ids"] == token_id
    embeds = model.get_input_embeddings()(batch["input_ids"].masked_fill(is_visual, 0))
    embeds = embeds.masked_scatter(is_visual[..., None].expand_as(embeds), features.to(embeds.dtype))
    out = model(
        inputs_embeds=embeds,
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        output_hidden_states=bool(hidden_layers),
    )
    return out.logits, [out.hidden_states[k] for k in hidden_layers]

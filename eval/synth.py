"""Deterministic synthetic scenes with POPE / MME / GQA-style questions in the lmms-lab dataset schemas.

Each object fills exactly one grid cell, and a cell is one ViT patch (``cell`` pixels), so one visual token holds one
object. Shapes are distinct pixel masks and colours are flat RGB values, so both are visible to the patch embedding.
"""

from __future__ import annotations

import io
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

SHAPE_MASKS: dict[str, tuple[str, ...]] = {
    "square": ("####", "####", "####", "####"),
    "circle": (".##.", "####", "####", ".##."),
    "triangle": ("...#", "..##", ".###", "####"),
    "cross": ("#..#", ".##.", ".##.", "#..#"),
    "ring": ("####", "#..#", "#..#", "####"),
}
PLURALS = {"square": "squares", "circle": "circles", "triangle": "triangles", "cross": "crosses", "ring": "rings"}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 240),
    "yellow": (235, 215, 40),
    "purple": (160, 60, 210),
    "orange": (245, 140, 20),
}
SHAPES = tuple(SHAPE_MASKS)
COLOUR_NAMES = tuple(COLOURS)
# Object types in a fixed order; earlier types are drawn more often, so POPE's "popular" split is meaningful.
TYPES: tuple[tuple[str, str], ...] = tuple((c, s) for s in SHAPES for c in COLOUR_NAMES)
# The i-th type is drawn with weight 1 / (1 + POPULARITY_DECAY * i): the last of the 30 types about 4.5 times less
# often than the first.
POPULARITY_DECAY = 0.12
TYPE_WEIGHTS = tuple(1.0 / (1.0 + POPULARITY_DECAY * i) for i in range(len(TYPES)))
GQA_POST_PROMPT = "\nAnswer the question using a single word or phrase."
MME_SUFFIX = " Please answer yes or no."
TRAIN_SEED = 1234
EVAL_SEED = 98765
# Each held-out set is drawn from EVAL_SEED plus its own offset, so the sets never share a random stream (their first
# scenes would be the same image) and eval_items, write_held_out and the committed data/synth files agree.
# "captions": the held-out scenes tests/test_tiny_model.py asks the committed model to describe.
SEED_OFFSETS = {"pope": 0, "mme": 1, "gqa": 2, "captions": 3}
# Sizes of the held-out sets (data/synth and eval_items): POPE images (3 yes + 3 no questions each, per split),
# MME question pairs, GQA images (up to 3 questions each).
POPE_IMAGES, MME_PAIRS, GQA_IMAGES = 50, 75, 100


@dataclass(frozen=True)
class Obj:
    """One object: colour, shape and its grid cell."""

    colour: str
    shape: str
    row: int
    col: int

    @property
    def name(self) -> str:
        """Return e.g. 'red circle'."""
        return f"{self.colour} {self.shape}"

    def matches(self, colour: str | None, shape: str | None) -> bool:
        """Whether this object fits a name that gives its colour, its shape or both (None: any)."""
        return (colour is None or self.colour == colour) and (shape is None or self.shape == shape)


@dataclass(frozen=True)
class Scene:
    """A grid of ``grid`` x ``grid`` cells of ``cell`` pixels holding a few objects."""

    objects: tuple[Obj, ...]
    grid: int = 12
    cell: int = 8

    def types(self) -> set[tuple[str, str]]:
        """Return the (colour, shape) pairs present."""
        return {(o.colour, o.shape) for o in self.objects}


@dataclass(frozen=True)
class QA:
    """A question with its short answer; ``family`` and ``kind`` say what it tests."""

    family: str
    kind: str
    question: str
    answer: str


def eval_seed(held_out_set: str, seed: int = EVAL_SEED) -> int:
    """The seed one held-out set (a SEED_OFFSETS key) is drawn from, given the base seed (EVAL_SEED by default)."""
    return seed + SEED_OFFSETS[held_out_set]


def patch_index(row: int, col: int, grid: int) -> int:
    """Raster-order index of grid cell (row, col): the position of its patch among the visual tokens (CLS dropped)."""
    return row * grid + col


def patch_cell(index: int | torch.Tensor, grid: int) -> tuple[int | torch.Tensor, int | torch.Tensor]:
    """(row, col) of a raster-order patch index; the inverse of patch_index (ints, or integer tensors elementwise)."""
    return index // grid, index % grid


def sample_scene(rng: random.Random, n_min: int, n_max: int, grid: int = 12, cell: int = 8) -> Scene:
    """Draw a scene with n_min..n_max objects of distinct types on cells at least two apart."""
    n = rng.randint(n_min, n_max)
    types: list[tuple[str, str]] = []
    while len(types) < n:
        t = rng.choices(TYPES, weights=TYPE_WEIGHTS)[0]
        if t not in types:
            types.append(t)
    cells: list[tuple[int, int]] = []
    while len(cells) < n:
        r, c = rng.randrange(grid), rng.randrange(grid)
        if all(max(abs(r - r2), abs(c - c2)) >= 2 for r2, c2 in cells):
            cells.append((r, c))
    objs = tuple(Obj(colour, shape, row, col) for (colour, shape), (row, col) in zip(types, cells, strict=True))
    return Scene(objs, grid, cell)


def shape_mask(shape: str, cell: int) -> np.ndarray:
    """The (cell, cell) boolean pixel mask of a shape (its 4x4 pattern scaled up)."""
    k = cell // 4
    return np.kron(np.array([[ch == "#" for ch in row] for row in SHAPE_MASKS[shape]]), np.ones((k, k), dtype=bool))


def render(scene: Scene) -> np.ndarray:
    """Draw the scene as an (H, W, 3) uint8 array on a black background."""
    size = scene.grid * scene.cell
    img = np.zeros((size, size, 3), dtype=np.uint8)
    for o in scene.objects:
        mask = shape_mask(o.shape, scene.cell)
        y, x = o.row * scene.cell, o.col * scene.cell
        img[y : y + scene.cell, x : x + scene.cell][mask] = COLOURS[o.colour]
    return img


def png_bytes(scene: Scene) -> bytes:
    """Encode the rendered scene as PNG bytes (deterministic)."""
    buf = io.BytesIO()
    Image.fromarray(render(scene)).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def decode_scene(png: bytes, grid: int = 12, cell: int = 8) -> Scene:
    """Read the objects back from a rendered scene (the inverse of ``render``); raises on an unknown cell pattern."""
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    masks = {s: shape_mask(s, cell) for s in SHAPES}
    colours = {rgb: name for name, rgb in COLOURS.items()}
    objs = []
    for r in range(grid):
        for c in range(grid):
            patch = img[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell]
            lit = patch.any(axis=-1)
            if not lit.any():
                continue
            shape = next((s for s, m in masks.items() if np.array_equal(lit, m)), None)
            colour = colours.get(tuple(int(v) for v in patch[lit][0]))
            if shape is None or colour is None:
                raise ValueError(f"cell ({r}, {c}) is not a synthetic object")
            objs.append(Obj(colour, shape, r, c))
    return Scene(tuple(objs), grid, cell)


def object_names(words: list[str]) -> list[tuple[int, str | None, str | None, bool]]:
    """(index, colour, shape, plural?) for each lower-case word that names objects: a shape or its plural, or
    "object(s)", with the colour word before it if any (None where the name leaves colour or shape open)."""
    singular = {p: s for s, p in PLURALS.items()}
    named = []
    for i, w in enumerate(words):
        shape = w if w in SHAPES else singular.get(w)
        if shape is None and w not in ("object", "objects"):
            continue
        colour = words[i - 1] if i and words[i - 1] in COLOURS else None
        named.append((i, colour, shape, w in singular or w == "objects"))
    return named


def question_targets(scene: Scene, question: str) -> list[Obj]:
    """Objects of the scene that a question names ("red circle", "the square", "red objects", "circles")."""
    names = object_names(question.lower().replace("?", " ").split())
    return [o for o in scene.objects if any(o.matches(colour, shape) for _, colour, shape, _ in names)]


def _count(scene: Scene, colour: str | None = None, shape: str | None = None) -> int:
    """Number of objects of the scene that fit a colour and/or shape (None: any)."""
    return sum(o.matches(colour, shape) for o in scene.objects)


def _relation_pair(scene: Scene, rng: random.Random, axis: str) -> tuple[Obj, Obj] | None:
    """A random ordered pair of objects at least two cells apart along `axis` ("x": columns, "y": rows), or None."""
    pairs = [
        (a, b)
        for a in scene.objects
        for b in scene.objects
        if a is not b and abs((a.col - b.col) if axis == "x" else (a.row - b.row)) >= 2
    ]
    return rng.choice(pairs) if pairs else None


def existence_qa(obj_type: tuple[str, str], present: bool, mme: bool = False) -> QA:
    """POPE-style (or MME-style) existence question for a colour/shape pair."""
    colour, shape = obj_type
    if mme:
        question = f"Is there a {colour} {shape} in this image?{MME_SUFFIX}"
        return QA("mme", "existence", question, "Yes" if present else "No")
    return QA("existence", "existence", f"Is there a {colour} {shape} in the image?", "yes" if present else "no")


def attribute_qa(scene: Scene, rng: random.Random) -> QA | None:
    """GQA-style attribute question about the one object with a unique shape (or colour)."""
    shapes = Counter(o.shape for o in scene.objects)
    colours = Counter(o.colour for o in scene.objects)
    by_shape = [o for o in scene.objects if shapes[o.shape] == 1]
    by_colour = [o for o in scene.objects if colours[o.colour] == 1]
    if by_shape and (not by_colour or rng.random() < 0.5):
        o = rng.choice(by_shape)
        return QA("attribute", "colour", f"What color is the {o.shape}?", o.colour)
    if by_colour:
        o = rng.choice(by_colour)
        return QA("attribute", "shape", f"What shape is the {o.colour} object?", o.shape)
    return None


def relation_qa(scene: Scene, rng: random.Random) -> QA | None:
    """GQA-style relation question: left/right or above/below between two named objects."""
    axis = rng.choice("xy")
    pair = _relation_pair(scene, rng, axis) or _relation_pair(scene, rng, "y" if axis == "x" else "x")
    if pair is None:
        return None
    a, b = pair
    if abs(a.col - b.col) >= 2 and (axis == "x" or abs(a.row - b.row) < 2):
        ans = "left" if a.col < b.col else "right"
        return QA("relation", "horizontal", f"Is the {a.name} to the left or to the right of the {b.name}?", ans)
    ans = "above" if a.row < b.row else "below"
    return QA("relation", "vertical", f"Is the {a.name} above or below the {b.name}?", ans)


def counting_qa(scene: Scene, rng: random.Random) -> QA:
    """GQA-style counting question over shapes or colours (answer is a digit)."""
    if rng.random() < 0.5:
        shape = rng.choice([o.shape for o in scene.objects] + [rng.choice(SHAPES)])
        return QA("counting", "shape", f"How many {PLURALS[shape]} are there?", str(_count(scene, shape=shape)))
    colour = rng.choice([o.colour for o in scene.objects] + [rng.choice(COLOUR_NAMES)])
    return QA("counting", "colour", f"How many {colour} objects are there?", str(_count(scene, colour=colour)))


def mme_pair(scene: Scene, rng: random.Random, category: str) -> tuple[QA, QA] | None:
    """An MME-style pair on one image: the first question's answer is Yes, the second's No."""
    objs = scene.objects
    if category == "existence":
        absent = [t for t in TYPES if t not in scene.types()]
        o = rng.choice(objs)
        return existence_qa((o.colour, o.shape), True, mme=True), existence_qa(rng.choice(absent), False, mme=True)
    if category == "count":
        shape = rng.choice([o.shape for o in objs])
        n = _count(scene, shape=shape)
        wrong = rng.choice([k for k in range(1, 5) if k != n])
        template = "Are there {} {} in this image?" + MME_SUFFIX
        return QA("mme", category, template.format(n, PLURALS[shape]), "Yes"), QA(
            "mme", category, template.format(wrong, PLURALS[shape]), "No"
        )
    if category == "position":
        pair = _relation_pair(scene, rng, "x")
        if pair is None:
            return None
        a, b = sorted(pair, key=lambda o: o.col)
        template = "Is the {} to the left of the {}?" + MME_SUFFIX
        return QA("mme", category, template.format(a.name, b.name), "Yes"), QA(
            "mme", category, template.format(b.name, a.name), "No"
        )
    if category == "color":
        shapes = Counter(o.shape for o in objs)
        uniq = [o for o in objs if shapes[o.shape] == 1]
        if not uniq:
            return None
        o = rng.choice(uniq)
        wrong = rng.choice([c for c in COLOUR_NAMES if c != o.colour])
        template = "Is the {} in this image {}?" + MME_SUFFIX
        return QA("mme", category, template.format(o.shape, o.colour), "Yes"), QA(
            "mme", category, template.format(o.shape, wrong), "No"
        )
    raise ValueError(f"unknown MME category {category!r}")


MME_CATEGORIES = ("existence", "count", "position", "color")


def pope_negatives(scene: Scene, rng: random.Random, split: str, k: int, popularity: list[tuple[str, str]]) -> list:
    """Absent object types for POPE's random / popular / adversarial sampling."""
    present = scene.types()
    absent = [t for t in TYPES if t not in present]
    if split == "random":
        return rng.sample(absent, k)
    if split == "popular":
        return [t for t in popularity if t not in present][:k]
    if split == "adversarial":
        # Hard negatives: absent types sharing a colour or a shape with a present object, most shared first.
        def shared(t: tuple[str, str]) -> int:
            """How many present objects share t's colour, plus how many share its shape."""
            return sum((t[0] == c) + (t[1] == s) for c, s in present)

        ranked = sorted(absent, key=lambda t: (-shared(t), rng.random()))
        return ranked[:k]
    raise ValueError(f"unknown POPE split {split!r}")


def _image_feature(scene: Scene) -> dict:
    """The scene as a Hugging Face Image feature value (PNG bytes, no path)."""
    return {"bytes": png_bytes(scene), "path": None}


def build_pope(
    seed: int, n_images: int, per_image: int = 3, n_min: int = 3, n_max: int = 8, grid: int = 12, cell: int = 8
) -> dict[str, list]:
    """POPE rows (lmms-lab/POPE columns) for the three splits over the same images."""
    rng = random.Random(seed)
    scenes = [sample_scene(rng, n_min, n_max, grid, cell) for _ in range(n_images)]
    freq = Counter(t for scene in scenes for t in scene.types())
    popularity = sorted(TYPES, key=lambda t: (-freq[t], TYPES.index(t)))
    out: dict[str, list] = {}
    for split in ("adversarial", "popular", "random"):
        srng = random.Random(f"{seed}-{split}")
        rows = []
        for i, scene in enumerate(scenes):
            pos = [(o.colour, o.shape) for o in srng.sample(scene.objects, per_image)]
            neg = pope_negatives(scene, srng, split, per_image, popularity)
            image = _image_feature(scene)
            for t, present in [(t, True) for t in pos] + [(t, False) for t in neg]:
                qa = existence_qa(t, present)
                qid = len(rows)
                rows.append(
                    {
                        "id": f"{split}-{qid}",
                        "question_id": str(qid),
                        "question": qa.question,
                        "answer": qa.answer,
                        "image_source": f"synth_{seed}_{i:05d}",
                        "image": image,
                        "category": split,
                    }
                )
        out[split] = rows
    return out


def build_mme(seed: int, n_images: int, n_min: int = 3, n_max: int = 8, grid: int = 12, cell: int = 8) -> list[dict]:
    """MME rows (lmms-lab/MME columns): two questions per image, one Yes and one No, in four categories."""
    rng = random.Random(seed)
    rows = []
    i = 0
    while len(rows) < 2 * n_images:
        scene = sample_scene(rng, n_min, n_max, grid, cell)
        category = MME_CATEGORIES[i % len(MME_CATEGORIES)]
        pair = mme_pair(scene, rng, category)
        if pair is None:
            continue
        image = _image_feature(scene)
        for qa in pair:
            rows.append(
                {
                    "question_id": f"{category}/{i:05d}.png",
                    "image": image,
                    "question": qa.question,
                    "answer": qa.answer,
                    "category": category,
                }
            )
        i += 1
    return rows


def build_gqa(
    seed: int, n_images: int, n_min: int = 3, n_max: int = 8, grid: int = 12, cell: int = 8
) -> tuple[list[dict], list[dict]]:
    """GQA rows: (instructions with lmms-lab/GQA columns, images table with columns id and image)."""
    rng = random.Random(seed)
    questions, images = [], []
    makers = {"attribute": attribute_qa, "relation": relation_qa, "counting": counting_qa}
    semantic = {"attribute": "attr", "relation": "rel", "counting": "obj"}
    for i in range(n_images):
        scene = sample_scene(rng, n_min, n_max, grid, cell)
        image_id = f"synth{seed}_{i:05d}"
        images.append({"id": image_id, "image": _image_feature(scene)})
        for family, make in makers.items():
            qa = make(scene, rng)
            if qa is None:
                continue
            questions.append(
                {
                    "id": f"{image_id}_{family}",
                    "imageId": image_id,
                    "question": qa.question,
                    "answer": qa.answer,
                    "fullAnswer": f"The answer is {qa.answer}.",
                    "isBalanced": True,
                    "types": {"structural": "query", "semantic": semantic[family], "detailed": f"{family}_{qa.kind}"},
                }
            )
    return questions, images


def caption(scene: Scene) -> str:
    """Objects in raster order (the order of their visual tokens), e.g. 'red circle blue square'."""
    return " ".join(o.name for o in sorted(scene.objects, key=lambda o: patch_index(o.row, o.col, scene.grid)))


def cell_qa(scene: Scene, rng: random.Random) -> QA:
    """Alignment question: what is in a named cell (an object's cell half of the time)."""
    occupied = {(o.row, o.col): o for o in scene.objects}
    if rng.random() < 0.5:
        o = rng.choice(scene.objects)
        r, c = o.row, o.col
    else:
        r, c = rng.randrange(scene.grid), rng.randrange(scene.grid)
    ans = occupied[(r, c)].name if (r, c) in occupied else "nothing"
    return QA("align", "cell", f"What is in row {r} column {c}?", ans)


def locate_qa(scene: Scene, rng: random.Random) -> QA:
    """Bootstrap question: where a named object is; its answer is copied from the one matching visual token."""
    o = rng.choice(scene.objects)
    return QA("align", "locate", f"Where is the {o.name}?", f"row {o.row} column {o.col}")


def single_attribute_qa(scene: Scene, rng: random.Random) -> QA:
    """Bootstrap existence question on one attribute ("Is there a red object?"), present half of the time."""
    if rng.random() < 0.5:
        values, present = COLOUR_NAMES, {o.colour for o in scene.objects}
        text = "Is there a {} object in the image?"
    else:
        values, present = SHAPES, {o.shape for o in scene.objects}
        text = "Is there a {} in the image?"
    absent = [v for v in values if v not in present]
    value = rng.choice(sorted(present)) if not absent or rng.random() < 0.5 else rng.choice(absent)
    return QA("align", "single", text.format(value), "yes" if value in present else "no")


def position_qa(scene: Scene, rng: random.Random) -> QA | None:
    """A question that needs an object's position: where it is, a relation, or one question of an MME position pair."""
    kind = rng.randrange(3)
    if kind == 0:
        return locate_qa(scene, rng)
    if kind == 1:
        return relation_qa(scene, rng)
    pair = mme_pair(scene, rng, "position")
    return None if pair is None else pair[rng.randrange(2)]


def training_turns(
    scene: Scene, rng: random.Random, alignment: bool, bootstrap: bool = False, position_turns: int = 0
) -> list[QA]:
    """A bundle of questions on one training image; the alignment stage uses captions and cell questions.

    With ``bootstrap``, every bundle also asks where two named objects are and two single-attribute existence
    questions: dense, easy targets that teach the model to find a visual token by its content. ``position_turns``
    adds that many questions that need positions (where, relation, MME position) outside the alignment stage.
    """
    turns = [QA("align", "caption", "Describe the image.", caption(scene)), cell_qa(scene, rng)]
    if alignment:
        turns += [cell_qa(scene, rng) for _ in range(2)]
    if bootstrap:
        turns += [
            locate_qa(scene, rng),
            locate_qa(scene, rng),
            single_attribute_qa(scene, rng),
            single_attribute_qa(scene, rng),
        ]
    present = sorted(scene.types())
    absent = [t for t in TYPES if t not in scene.types()]
    turns.append(existence_qa(rng.choice(present), True))
    turns.append(existence_qa(rng.choice(absent), False))
    shared = [t for t in absent if any(t[0] == c or t[1] == s for c, s in present)]
    if shared:
        turns.append(existence_qa(rng.choice(shared), False))
    if alignment:
        return turns
    turns.append(existence_qa(rng.choice(present), True))
    for make in (attribute_qa, attribute_qa, relation_qa, relation_qa, counting_qa, counting_qa):
        qa = make(scene, rng)
        if qa is not None:
            turns.append(qa)
    for category in rng.sample(MME_CATEGORIES, 2):
        pair = mme_pair(scene, rng, category)
        if pair is not None:
            turns.append(pair[rng.randrange(2)])
    turns += [qa for qa in (position_qa(scene, rng) for _ in range(position_turns)) if qa is not None]
    return turns


def mme_prompt(question: str) -> str:
    """The prompt lmms-eval's MME task sends: the yes/no suffix replaced by the short-answer post-prompt."""
    return question.replace(MME_SUFFIX, "") + GQA_POST_PROMPT


def eval_items(
    seed: int = EVAL_SEED,
    n_pope: int = POPE_IMAGES,
    n_mme: int = MME_PAIRS,
    n_gqa: int = GQA_IMAGES,
    grid: int = 12,
    cell: int = 8,
) -> list[dict]:
    """Flat held-out items {family, kind, prompt, answer, image (PNG bytes)} in the prompts lmms-eval would send."""
    items = []
    for split, rows in build_pope(eval_seed("pope", seed), n_pope, grid=grid, cell=cell).items():
        items += [
            {"family": "existence", "kind": split, "prompt": r["question"], "answer": r["answer"], "image": r["image"]}
            for r in rows
        ]
    items += [
        {
            "family": "mme",
            "kind": r["category"],
            "prompt": mme_prompt(r["question"]),
            "answer": r["answer"],
            "image": r["image"],
            "pair": r["question_id"],
        }
        for r in build_mme(eval_seed("mme", seed), n_mme, grid=grid, cell=cell)
    ]
    questions, images = build_gqa(eval_seed("gqa", seed), n_gqa, grid=grid, cell=cell)
    by_id = {im["id"]: im["image"] for im in images}
    items += [
        {
            "family": q["id"].rsplit("_", 1)[1],
            "kind": q["types"]["detailed"],
            "prompt": q["question"] + GQA_POST_PROMPT,
            "answer": q["answer"],
            "image": by_id[q["imageId"]],
        }
        for q in questions
    ]
    return items


def write_parquet(rows: list[dict], path: Path) -> None:
    """Write rows as parquet with the Hugging Face Image feature on the 'image' column."""
    import datasets  # the harness's dependency, not the trainer's: imported only to write files

    path.parent.mkdir(parents=True, exist_ok=True)
    ds = datasets.Dataset.from_list(rows)
    if "image" in ds.column_names:
        ds = ds.cast_column("image", datasets.Image())
    ds.to_parquet(str(path))


def write_held_out(
    out: Path,
    seed: int = EVAL_SEED,
    pope_images: int = POPE_IMAGES,
    mme_pairs: int = MME_PAIRS,
    gqa_images: int = GQA_IMAGES,
) -> dict[str, int]:
    """Write the held-out POPE / MME / GQA sets (the sets of eval_items) under `out`; return row counts per file.

    Layout: pope/{test,adversarial,popular,random}.parquet, mme/test.parquet,
    gqa/testdev_balanced_instructions.parquet and gqa/testdev_balanced_images.parquet.
    """
    counts = {}
    pope = build_pope(eval_seed("pope", seed), pope_images)
    for split, rows in pope.items():
        write_parquet(rows, out / "pope" / f"{split}.parquet")
        counts[f"pope/{split}"] = len(rows)
    mixed = [r for split in ("adversarial", "popular", "random") for r in pope[split]]
    write_parquet(mixed, out / "pope" / "test.parquet")
    counts["pope/test"] = len(mixed)
    mme = build_mme(eval_seed("mme", seed), mme_pairs)
    write_parquet(mme, out / "mme" / "test.parquet")
    counts["mme/test"] = len(mme)
    questions, images = build_gqa(eval_seed("gqa", seed), gqa_images)
    write_parquet(questions, out / "gqa" / "testdev_balanced_instructions.parquet")
    write_parquet(images, out / "gqa" / "testdev_balanced_images.parquet")
    counts["gqa/instructions"], counts["gqa/images"] = len(questions), len(images)
    return counts

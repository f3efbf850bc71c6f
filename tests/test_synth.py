"""The synthetic POPE / MME / GQA generator: determinism, official columns, MME pairs, POPE splits."""

from __future__ import annotations

import io
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eval import synth

POPE_COLUMNS = {"id", "question_id", "question", "answer", "image_source", "image", "category"}
MME_COLUMNS = {"question_id", "image", "question", "answer", "category"}
GQA_COLUMNS = {"id", "imageId", "question", "answer", "fullAnswer"}


def _objects(png: bytes, grid: int = 12, cell: int = 8) -> int:
    """Number of non-black cells in an image."""
    arr = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(grid, cell, grid, cell, 3)
    return int((arr.max(axis=(1, 3, 4)) > 0).sum())


def test_same_seed_same_bytes_and_different_seed_differs() -> None:
    a, b, c = synth.build_pope(7, 5), synth.build_pope(7, 5), synth.build_pope(8, 5)
    assert a == b
    assert [r["image"]["bytes"] for r in a["random"]] != [r["image"]["bytes"] for r in c["random"]]
    assert synth.build_mme(7, 6) == synth.build_mme(7, 6)
    assert synth.build_gqa(7, 6) == synth.build_gqa(7, 6)


def test_held_out_sets_and_training_use_separate_streams() -> None:
    # One seed would give POPE, MME and GQA the same first scene; separate streams share no image.
    images: dict[str, set[bytes]] = defaultdict(set)
    for item in synth.eval_items(n_pope=4, n_mme=4, n_gqa=4):
        held_out_set = {"existence": "pope", "mme": "mme"}.get(item["family"], "gqa")
        images[held_out_set].add(item["image"]["bytes"])
    assert sorted(images) == ["gqa", "mme", "pope"]
    assert not (images["pope"] & images["mme"] or images["pope"] & images["gqa"] or images["mme"] & images["gqa"])
    seeds = [synth.eval_seed(name) for name in synth.SEED_OFFSETS]
    assert len({*seeds, synth.TRAIN_SEED}) == len(seeds) + 1


def test_objects_fill_single_patches() -> None:
    scene = synth.sample_scene(random.Random(0), 5, 5)
    img = synth.render(scene)
    assert img.shape == (96, 96, 3) and (scene.grid, scene.cell) == (12, 8)
    assert _objects(synth.png_bytes(scene)) == 5
    masks = set()
    for o in scene.objects:
        cell = img[o.row * 8 : o.row * 8 + 8, o.col * 8 : o.col * 8 + 8]
        assert tuple(cell.reshape(-1, 3).max(axis=0)) == synth.COLOURS[o.colour]
        masks.add((o.shape, cell.any(axis=2).tobytes()))
    assert len({m for _, m in masks}) == len({s for s, _ in masks})  # one pixel mask per shape
    small = synth.sample_scene(random.Random(0), 5, 5, grid=24, cell=4)
    assert synth.render(small).shape == (96, 96, 3) and _objects(synth.png_bytes(small), 24, 4) == 5


def test_pope_columns_splits_and_answers() -> None:
    pope = synth.build_pope(3, 20)
    assert set(pope) == {"adversarial", "popular", "random"}
    for split, rows in pope.items():
        assert set(rows[0]) == POPE_COLUMNS
        assert {r["category"] for r in rows} == {split}
        assert sorted(r["answer"] for r in rows).count("yes") == len(rows) // 2
        assert len({r["question_id"] for r in rows}) == len(rows)
    # Same images across the splits, as in POPE; negatives sampled differently.
    assert [r["image_source"] for r in pope["random"]] == [r["image_source"] for r in pope["popular"]]
    negatives = {s: [r["question"] for r in rows if r["answer"] == "no"] for s, rows in pope.items()}
    assert len({tuple(questions) for questions in negatives.values()}) == 3  # every pair of splits differs
    # Each split follows its own rule, checked against the objects decoded from each image.
    scenes = {r["image_source"]: synth.decode_scene(r["image"]["bytes"]) for r in pope["random"]}
    frequency = Counter(t for scene in scenes.values() for t in scene.types())
    popularity = sorted(synth.TYPES, key=lambda t: (-frequency[t], synth.TYPES.index(t)))
    asked: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for split in ("adversarial", "popular"):
        for r in pope[split]:
            if r["answer"] == "no":
                colour, shape = re.fullmatch(r"Is there a (\w+) (\w+) in the image\?", r["question"]).groups()
                asked[split, r["image_source"]].append((colour, shape))
    for source, scene in scenes.items():
        present = scene.types()
        assert all(any(c == colour or s == shape for c, s in present) for colour, shape in asked["adversarial", source])
        assert asked["popular", source] == [t for t in popularity if t not in present][:3]


def test_pope_answers_match_the_scene() -> None:
    rng = random.Random(1)
    scene = synth.sample_scene(rng, 4, 4)
    present = scene.types()
    for split in ("random", "popular", "adversarial"):
        neg = synth.pope_negatives(scene, rng, split, 3, list(synth.TYPES))
        assert len(neg) == 3 and not set(neg) & present
    adversarial = synth.pope_negatives(scene, rng, "adversarial", 3, list(synth.TYPES))
    assert all(any(t[0] == c or t[1] == s for c, s in present) for t in adversarial)


def test_mme_pairs_one_yes_one_no() -> None:
    rows = synth.build_mme(5, 40)
    assert set(rows[0]) == MME_COLUMNS
    pairs = defaultdict(list)
    for r in rows:
        assert r["question"].endswith(" Please answer yes or no.")
        pairs[r["question_id"]].append(r)
    assert len(pairs) == 40
    for pair in pairs.values():
        assert sorted(r["answer"] for r in pair) == ["No", "Yes"]
        assert pair[0]["image"] == pair[1]["image"] and pair[0]["category"] == pair[1]["category"]
    assert {r["category"] for r in rows} == set(synth.MME_CATEGORIES)


def test_gqa_columns_and_short_answers() -> None:
    questions, images = synth.build_gqa(9, 30)
    assert GQA_COLUMNS <= set(questions[0])
    assert set(images[0]) == {"id", "image"}
    ids = {im["id"] for im in images}
    assert all(q["imageId"] in ids for q in questions)
    assert {q["types"]["semantic"] for q in questions} == {"attr", "rel", "obj"}
    assert all(len(q["answer"].split()) == 1 for q in questions)


def test_gqa_answers_are_correct() -> None:
    scene = synth.Scene(
        (synth.Obj("red", "circle", 2, 2), synth.Obj("blue", "circle", 2, 10), synth.Obj("red", "cross", 12, 6))
    )
    counts = {"circles": "2", "crosses": "1", "red": "2", "blue": "1"}
    where = {o.name: (o.row, o.col) for o in scene.objects}
    for seed in range(30):
        rng = random.Random(seed)
        count = synth.counting_qa(scene, rng)
        word = re.match(r"How many (\w+)", count.question).group(1)
        assert count.answer == counts.get(word, "0"), count
        rel = synth.relation_qa(scene, rng)
        a, b = re.match(r"Is the (\w+ \w+) .* the (\w+ \w+)\?$", rel.question).groups()
        (ra, ca), (rb, cb) = where[a], where[b]
        expected = ("left" if ca < cb else "right") if rel.kind == "horizontal" else ("above" if ra < rb else "below")
        assert rel.answer == expected and (abs(ca - cb) if rel.kind == "horizontal" else abs(ra - rb)) >= 2, rel
        attr = synth.attribute_qa(scene, rng)
        assert (attr.question, attr.answer) in {
            ("What color is the cross?", "red"),
            ("What shape is the blue object?", "circle"),
        }


def test_committed_data_matches_generator() -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    path = Path(__file__).resolve().parents[1] / "data" / "synth"
    if not path.exists():
        pytest.skip(f"no committed data at {path}")
    pope = pq.read_table(path / "pope" / "test.parquet").to_pylist()
    expected = [
        r
        for split in ("adversarial", "popular", "random")
        for r in synth.build_pope(synth.eval_seed("pope"), synth.POPE_IMAGES)[split]
    ]
    assert [(r["question"], r["answer"], r["category"]) for r in pope] == [
        (r["question"], r["answer"], r["category"]) for r in expected
    ]
    assert pope[7]["image"]["bytes"] == expected[7]["image"]["bytes"]
    mme = pq.read_table(path / "mme" / "test.parquet").to_pylist()
    assert [(r["question_id"], r["question"], r["answer"]) for r in mme] == [
        (r["question_id"], r["question"], r["answer"]) for r in synth.build_mme(synth.eval_seed("mme"), synth.MME_PAIRS)
    ]
    gqa = pq.read_table(path / "gqa" / "testdev_balanced_instructions.parquet").to_pylist()
    assert [(r["imageId"], r["question"], r["answer"]) for r in gqa] == [
        (r["imageId"], r["question"], r["answer"]) for r in synth.build_gqa(synth.eval_seed("gqa"), synth.GQA_IMAGES)[0]
    ]


def test_decode_scene_inverts_render() -> None:
    rng = random.Random(3)
    for n in (1, 5, 8):
        scene = synth.sample_scene(rng, n, n)
        decoded = synth.decode_scene(synth.png_bytes(scene))
        assert sorted(decoded.objects, key=lambda o: (o.row, o.col)) == sorted(
            scene.objects, key=lambda o: (o.row, o.col)
        )
    garbled = synth.render(scene).copy()
    garbled[0, 0] = (1, 2, 3)
    buf = io.BytesIO()
    Image.fromarray(garbled).save(buf, format="PNG")
    with pytest.raises(ValueError, match=r"cell \(0, 0\)"):
        synth.decode_scene(buf.getvalue())


def test_question_targets_name_the_needed_objects() -> None:
    red_circle, blue_circle, red_cross = (
        synth.Obj("red", "circle", 2, 2),
        synth.Obj("blue", "circle", 2, 10),
        synth.Obj("red", "cross", 11, 6),
    )
    scene = synth.Scene((red_circle, blue_circle, red_cross))
    cases = {
        "Is there a red circle in the image?": [red_circle],
        "Is there a green ring in the image?": [],
        "What color is the cross?\nAnswer the question using a single word or phrase.": [red_cross],
        "What shape is the blue object?": [blue_circle],
        "How many circles are there?": [red_circle, blue_circle],
        "How many red objects are there?": [red_circle, red_cross],
        "Is the red cross above or below the blue circle?": [blue_circle, red_cross],
    }
    for question, expected in cases.items():
        assert synth.question_targets(scene, question) == expected, question


def test_bootstrap_questions_answer_from_the_scene() -> None:
    rng = random.Random(5)
    for _ in range(50):
        scene = synth.sample_scene(rng, 1, 8)
        turns = synth.training_turns(scene, rng, alignment=False, bootstrap=True)
        plain = synth.training_turns(scene, random.Random(0), alignment=False)
        assert not any(qa.kind in ("locate", "single") for qa in plain)
        for qa in turns:
            if qa.kind == "locate":
                (target,) = synth.question_targets(
                    scene, qa.question.replace("Where is", "Is there a").replace("the ", "")
                )
                assert qa.answer == f"row {target.row} column {target.col}"
            elif qa.kind == "single":
                value = qa.question.split()[3]
                present = {o.colour for o in scene.objects} | {o.shape for o in scene.objects}
                assert qa.answer == ("yes" if value in present else "no"), qa.question


def test_position_turns_append_position_questions() -> None:
    rng = random.Random(9)
    n_extra = 0
    for seed in range(40):
        scene = synth.sample_scene(rng, 2, 8)
        base = synth.training_turns(scene, random.Random(seed), alignment=False)
        more = synth.training_turns(scene, random.Random(seed), alignment=False, position_turns=6)
        assert more[: len(base)] == base
        extras = more[len(base) :]
        assert {qa.kind for qa in extras} <= {"locate", "horizontal", "vertical", "position"}
        assert len(extras) <= 6
        n_extra += len(extras)
        aligned = synth.training_turns(scene, random.Random(seed), alignment=True, position_turns=6)
        assert aligned == synth.training_turns(scene, random.Random(seed), alignment=True)
    assert n_extra >= 0.8 * 40 * 6  # only MME position pairs need two objects apart in the same direction
    lone = synth.sample_scene(rng, 1, 1)
    base = synth.training_turns(lone, random.Random(0), alignment=False)
    extras = synth.training_turns(lone, random.Random(0), alignment=False, position_turns=30)[len(base) :]
    assert extras and {qa.kind for qa in extras} == {"locate"}

"""Deterministic synthetic videos of coloured shapes that move, appear and disappear, with video-QA questions.

The held-out set is written in Video-LLaVA's MSVD-QA evaluation layout (``test_q.json``, ``test_a.json`` and a
``videos/`` folder of mp4 files). Frames reuse eval/synth.py's objects and drawing: one object fills one grid cell and
a cell is one ViT patch, so one visual token of one frame holds one object.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from eval import synth

FRAMES = 8  # Video-LLaVA samples 8 frames per video; the videos have exactly 8, so sampling keeps every one
GRID, CELL = 6, 8  # 48 x 48 pixel frames: 36 patches per frame
FPS = 8
TRAIN_SEED = 4321
EVAL_SEED = 56789
EVAL_VIDEOS = 80  # held-out videos; every video carries one question of each family
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
# Families in the order questions are asked of a video; the index is the integer "type" of test_a.json (MSVD-QA's
# answer files carry an integer question type)
FAMILIES = ("appeared_last", "disappeared", "direction", "count_appeared")
MOVES = (2, 5)  # the mover travels this many cells (inclusive range), one cell per frame
APPEARING = (1, 3)  # objects that appear during the video, each at its own frame
STATIC = (0, 2)  # objects present in every frame, never moving
SHARED_SHAPE_SHARE = 0.5  # chance that an appearing object repeats the shape of an earlier one (count answers > 1)
ABSENT_SHAPE_SHARE = 0.4  # share of count questions about a shape that did not appear (from the other objects)


# What happened at a cell between the previous frame and this one (per-token labels for a training-only probe):
# nothing, an object came into view / went out of view, the mover arrived moving in a direction, the mover left it
EVENTS = ("none", "appeared", "vanished", "moved_left", "moved_right", "moved_up", "moved_down", "vacated")


@dataclass(frozen=True)
class Track:
    """One object across the frames: its colour and shape, and its cell in each frame (None: not visible)."""

    colour: str
    shape: str
    cells: tuple[tuple[int, int] | None, ...]

    @property
    def name(self) -> str:
        """Return e.g. 'red circle'."""
        return f"{self.colour} {self.shape}"

    @property
    def first_frame(self) -> int:
        """The first frame it is visible in."""
        return next(f for f, cell in enumerate(self.cells) if cell is not None)

    def appeared(self) -> bool:
        """Whether it came into view during the video (absent from the first frame, visible later)."""
        return self.cells[0] is None

    def disappeared(self) -> bool:
        """Whether it left the view during the video (visible in the first frame, absent from the last)."""
        return self.cells[0] is not None and self.cells[-1] is None

    def direction(self) -> str | None:
        """The direction it moved in (first to last visible cell), or None if it did not move."""
        visible = [cell for cell in self.cells if cell is not None]
        (r0, c0), (r1, c1) = visible[0], visible[-1]
        if (r0, c0) == (r1, c1):
            return None
        step = (int(np.sign(r1 - r0)), int(np.sign(c1 - c0)))
        return next(d for d, delta in DIRECTIONS.items() if delta == step)


@dataclass(frozen=True)
class Video:
    """A few tracks on a grid x grid board of cell-pixel cells."""

    tracks: tuple[Track, ...]
    grid: int = GRID
    cell: int = CELL

    def frame_scene(self, frame: int) -> synth.Scene:
        """The objects visible in one frame, as an eval/synth.py scene."""
        objects = tuple(
            synth.Obj(t.colour, t.shape, *t.cells[frame]) for t in self.tracks if t.cells[frame] is not None
        )
        return synth.Scene(objects, self.grid, self.cell)


@dataclass(frozen=True)
class VideoQA:
    """A question with its short answer; ``cells`` are the patch indices of the grid cells the answer is read from
    (the named object's cell; the mover's first and last cell), for training-only probes."""

    family: str
    question: str
    answer: str
    cells: tuple[int, ...] = ()


def render(video: Video) -> np.ndarray:
    """The frames as a (FRAMES, H, W, 3) uint8 array."""
    return np.stack([synth.render(video.frame_scene(f)) for f in range(len(video.tracks[0].cells))])


def _free_cell(rng: random.Random, taken: set[tuple[int, int]], grid: int) -> tuple[int, int]:
    free = [(r, c) for r in range(grid) for c in range(grid) if (r, c) not in taken]
    return rng.choice(free)


def _mover_path(rng: random.Random, grid: int, frames: int) -> tuple[tuple[int, int], ...]:
    """Cells of an object that moves one cell per frame in one direction for some consecutive frames."""
    moves = rng.randint(*MOVES)
    dr, dc = DIRECTIONS[rng.choice(sorted(DIRECTIONS))]
    start = rng.randrange(frames - moves)  # the last frame it stands still before moving
    r0 = rng.randrange(grid) if dr == 0 else (rng.randrange(grid - moves) if dr > 0 else rng.randrange(moves, grid))
    c0 = rng.randrange(grid) if dc == 0 else (rng.randrange(grid - moves) if dc > 0 else rng.randrange(moves, grid))
    steps = [min(max(f - start, 0), moves) for f in range(frames)]
    return tuple((r0 + dr * k, c0 + dc * k) for k in steps)


def sample_video(rng: random.Random, grid: int = GRID, cell: int = CELL, frames: int = FRAMES) -> Video:
    """One mover, one object that disappears, 1-3 that appear at distinct frames and 0-2 static ones, all of
    distinct types, on distinct cells (the mover's whole path included)."""
    n_appear, n_static = rng.randint(*APPEARING), rng.randint(*STATIC)
    types: list[tuple[str, str]] = []
    for k in range(2 + n_appear + n_static):
        appearing_shapes = [s for _, s in types[2:]] if 2 < k < 2 + n_appear else []
        while True:
            colour, shape = rng.choice(synth.TYPES)
            if appearing_shapes and rng.random() < SHARED_SHAPE_SHARE:
                shape = rng.choice(appearing_shapes)
            if (colour, shape) not in types:
                types.append((colour, shape))
                break
    path = _mover_path(rng, grid, frames)
    taken = set(path)
    cells = []
    for _ in types[1:]:
        cells.append(_free_cell(rng, taken, grid))
        taken.add(cells[-1])
    gone_at = rng.randrange(1, frames)
    appear_at = sorted(rng.sample(range(1, frames), n_appear))
    rng.shuffle(appear_at)
    tracks = [Track(*types[0], path), Track(*types[1], tuple(cells[0] if f < gone_at else None for f in range(frames)))]
    for (colour, shape), where, start in zip(types[2 : 2 + n_appear], cells[1 : 1 + n_appear], appear_at, strict=True):
        tracks.append(Track(colour, shape, tuple(where if f >= start else None for f in range(frames))))
    tracks += [
        Track(c, s, (where,) * frames)
        for (c, s), where in zip(types[2 + n_appear :], cells[1 + n_appear :], strict=True)
    ]
    return Video(tuple(tracks), grid, cell)


def token_events(video: Video) -> np.ndarray:
    """(frames, grid * grid) indices into EVENTS: what changed at each cell since the previous frame."""
    frames = len(video.tracks[0].cells)
    events = np.zeros((frames, video.grid * video.grid), dtype=np.int64)
    for track in video.tracks:
        for f in range(1, frames):
            before, now = track.cells[f - 1], track.cells[f]
            if before == now:
                continue
            if before is None:
                events[f, synth.patch_index(*now, video.grid)] = EVENTS.index("appeared")
            elif now is None:
                events[f, synth.patch_index(*before, video.grid)] = EVENTS.index("vanished")
            else:
                step = (int(np.sign(now[0] - before[0])), int(np.sign(now[1] - before[1])))
                moved = next(d for d, delta in DIRECTIONS.items() if delta == step)
                events[f, synth.patch_index(*now, video.grid)] = EVENTS.index(f"moved_{moved}")
                events[f, synth.patch_index(*before, video.grid)] = EVENTS.index("vacated")
    return events


def _cell_index(track: Track, frame: int, grid: int) -> int:
    return synth.patch_index(*track.cells[frame], grid)


def questions(video: Video, rng: random.Random) -> list[VideoQA]:
    """One question of each family in FAMILIES, answered from the tracks (not from how the video was sampled)."""
    grid = video.grid
    appeared = [t for t in video.tracks if t.appeared()]
    last = max(appeared, key=lambda t: t.first_frame)
    gone = next(t for t in video.tracks if t.disappeared())
    mover = next(t for t in video.tracks if t.direction() is not None)
    shapes_in = sorted({t.shape for t in appeared})
    shapes_out = sorted({t.shape for t in video.tracks} - set(shapes_in))
    shape = rng.choice(shapes_out if shapes_out and rng.random() < ABSENT_SHAPE_SHARE else shapes_in)
    return [
        VideoQA("appeared_last", "What appeared last?", last.name, (_cell_index(last, -1, grid),)),
        VideoQA("disappeared", "What disappeared?", gone.name, (_cell_index(gone, 0, grid),)),
        VideoQA(
            "direction",
            f"Which direction did the {mover.name} move?",
            mover.direction(),
            (_cell_index(mover, 0, grid), _cell_index(mover, -1, grid)),
        ),
        VideoQA(
            "count_appeared",
            f"How many {synth.PLURALS[shape]} appeared?",
            str(sum(t.shape == shape for t in appeared)),
        ),
    ]


def write_video(frames: np.ndarray, path: Path) -> None:
    """Write RGB frames as a lossless H.264 (RGB) mp4: flat colours and thin strokes survive exactly."""
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264rgb", rate=FPS, options={"crf": "0", "preset": "medium"})
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "rgb24"
        stream.thread_count = 1  # one encoder thread: the same frames give the same bytes
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def read_video(path: Path | str, num_frames: int = FRAMES) -> np.ndarray:
    """Decode a video with PyAV and sample num_frames uniformly (Video-LLaVA's sampling): (num_frames, H, W, 3)."""
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    keep = np.linspace(0, len(frames) - 1, num_frames).round().astype(int)
    return np.stack([frames[i] for i in keep])


def build_eval_set(out: Path, seed: int = EVAL_SEED, n_videos: int = EVAL_VIDEOS) -> dict[str, int]:
    """Write ``test_q.json``, ``test_a.json`` and ``videos/<video_name>.mp4`` under `out` (Video-LLaVA's MSVD-QA
    layout: the two JSON lists are aligned by position and share question_id); return the counts."""
    rng = random.Random(seed)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    asked, answers = [], []
    for i in range(n_videos):
        video = sample_video(rng)
        name = f"synth_{i:04d}"
        write_video(render(video), out / "videos" / f"{name}.mp4")
        for k, qa in enumerate(questions(video, rng)):
            question_id = f"{name}_{k}"
            asked.append({"video_name": name, "question": qa.question, "question_id": question_id})
            answers.append({"answer": qa.answer, "type": FAMILIES.index(qa.family), "question_id": question_id})
    (out / "test_q.json").write_text(json.dumps(asked, indent=1) + "\n")
    (out / "test_a.json").write_text(json.dumps(answers, indent=1) + "\n")
    return {"videos": n_videos, "questions": len(asked)}


def load_eval_set(root: Path) -> list[dict]:
    """The held-out questions joined with their answers: video_name, question, question_id, answer, family."""
    asked = json.loads((root / "test_q.json").read_text())
    answers = {a["question_id"]: a for a in json.loads((root / "test_a.json").read_text())}
    return [
        q | {"answer": answers[q["question_id"]]["answer"], "family": FAMILIES[answers[q["question_id"]]["type"]]}
        for q in asked
    ]

"""The synthetic video-QA set: deterministic files in Video-LLaVA's MSVD-QA layout, and answers read from the tracks."""

from __future__ import annotations

import json
import random
from pathlib import Path

from eval import synth_video
from eval.synth_video import Track, Video

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "synth_video"


def _written(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generator_is_deterministic_and_writes_the_msvd_qa_layout(tmp_path: Path) -> None:
    counts = synth_video.build_eval_set(tmp_path / "a", seed=7, n_videos=3)
    synth_video.build_eval_set(tmp_path / "b", seed=7, n_videos=3)
    synth_video.build_eval_set(tmp_path / "c", seed=8, n_videos=3)
    first = _written(tmp_path / "a")
    assert first == _written(tmp_path / "b")
    assert first["test_a.json"] != _written(tmp_path / "c")["test_a.json"]
    assert counts == {"videos": 3, "questions": 3 * len(synth_video.FAMILIES)}
    asked = json.loads(first["test_q.json"])
    answers = json.loads(first["test_a.json"])
    assert all(set(q) == {"video_name", "question", "question_id"} for q in asked)
    assert all(set(a) == {"answer", "type", "question_id"} for a in answers)
    assert [q["question_id"] for q in asked] == [a["question_id"] for a in answers]  # aligned by position
    assert [a["type"] for a in answers[:4]] == [0, 1, 2, 3]
    rng = random.Random(7)
    for i in range(3):
        video = synth_video.sample_video(rng)
        expected = [(qa.question, qa.answer) for qa in synth_video.questions(video, rng)]
        assert [
            (q["question"], a["answer"]) for q, a in zip(asked[4 * i : 4 * i + 4], answers[4 * i :], strict=False)
        ] == expected
        frames = synth_video.read_video(tmp_path / "a" / "videos" / f"{asked[4 * i]['video_name']}.mp4")
        assert frames.shape == (synth_video.FRAMES, 48, 48, 3)
        assert (frames == synth_video.render(video)).all()  # lossless: every pixel decodes back


def test_committed_set_is_what_the_generator_writes(tmp_path: Path) -> None:
    synth_video.build_eval_set(tmp_path)
    for name in ("test_q.json", "test_a.json"):
        assert (DATA_DIR / name).read_text() == (tmp_path / name).read_text()
    items = synth_video.load_eval_set(DATA_DIR)
    assert len(items) == synth_video.EVAL_VIDEOS * len(synth_video.FAMILIES)
    for name in sorted({item["video_name"] for item in items})[:: synth_video.EVAL_VIDEOS // 4]:
        committed = synth_video.read_video(DATA_DIR / "videos" / f"{name}.mp4")
        assert (committed == synth_video.read_video(tmp_path / "videos" / f"{name}.mp4")).all()


def _still(colour: str, shape: str, cell: tuple[int, int], start: int = 0, stop: int = 8) -> Track:
    return Track(colour, shape, tuple(cell if start <= f < stop else None for f in range(8)))


def test_answers_follow_the_events_of_a_constructed_video() -> None:
    left = Track("red", "square", ((2, 4),) * 3 + ((2, 3), (2, 2), (2, 1)) + ((2, 1),) * 2)
    video = Video(
        (
            left,
            _still("blue", "ring", (5, 5), stop=4),  # disappears at frame 4
            _still("green", "circle", (0, 0), start=6),  # appears last
            _still("yellow", "circle", (4, 0), start=2),
            _still("purple", "cross", (0, 5), start=3),
            _still("orange", "circle", (5, 0)),  # a circle that was there from the start did not appear
        )
    )
    rng = random.Random(0)
    answers = {qa.family: qa for qa in synth_video.questions(video, rng)}
    assert answers["appeared_last"].answer == "green circle"
    assert answers["appeared_last"].cells == (0,)
    assert answers["disappeared"].answer == "blue ring"
    assert answers["direction"].question == "Which direction did the red square move?"
    assert answers["direction"].answer == "left"
    assert answers["direction"].cells == (2 * 6 + 4, 2 * 6 + 1)
    counted = {"circles": "2", "crosses": "1", "rings": "0", "squares": "0"}
    for _ in range(20):
        qa = synth_video.questions(video, rng)[3]
        assert qa.answer == counted[qa.question.split()[2]]
    up = Video((Track("red", "square", ((4, 1),) * 2 + ((3, 1), (2, 1)) + ((2, 1),) * 4),) + video.tracks[1:])
    assert synth_video.questions(up, rng)[2].answer == "up"
    frames = synth_video.render(video)
    assert frames[0, 16:24, 32:40].any() and not frames[0, 16:24, 8:16].any()  # the square starts at column 4
    assert frames[7, 16:24, 8:16].any() and not frames[7, 16:24, 32:40].any()  # and ends at column 1
    assert not frames[5, 0:8, 0:8].any() and frames[6, 0:8, 0:8].any()  # the green circle shows from frame 6


def test_sampled_videos_have_one_event_of_each_kind() -> None:
    rng = random.Random(3)
    for _ in range(200):
        video = synth_video.sample_video(rng)
        assert sum(t.direction() is not None for t in video.tracks) == 1
        assert sum(t.disappeared() for t in video.tracks) == 1
        starts = [t.first_frame for t in video.tracks if t.appeared()]
        assert len(starts) == len(set(starts)) >= 1
        assert len({(t.colour, t.shape) for t in video.tracks}) == len(video.tracks)
        cells = [c for t in video.tracks for c in set(t.cells) if c is not None]
        assert len(cells) == len(set(cells))


def test_token_events_say_what_changed_at_each_cell() -> None:
    left = Track("red", "square", ((2, 4),) * 3 + ((2, 3), (2, 2)) + ((2, 2),) * 3)
    gone = _still("blue", "ring", (5, 5), stop=4)
    new = _still("green", "circle", (0, 0), start=6)
    events = synth_video.token_events(Video((left, gone, new)))
    found = {(f, divmod(int(c), 6), synth_video.EVENTS[events[f, c]]) for f, c in zip(*events.nonzero(), strict=True)}
    assert found == {
        (3, (2, 3), "moved_left"),
        (3, (2, 4), "vacated"),
        (4, (2, 2), "moved_left"),
        (4, (2, 3), "vacated"),
        (4, (5, 5), "vanished"),
        (6, (0, 0), "appeared"),
    }

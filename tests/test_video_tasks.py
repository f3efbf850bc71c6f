"""Video QA end to end on CPU: local layout -> runner -> lmms-eval -> plugin (frames, `videos=`) -> judge -> record.

The judge cells run the real plugin with its generate step replaced (`NoEngineModel`), so that every answer is
known: everything before it (decoding 8 frames, the processor's `<video>` expansion) and after it (judging,
failures, records) is the harness's own code. test_video_llava_dense_cell_with_the_engine runs the plugin whole;
test_video_demo.py runs the runner on the embedded tiny Video-LLaVA with pruning.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from lmms_eval.api.instance import GenerationResult, TokenCounts
from video_fixtures import SIDE, build_video_llava, frame_colour, write_avi, write_layout

import eval.run as runner
from eval import synth_video
from eval.lmms_model import SparseVLMModel
from eval.video import VideoError, frame_indices, probe, read_frames

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "models" / "tiny-llava"  # an image LLaVA that passes preflight; the cell runs the video model below


def test_frame_indices_are_video_llavas_linspace():
    assert frame_indices(10) == [0, 1, 2, 3, 5, 6, 7, 9]
    assert frame_indices(3) == [0, 0, 0, 0, 1, 1, 1, 2]  # short videos repeat frames
    assert frame_indices(300) == [0, 42, 85, 128, 170, 213, 256, 299]
    with pytest.raises(VideoError):
        frame_indices(0)


def test_read_frames_decodes_the_sampled_frames(tmp_path):
    video = read_frames(write_avi(tmp_path / "v.avi", 12))
    assert video.n_frames == 12 and video.indices == (0, 1, 3, 4, 6, 7, 9, 11)
    assert video.frames.shape == (8, SIDE, SIDE, 3) and video.frames.dtype == np.uint8
    expected = np.array([frame_colour(i) for i in video.indices])
    assert np.abs(video.frames[:, SIDE // 2, SIDE // 2].astype(int) - expected).max() <= 3  # JPEG rounding


def test_a_corrupt_video_is_a_one_line_error(tmp_path):
    path = tmp_path / "bad.mp4"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(VideoError, match=r"^video .*bad\.mp4: cannot decode \(decord: .*; pyav: .*\)$"):
        read_frames(path)
    with pytest.raises(VideoError, match=r"^video .*bad\.mp4: cannot open \(decord: .*; pyav: .*\)$"):
        probe(path)


def test_decord_reads_what_it_can_and_pyav_reads_what_decord_cannot(tmp_path):
    assert read_frames(write_avi(tmp_path / "v.avi", 12)).decoder == "decord"
    clip = ROOT / "data" / "synth_video" / "videos" / "synth_0000.mp4"  # 48 pixels wide: decord 0.6 cannot copy it
    video = read_frames(clip)
    assert video.decoder == "pyav" and probe(clip) == 8 == video.n_frames
    assert np.array_equal(video.frames, synth_video.read_video(clip))  # lossless clip: every pixel as written


class NoEngineModel(SparseVLMModel):
    """The plugin with generate() replaced: answers the reference for even doc ids, 'nothing' for odd ones, and keeps
    the processor inputs it built."""

    seen: list[dict] = []

    def _generate_batch(self, batch):
        inputs = self._inputs([b[0] for b in batch], [v for b in batch for v in b[2]])
        NoEngineModel.seen.append({k: tuple(v.shape) for k, v in inputs.items()} | {"prompt": batch[0][0]})
        out = []
        for prompt, _, _, doc_id, task in batch:
            answer = self.task_dict[task]["test"][doc_id]["answer"] if doc_id % 2 == 0 else "nothing"
            row = self._record(task, doc_id, None, len(prompt), 2, {"e2e_ms": 1.0}, len(batch))
            out.append(GenerationResult(text=f"it is {answer}.", token_counts=TokenCounts(row["prompt_tokens"], 2)))
        return out


@pytest.fixture(scope="module")
def video_setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("video")
    write_layout(base / "MSVD_Zero_Shot_QA", n=8, corrupt=(2,), missing=(4,))
    model, processor = build_video_llava()
    return {"base": base, "model": model, "processor": processor}


@pytest.fixture
def cell(video_setup, monkeypatch):
    """run(*overrides) -> the outcome of one msvd_qa cell (dense, 6 questions) through the runner, plus its rows."""
    built = lambda spec, device: NoEngineModel(  # noqa: E731
        model=video_setup["model"], processor=video_setup["processor"], method=spec.method, batch_size=spec.batch_size
    )
    monkeypatch.setattr(SparseVLMModel, "from_spec", built)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    NoEngineModel.seen.clear()

    def run(*overrides):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(
                "config",
                overrides=[
                    f"results_dir={video_setup['base'] / 'runs'}",
                    "model=local",
                    f"model.pretrained={TINY}",
                    "method=dense",
                    "budget=null",
                    "task=msvd_qa",
                    f"video_data_dir={video_setup['base']}",
                    "task.video.first_n=6",
                    "batch_size=2",
                    "max_failed_fraction=0.5",
                    "experiment_name=video",
                    "cpu_threads=1",
                    *overrides,
                ],
            )
        outcome = runner.run_cell(cfg)
        path = video_setup["base"] / "runs" / "video" / str(outcome.run_id) / "samples.jsonl"
        rows = {r["doc_id"]: r for r in map(json.loads, path.read_text().splitlines())} if path.exists() else {}
        return outcome, rows

    return run


def test_match_judged_cell_loads_the_layout_and_fails_bad_videos_alone(cell):
    outcome, rows = cell("judge=match")
    assert outcome.status == "ok", outcome.detail
    assert sorted(rows) == [0, 1, 2, 3, 4, 5]  # first_n=6 of 8 questions, in file order
    failed = {doc: row["error"] for doc, row in rows.items() if row["status"] == "failed"}
    assert set(failed) == {2, 4}
    assert failed[2].startswith("doc_to_visual: VideoError: video ") and "video2.avi: cannot open" in failed[2]
    assert failed[4].startswith("doc_to_visual: FileNotFoundError: no video ") and "video4{.mp4,.avi" in failed[4]
    # answers are joined by question_id (test_a.json lists them in reverse order)
    assert [rows[d]["target"] for d in (0, 1, 3, 5)] == ["cooking", "two", "a woman", "onion"]
    assert {d: rows[d]["judge"]["judge"] for d in (0, 1, 3, 5)} == dict.fromkeys((0, 1, 3, 5), "match")
    # even docs answer "it is <reference>.": correct by match; odd docs answer "nothing"
    assert outcome.record.metrics["msvd_qa"]["accuracy"] == pytest.approx(100 * 1 / 4)
    assert "score" not in outcome.record.metrics["msvd_qa"]  # the match judge gives no 0-5 score
    assert outcome.record.documents["n"] == 6 and outcome.record.documents["n_failed"] == 2
    assert outcome.record.grid["judge"] == "match"
    # the plugin gave the processor 8 decoded frames per video, expanded into 8 x 17 <video> tokens
    assert all(s["pixel_values_videos"][1:] == (8, 3, 32, 32) for s in NoEngineModel.seen)
    assert "<video>" in NoEngineModel.seen[0]["prompt"]


class FakeOpenAI(BaseHTTPRequestHandler):
    """An OpenAI-compatible /chat/completions: 'yes', 4 when the prediction contains the answer, else 'no', 1."""

    requests: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.requests.append(body)
        user = body["messages"][1]["content"]
        answer = user.split("Correct Answer: ")[1].split("\n")[0]
        predicted = user.split("Predicted Answer: ")[1].split("\n")[0]
        verdict = "{'pred': 'yes', 'score': 4}" if answer in predicted else "{'pred': 'no', 'score': 1}"
        data = json.dumps({"model": "fake-judge-0613", "choices": [{"message": {"content": verdict}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_openai():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    FakeOpenAI.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_gpt_judged_cell_records_accuracy_score_and_the_judges_reply(cell, fake_openai, tmp_path):
    judge = ["judge=gpt", f"judge.base_url={fake_openai}", f"judge.cache_dir={tmp_path / 'cache'}"]
    outcome, rows = cell(*judge)
    assert outcome.status == "ok", outcome.detail
    assert len(FakeOpenAI.requests) == 4  # the 4 documents that were answered; failed videos are never judged
    metrics = outcome.record.metrics["msvd_qa"]
    assert metrics["accuracy"] == pytest.approx(25.0) and metrics["score"] == pytest.approx((4 + 1 + 1 + 1) / 4)
    assert outcome.record.primary["value"] == pytest.approx(25.0)  # docs 0, 1, 3, 5: only doc 0 answers right
    judged = rows[0]["judge"]
    assert judged["judge_model"] == "gpt-3.5-turbo" and judged["reply_model"] == "fake-judge-0613"
    assert judged["reply"] == "{'pred': 'yes', 'score': 4}" and judged["cached"] is False
    rerun, rows = cell(*judge, "force=true")
    assert rerun.status == "ok" and len(FakeOpenAI.requests) == 4  # every verdict came from the cache
    assert rows[0]["judge"]["cached"] is True and rerun.record.metrics["msvd_qa"] == metrics


def test_unreachable_gpt_judge_fails_the_documents_and_the_cell_never_scores_zero(cell, tmp_path):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    judge = [f"judge.base_url=http://127.0.0.1:{port}/v1", "judge.max_retries=1", "judge.backoff_s=0.01"]
    outcome, rows = cell("judge=gpt", *judge, f"judge.cache_dir={tmp_path / 'cache'}")
    assert outcome.status == "failed"
    assert outcome.detail.startswith("RuntimeError: 6 of 6 documents failed")
    assert f"127.0.0.1:{port}/v1/chat/completions unreachable" in outcome.detail
    reasons = [row["error"] for row in rows.values()]
    assert all(row["status"] == "failed" for row in rows.values()) and len(rows) == 6
    assert sum(r.startswith("process_results: JudgeError: judge gpt-3.5-turbo: ") for r in reasons) == 4
    assert outcome.record.metrics == {} or "accuracy" not in outcome.record.metrics.get("msvd_qa", {})


def test_video_llava_dense_cell_with_the_engine(video_setup):
    """The plugin end to end on the tiny Video-LLaVA, method=dense (nothing is attached, but attach checks the arch)."""
    import sparsevlm
    from eval.docguard import DocGuard

    lm = SparseVLMModel(model=video_setup["model"], processor=video_setup["processor"], method=sparsevlm.Dense())
    lm.doc_guard = DocGuard()
    lm.task_dict = {"t": {"test": [{"video": str(write_avi(video_setup["base"] / "e.avi", 9))}]}}
    request = ("what is the man doing ?", {"max_new_tokens": 3}, lambda doc: [doc["video"]], 0, "t", "test")
    [result] = lm._generate([request])
    assert not lm.doc_guard.failures, lm.doc_guard.failures
    assert lm.efficiency_records[0]["n_visual"] == 8 * 17 and result.text is not None

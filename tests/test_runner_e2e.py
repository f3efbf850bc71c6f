"""End to end on CPU: Hydra config -> runner -> lmms-eval (official POPE scoring) -> record; bad documents; sweeps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from tiny_checkpoint import save_tiny_checkpoint, write_pope_fixture, write_task

import eval.run as runner
from eval.records import read_record

ROOT = Path(__file__).resolve().parents[1]
BAD_ROWS = {1: "garbage_image", 3: "null_image", 5: "null_question", 7: "null_answer", 9: "truncated_image"}


@pytest.fixture(scope="module")
def local_setup(tmp_path_factory) -> dict[str, Path]:
    """A tiny random LLaVA checkpoint and POPE-shaped local tasks (official columns and scoring), one with bad rows."""
    base = tmp_path_factory.mktemp("e2e")
    checkpoint = save_tiny_checkpoint(base / "ckpt")
    data = write_pope_fixture(base / "data", n=6)
    bad = write_pope_fixture(base / "data", n=12, corrupt=BAD_ROWS, name="bad")
    tasks = base / "tasks"
    write_task(tasks, data, task="pope_e2e")
    write_task(tasks, bad, task="pope_bad")
    truncated = base / "data" / "truncated.parquet"
    truncated.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    write_task(tasks, truncated, task="pope_truncated")
    (tasks / "bad_scorer.py").write_text(
        "from lmms_eval.tasks.pope.utils import pope_process_results\n\n\n"
        "def process_results(doc, results):\n"
        "    if doc['question_id'] == '2':\n"
        "        raise ZeroDivisionError('scorer bug on this document')\n"
        "    return pope_process_results(doc, results)\n"
    )
    (tasks / "pope_bad_scorer.yaml").write_text(
        (tasks / "pope_e2e.yaml").read_text().replace("task: pope_e2e", "task: pope_bad_scorer")
        + "process_results: !function bad_scorer.process_results\n"
    )
    return {"checkpoint": checkpoint, "tasks": tasks, "results": base / "runs"}


def _overrides(setup: dict[str, Path], task: str = "pope_e2e") -> list[str]:
    return [
        f"results_dir={setup['results']}",
        "model=local",
        f"model.pretrained={setup['checkpoint']}",
        "task=pope",
        f"task.name={task}",
        f"task.lmms_tasks=[{task}]",
        f"task.include_path={setup['tasks']}",
        "limit=4",
        "experiment_name=e2e",
        "cpu_threads=1",
    ]


def _run(setup: dict[str, Path], *overrides: str, task: str = "pope_e2e") -> runner.CellOutcome:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*_overrides(setup, task), *overrides])
    return runner.run_cell(cfg)


def _rows(setup: dict[str, Path], run_id: str) -> list[dict]:
    path = setup["results"] / "e2e" / run_id / "samples.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_unreachable_budget_is_a_config_error_before_loading_weights(local_setup):
    outcome = _run(local_setup, "method=fastv", "method.options.layer=2", "budget=32")
    assert outcome.status == "rejected"
    assert "budget=32 is unreachable" in outcome.detail and "8 layers, 256 visual tokens" in outcome.detail


def test_runner_through_lmms_eval_writes_a_complete_record(local_setup):
    outcome = _run(local_setup, "method=sparsevlm", "budget=64")
    record = outcome.record
    assert outcome.status == "ok", record.error
    metrics = record.metrics["pope_e2e"]
    assert {"pope_accuracy", "pope_precision", "pope_recall", "pope_f1_score", "pope_yes_ratio"} <= set(metrics)
    assert record.primary["value"] == pytest.approx(100 * metrics["pope_f1_score"])
    eff = record.efficiency
    assert eff.n_samples == 4 and record.documents["n"] == 4 and record.documents["n_failed"] == 0
    assert eff.equivalent_tokens == pytest.approx(64.0, abs=1.0)  # 256 visual tokens, 8 layers: derived schedule
    assert 0 < eff.tflops_paper < eff.tflops_full
    assert eff.prefill_ms_median > 0 and eff.e2e_ms_median >= eff.prefill_ms_median and eff.kv_cache_mb > 0
    rows = _rows(local_setup, record.run_id)
    assert len(rows) == 4 and all(r["prediction"] is not None and r["equivalent_tokens"] for r in rows)
    assert read_record(local_setup["results"] / "e2e" / record.run_id / "record.json").status == "ok"


def test_bad_documents_fail_alone_and_the_rest_is_scored(local_setup):
    outcome = _run(local_setup, "method=fastv", "budget=64", "limit=12", "max_failed_fraction=0.5", task="pope_bad")
    assert outcome.status == "ok", outcome.detail
    rows = {r["doc_id"]: r for r in _rows(local_setup, outcome.run_id)}
    failed = {doc: r["error"] for doc, r in rows.items() if r["status"] == "failed"}
    assert failed == {
        1: "image: UnidentifiedImageError: cannot identify image file <_io.BytesIO object>",
        3: "image: missing (column 'image' is null)",
        5: "doc_to_text: AttributeError: 'NoneType' object has no attribute 'strip'",
        7: "doc_to_target: missing (null)",
    }
    scored = sorted(doc for doc, r in rows.items() if r["status"] == "ok")
    assert scored == [0, 2, 4, 6, 8, 9, 10, 11]
    assert rows[9]["warnings"][0].startswith("image truncated")  # kept, but flagged
    record = outcome.record
    assert record.documents["n"] == 12 and record.documents["n_failed"] == 4 and record.documents["n_warned"] == 1
    assert record.efficiency.n_samples == 8
    # the metrics are lmms-eval's over the 8 scored documents: recompute accuracy from their predictions
    accuracy = sum(rows[d]["prediction"].lower() == rows[d]["target"] for d in scored) / len(scored)
    assert record.metrics["pope_bad"]["pope_accuracy"] == pytest.approx(accuracy)


def test_too_many_bad_documents_fail_the_cell_with_their_reasons(local_setup):
    overrides = ("method=fastv", "budget=64", "limit=12", "max_failed_fraction=0.1", "experiment_name=strict")
    outcome = _run(local_setup, *overrides, task="pope_bad")
    assert outcome.status == "failed"
    assert outcome.detail.startswith("RuntimeError: 4 of 12 documents failed (33.3% > max_failed_fraction 10.0%)")
    assert "pope_bad doc 1: image: UnidentifiedImageError" in outcome.detail
    run_dir = local_setup["results"] / "strict" / outcome.run_id
    record = read_record(run_dir / "record.json")
    assert record.status == "failed" and record.documents["n_failed"] == 4
    rows = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert sum(r["status"] == "failed" for r in rows) == 4 and len(rows) == 12  # nothing computed is lost


def test_a_scorer_error_fails_its_document_only(local_setup):
    outcome = _run(
        local_setup, "method=dense", "budget=null", "limit=6", "max_failed_fraction=0.2", task="pope_bad_scorer"
    )
    assert outcome.status == "ok", outcome.detail
    failed = [r for r in _rows(local_setup, outcome.run_id) if r["status"] == "failed"]
    assert failed == [
        {
            "task": "pope_bad_scorer",
            "doc_id": 2,
            "status": "failed",
            "error": "process_results: ZeroDivisionError: scorer bug on this document",
        }
    ]
    assert outcome.record.efficiency.n_samples == 6  # it was generated: its efficiency row exists


def test_a_generation_error_fails_its_document_only(local_setup, monkeypatch):
    from eval.lmms_model import SparseVLMModel

    original = SparseVLMModel._generate_batch

    def flaky(self, batch):
        if any(doc_id == 3 for _, _, _, doc_id, _ in batch):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return original(self, batch)

    monkeypatch.setattr(SparseVLMModel, "_generate_batch", flaky)
    outcome = _run(local_setup, "method=fastv", "budget=64", "limit=6", "batch_size=3", "max_failed_fraction=0.2")
    assert outcome.status == "ok", outcome.detail
    rows = _rows(local_setup, outcome.run_id)
    assert [(r["doc_id"], r["error"]) for r in rows if r["status"] == "failed"] == [
        (3, "generation: RuntimeError: CUDA error: an illegal memory access was encountered")
    ]
    assert sorted(r["doc_id"] for r in rows if r["status"] == "ok") == [0, 1, 2, 4, 5]  # its batch-mates retried


def test_an_unreadable_dataset_names_its_task(local_setup):
    outcome = _run(local_setup, "method=dense", "budget=null", task="pope_truncated")
    assert outcome.status == "failed"
    assert outcome.detail.startswith("RuntimeError: task pope_truncated: cannot load its dataset:")
    assert "RetryError" not in outcome.detail


@pytest.mark.slow
def test_submitit_local_sweep_runs_every_cell_and_resumes(local_setup):
    command = [
        sys.executable,
        "-m",
        "eval.run",
        "--multirun",
        *_overrides(local_setup),
        "launcher=submitit_local",
        "method=dense,fastv",
        "budget=null,64",
        "limit=2",
        "hydra.launcher.timeout_min=10",
        f"hydra.sweep.dir={local_setup['results']}/_hydra",
    ]
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900)
    records = [read_record(p) for p in (local_setup["results"] / "e2e").glob("*/record.json")]
    by_cell = {(r.grid["method"], r.grid["budget"]): r for r in records if r.config.get("limit") == 2}
    # dense with a budget and fastv without one are config errors: never launched, reported, and the sweep exits 1
    assert set(by_cell) == {("dense", None), ("fastv", 64)}, out.stderr[-3000:]
    assert all(r.status == "ok" for r in by_cell.values()), [r.error for r in by_cell.values()]
    assert by_cell[("fastv", 64)].efficiency.equivalent_tokens == pytest.approx(64.0, abs=1.0)
    assert out.returncode == 1
    assert "sweep: 4 cells: 2 ok, 0 skipped (complete), 0 failed, 2 rejected (config), 0 lost" in out.stderr
    assert out.stderr.count("  rejected: ") == 2
    again = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert "sweep: 4 cells: 0 to run, 2 complete, 2 rejected" in again.stdout
    jobs = [p for p in (local_setup["results"] / "_hydra" / ".submitit").iterdir() if p.name.isdigit()]
    assert len(jobs) == 2, "the rerun launched no job: the 2 complete cells were skipped before launching"

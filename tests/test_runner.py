"""Runner orchestration with a fake evaluation: records, skip/force/stale, staged writes, file modes, W&B sink."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import eval.records as records
import eval.run as runner
from eval.records import RunRecord, file_sha256, read_record, write_record

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
TINY = ROOT / "models" / "tiny-llava"


def _cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "config",
            overrides=[
                f"results_dir={tmp_path}",
                "model=local",
                f"model.pretrained={TINY}",
                "budget=64",
                "limit=4",
                *overrides,
            ],
        )


def _fake_evaluate(calls: list, value: float = 0.5):
    def evaluate(spec, device, guard):
        calls.append(spec.run_id)
        results = {
            t: {"pope_f1_score,none": value + 0.1 * i, "pope_accuracy,none": 0.6}
            for i, t in enumerate(spec.task.lmms_tasks)
        }
        guard.docs_seen.setdefault(spec.task.lmms_tasks[0], set()).add(0)
        samples = {spec.task.lmms_tasks[0]: [{"doc_id": 0, "target": "yes", "filtered_resps": ["no"]}]}
        efficiency = [
            {
                "task": spec.task.lmms_tasks[0],
                "doc_id": 0,
                "equivalent_tokens": 64.8125,
                "e2e_ms": 12.0,
                "prefill_ms": 5.0,
                "tflops_paper": 1.3,
            }
        ]
        return results, samples, efficiency

    return evaluate


def _broken(message: str = "CUDA out of memory"):
    def evaluate(spec, device, guard):
        raise RuntimeError(message)

    return evaluate


def test_record_holds_metrics_efficiency_documents_and_provenance(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "evaluate", _fake_evaluate(calls))
    outcome = runner.run_cell(_cfg(tmp_path, "method=sparsevlm", "task=pope"))
    record = outcome.record
    assert outcome.status == "ok" and record.status == "ok" and record.error is None
    assert record.primary == {
        "column": "POPE",
        "value": pytest.approx(60.0),
        "metrics": ["pope_f1_score"],
        "combine": "mean",
        "scale": 100.0,
        "missing": [],
    }
    assert record.grid == {"model": "local", "method": "sparsevlm", "version": "1.5", "budget": 64, "task": "pope"}
    assert record.efficiency.equivalent_tokens == 64.8125 and record.efficiency.prefill_ms_median == 5.0
    assert record.documents == {"n": 1, "n_failed": 0, "n_warned": 0, "failed_examples": []}
    assert record.is_full_eval is False and record.schema_version == 2
    assert record.provenance.packages["torch"] and record.provenance.finished_at
    assert record.provenance.code_hash == records.code_hash()
    run_dir = tmp_path / "adhoc" / record.run_id
    on_disk = read_record(run_dir / "record.json")
    assert on_disk.to_dict() == record.to_dict()
    assert (run_dir / "config.yaml").read_text().count("budget: 64") == 1
    assert not (run_dir / "running.json").exists()
    rows = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert rows == [
        {
            "task": "pope_adv",
            "doc_id": 0,
            "status": "ok",
            "prediction": "no",
            "target": "yes",
            "equivalent_tokens": 64.8125,
            "e2e_ms": 12.0,
            "prefill_ms": 5.0,
            "tflops_paper": 1.3,
        }
    ]
    assert record.samples == {"file": "samples.jsonl", "sha256": file_sha256(run_dir / "samples.jsonl"), "rows": 1}


def test_files_are_world_readable(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "evaluate", _fake_evaluate([]))
    record = runner.run_cell(_cfg(tmp_path)).record
    run_dir = tmp_path / "adhoc" / record.run_id
    for name in ("record.json", "samples.jsonl"):
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == 0o644, name


def test_complete_cells_are_skipped_and_force_reruns(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "evaluate", _fake_evaluate(calls))
    first = runner.run_cell(_cfg(tmp_path))
    again = runner.run_cell(_cfg(tmp_path))
    assert calls == [first.run_id] and again.status == "skipped"
    assert again.record.to_dict() == first.record.to_dict()
    assert runner.run_cell(_cfg(tmp_path, "force=true")).status == "ok"
    assert calls == [first.run_id, first.run_id]


def test_a_failed_forced_rerun_keeps_the_ok_record(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "evaluate", _fake_evaluate([], value=0.7))
    first = runner.run_cell(_cfg(tmp_path)).record
    run_dir = tmp_path / "adhoc" / first.run_id
    samples_before = (run_dir / "samples.jsonl").read_bytes()
    monkeypatch.setattr(runner, "evaluate", _broken())
    outcome = runner.run_cell(_cfg(tmp_path, "force=true"))
    assert outcome.status == "failed" and "previous ok record is kept" in outcome.detail
    kept = read_record(run_dir / "record.json")
    assert kept.status == "ok" and kept.to_dict() == first.to_dict()
    assert (run_dir / "samples.jsonl").read_bytes() == samples_before
    assert read_record(run_dir / "failed_attempt.json").error == "RuntimeError: CUDA out of memory"


def test_failed_cell_is_recorded_and_retried_next_time(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "evaluate", _broken())
    outcome = runner.run_cell(_cfg(tmp_path))
    assert outcome.status == "failed" and outcome.record.error == "RuntimeError: CUDA out of memory"
    assert read_record(tmp_path / "adhoc" / outcome.run_id / "record.json").status == "failed"
    with pytest.raises(RuntimeError, match="out of memory"):
        runner.run_cell(_cfg(tmp_path, "fail_fast=true"))
    assert read_record(tmp_path / "adhoc" / outcome.run_id / "record.json").status == "failed"
    calls = []
    monkeypatch.setattr(runner, "evaluate", _fake_evaluate(calls))
    assert runner.run_cell(_cfg(tmp_path)).status == "ok" and calls == [outcome.run_id]


def test_a_config_error_is_a_rejected_outcome_before_anything_runs(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "evaluate", _fake_evaluate(calls))
    outcome = runner.run_cell(_cfg(tmp_path, "budget=144"))
    assert outcome.status == "rejected" and outcome.detail.startswith("budget: 144 >= the model's 144 visual tokens")
    assert calls == [] and not (tmp_path / "adhoc").exists()
    assert runner.run_cell(_cfg(tmp_path, "budget=144", "allow_unpruned=true")).status == "ok"


def test_record_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "record.json"
    monkeypatch.setattr(runner, "evaluate", _fake_evaluate([]))
    good = runner.run_cell(_cfg(tmp_path / "runs")).record
    write_record(good, path)
    before = path.read_text()

    class Exploding(dict):
        def items(self):
            raise RuntimeError("disk full halfway")

    bad = RunRecord.from_dict(good.to_dict())
    bad.metrics = Exploding(a=1)
    with pytest.raises(RuntimeError, match="halfway"):
        write_record(bad, path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_no_space_left_is_recorded_as_the_cells_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "evaluate", _fake_evaluate([]))
    original = records._atomic_write

    def full_disk(path, write):
        if path.name == "samples.jsonl":
            raise OSError(errno.ENOSPC, "No space left on device")
        original(path, write)

    monkeypatch.setattr(records, "_atomic_write", full_disk)
    outcome = runner.run_cell(_cfg(tmp_path))
    assert outcome.status == "failed"
    on_disk = read_record(tmp_path / "adhoc" / outcome.run_id / "record.json")
    assert on_disk.status == "failed" and "No space left on device" in on_disk.error


def test_temp_files_of_an_interrupted_write_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "evaluate", _fake_evaluate([]))
    cfg = _cfg(tmp_path)
    run_id = runner.run_cell(cfg).run_id
    run_dir = tmp_path / "adhoc" / run_id
    (run_dir / ".tmp-abc.json").write_text("{")
    (run_dir / ".record-xyz.json").write_text("{")  # the temp name of schema-1 writers
    runner.run_cell(cfg)
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == [".lock"]


def test_a_corrupt_samples_file_reruns_its_cell(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "evaluate", _fake_evaluate(calls))
    run_id = runner.run_cell(_cfg(tmp_path)).run_id
    samples = tmp_path / "adhoc" / run_id / "samples.jsonl"
    samples.write_text(samples.read_text()[:-5])  # torn by a crash during a write outside this harness
    outcome = runner.run_cell(_cfg(tmp_path))
    assert outcome.status == "ok" and len(calls) == 2


@pytest.mark.parametrize(("policy", "reruns"), [("rerun", True), ("warn", False), ("keep", False)])
def test_records_of_another_code_version_follow_the_stale_policy(tmp_path, monkeypatch, policy, reruns):
    calls = []
    monkeypatch.setattr(runner, "evaluate", _fake_evaluate(calls))
    run_id = runner.run_cell(_cfg(tmp_path)).run_id
    path = tmp_path / "adhoc" / run_id / "record.json"
    old = read_record(path)
    old.provenance.code_hash = "0123456789abcdef"  # written by other code
    write_record(old, path)
    outcome = runner.run_cell(_cfg(tmp_path, f"stale={policy}"))
    assert (outcome.status == "ok") is reruns and len(calls) == 1 + reruns
    assert read_record(path).provenance.code_hash == (records.code_hash() if reruns else "0123456789abcdef")


def test_an_unreadable_record_reruns_its_cell(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "evaluate", _fake_evaluate(calls))
    run_id = runner.run_cell(_cfg(tmp_path)).run_id
    (tmp_path / "adhoc" / run_id / "record.json").write_text("")
    assert runner.run_cell(_cfg(tmp_path)).status == "ok" and len(calls) == 2


def test_run_ids_differ_by_grid_and_options(tmp_path):
    from eval.config import spec_from_config

    ids = {
        spec_from_config(_cfg(tmp_path, *o)).run_id
        for o in [(), ("budget=48",), ("method=fastv",), ("+method.options.tie_break=noise",), ("limit=8",)]
    }
    assert len(ids) == 5


def test_wandb_offline_logs_metrics_and_table(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setattr(runner, "evaluate", _fake_evaluate([]))
    monkeypatch.setenv("WANDB_SILENT", "true")
    record = runner.run_cell(_cfg(tmp_path, "logger=wandb")).record
    assert record.wandb["status"] == "ok", record.wandb
    run_dirs = list((tmp_path / "adhoc" / record.run_id / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1
    tables = list(run_dirs[0].glob("files/media/table/samples_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"][:4] == ["task", "doc_id", "status", "prediction"]
    assert table["data"][0][:4] == ["pope_adv", 0, "ok", "no"]
    assert read_record(tmp_path / "adhoc" / record.run_id / "record.json").wandb["status"] == "ok"


def test_wandb_failure_keeps_the_local_record(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")

    def unreachable(**kwargs):
        raise ConnectionError("api.wandb.ai unreachable")

    monkeypatch.setattr(wandb, "init", unreachable)
    monkeypatch.setattr(runner, "evaluate", _fake_evaluate([]))
    record = runner.run_cell(_cfg(tmp_path, "logger=wandb")).record
    assert record.status == "ok" and record.wandb["error"] == "ConnectionError: api.wandb.ai unreachable"
    assert read_record(tmp_path / "adhoc" / record.run_id / "record.json").status == "ok"


def test_wandb_online_without_network_falls_back_to_offline_quickly(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    import time

    import eval.wandb_logger as wandb_logger

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setattr(runner, "evaluate", _fake_evaluate([]))
    started = time.perf_counter()
    record = runner.run_cell(_cfg(tmp_path, "logger=wandb", "logger.mode=online")).record
    assert time.perf_counter() - started < 10 + wandb_logger.PROBE_TIMEOUT_S
    assert record.wandb["status"] == "ok" and record.wandb["mode"] == "offline"
    assert record.wandb["fallback"].startswith("online requested, 127.0.0.1 unreachable")


def test_wandb_disabled_claims_no_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "evaluate", _fake_evaluate([]))
    record = runner.run_cell(_cfg(tmp_path, "logger=wandb", "logger.mode=disabled")).record
    assert record.wandb == {"status": "disabled"}
    assert not (tmp_path / "adhoc" / record.run_id / "wandb").exists()


def test_an_interrupted_wandb_log_is_redone_on_resume_without_recomputing(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    calls = []
    monkeypatch.setattr(runner, "evaluate", _fake_evaluate(calls))
    run_id = runner.run_cell(_cfg(tmp_path, "logger=wandb")).run_id
    path = tmp_path / "adhoc" / run_id / "record.json"
    interrupted = read_record(path)
    interrupted.wandb = {"status": "pending"}  # what a kill during logging leaves
    write_record(interrupted, path)
    again = runner.run_cell(_cfg(tmp_path, "logger=wandb"))
    assert again.status == "skipped" and calls == [run_id]
    assert read_record(path).wandb["status"] == "ok"
    assert len(list((tmp_path / "adhoc" / run_id / "wandb").glob("offline-run-*"))) == 1


def test_without_wandb_logger_wandb_is_never_imported(tmp_path):
    code = (
        "import sys, eval.run as r\n"
        "from hydra import compose, initialize_config_dir\n"
        f"with initialize_config_dir(config_dir={str(CONF)!r}, version_base='1.3'):\n"
        f"    cfg = compose('config', overrides=['results_dir={tmp_path}', 'model=tiny-llava', 'budget=48'])\n"
        "scores = {t: {'pope_f1_score,none': 1.0} for t in ('pope_adv', 'pope_pop', 'pope_random')}\n"
        "r.evaluate = lambda spec, device, guard: (scores, {}, [])\n"
        "assert r.run_cell(cfg).status == 'ok'\n"
        "print('wandb' in sys.modules, 'torch' in sys.modules, 'lmms_eval' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False False False"


def test_a_changed_local_checkpoint_reruns_its_cells(tmp_path, monkeypatch):
    import shutil

    checkpoint = tmp_path / "ckpt"
    shutil.copytree(TINY, checkpoint)
    calls = []
    monkeypatch.setattr(runner, "evaluate", _fake_evaluate(calls))
    first = runner.run_cell(_cfg(tmp_path, f"model.pretrained={checkpoint}")).record
    runner.run_cell(_cfg(tmp_path, f"model.pretrained={checkpoint}"))
    assert calls == [first.run_id] and first.provenance.model_fingerprint
    weights = bytearray((checkpoint / "model.safetensors").read_bytes())
    weights[-1] ^= 1  # a retrained model of the same size: only its tail differs
    (checkpoint / "model.safetensors").write_bytes(bytes(weights))
    rerun = runner.run_cell(_cfg(tmp_path, f"model.pretrained={checkpoint}")).record
    assert calls == [first.run_id, first.run_id]
    assert rerun.provenance.model_fingerprint != first.provenance.model_fingerprint


def test_provenance_command_is_the_cells_own_command_line(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "fake_runner.py"),
            "--log",
            str(tmp_path / "log"),
            "--",
            f"results_dir={tmp_path}",
            "model=tiny-llava",
            "budget=48",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (path,) = (tmp_path / "adhoc").glob("*/record.json")
    command = read_record(path).provenance.command
    assert command == f"python -m eval.run results_dir={tmp_path} model=tiny-llava budget=48"
    assert os.path.basename(sys.argv[0]) not in command


def test_a_flops_matched_cell_runs_and_records_the_resolved_budget(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(
        runner, "evaluate", lambda spec, device, guard: seen.append(spec) or _fake_evaluate([])(spec, device, guard)
    )
    outcome = runner.run_cell(_cfg(tmp_path, "method=divprune", "budget=48", "budget_convention=flops"))
    assert outcome.status == "ok", outcome.detail
    ran = seen[0].method.budget
    assert ran > 48  # pruning before the LLM keeps more tokens for SparseVLM's FLOPs at 48 (tiny model: 8 layers)
    assert outcome.record.grid["budget"] == 48 and outcome.record.grid["method_budget"] == ran
    assert outcome.record.grid["budget_convention"] == "flops" and "-flops_b48_" in outcome.record.run_id

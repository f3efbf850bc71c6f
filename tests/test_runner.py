"""Runner orchestration: records, skip-if-complete, force, failed cells, atomic writes, W&B sink."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import eval.run as runner
from eval.records import RunRecord, read_record, write_record

CONF = Path(__file__).resolve().parents[1] / "conf"


def _cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "config",
            overrides=[f"results_dir={tmp_path}", "model=local", "model.pretrained=/unused", "limit=4", *overrides],
        )


def _fake_evaluate(calls: list):
    def evaluate(spec, device):
        calls.append(spec.run_id)
        results = {
            t: {"pope_f1_score,none": 0.5 + 0.1 * i, "pope_accuracy,none": 0.6}
            for i, t in enumerate(spec.task.lmms_tasks)
        }
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


def test_record_holds_metrics_efficiency_and_provenance(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "evaluate", _fake_evaluate(calls))
    record = runner.run_cell(_cfg(tmp_path, "method=sparsevlm", "budget=64", "task=pope"))
    assert record.status == "ok" and record.error is None
    assert record.primary == {
        "column": "POPE",
        "value": pytest.approx(60.0),
        "metrics": ["pope_f1_score"],
        "combine": "mean",
        "scale": 100.0,
    }
    assert record.grid == {"model": "local", "method": "sparsevlm", "version": "1.5", "budget": 64, "task": "pope"}
    assert record.efficiency.equivalent_tokens == 64.8125 and record.efficiency.prefill_ms_median == 5.0
    assert record.is_full_eval is False
    assert record.provenance.packages["torch"] and record.provenance.finished_at
    run_dir = tmp_path / "adhoc" / record.run_id
    on_disk = read_record(run_dir / "record.json")
    assert on_disk.to_dict() == record.to_dict()
    assert (run_dir / "config.yaml").read_text().count("budget: 64") == 1
    rows = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert rows == [
        {
            "task": "pope_adv",
            "doc_id": 0,
            "prediction": "no",
            "target": "yes",
            "equivalent_tokens": 64.8125,
            "e2e_ms": 12.0,
            "prefill_ms": 5.0,
            "tflops_paper": 1.3,
        }
    ]


def test_complete_cells_are_skipped_and_force_reruns(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "evaluate", _fake_evaluate(calls))
    first = runner.run_cell(_cfg(tmp_path))
    again = runner.run_cell(_cfg(tmp_path))
    assert calls == [first.run_id] and again.to_dict() == first.to_dict()
    runner.run_cell(_cfg(tmp_path, "force=true"))
    assert calls == [first.run_id, first.run_id]


def test_failed_cell_is_recorded_and_retried_next_time(tmp_path, monkeypatch):
    def broken(spec, device):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(runner, "evaluate", broken)
    record = runner.run_cell(_cfg(tmp_path))
    assert record.status == "failed" and record.error == "RuntimeError: CUDA out of memory"
    assert read_record(tmp_path / "adhoc" / record.run_id / "record.json").status == "failed"
    with pytest.raises(RuntimeError, match="out of memory"):
        runner.run_cell(_cfg(tmp_path, "fail_fast=true"))
    calls = []
    monkeypatch.setattr(runner, "evaluate", _fake_evaluate(calls))
    assert runner.run_cell(_cfg(tmp_path)).status == "ok" and calls == [record.run_id]


def test_record_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "record.json"
    calls = []
    monkeypatch.setattr(runner, "evaluate", _fake_evaluate(calls))
    good = runner.run_cell(_cfg(tmp_path / "runs"))
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
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".record-")] == []


def test_run_ids_differ_by_grid_and_options(tmp_path):
    from eval.config import spec_from_config

    ids = {
        spec_from_config(_cfg(tmp_path, *o)).run_id
        for o in [(), ("budget=64",), ("method=fastv",), ("+method.options.tie_break=noise",), ("limit=8",)]
    }
    assert len(ids) == 5


def test_wandb_offline_logs_metrics_and_table(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    calls = []
    monkeypatch.setattr(runner, "evaluate", _fake_evaluate(calls))
    monkeypatch.setenv("WANDB_SILENT", "true")
    record = runner.run_cell(_cfg(tmp_path, "logger=wandb"))
    assert record.wandb["status"] == "ok", record.wandb
    run_dirs = list((tmp_path / "adhoc" / record.run_id / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1
    tables = list(run_dirs[0].glob("files/media/table/samples_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"][:3] == ["task", "doc_id", "prediction"] and table["data"][0][:3] == ["pope_adv", 0, "no"]
    assert read_record(tmp_path / "adhoc" / record.run_id / "record.json").wandb["status"] == "ok"


def test_wandb_failure_keeps_the_local_record(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")

    def unreachable(**kwargs):
        raise ConnectionError("api.wandb.ai unreachable")

    monkeypatch.setattr(wandb, "init", unreachable)
    monkeypatch.setattr(runner, "evaluate", _fake_evaluate([]))
    record = runner.run_cell(_cfg(tmp_path, "logger=wandb", "logger.mode=online"))
    assert record.status == "ok" and record.wandb["error"] == "ConnectionError: api.wandb.ai unreachable"
    assert read_record(tmp_path / "adhoc" / record.run_id / "record.json").status == "ok"


def test_without_wandb_logger_wandb_is_never_imported(tmp_path):
    code = (
        "import sys, eval.run as r\n"
        "from hydra import compose, initialize_config_dir\n"
        f"with initialize_config_dir(config_dir={str(CONF)!r}, version_base='1.3'):\n"
        f"    cfg = compose('config', overrides=['results_dir={tmp_path}', 'model=local', 'model.pretrained=/x'])\n"
        "scores = {t: {'pope_f1_score,none': 1.0} for t in ('pope_adv', 'pope_pop', 'pope_random')}\n"
        "r.evaluate = lambda spec, device: (scores, {}, [])\n"
        "assert r.run_cell(cfg).status == 'ok'\n"
        "print('wandb' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=CONF.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_cli_config_error_is_one_line_and_exit_code_2(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "eval.run", f"results_dir={tmp_path}", "method=dense", "budget=64"],
        capture_output=True,
        text=True,
        cwd=CONF.parent,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "config error: budget: dense keeps every visual token, so budget must be null (got 64)"
    )


def test_a_changed_local_checkpoint_reruns_its_cells(tmp_path, monkeypatch):
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    (checkpoint / "model.safetensors").write_bytes(bytes(3 << 20))
    calls = []
    monkeypatch.setattr(runner, "evaluate", _fake_evaluate(calls))
    first = runner.run_cell(_cfg(tmp_path, f"model.pretrained={checkpoint}"))
    runner.run_cell(_cfg(tmp_path, f"model.pretrained={checkpoint}"))
    assert calls == [first.run_id] and first.provenance.model_fingerprint
    weights = bytearray(3 << 20)
    weights[-1] = 1  # a retrained model of the same size: only its tail differs
    (checkpoint / "model.safetensors").write_bytes(bytes(weights))
    rerun = runner.run_cell(_cfg(tmp_path, f"model.pretrained={checkpoint}"))
    assert calls == [first.run_id, first.run_id]
    assert rerun.provenance.model_fingerprint != first.provenance.model_fingerprint

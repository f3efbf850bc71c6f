"""End to end on CPU: Hydra config -> runner -> lmms-eval (official POPE scoring) -> record, and a submitit sweep."""

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


@pytest.fixture(scope="module")
def local_setup(tmp_path_factory) -> dict[str, Path]:
    """A tiny random LLaVA checkpoint and a POPE-shaped local task (official columns and scoring)."""
    base = tmp_path_factory.mktemp("e2e")
    checkpoint = save_tiny_checkpoint(base / "ckpt")
    data = write_pope_fixture(base / "data", n=6)
    tasks = base / "tasks"
    write_task(tasks, data, task="pope_e2e")
    return {"checkpoint": checkpoint, "tasks": tasks, "results": base / "runs"}


def _overrides(setup: dict[str, Path]) -> list[str]:
    return [
        f"results_dir={setup['results']}",
        "model=local",
        f"model.pretrained={setup['checkpoint']}",
        "task=pope",
        "task.name=pope_e2e",
        "task.lmms_tasks=[pope_e2e]",
        f"task.include_path={setup['tasks']}",
        "limit=4",
        "experiment_name=e2e",
    ]


def test_unreachable_budget_is_a_config_error_before_loading_weights(local_setup):
    from eval.config import ConfigError

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "config", overrides=[*_overrides(local_setup), "method=fastv", "method.options.layer=2", "budget=32"]
        )
    with pytest.raises(ConfigError, match="budget=32 is unreachable .* 8 layers, 256 visual tokens"):
        runner.run_cell(cfg)


def test_runner_through_lmms_eval_writes_a_complete_record(local_setup):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*_overrides(local_setup), "method=sparsevlm", "budget=64"])
    record = runner.run_cell(cfg)
    assert record.status == "ok", record.error
    metrics = record.metrics["pope_e2e"]
    assert {"pope_accuracy", "pope_precision", "pope_recall", "pope_f1_score", "pope_yes_ratio"} <= set(metrics)
    assert record.primary["value"] == pytest.approx(100 * metrics["pope_f1_score"])
    eff = record.efficiency
    assert eff.n_samples == 4
    assert eff.equivalent_tokens == pytest.approx(64.0, abs=1.0)  # 256 visual tokens, 8 layers: derived schedule
    assert 0 < eff.tflops_paper < eff.tflops_full
    assert eff.prefill_ms_median > 0 and eff.e2e_ms_median >= eff.prefill_ms_median and eff.kv_cache_mb > 0
    run_dir = local_setup["results"] / "e2e" / record.run_id
    rows = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["prediction"] is not None and r["equivalent_tokens"] for r in rows)
    assert read_record(run_dir / "record.json").status == "ok"


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
    # dense with a budget and fastv without one are config errors: recorded nowhere, reported, the sweep goes on
    assert set(by_cell) == {("dense", None), ("fastv", 64)}, out.stderr[-3000:]
    assert all(r.status == "ok" for r in by_cell.values()), [r.error for r in by_cell.values()]
    assert by_cell[("fastv", 64)].efficiency.equivalent_tokens == pytest.approx(64.0, abs=1.0)
    logs = "".join(p.read_text() for p in (local_setup["results"] / "_hydra").rglob("*_log.*"))
    assert logs.count("config error, cell skipped: budget") == 2

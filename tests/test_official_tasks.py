"""lmms-eval's official pope / mme / gqa tasks, unchanged, on the bundled data served by eval.offline_hub.

The served cache must give the official dataset ids the bundled rows, and the official tasks must give, document for
document, what the local twins in eval/tasks give (through the plugin and through the Hydra runner). Everything that
imports `datasets` with the offline environment runs in a subprocess: datasets reads HF_* variables at import.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import yaml

from eval.offline_hub import DATA_DIR, SERVED, OfflineHubError, build_offline_hub, main, offline_env, repo_dir

ROOT = Path(__file__).resolve().parents[1]
N_DOCS = 8  # even: MME scores question pairs
RUNNER_DOCS = 6
BUDGET = 48  # of the tiny model's 144 visual tokens: pruning is active in every comparison
# official task -> its local twin in eval/tasks
TWINS = {
    "pope": "pope_local",
    "pope_adv": "pope_local_adv",
    "pope_pop": "pope_local_pop",
    "pope_random": "pope_local_random",
    "mme": "mme_local",
    "gqa": "gqa_local",
}


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> SimpleNamespace:
    """One served cache for the module, and the environment that points `datasets` at it offline."""
    base = tmp_path_factory.mktemp("offline_hub")
    summary = build_offline_hub(base / "cache")
    env = {**os.environ, **offline_env(base / "cache", hf_home=base / "hf_home"), "OMP_NUM_THREADS": "1"}
    return SimpleNamespace(cache=base / "cache", summary=summary, env=env, base=base)


def run_python(code: str, env: dict[str, str], *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter from the repository root; fail with its stderr tail if it exits non-zero."""
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def official_tasks_dir() -> Path:
    """The installed lmms-eval's tasks folder, found without importing lmms_eval."""
    spec = importlib.util.find_spec("lmms_eval")
    assert spec is not None and spec.submodule_search_locations
    return Path(spec.submodule_search_locations[0]) / "tasks"


def official_yaml(task_dir: str, name: str) -> dict:
    """An installed lmms-eval task YAML as a dict (`!function` tags read as plain strings)."""
    path = official_tasks_dir() / task_dir / f"{name}.yaml"

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    return yaml.load(path.read_text(), Loader=Loader)


def copy_data(dest: Path) -> Path:
    """A private copy of data/synth that a test may change."""
    shutil.copytree(DATA_DIR, dest)
    return dest


# ---------------------------------------------------------------------------------------------------------- the cache


def test_served_configs_are_what_the_official_yamls_load():
    served = {(s.repo_id, s.config, split) for s in SERVED for split, _ in s.splits}
    for task_dir, name in [("pope", t) for t in ("pope", "pope_adv", "pope_pop", "pope_random")] + [
        ("mme", "mme"),
        ("gqa", "gqa"),
    ]:
        cfg = official_yaml(task_dir, name)
        assert (cfg["dataset_path"], cfg.get("dataset_name") or "default", cfg["test_split"].strip()) in served, name
    utils = (official_tasks_dir() / "gqa" / "utils.py").read_text()
    assert 'load_dataset("lmms-lab-encoder/GQA", "testdev_balanced_images", split="testdev"' in utils
    assert ("lmms-lab-encoder/GQA", "testdev_balanced_images", "testdev") in served


def test_build_writes_every_config_with_its_own_hash_and_default_newest(hub):
    assert set(hub.summary) == {s.key for s in SERVED}
    for served in SERVED:
        item = hub.summary[served.key]
        assert item["status"] == "built"
        assert item["splits"] == {split: pq.read_metadata(DATA_DIR / rel).num_rows for split, rel in served.splits}
        path = Path(item["path"])
        assert path.parent.parent.parent == repo_dir(hub.cache, served.repo_id) and path.parent.parent.name == (
            served.config
        )
    hashes = [Path(item["path"]).name for item in hub.summary.values()]
    assert len(set(hashes)) == len(hashes)
    pope_default = Path(hub.summary["lmms-lab-encoder/POPE:default"]["path"]).stat().st_mtime
    assert pope_default > Path(hub.summary["lmms-lab-encoder/POPE:Full"]["path"]).stat().st_mtime


def test_rebuild_keeps_current_configs_and_replaces_changed_data(tmp_path):
    data = copy_data(tmp_path / "data")
    first = build_offline_hub(tmp_path / "cache", data)
    again = build_offline_hub(tmp_path / "cache", data)
    assert {k: v["status"] for k, v in again.items()} == {k: "kept" for k in first}
    assert {k: v["path"] for k, v in again.items()} == {k: v["path"] for k, v in first.items()}

    # new adversarial rows: `Full` is rebuilt after `default`, which must still be the newest config
    table = pq.read_table(data / "pope" / "adversarial.parquet")
    pq.write_table(table.slice(0, 10), data / "pope" / "adversarial.parquet")
    changed = build_offline_hub(tmp_path / "cache", data)
    key = "lmms-lab-encoder/POPE:Full"
    assert changed[key]["status"] == "built" and changed[key]["splits"] == {
        "adversarial": 10,
        "popular": 300,
        "random": 300,
    }
    assert changed[key]["path"] != first[key]["path"] and not Path(first[key]["path"]).exists()
    assert all(v["status"] == "kept" for k, v in changed.items() if k != key)
    default = Path(changed["lmms-lab-encoder/POPE:default"]["path"])
    assert default.stat().st_mtime > Path(changed[key]["path"]).stat().st_mtime


def test_foreign_caches_and_missing_files_are_one_line_errors(tmp_path, capsys):
    foreign = repo_dir(tmp_path / "cache", "lmms-lab-encoder/MME") / "default" / "0.0.0" / "abc"
    foreign.mkdir(parents=True)
    (foreign / "dataset_info.json").write_text("{}")
    with pytest.raises(OfflineHubError, match="not written by eval.offline_hub"):
        build_offline_hub(tmp_path / "cache")

    data = copy_data(tmp_path / "data")
    (data / "mme" / "test.parquet").unlink()
    assert main(["--cache-dir", str(tmp_path / "other"), "--data-dir", str(data)]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.count("\n") == 1 and "mme/test.parquet" in out.err and out.err.startswith("offline_hub: error:")


def test_cli_prints_exports_and_module_import_is_light(hub):
    proc = run_python(
        "import sys, eval.offline_hub as h;"
        "print(sorted(m for m in ('torch', 'lmms_eval', 'datasets') if m in sys.modules));"
        "sys.exit(h.main(['--cache-dir', sys.argv[1]]))",
        hub.env,
        str(hub.cache),
    )
    lines = proc.stdout.splitlines()
    assert lines[0] == "[]"
    assert f"export HF_DATASETS_CACHE={hub.cache.resolve()}" in lines and "export HF_HUB_OFFLINE=1" in lines
    assert proc.stderr.count("offline_hub: kept") == len(SERVED)


LOAD_SCRIPT = """
import json, sys
import datasets
import pyarrow.parquet as pq

assert datasets.config.HF_HUB_OFFLINE
data, empty = sys.argv[1], sys.argv[2]
checks = json.loads(sys.argv[3])
out = {}
for repo_id, config, split, rel in checks:
    expected = pq.read_table(f"{data}/{rel}").to_pylist()
    for row in expected:
        if row.get("image") is not None:
            row["image"] = row["image"]["bytes"]
    names = [config] if config != "default" else [config, None]  # the official pope/mme YAMLs name no config
    for name in names:
        ds = datasets.load_dataset(repo_id, name, split=split, token=True)  # token=True as the official YAMLs pass
        if "image" in ds.column_names:
            ds = ds.cast_column("image", datasets.Image(decode=False))
        rows = ds.to_list()
        for row in rows:
            if row.get("image") is not None:
                row["image"] = row["image"]["bytes"]
        out[f"{repo_id}:{name}:{split}"] = {"rows": len(rows), "equal": rows == expected}
try:
    datasets.load_dataset("lmms-lab-encoder/POPE", "Full", split="random", cache_dir=empty)
    out["empty_cache"] = "loaded"
except Exception as err:
    out["empty_cache"] = type(err).__name__
print(json.dumps(out))
"""


def test_official_dataset_ids_load_the_bundled_rows(hub, tmp_path):
    checks = [(s.repo_id, s.config, split, rel) for s in SERVED for split, rel in s.splits]
    proc = run_python(LOAD_SCRIPT, hub.env, str(DATA_DIR), str(tmp_path / "empty"), json.dumps(checks))
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for repo_id, config, split, rel in checks:
        names = [config] if config != "default" else [config, None]
        for name in names:
            got = out[f"{repo_id}:{name}:{split}"]
            assert got == {"rows": pq.read_metadata(DATA_DIR / rel).num_rows, "equal": True}, (repo_id, name, split)
    assert out["empty_cache"] != "loaded"  # offline and nothing served there: the rows above came from our cache


# ------------------------------------------------------------------------------------------- official tasks vs twins

PLUGIN_SCRIPT = """
import json, sys
import torch

torch.set_num_threads(1)
from lmms_eval.evaluator import simple_evaluate
from lmms_eval.tasks import TaskManager

from eval.lmms_model import SparseVLMModel

tasks, limit, budget, out_path = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
# batch size 1: official and local tasks differ in generation kwargs (top_p), so batches would be grouped differently
lm = SparseVLMModel(pretrained="models/tiny-llava", method="sparsevlm", budget=budget, batch_size=1)
manager = TaskManager(include_path=["eval/tasks"])  # the official index plus the local twins, built once
out = simple_evaluate(model=lm, tasks=tasks, limit=limit, log_samples=True, task_manager=manager, bootstrap_iters=0)
dump = {}
for task in tasks:
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    dump[task] = {
        "metrics": {k: v for k, v in out["results"][task].items() if isinstance(v, (int, float)) and "stderr" not in k},
        "docs": [
            {"doc_id": s["doc_id"], "prediction": s["filtered_resps"][0], "target": s["target"],
             "prompt": s["arguments"][0], "doc": s["doc"]}
            for s in samples
        ],
    }
with open(out_path, "w") as handle:
    json.dump(dump, handle, default=str)
"""


@pytest.mark.slow
def test_official_tasks_match_local_twins_through_the_plugin(hub, tmp_path):
    tasks = [*TWINS, *TWINS.values()]
    out_path = tmp_path / "plugin.json"
    run_python(PLUGIN_SCRIPT, hub.env, json.dumps(tasks), str(N_DOCS), str(BUDGET), str(out_path), timeout=600)
    out = json.loads(out_path.read_text())
    for official, local in TWINS.items():
        docs, twin_docs = out[official]["docs"], out[local]["docs"]
        assert [d["doc_id"] for d in docs] == list(range(N_DOCS)), official
        assert all(isinstance(d["prediction"], str) and d["prediction"] for d in docs), official
        assert docs == twin_docs, official  # prompt, document fields, prediction and target, doc by doc
        assert out[official]["metrics"] == out[local]["metrics"] and out[official]["metrics"], official
    assert len({d["doc"]["question_id"] for d in out["mme"]["docs"]}) == N_DOCS // 2  # whole MME pairs


@pytest.mark.slow
def test_runner_cell_on_official_pope_matches_pope_synth(hub, tmp_path):
    procs = {}
    for task in ("pope", "pope_synth"):  # two single-threaded cells side by side
        command = [
            sys.executable,
            "-m",
            "eval.run",
            "model=tiny-llava",
            f"task={task}",
            "method=sparsevlm",
            f"budget={BUDGET}",
            f"limit={RUNNER_DOCS}",
            f"results_dir={tmp_path / task}",
            "cpu_threads=1",
            "batch_size=8",
        ]
        procs[task] = subprocess.Popen(
            command, cwd=ROOT, env=hub.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    logs = {task: proc.communicate(timeout=600)[0] for task, proc in procs.items()}
    for task, proc in procs.items():
        assert proc.returncode == 0, logs[task][-3000:]
    rows, records = {}, {}
    for task in procs:
        (samples,) = (tmp_path / task).glob("*/*/samples.jsonl")
        records[task] = json.loads((samples.parent / "record.json").read_text())
        rows[task] = {
            (r["task"].replace("pope_local_", "pope_"), r["doc_id"]): (
                r["prediction"],
                r["target"],
                r["equivalent_tokens"],
                r["tokens_in"],
            )
            for r in map(json.loads, samples.read_text().splitlines())
        }
    expected_keys = {(t, i) for t in ("pope_adv", "pope_pop", "pope_random") for i in range(RUNNER_DOCS)}
    assert set(rows["pope"]) == expected_keys
    assert rows["pope"] == rows["pope_synth"]
    assert records["pope"]["status"] == records["pope_synth"]["status"] == "ok"
    assert records["pope"]["primary"]["value"] == pytest.approx(records["pope_synth"]["primary"]["value"])

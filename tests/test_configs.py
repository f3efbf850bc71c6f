"""Every config in conf/ composes, every experiment's grid validates, values are parsed as written."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from eval.config import spec_from_config

CONF = Path(__file__).resolve().parents[1] / "conf"


def _compose(*overrides: str, hydra_config: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra_config)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


VIDEO_TASKS = tuple(p.stem for p in sorted((CONF / "task").glob("*.yaml")) if "\nvideo:" in p.read_text())


@pytest.mark.parametrize("group", ["model", "method", "task", "launcher", "logger", "experiment", "judge"])
def test_every_option_of_every_group_composes_and_validates(group):
    assert _options(group), f"conf/{group}/ is empty"
    for option in _options(group):
        overrides = [f"{group}={option}"]
        if group == "model" and option == "local":
            overrides.append("model.pretrained=/some/checkpoint")
        if (group, option) in {("task", t) for t in VIDEO_TASKS} | {("judge", "gpt"), ("judge", "match")}:
            overrides += ["judge=match"] * (group == "task") + ["task=msvd_qa"] * (group == "judge")
        cfg = _compose(*overrides)
        if group == "method" and option == "dense":
            cfg = _compose(*overrides, "budget=null")
        spec = spec_from_config(cfg)
        assert spec.run_id.startswith(spec.model.name)


def _sweep_params(experiment: str) -> dict[str, list[str]]:
    cfg = _compose(f"experiment={experiment}", hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    return {key: str(params[key]).split(",") for key in sorted(params)}


def _sweep_cells(experiment: str) -> list[list[str]]:
    params = _sweep_params(experiment)
    return [[f"{k}={v}" for k, v in zip(params, combo, strict=True)] for combo in itertools.product(*params.values())]


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_value_of_every_experiment_validates(experiment):
    """Cells that together use every swept value (a Hydra compose per cell is slow; the sweeper checks every cell)."""
    params = _sweep_params(experiment)
    assert params
    cells = [[f"{k}={v[i % len(v)]}" for k, v in params.items()] for i in range(max(map(len, params.values())))]
    ids = {spec_from_config(_compose(f"experiment={experiment}", *overrides)).run_id for overrides in cells}
    assert len(ids) == len(cells), "run ids must be unique within an experiment"


def test_table1_covers_the_paper_grid():
    pruned = _sweep_cells("table1")
    dense = _sweep_cells("table1_dense")
    assert len(pruned) == 3 * 3 * 7 and len(dense) == 7
    specs = [spec_from_config(_compose("experiment=table1", *c)) for c in pruned[:3]]
    assert {s.model.pretrained for s in specs} == {"llava-hf/llava-1.5-7b-hf"}
    assert {s.experiment for s in specs} == {"table1"}


def test_video_table_covers_the_paper_row():
    pruned, dense = _sweep_cells("video_table"), _sweep_cells("video_table_dense")
    assert len(pruned) == 3 * 2 and len(dense) == 1
    specs = [spec_from_config(_compose("experiment=video_table", *c)) for c in pruned]
    assert {(s.method.name, s.budget) for s in specs} == {
        (m, b) for m in ("sparsevlm", "fastv", "random") for b in (194, 135)
    }
    dense_spec = spec_from_config(_compose("experiment=video_table_dense", *dense[0]))
    for spec in [*specs, dense_spec]:
        assert spec.model.pretrained == "LanguageBind/Video-LLaVA-7B-hf" and spec.experiment == "video_table"
        assert spec.task.name == "msvd_qa" and spec.task.video.first_n == 1000
        assert spec.judge.name == "gpt" and spec.judge.model == "gpt-3.5-turbo"
    assert dense_spec.method.name == "dense" and dense_spec.budget is None


def test_judge_and_video_options_change_the_run_id_but_the_data_location_does_not():
    base = ["task=msvd_qa", "judge=gpt"]
    ids = {
        spec_from_config(_compose(*base, *extra)).run_id
        for extra in ([], ["judge=match"], ["task.video.first_n=1000"], ["judge.model=gpt-4o"])
    }
    assert len(ids) == 4
    moved = spec_from_config(_compose(*base, "task.video.data_root=/elsewhere", "video_data_dir=/x")).run_id
    assert moved == spec_from_config(_compose(*base)).run_id


# Bad configurations, one line each through the CLI: tests/test_bad_configs.py


def test_unknown_group_option_is_rejected_by_hydra():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="method"):
        _compose("method=no_such_method")


@pytest.mark.parametrize(("written", "version"), [("2.0", "2.0"), ("1.5", "1.5"), ("1", "1.0"), ("'2.0'", "2.0")])
def test_versions_work_as_written_in_the_readme(written, version):
    spec = spec_from_config(_compose(f"method.options.version={written}", "budget=64"))
    assert spec.method.version == version


@pytest.mark.parametrize(
    ("override", "value"),
    [("force=true", True), ("force=false", False), ("fail_fast=true", True), ("log_samples=false", False)],
)
def test_booleans_are_parsed_as_booleans(override, value):
    spec = spec_from_config(_compose(override))
    assert getattr(spec, override.split("=")[0]) is value


@pytest.mark.parametrize("method", ["sparsevlm", "fastv", "divprune"])
def test_a_retain_ratio_cell_is_labelled_by_its_ratio(method):
    spec = spec_from_config(_compose(f"method={method}", "budget=null", "retain_ratio=0.111"))
    assert spec.method.retain_ratio == pytest.approx(0.111)
    assert spec.grid["retain_ratio"] == pytest.approx(0.111) and spec.grid["budget"] is None
    assert "_r0.111_" in spec.run_id
    assert spec.run_id != spec_from_config(_compose(f"method={method}", "budget=null", "retain_ratio=0.2")).run_id

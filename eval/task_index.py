"""lmms-eval's task index without importing lmms-eval: which task names exist and which metrics each declares.

Importing lmms_eval takes ~10 s and building its TaskManager longer, too slow for rejecting a bad config. Task YAMLs
name their task on a `task:` line, so a text scan finds the file (all ~1,900 built-in YAMLs in ~0.2 s) and only that
file and its `include:` chain are parsed. The same search roots as the runner: `include_path` alone when given (the
runner then excludes the built-in tasks), else the installed lmms_eval/tasks.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

TASK_LINE = re.compile(r"^task[ \t]*:[ \t]*[\"']?([^\s\"'#\[]+)", re.MULTILINE)
GROUP_LINE = re.compile(r"^group[ \t]*:[ \t]*[\"']?([^\s\"'#\[]+)", re.MULTILINE)


class _TagTolerantLoader(yaml.SafeLoader):
    """Safe YAML that reads lmms-eval's `!function` tags as None (only names and metric lists are needed)."""


_TagTolerantLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


@dataclass(frozen=True)
class TaskEntry:
    """One lmms-eval task: its YAML file and the metrics its metric_list declares (None: not declared in YAML)."""

    name: str
    path: Path
    metrics: tuple[str, ...] | None


def lmms_tasks_root() -> Path:
    """The installed lmms_eval/tasks directory (found without importing lmms_eval)."""
    spec = importlib.util.find_spec("lmms_eval")
    if spec is None or not spec.submodule_search_locations:
        raise LookupError("lmms_eval is not installed (make install)")
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"


@functools.lru_cache(maxsize=8)
def _scan(root: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Task name -> YAML file, group name -> YAML file, for every *.yaml under root."""
    tasks: dict[str, Path] = {}
    groups: dict[str, Path] = {}
    for path in sorted(root.rglob("*.yaml")):
        content = path.read_text(errors="replace")
        for match in TASK_LINE.finditer(content):
            tasks.setdefault(match.group(1), path)
        for match in GROUP_LINE.finditer(content):
            groups.setdefault(match.group(1), path)
    return tasks, groups


def _load(path: Path, depth: int = 0) -> dict:
    """A task YAML with its `include:` chain merged under it (the including file wins, as in lmms-eval)."""
    data = yaml.load(path.read_text(), Loader=_TagTolerantLoader) or {}
    include = data.get("include")
    if include and depth < 8:
        base = Path(include) if Path(include).is_absolute() else path.parent / include
        if base.is_file():
            data = {**_load(base, depth + 1), **data}
    return data


def find_task(name: str, include_path: str | None) -> TaskEntry:
    """The task called `name` in the runner's search roots; LookupError with close matches if there is none."""
    root = Path(include_path).resolve() if include_path else lmms_tasks_root()
    tasks, groups = _scan(root)
    if name not in tasks:
        where = f"under include_path {include_path}" if include_path else "among lmms-eval's built-in tasks"
        if name in groups:
            raise LookupError(f"{name!r} is a task group {where}; list its tasks instead (a cell scores tasks)")
        close = difflib.get_close_matches(name, list(tasks), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise LookupError(f"no task {name!r} {where} ({len(tasks)} tasks){hint}")
    data = _load(tasks[name])
    metric_list = data.get("metric_list")
    metrics = None
    if isinstance(metric_list, list):
        metrics = tuple(str(m.get("metric")) for m in metric_list if isinstance(m, dict) and m.get("metric"))
    return TaskEntry(name=name, path=tasks[name], metrics=metrics)


def task_config(name: str, include_path: str | None) -> dict:
    """The task's YAML with its `include:` chain merged (`!function` values read as None)."""
    return _load(find_task(name, include_path).path)

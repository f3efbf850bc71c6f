"""The README's offline recipes run exactly as written: the shell block and the library snippet (whose printed output
must equal the block the README shows after it). They run in a scratch directory that links the repository's code,
configs, model and data, so their results go to the scratch directory's results/, never the repository's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LINKED = ("conf", "data", "eval", "hydra_plugins", "models", "sparsevlm")


def readme_block(marker: str, index: int = 0) -> str:
    """The index-th fenced code block after the README's HTML comment that contains `marker`."""
    text = README.read_text()
    return re.findall(r"```[a-z]*\n(.*?)```", text[text.index(marker) :], flags=re.S)[index]


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A directory laid out like the repository root, with `.venv/bin/python` being this interpreter's environment."""
    if not (ROOT / "models" / "tiny-llava" / "model.safetensors").exists():
        pytest.skip("no committed tiny model")
    for name in LINKED:
        (tmp_path / name).symlink_to(ROOT / name)
    if sys.prefix != sys.base_prefix:  # a virtual environment: link it whole, so its python finds its pyvenv.cfg
        (tmp_path / ".venv").symlink_to(sys.prefix)
    else:
        (tmp_path / ".venv" / "bin").mkdir(parents=True)
        (tmp_path / ".venv" / "bin" / "python").symlink_to(sys.executable)
    return tmp_path


def test_readme_blocks_are_found() -> None:
    commands = readme_block("offline-commands").strip().splitlines()
    assert len(commands) == 4 and all(c.startswith(".venv/bin/python -m eval.") for c in commands)
    assert "--multirun" in commands[1] and "eval.report" in commands[3]
    assert "sparsevlm.attach" in readme_block("offline-python")


@pytest.mark.slow
def test_offline_commands_run_as_written(scratch: Path) -> None:
    out = subprocess.run(
        ["bash", "-e", "-c", readme_block("offline-commands")],
        cwd=scratch,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    records = sorted(p.parent.name for p in (scratch / "results" / "runs" / "offline").glob("*/record.json"))
    assert len(records) == 5, records  # one cell, the 2x2 sweep (one cell reused) and the dense cell
    assert "4 cells: 3 to run, 1 complete" in out.stdout + out.stderr
    table = (scratch / "results" / "runs" / "offline_report" / "table1.md").read_text()
    assert "| method | GQA-synth (n=16) |" in table and "| dense | " in table and " ± " in table
    assert (scratch / "results" / "runs" / "offline_report" / "pareto.png").stat().st_size > 0


def test_library_snippet_prints_what_the_readme_says(scratch: Path) -> None:
    (scratch / "snippet.py").write_text(readme_block("offline-python"))
    out = subprocess.run(
        [str(scratch / ".venv" / "bin" / "python"), "snippet.py"],
        cwd=scratch,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout == readme_block("offline-python", index=1)


def test_every_registered_method_is_documented() -> None:
    import sparsevlm

    readme, zoo = README.read_text(), (ROOT / "docs" / "methods.md").read_text()
    for name, cls in sparsevlm.available_methods().items():
        assert f"| `{name}` |" in readme or f"| `{cls.__name__}(" in readme, f"README's method tables lack {name}"
        assert name == "dense" or f"| `{name}` |" in zoo, f"docs/methods.md's table lacks {name}"
        assert (ROOT / "conf" / "method" / f"{name}.yaml").is_file(), f"no conf/method/{name}.yaml"


CITED_PATH = re.compile(
    r"`((?:docs|results|scripts|eval|sparsevlm|conf|tests|data|models)/[\w./+-]+\.(?:md|py|yaml|json|csv|png|tex))`"
)
WRITTEN_BY_USERS = ("results/runs/", "conf/local/")  # run outputs and site settings: gitignored, cited as examples
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_docs_and_code_cite_only_files_in_the_repository() -> None:
    """Nothing points outside the checkout (users never see the team's notes), and every file a document cites or
    links exists (run outputs and site settings, which users write, excepted)."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    problems = []
    for name in tracked:
        path = ROOT / name
        if path.suffix not in (".md", ".py", ".yaml", ".toml") and path.name != "Makefile" or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if name != "tests/test_readme.py" and ("shared/notes" in text or "../shared" in text):
            problems.append(f"{name}: cites the team's notes outside the repository")
        cited = CITED_PATH.findall(text) if path.suffix in (".md", ".py") else []
        links = LINK.findall(text) if path.suffix == ".md" else []
        linked = [os.path.relpath(os.path.normpath(path.parent / t), ROOT) for t in links if "://" not in t]
        for target in cited + linked:
            if not target.startswith(WRITTEN_BY_USERS) and not (ROOT / target).exists():
                problems.append(f"{name}: cites {target}, which is not in the repository")
    assert not problems, "\n".join(problems)

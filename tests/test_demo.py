"""`make demo` end to end (smaller LIMIT): the sweep, the records, Table 1, the efficiency table and the plot."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "models" / "tiny-llava" / "config.json").exists(), reason="embedded model absent")
def test_make_demo_produces_every_report(tmp_path):
    out = subprocess.run(
        ["make", "demo", "LIMIT=2", f"RESULTS={tmp_path / 'runs'}", f"DEMO_OUT={tmp_path / 'demo'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for name in ("table1.md", "table1.csv", "table1.tex", "efficiency.md", "efficiency.csv", "pareto.png"):
        assert (tmp_path / "demo" / name).stat().st_size > 0, name
    records = list((tmp_path / "runs" / "demo").glob("*/record.json"))
    assert len(records) == 3 + 3 * 3 * 3
    table = (tmp_path / "demo" / "table1.md").read_text()
    assert "| dense |" in table and "sparsevlm-v1.5 @16" in table and "fastv @48" in table
    assert "failed:" not in table and "missing:" not in table
    assert "make demo: done in" in out.stdout

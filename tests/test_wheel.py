"""The wheel ships the `sparsevlm` library alone, and it works outside the checkout.

The harness (eval/, conf/, hydra_plugins/, the bundled data and tiny model) runs from its checkout (docs/install.md):
the wheel must hold no `eval` package and no lmms-eval entry point. The test builds the wheel, installs it into a fresh
virtual environment whose only other packages are this environment's (torch, transformers), and runs a pruning method
on a random LLaVA from a directory outside the checkout.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# Built from config here, not with eval.shapes: the harness is deliberately absent from this environment
SMOKE = """
import json, sys, torch, transformers
import importlib.util
import sparsevlm
from transformers import LlavaConfig, LlamaConfig, CLIPVisionConfig, LlavaForConditionalGeneration

torch.set_num_threads(1)
torch.manual_seed(0)
text = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=8, num_attention_heads=4,
                   num_key_value_heads=4, vocab_size=256)
vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                          image_size=48, patch_size=2)
config = LlavaConfig(text_config=text, vision_config=vision, image_token_id=250, image_seq_length=576)
model = LlavaForConditionalGeneration._from_config(config).eval()
ids = torch.cat([torch.randint(3, 250, (5,)), torch.full((576,), 250), torch.randint(3, 250, (12,))])[None]
with sparsevlm.attach(model, sparsevlm.make_method("sparsevlm", 64)) as trace, torch.no_grad():
    model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=torch.randn(1, 3, 48, 48))
print(json.dumps({"file": sparsevlm.__file__, "eval": importlib.util.find_spec("eval") is not None,
                  "equivalent": trace.last.equivalent_tokens}))
"""


def test_the_wheel_holds_the_library_and_runs_outside_the_checkout(tmp_path):
    source = tmp_path / "source"  # a copy: a checkout's stale build/ directory would leak old files into the wheel
    for name in ("pyproject.toml", "README.md"):
        (source / name).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for name in ("sparsevlm", "eval", "hydra_plugins"):  # the harness packages too: the wheel must leave them out
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", source, "--no-deps", "--no-build-isolation", "-q", "-w", wheels]
    subprocess.run(build, check=True, capture_output=True, cwd=tmp_path, timeout=300)
    (wheel,) = wheels.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert packages == {"sparsevlm"}
    assert not any(name.endswith("entry_points.txt") for name in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True
        ).strip()
    )
    # torch and transformers from this environment; a plain path line does not run its .pth files (the checkout's)
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel]
    subprocess.run(install, check=True, capture_output=True, timeout=300)

    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([python, "-c", SMOKE], cwd=away, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(result["file"]).is_relative_to(site)
    assert result["eval"] is False
    assert result["equivalent"] == pytest.approx(64, abs=1)

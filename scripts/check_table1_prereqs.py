"""Stop `make reproduce-table1` at once, with a clear message, when this machine cannot run it.

python scripts/check_table1_prereqs.py --launcher local --version 1.5
"""

from __future__ import annotations

import argparse
import sys

from sparsevlm.methods.sparsevlm import VERSION_DEFAULTS

MODEL = "llava-hf/llava-1.5-7b-hf"


def problems(launcher: str, version: str) -> list[str]:
    """Everything that rules out the run here: SparseVLM version, GPU (local launchers), access to the checkpoint."""
    found = []
    if version not in VERSION_DEFAULTS:
        found.append(f"VERSION: got {version!r}, allowed: {', '.join(VERSION_DEFAULTS)}")
    if launcher != "slurm":
        import torch

        if not torch.cuda.is_available():
            found.append("no CUDA GPU on this machine (LLaVA-1.5-7B needs one; LAUNCHER=slurm runs on cluster GPUs)")
    from huggingface_hub import HfApi, try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(MODEL, "config.json"), str):
        try:
            HfApi().model_info(MODEL, timeout=15)
        except Exception as err:  # offline, no DNS, proxy: all mean the same here
            found.append(f"cannot reach the Hugging Face hub for {MODEL} and it is not cached ({type(err).__name__})")
    return found


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launcher", default="local")
    parser.add_argument("--version", default="1.5")
    args = parser.parse_args()
    issues = problems(args.launcher, args.version)
    if issues:
        for issue in issues:
            print(f"reproduce-table1: {issue}", file=sys.stderr)
        print(
            "reproduce-table1: on a CPU-only or offline machine run `make demo` (same pipeline, embedded tiny model).",
            file=sys.stderr,
        )
        sys.exit(1)

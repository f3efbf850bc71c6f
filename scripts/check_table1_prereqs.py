"""Stop `make reproduce-table1` / `make reproduce-video` at once, with a clear message, when this machine cannot run it.

python scripts/check_table1_prereqs.py --launcher local --version 1.5
python scripts/check_table1_prereqs.py --target reproduce-video --model LanguageBind/Video-LLaVA-7B-hf \
    --video-data /data/GPT_Zero_Shot_QA
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sparsevlm.methods.sparsevlm import VERSION_DEFAULTS

MODEL = "llava-hf/llava-1.5-7b-hf"
VIDEO_FOLDER = "MSVD_Zero_Shot_QA"  # experiment=video_table's dataset, as Video-LLaVA ships it


def problems(launcher: str, version: str, model: str = MODEL, video_data: str | None = None) -> list[str]:
    """Everything that rules out the run here: SparseVLM version, GPU (local launchers), access to the checkpoint,
    and for the video table its data folder and the GPT judge's key."""
    found = []
    if version not in VERSION_DEFAULTS:
        found.append(f"VERSION: got {version!r}, allowed: {', '.join(VERSION_DEFAULTS)}")
    if launcher != "slurm":
        import torch

        if not torch.cuda.is_available():
            found.append(f"no CUDA GPU on this machine ({model} needs one; LAUNCHER=slurm runs on cluster GPUs)")
    from huggingface_hub import HfApi, try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(model, "config.json"), str):
        try:
            HfApi().model_info(model, timeout=15)
        except Exception as err:  # offline, no DNS, proxy: all mean the same here
            found.append(f"cannot reach the Hugging Face hub for {model} and it is not cached ({type(err).__name__})")
    if video_data is not None:
        if not (Path(video_data) / VIDEO_FOLDER).is_dir():
            found.append(f"VIDEO_DATA: {video_data!r} has no {VIDEO_FOLDER}/ (docs/video.md says where to get it)")
        if not os.environ.get("OPENAI_API_KEY") and not os.environ.get("OPENAI_BASE_URL"):
            found.append("neither OPENAI_API_KEY nor OPENAI_BASE_URL is set: the GPT judge has no endpoint")
    return found


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launcher", default="local")
    parser.add_argument("--version", default="1.5")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--target", default="reproduce-table1", help="the make target named in the messages")
    parser.add_argument("--video-data", default=None, help="video_data_dir of the video table")
    args = parser.parse_args()
    issues = problems(args.launcher, args.version, args.model, args.video_data)
    if issues:
        for issue in issues:
            print(f"{args.target}: {issue}", file=sys.stderr)
        print(
            f"{args.target}: on a CPU-only or offline machine run `make demo` (same pipeline, embedded tiny model).",
            file=sys.stderr,
        )
        sys.exit(1)

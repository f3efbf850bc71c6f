"""Held-out accuracy of the tiny Video-LLaVA per question family: dense, and with pruning methods at the paper's
video budgets (Video-LLaVA: 135 or 194 "equivalent tokens" of 2048), scaled to this model's video tokens.

python -m eval.tiny_video_eval --model models/tiny-video-llava --data data/synth_video
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoProcessor, VideoLlavaForConditionalGeneration

import sparsevlm
from eval import synth_video
from eval.tiny_train.video import evaluate_videos, per_family

PAPER_VIDEO_TOKENS = 2048  # Video-LLaVA-7B in the paper: 8 frames x 256 patches
PAPER_BUDGETS = (135, 194)


def scaled_budget(paper_budget: int, video_tokens: int) -> int:
    """The paper's budget as the same fraction of this model's video tokens."""
    return round(video_tokens * paper_budget / PAPER_VIDEO_TOKENS)


def build_method(spec: str, budget: int) -> sparsevlm.PruningMethod:
    """A registry method from "name" or "name:version" (e.g. "sparsevlm:video", SparseVLM's Video-LLaVA branch)."""
    name, _, version = spec.partition(":")
    return sparsevlm.make_method(name, budget, **({"version": version} if version else {}))


def measure(
    model_dir: Path, data_dir: Path, methods: list[str], paper_budgets: tuple[int, ...], limit: int | None = None
) -> dict:
    """{"dense": accuracies, "<method>@<paper budget>": accuracies and the budget run} on the held-out set (or on its
    first `limit` questions of each family)."""
    torch.set_num_threads(1)
    model = VideoLlavaForConditionalGeneration.from_pretrained(model_dir, local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    items = synth_video.load_eval_set(data_dir)
    if limit:
        items = per_family(items, limit)
    videos = data_dir / "videos"
    results = {"video_tokens": model.config.video_seq_length, "dense": evaluate_videos(model, processor, items, videos)}
    print("dense", json.dumps(results["dense"]), flush=True)
    for name in methods:
        for paper_budget in paper_budgets:
            budget = scaled_budget(paper_budget, model.config.video_seq_length)
            with sparsevlm.attach(model, build_method(name, budget)):
                accuracy = evaluate_videos(model, processor, items, videos)
            results[f"{name}@{paper_budget}"] = {"budget": budget, **accuracy}
            print(f"{name}@{paper_budget} (budget {budget})", json.dumps(accuracy), flush=True)
    return results


def table(results: dict) -> str:
    """Markdown: one row per run, one column per family, then all questions."""
    runs = [k for k in results if k != "video_tokens"]
    families = [*synth_video.FAMILIES, "all"]
    lines = ["| run | budget | " + " | ".join(families) + " |", "|---|---|" + "---|" * len(families)]
    for run in runs:
        cells = " | ".join(f"{results[run][f]['acc']:.3f}" for f in families)
        lines.append(f"| {run} | {results[run].get('budget', results['video_tokens'])} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, measure, print the table and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/tiny-video-llava"))
    ap.add_argument("--data", type=Path, default=Path("data/synth_video"))
    ap.add_argument("--methods", nargs="*", default=["random", "fastv", "sparsevlm", "sparsevlm:video"])
    ap.add_argument("--paper-budgets", type=int, nargs="*", default=list(PAPER_BUDGETS))
    ap.add_argument("--per-family", type=int, help="only the first N questions of each family")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    results = measure(args.model, args.data, args.methods, tuple(args.paper_budgets), args.per_family)
    print(table(results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

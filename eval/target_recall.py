"""Do pruning methods keep the objects a question is about? Target-token recall on the synthetic held-out questions.

    python -m eval.target_recall --model models/tiny-llava --budgets 48 32 16 --per-family 100

On the synthetic scenes one visual token holds one object, so for every question that names objects in the image
("Is there a red circle ...", "What color is the square?", "How many red objects ...") we know which visual tokens
the answer needs. This reports, per method and budget, the share of those target tokens still present (not merged)
after the last pruning stage: a sharper signal than accuracy on a small model.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

import sparsevlm
from eval import synth
from eval.registry import make_method
from eval.report import to_markdown
from sparsevlm.methods.base import PruningMethod


def kept_patches(sample: sparsevlm.SampleTrace) -> list[set[int]]:
    """Original visual-token indices (0 .. n_visual-1) surviving each pruning stage, merged tokens excluded."""
    return [{i - sample.image_start for i in stage.kept_original if i >= 0} for stage in sample.stages]


def item_recall(model, processor, item: dict, method: PruningMethod) -> dict[str, Any] | None:
    """Prefill one held-out question with the method attached; recall of its target tokens after every stage."""
    scene = synth.decode_scene(item["image"]["bytes"])
    targets = {o.row * scene.grid + o.col for o in synth.question_targets(scene, item["prompt"])}
    if not targets:
        return None
    objects = {o.row * scene.grid + o.col for o in scene.objects}
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": item["prompt"]}]}],
        add_generation_prompt=True,
    )
    image = Image.open(io.BytesIO(item["image"]["bytes"])).convert("RGB")
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    with torch.no_grad(), sparsevlm.attach(model, method) as trace:
        model(**inputs)
    stages = kept_patches(trace.last)
    return {
        "recall": [len(targets & kept) / len(targets) for kept in stages],
        "all_kept": int(targets <= stages[-1]) if stages else 1,
        "object_share": len(objects & stages[-1]) / max(1, len(stages[-1])) if stages else len(objects) / scene.grid**2,
    }


def sample_items(per_family: int, seed: int = 0) -> list[dict]:
    """A fixed subset of the held-out items, at most per_family per family."""
    items = synth.eval_items()
    rng = random.Random(seed)
    out = []
    for family in sorted({it["family"] for it in items}):
        xs = [it for it in items if it["family"] == family]
        out += rng.sample(xs, min(per_family, len(xs)))
    return out


def run(model_dir: Path, methods: list[str], budgets: list[int], per_family: int) -> list[dict[str, Any]]:
    """One row per (method, budget, family): mean final-stage recall, share of questions with every target kept."""
    torch.set_num_threads(1)
    model = LlavaForConditionalGeneration.from_pretrained(model_dir, local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    items = sample_items(per_family)
    rows = []
    for name in methods:
        for budget in budgets:
            method = make_method(name, budget)
            per_family_results: dict[str, list[dict]] = defaultdict(list)
            for item in items:
                res = item_recall(model, processor, item, method)
                if res is not None:
                    per_family_results[item["family"]].append(res)
            for family, results in sorted(per_family_results.items()):
                rows.append(
                    {
                        "method": name,
                        "budget": budget,
                        "family": family,
                        "questions": len(results),
                        "target_recall": round(statistics.fmean(r["recall"][-1] for r in results), 4),
                        "first_stage_recall": round(statistics.fmean(r["recall"][0] for r in results), 4),
                        "all_targets_kept": round(statistics.fmean(r["all_kept"] for r in results), 4),
                        "object_share_of_kept": round(statistics.fmean(r["object_share"] for r in results), 4),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    """Parse arguments, measure, print a Markdown table and write JSON + Markdown."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/tiny-llava"))
    ap.add_argument("--methods", nargs="+", default=["sparsevlm", "fastv", "random"])
    ap.add_argument("--budgets", nargs="+", type=int, default=[48, 32, 16])
    ap.add_argument("--per-family", type=int, default=100)
    ap.add_argument("--out", type=Path, default=Path("results/tiny-llava"))
    args = ap.parse_args()
    rows = run(args.model, args.methods, args.budgets, args.per_family)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "target_recall.json").write_text(json.dumps(rows, indent=1))
    table = to_markdown(pd.DataFrame(rows).set_index("method"))
    (args.out / "target_recall.md").write_text(table)
    print(table)
    print(f"wrote {args.out / 'target_recall.md'} and {args.out / 'target_recall.json'}")


if __name__ == "__main__":
    main()

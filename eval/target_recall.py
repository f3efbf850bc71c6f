"""Do pruning methods keep the objects a question is about? Target-token recall on the synthetic held-out questions.

    python -m eval.target_recall --model models/tiny-llava --budgets 48 32 16 --per-family 100

On the synthetic scenes one visual token holds one object, so for every question that names objects in the image
("Is there a red circle ...", "What color is the square?", "How many red objects ...") we know which visual tokens
the answer needs. This reports, per method and budget, the share of those target tokens still present (not merged)
after the last pruning stage: a sharper signal than accuracy on a small model. It also reads the attention map each
method scored at its first stage (SparseVLM: its text raters; FastV: the last token): how much more score a target
or any object token gets than the average visual token, and what share goes to the last two rows (RoPE's recency
bias); the rater tokens SparseVLM chose are counted, and a figure shows a few maps.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm
from transformers import AutoProcessor, LlavaForConditionalGeneration

import sparsevlm
from eval import synth
from eval.chat import question_inputs
from eval.registry import make_method
from eval.report import to_markdown
from sparsevlm.methods.base import Plan, PruningMethod, StageDecision, StageInput


def kept_patches(sample: sparsevlm.SampleTrace) -> list[set[int]]:
    """Original visual-token indices (0 .. n_visual-1) surviving each pruning stage, merged tokens excluded."""
    return [{i - sample.image_start for i in stage.kept_original if i >= 0} for stage in sample.stages]


class FirstStageRecorder(PruningMethod):
    """Runs a method unchanged and keeps the map it scored at its first stage ([Nv] mean over heads and rows)."""

    def __init__(self, method: PruningMethod) -> None:
        self.method = method
        self.name = method.name
        self.scores: torch.Tensor | None = None

    def __getattr__(self, attr: str) -> Any:  # the engine reads optional policy fields (raters, seed, ...)
        return getattr(self.__dict__["method"], attr)

    def pruning_layers(self, n_layers: int) -> tuple[int, ...]:
        return self.method.pruning_layers(n_layers)

    def plan(self, n_layers: int, n_visual: int) -> Plan:
        return self.method.plan(n_layers, n_visual)

    def check_model(self, n_layers: int, n_heads: int) -> None:
        self.method.check_model(n_layers, n_heads)

    def decide(self, inp: StageInput, plan: Plan) -> StageDecision:
        if inp.stage == 0 and inp.attention is not None:
            self.scores = inp.attention.mean(dim=(0, 1)).cpu()
        return self.method.decide(inp, plan)


def attention_stats(scores: torch.Tensor, targets: set[int], objects: set[int], grid: int) -> dict[str, float]:
    """Lift of targets and objects over the mean visual token, and the score share of the last two rows."""
    mean = scores.mean()
    return {
        "target_lift": (scores[sorted(targets)].mean() / mean).item(),
        "object_lift": (scores[sorted(objects)].mean() / mean).item(),
        "last_rows_share": (scores[-2 * grid :].sum() / scores.sum()).item(),
    }


def item_recall(model, processor, item: dict, method: PruningMethod) -> dict[str, Any] | None:
    """Prefill one held-out question with the method attached; recall of its target tokens after every stage.

    Also the first-stage attention statistics (when the method scores by attention) and the rater tokens.
    """
    scene = synth.decode_scene(item["image"]["bytes"])
    targets = {o.row * scene.grid + o.col for o in synth.question_targets(scene, item["prompt"])}
    if not targets:
        return None
    objects = {o.row * scene.grid + o.col for o in scene.objects}
    inputs = question_inputs(processor, item["prompt"], item["image"]["bytes"])
    recorder = FirstStageRecorder(method)
    with torch.no_grad(), sparsevlm.attach(model, recorder) as trace:
        model(**inputs)
    sample = trace.last
    stages = kept_patches(sample)
    ids = inputs.input_ids[0]
    return {
        "recall": [len(targets & kept) / len(targets) for kept in stages],
        "all_kept": int(targets <= stages[-1]) if stages else 1,
        "object_share": len(objects & stages[-1]) / max(1, len(stages[-1])) if stages else len(objects) / scene.grid**2,
        "scores": recorder.scores,
        "raters": processor.tokenizer.convert_ids_to_tokens(ids[sample.raters].tolist()),
        **(attention_stats(recorder.scores, targets, objects, scene.grid) if recorder.scores is not None else {}),
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


ATTENTION_STATS = ("target_lift", "object_lift", "last_rows_share")


@dataclass
class RecallResult:
    """Rows of the recall table, per method the share of questions naming each rater token, and example maps."""

    rows: list[dict[str, Any]]
    rater_shares: dict[str, dict[str, float]]
    examples: dict[str, list[tuple[dict, torch.Tensor]]]  # method -> [(item, first-stage map)] on the same items


def summarise(name: str, budget: int, family: str, results: list[dict]) -> dict[str, Any]:
    """One table row: mean recall per stage end, share with every target kept, object share, attention stats."""
    row = {
        "method": name,
        "budget": budget,
        "family": family,
        "questions": len(results),
        "target_recall": round(statistics.fmean(r["recall"][-1] for r in results), 4),
        "first_stage_recall": round(statistics.fmean(r["recall"][0] for r in results), 4),
        "all_targets_kept": round(statistics.fmean(r["all_kept"] for r in results), 4),
        "object_share_of_kept": round(statistics.fmean(r["object_share"] for r in results), 4),
    }
    for key in ATTENTION_STATS:
        if all(key in r for r in results):
            row[key] = round(statistics.fmean(r[key] for r in results), 4)
    return row


def run(model_dir: Path, methods: list[str], budgets: list[int], per_family: int, n_examples: int = 5) -> RecallResult:
    """Measure every (method, budget); rater tokens and example maps (one question per family) at the first budget."""
    torch.set_num_threads(1)
    model = LlavaForConditionalGeneration.from_pretrained(model_dir, local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    items = sample_items(per_family)
    rows: list[dict[str, Any]] = []
    rater_shares: dict[str, dict[str, float]] = {}
    examples: dict[str, list[tuple[dict, torch.Tensor]]] = {}
    for name in methods:
        for budget in budgets:
            method = make_method(name, budget)
            per_family_results: dict[str, list[dict]] = defaultdict(list)
            family_examples: dict[str, tuple[dict, torch.Tensor]] = {}
            for item in tqdm(items, desc=f"{name} @{budget}", leave=False):
                res = item_recall(model, processor, item, method)
                if res is None:
                    continue
                per_family_results[item["family"]].append(res)
                if res["scores"] is not None:
                    family_examples.setdefault(item["family"], (item, res["scores"]))
            for family, results in sorted(per_family_results.items()):
                rows.append(summarise(name, budget, family, results))
                print(json.dumps(rows[-1]), flush=True)
            if budget == budgets[0]:
                results = [r for rs in per_family_results.values() for r in rs]
                counts = Counter(token for r in results for token in set(r["raters"]))
                if counts:
                    rater_shares[name] = {t: round(c / len(results), 3) for t, c in counts.most_common(12)}
                if family_examples:
                    examples[name] = [family_examples[f] for f in sorted(family_examples)][:n_examples]
    return RecallResult(rows, rater_shares, examples)


def attention_figure(examples: dict[str, list[tuple[dict, torch.Tensor]]], path: Path) -> Path:
    """One row per example question: the image, then each method's first-stage score map on the patch grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(examples)
    n = min(len(v) for v in examples.values())
    fig, axes = plt.subplots(n, 1 + len(methods), figsize=(2.6 * (1 + len(methods)), 2.6 * n), squeeze=False)
    for i in range(n):
        item = examples[methods[0]][i][0]
        image = Image.open(io.BytesIO(item["image"]["bytes"])).convert("RGB")
        axes[i, 0].imshow(image)
        axes[i, 0].set_title(item["prompt"].split("?")[0] + "?", fontsize=6, wrap=True)
        for j, name in enumerate(methods, start=1):
            scores = examples[name][i][1]
            side = int(round(scores.numel() ** 0.5))
            axes[i, j].imshow(scores.reshape(side, side).numpy(), cmap="magma")
            if i == 0:
                axes[i, j].set_title(f"{name}: first-stage scores", fontsize=7)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    """Parse arguments, measure, print a Markdown table and write JSON + Markdown + the attention-map figure."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/tiny-llava"))
    ap.add_argument("--methods", nargs="+", default=["sparsevlm", "fastv", "random"])
    ap.add_argument("--budgets", nargs="+", type=int, default=[48, 32, 16])
    ap.add_argument("--per-family", type=int, default=100)
    ap.add_argument("--out", type=Path, default=Path("results/tiny-llava"))
    args = ap.parse_args()
    result = run(args.model, args.methods, args.budgets, args.per_family)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"rows": result.rows, "rater_token_share": result.rater_shares}
    (args.out / "target_recall.json").write_text(json.dumps(payload, indent=1))
    text = to_markdown(pd.DataFrame(result.rows).set_index("method"))
    for name, shares in result.rater_shares.items():
        listed = ", ".join(f"`{t}` {v:.0%}" for t, v in shares.items())
        text += f"\nRater tokens of {name} (share of questions where the token rates): {listed}\n"
    (args.out / "target_recall.md").write_text(text)
    if result.examples:
        attention_figure(result.examples, args.out / "attention_maps.png")
    print(text)
    print(f"wrote {args.out / 'target_recall.md'}, target_recall.json and attention_maps.png")


if __name__ == "__main__":
    main()

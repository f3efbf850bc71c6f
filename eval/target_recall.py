"""Do pruning methods keep the objects a question is about? Target-token recall on the synthetic held-out questions.

    python -m eval.target_recall --model models/tiny-llava --budgets 48 32 16 --per-family 100

On the synthetic scenes one visual token holds one object, so for every question that names objects in the image
("Is there a red circle ...", "What color is the square?", "How many red objects ...") we know which visual tokens
the answer needs. This reports, per method and budget, the share of those target tokens that leave the last pruning
stage unmixed (kept as themselves, not averaged with other tokens): a sharper signal than accuracy on a small model,
and 0 by construction for pooling, which averages every token. It also reads the attention map each
method scored at its first stage (SparseVLM: its text raters; FastV: the last token): how much more score a target
or any object token gets than the average visual token, and what share goes to the last two rows (RoPE's recency
bias); the rater tokens SparseVLM chose are counted, and a figure shows a few maps.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import random
import statistics
import textwrap
from collections import Counter, defaultdict
from dataclasses import dataclass, field
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
from eval.registry import METHODS, make_method
from eval.report import to_markdown
from sparsevlm.methods.base import Plan, PruningMethod, StageDecision, StageInput


def kept_patches(sample: sparsevlm.SampleTrace) -> list[set[int]]:
    """Original visual-token indices (0 .. n_visual-1) that leave each pruning stage unmixed: kept as themselves, or
    as a merge "group" of one token (ToMe's unmatched tokens); tokens averaged with others do not count."""
    block: list[int | None] = list(range(sample.n_visual))  # block coordinate -> original patch (None: a mixture)
    stages = []
    for stage in sample.stages:
        # a stage's output block is [kept tokens in order | merged tokens in order] (the engine's rebuild)
        block = [block[j] for j in stage.kept] + [block[g[0]] if len(g) == 1 else None for g in stage.merged_groups]
        stages.append({patch for patch in block if patch is not None})
    return stages


def recording(method: PruningMethod) -> tuple[PruningMethod, dict[str, torch.Tensor]]:
    """The same method (same fields, hook and plan), also storing the map it scored at its first stage.

    The map is the attention it read, averaged over heads and rows ([Nv]; SparseVLM: its raters, FastV: the last
    token), else the scores it returned (CDPruner's relevance, VisionZip's [CLS] attention); none for random or
    DivPrune. Returns the method and the dict that receives "scores".
    """
    seen: dict[str, torch.Tensor] = {}

    class Recording(type(method)):
        def decide(self, inp: StageInput, plan: Plan) -> StageDecision:
            decision = super().decide(inp, plan)
            if inp.stage == 0 and "scores" not in seen:
                scores = inp.attention.mean(dim=(0, 1)) if inp.attention is not None else decision.scores
                if scores is not None:
                    seen["scores"] = scores.detach().float().cpu()
            return decision

    fields = {f.name: getattr(method, f.name) for f in dataclasses.fields(method) if f.init}
    return Recording(**fields), seen


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
    targets = {synth.patch_index(o.row, o.col, scene.grid) for o in synth.question_targets(scene, item["prompt"])}
    if not targets:
        return None
    objects = {synth.patch_index(o.row, o.col, scene.grid) for o in scene.objects}
    inputs = question_inputs(processor, item["prompt"], item["image"]["bytes"])
    recorder, seen = recording(method)
    with torch.no_grad(), sparsevlm.attach(model, recorder) as trace:
        model(**inputs)
    sample = trace.last
    stages = kept_patches(sample)
    ids = inputs.input_ids[0]
    return {
        "targets": targets,
        "kept": stages[-1] if stages else set(range(scene.grid**2)),  # after the last stage
        "recall": [len(targets & kept) / len(targets) for kept in stages],
        "all_kept": int(targets <= stages[-1]) if stages else 1,
        "object_share": len(objects & stages[-1]) / max(1, len(stages[-1])) if stages else len(objects) / scene.grid**2,
        "scores": seen.get("scores"),
        "raters": processor.tokenizer.convert_ids_to_tokens(ids[sample.raters].tolist()),
        **(attention_stats(seen["scores"], targets, objects, scene.grid) if "scores" in seen else {}),
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
class Example:
    """One question shown in the figure: its targets, a method's first-stage map and what it kept at each budget."""

    item: dict
    targets: set[int]
    scores: torch.Tensor | None  # [Nv] first-stage map (the same at every budget); None for methods without scores
    kept: dict[int, set[int]] = field(default_factory=dict)  # budget -> patches left after the last stage


@dataclass
class RecallResult:
    """Rows of the recall table, per method the share of questions naming each rater token, and example questions."""

    rows: list[dict[str, Any]]
    rater_shares: dict[str, dict[str, float]]
    examples: dict[str, list[Example]]  # method -> one Example per question family, the same questions for all


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


def run(model_dir: Path, methods: list[str], budgets: list[int], per_family: int) -> RecallResult:
    """Measure every (method, budget); rater tokens at the first budget; for the first question of each family that
    names an object, every method's first-stage map and the tokens it kept at each budget (the figure's examples)."""
    torch.set_num_threads(1)
    model = LlavaForConditionalGeneration.from_pretrained(model_dir, local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    items = sample_items(per_family)
    rows: list[dict[str, Any]] = []
    rater_shares: dict[str, dict[str, float]] = {}
    examples: dict[str, dict[str, Example]] = {}
    for name in methods:
        for budget in budgets:
            method = make_method(name, budget)
            try:
                sparsevlm.check(model, method)
            except ValueError as err:  # e.g. a budget below the method's floor on this model
                print(f"skipped {name} @{budget}: {err}", flush=True)
                continue
            per_family_results: dict[str, list[dict]] = defaultdict(list)
            for item in tqdm(items, desc=f"{name} @{budget}", leave=False):
                res = item_recall(model, processor, item, method)
                if res is None:
                    continue
                family = item["family"]
                per_family_results[family].append(res)
                if len(per_family_results[family]) == 1:  # the family's first question with a target: its example
                    example = examples.setdefault(name, {}).setdefault(
                        family, Example(item, res["targets"], res["scores"])
                    )
                    example.kept[budget] = res["kept"]
            for family, results in sorted(per_family_results.items()):
                rows.append(summarise(name, budget, family, results))
                print(json.dumps(rows[-1]), flush=True)
            if budget == budgets[0]:
                results = [r for rs in per_family_results.values() for r in rs]
                counts = Counter(token for r in results for token in set(r["raters"]))
                if counts:
                    rater_shares[name] = {t: round(c / len(results), 3) for t, c in counts.most_common(12)}
    shown = {name: [by_family[f] for f in sorted(by_family)] for name, by_family in examples.items()}
    return RecallResult(rows, rater_shares, shown)


KEPT_MARKERS = (("o", 3.0), ("o", 7.0), ("s", 10.0))  # per budget, largest first: nested rings, kept sets nest too
TARGET_COLOUR = "cyan"


def _outline(ax: Any, cells: set[int], grid: int, size: float = 1.0) -> None:
    """A rectangle around each target cell (patch units; `size` pixels per patch on the image panel)."""
    from matplotlib.patches import Rectangle

    for index in sorted(cells):
        row, col = synth.patch_cell(index, grid)
        ax.add_patch(
            Rectangle((col * size - 0.5, row * size - 0.5), size, size, fill=False, edgecolor=TARGET_COLOUR, lw=1.6)
        )


def attention_figure(examples: dict[str, list[Example]], budgets: list[int], grid: int = 12) -> Any:
    """One row per example question (its family and full prompt over the image), one column per method: its
    first-stage score map on the patch grid, on one colour scale (score / the mean visual token's score) with one
    colorbar, the target objects outlined and the tokens kept at each budget marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm

    methods = list(examples)
    n = min(len(v) for v in examples.values())
    lifts = {
        m: [None if e.scores is None else (e.scores / e.scores.mean()).numpy() for e in examples[m]] for m in methods
    }
    vmax = max((float(lift.max()) for per in lifts.values() for lift in per if lift is not None), default=1.0)
    norm = PowerNorm(0.5, vmin=0.0, vmax=vmax)  # one scale for every panel; sqrt shows the background structure
    fig, axes = plt.subplots(n, 1 + len(methods), figsize=(2.9 * (1 + len(methods)) + 0.6, 3.1 * n), squeeze=False)
    image_map = None
    order = sorted(budgets, reverse=True)
    for i in range(n):
        item = examples[methods[0]][i].item
        image = Image.open(io.BytesIO(item["image"]["bytes"])).convert("RGB")
        axes[i, 0].imshow(image)
        _outline(axes[i, 0], examples[methods[0]][i].targets, grid, image.width / grid)
        prompt = textwrap.fill(item["prompt"].replace("\n", " "), 34)
        axes[i, 0].set_title(f"{item['family']}: {prompt}", fontsize=6.5, loc="left")
        for j, name in enumerate(methods, start=1):
            example, ax = examples[name][i], axes[i, j]
            lift = lifts[name][i]
            if lift is None:  # e.g. random pruning: nothing scored, only the kept tokens to show
                ax.imshow(torch.zeros(grid, grid).numpy(), cmap="Greys", vmin=0, vmax=1)
            else:
                image_map = ax.imshow(lift.reshape(grid, grid), cmap="magma", norm=norm)
            _outline(ax, example.targets, grid)
            for budget, (marker, size) in zip(order, KEPT_MARKERS, strict=False):
                kept = sorted(example.kept.get(budget, ()))
                rows, cols = [synth.patch_cell(k, grid)[0] for k in kept], [synth.patch_cell(k, grid)[1] for k in kept]
                ax.plot(cols, rows, linestyle="none", marker=marker, markersize=size, markerfacecolor="none",
                        markeredgecolor="lime", markeredgewidth=0.6, label=f"kept @{budget}")  # fmt: skip
            if i == 0:
                shown = "first-stage map" if lift is not None else "no score map"
                ax.set_title(f"{name}: {shown}, kept tokens", fontsize=7)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    handles, labels = axes[0, 1].get_legend_handles_labels()
    from matplotlib.patches import Patch

    handles.append(Patch(fill=False, edgecolor=TARGET_COLOUR, label="target object"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.03, 0.92, 1))
    if image_map is not None:
        cax = fig.add_axes((0.93, 0.15, 0.015, 0.7))
        bar = fig.colorbar(image_map, cax=cax)
        bar.set_label("first-stage score / mean visual token's score (all panels)", fontsize=7)
    return fig


LEGEND = """target_recall: share of the question's target tokens that leave the last stage unmixed (kept as themselves,
or a merge of one token); first_stage_recall: the same after the first stage; all_targets_kept: share of questions
with every target unmixed; object_share_of_kept: share of the unmixed tokens that hold an object. Pooling averages
every token with others, so its recall is 0 by construction. target_lift / object_lift: a target's / any object's
first-stage score over the mean visual token's; last_rows_share: the map's mass on the last two patch rows (uniform:
2 / grid rows); "—": no first-stage map recorded (the method reads no attention and returns no scores).
"""


def main() -> None:
    """Parse arguments, measure, print a Markdown table and write JSON + Markdown + the attention-map figure."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/tiny-llava"))
    ap.add_argument("--methods", nargs="+", default=["sparsevlm", "fastv", "random"], help="registry names, or all")
    ap.add_argument("--budgets", nargs="+", type=int, default=[48, 32, 16])
    ap.add_argument("--per-family", type=int, default=100)
    ap.add_argument("--out", type=Path, default=Path("results/tiny-llava"))
    args = ap.parse_args()
    methods = [m for m in METHODS if m != "dense"] if args.methods == ["all"] else args.methods
    result = run(args.model, methods, args.budgets, args.per_family)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"rows": result.rows, "rater_token_share": result.rater_shares}
    (args.out / "target_recall.json").write_text(json.dumps(payload, indent=1))
    text = to_markdown(pd.DataFrame(result.rows).set_index("method")) + "\n" + LEGEND
    for name, shares in result.rater_shares.items():
        listed = ", ".join(f"`{t}` {v:.0%}" for t, v in shares.items())
        text += f"\nRater tokens of {name} (share of questions where the token rates): {listed}\n"
    (args.out / "target_recall.md").write_text(text)
    if result.examples:
        import matplotlib.pyplot as plt

        figure = attention_figure(result.examples, args.budgets)
        figure.savefig(args.out / "attention_maps.png", dpi=110)
        plt.close(figure)
    print(text)
    print(f"wrote {args.out / 'target_recall.md'}, target_recall.json and attention_maps.png")


if __name__ == "__main__":
    main()

"""Target-token recall: trace indices map to the right patches, and a real prefill gives recall per stage."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

import sparsevlm
from eval import synth
from eval.chat import question_inputs
from eval.target_recall import Example, attention_figure, attention_stats, item_recall, kept_patches, recording
from sparsevlm.methods.base import Plan, StageDecision, StageInput

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "tiny-llava"


def _sample(*stages: sparsevlm.StageRecord) -> sparsevlm.SampleTrace:
    return sparsevlm.SampleTrace(
        n_layers=8, n_visual=144, prompt_tokens=160, tokens_in=[], visual_in=[], visual_out=[], stages=list(stages)
    )


def test_kept_patches_follow_block_coordinates_through_stages() -> None:
    first = sparsevlm.StageRecord(
        layer=1, visual_in=144, kept=[0, 2, 95], kept_original=[5, 7, 100, -1, -1], merged_groups=[[1, 3], [140]]
    )
    # the second stage's block is [0, 2, 95, mix(1, 3), 140]: it keeps 95 and the mixture, and re-emits 140 alone
    second = sparsevlm.StageRecord(layer=4, visual_in=5, kept=[2, 3], kept_original=[100, -1, -1], merged_groups=[[4]])
    assert kept_patches(_sample(first, second)) == [{0, 2, 95, 140}, {95, 140}]


def test_merges_of_several_tokens_keep_none_of_them() -> None:
    pooled = sparsevlm.StageRecord(
        layer=-1,
        visual_in=144,
        kept=[],
        kept_original=[],
        merged_groups=[list(range(i, i + 3)) for i in range(0, 144, 3)],
    )
    tome = sparsevlm.StageRecord(layer=-1, visual_in=144, kept=[], kept_original=[], merged_groups=[[7], [8, 9]])
    assert kept_patches(_sample(pooled)) == [set()]
    assert kept_patches(_sample(tome)) == [{7}]


def test_attention_stats_of_known_maps() -> None:
    uniform = torch.full((144,), 1 / 144)
    assert attention_stats(uniform, {3}, {3, 50}, grid=12) == pytest.approx(
        {"target_lift": 1.0, "object_lift": 1.0, "last_rows_share": 24 / 144}
    )
    peaked = torch.zeros(144)
    peaked[140] = 1.0
    stats = attention_stats(peaked, {140}, {3, 140}, grid=12)
    assert stats == pytest.approx({"target_lift": 144.0, "object_lift": 72.0, "last_rows_share": 1.0})


@pytest.fixture(scope="module")
def tiny() -> tuple[LlavaForConditionalGeneration, AutoProcessor]:
    """The committed tiny model and its processor (skips when absent)."""
    if not (MODEL_DIR / "model.safetensors").exists():
        pytest.skip("no committed tiny model")
    torch.set_num_threads(1)
    model = LlavaForConditionalGeneration.from_pretrained(MODEL_DIR, local_files_only=True).eval()
    return model, AutoProcessor.from_pretrained(MODEL_DIR, local_files_only=True)


def _targets(item: dict) -> tuple[set[int], set[int]]:
    """The item's target patches and all object patches, computed here from the scene (not by item_recall)."""
    scene = synth.decode_scene(item["image"]["bytes"])
    cells = {(o.row, o.col) for o in synth.question_targets(scene, item["prompt"])}
    return {r * scene.grid + c for r, c in cells}, {o.row * scene.grid + o.col for o in scene.objects}


def test_recorder_keeps_the_decisions_and_the_first_map(tiny) -> None:
    model, processor = tiny
    item = next(it for it in synth.eval_items(n_pope=2, n_mme=2, n_gqa=2) if it["family"] == "attribute")
    method = sparsevlm.SparseVLM(budget=32)
    res = item_recall(model, processor, item, method)
    assert res["scores"].shape == (144,) and res["scores"].sum().item() < 1.0 + 1e-4
    targets, objects = _targets(item)
    assert res["targets"] == targets
    assert {k: res[k] for k in ("target_lift", "object_lift")} == pytest.approx(
        {k: v for k, v in attention_stats(res["scores"], targets, objects, 12).items() if k != "last_rows_share"}
    )
    assert res["target_lift"] > 1.0  # SparseVLM's raters look at the object the question names
    assert res["raters"] and all(isinstance(t, str) for t in res["raters"])
    inputs = question_inputs(processor, item["prompt"], item["image"]["bytes"])
    for name in ("sparsevlm", "divprune", "visionzip", "tome", "pdrop"):  # every hook: the LLM, before it, the tower
        method = sparsevlm.make_method(name, 48)
        stages = []
        for wrapped in (method, recording(method)[0]):
            with torch.no_grad(), sparsevlm.attach(model, wrapped) as trace:
                model(**inputs)
            stages.append([(s.layer, s.kept, s.merged_groups) for s in trace.last.stages])
        assert stages[0] == stages[1] and stages[0], name
    assert item_recall(model, processor, item, sparsevlm.RandomPrune(budget=32))["scores"] is None


@dataclasses.dataclass(frozen=True)
class DropOne(sparsevlm.RandomPrune):
    """Random pruning's schedule, but the one stage drops exactly one chosen visual token."""

    drop: int = 0

    def decide(self, inp: StageInput, plan: Plan) -> StageDecision:
        keep = [i for i in range(inp.hidden.shape[0]) if i != self.drop]
        return StageDecision(kept=torch.tensor(keep, device=inp.hidden.device))


def test_recall_of_a_real_prefill(tiny) -> None:
    model, processor = tiny
    item = next(it for it in synth.eval_items(n_pope=2, n_mme=2, n_gqa=2) if it["family"] == "relation")
    targets, objects = _targets(item)
    assert len(targets) == 2
    background = min(set(range(144)) - objects)
    for drop, recall in ((min(targets), 0.5), (max(targets), 0.5), (background, 1.0)):
        res = item_recall(model, processor, item, DropOne(budget=143, drop=drop))
        assert res["recall"] == [recall] and res["all_kept"] == int(recall == 1.0)
        assert res["kept"] == set(range(144)) - {drop}
        assert res["object_share"] == len(objects - {drop}) / 143  # objects among the kept tokens
    res = item_recall(model, processor, item, sparsevlm.RandomPrune(budget=2))
    inputs = question_inputs(processor, item["prompt"], item["image"]["bytes"])
    with torch.no_grad(), sparsevlm.attach(model, sparsevlm.RandomPrune(budget=2)) as trace:
        model(**inputs)
    (stage,) = trace.last.stages
    kept = {i - trace.last.image_start for i in stage.kept_original if i >= 0}
    assert res["kept"] == kept and len(res["recall"]) == 1
    assert res["recall"] == [len(targets & kept) / 2] and res["object_share"] == len(objects & kept) / len(kept)
    scene = synth.decode_scene(item["image"]["bytes"])
    absent = next(t for t in synth.TYPES if t not in scene.types())  # a scene holds at most 8 of the 30 types
    no_target = {**item, "prompt": f"Is there a {absent[0]} {absent[1]} in the image?"}
    assert item_recall(model, processor, no_target, sparsevlm.RandomPrune(budget=16)) is None


def _example(scores: torch.Tensor | None, kept: dict[int, set[int]]) -> Example:
    item = next(it for it in synth.eval_items(n_pope=1, n_mme=1, n_gqa=2) if it["family"] == "relation")
    return Example(item, _targets(item)[0], scores, kept)


def test_attention_figure_explains_itself() -> None:
    peaked = torch.full((144,), 1 / 288)
    peaked[7] = 0.5 + 1 / 288
    examples = {
        "sparsevlm": [_example(torch.full((144,), 1 / 144), {48: set(range(48)), 16: set(range(16))})],
        "fastv": [_example(peaked, {48: set(range(48)), 16: {7}})],
        "random": [_example(None, {48: set(range(96, 144)), 16: set(range(128, 144))})],
    }
    figure = attention_figure(examples, [48, 16])
    image, sparse, fastv, rand = figure.axes[:4]
    question = examples["fastv"][0].item["prompt"]
    title = image.get_title(loc="left")
    assert title.startswith("relation: ") and " ".join(title.split()[1:]) == " ".join(question.split())  # whole prompt
    (colorbar,) = [ax for ax in figure.axes[4:] if ax.get_ylabel()]
    assert "mean visual token" in colorbar.get_ylabel()
    assert sparse.images[0].norm is fastv.images[0].norm  # one colour scale for every map
    assert fastv.images[0].norm.vmax == pytest.approx(0.5 * 144 + 0.5)  # the highest score / mean score of any map
    for ax in (image, sparse, fastv, rand):  # both target objects outlined on the image and on every map
        assert len([p for p in ax.patches if p.get_edgecolor()[:3] == (0.0, 1.0, 1.0)]) == 2
    kept = {line.get_label(): len(line.get_xdata()) for line in fastv.lines}
    assert kept == {"kept @48": 48, "kept @16": 1}
    assert rand.get_title() == "random: no score map, kept tokens" and not rand.texts
    assert {t.get_text() for t in figure.legends[0].get_texts()} == {"kept @48", "kept @16", "target object"}

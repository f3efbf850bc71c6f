"""FLOPs of every family against FlopCounterMode on the real forward: decoder (GQA on Qwen2 text models), vision tower
(per image, frame, anyres crop or Qwen window layout) and projector, dense and with a pruning method attached."""

from __future__ import annotations

import families as fam
import pytest
import torch

import sparsevlm
from sparsevlm import flops
from sparsevlm.arch import TowerWork, fixed_tower_work, tower_work

# per case: family, sample() arguments; Qwen's 98 x 70 image has 7 x 5 merged patches, so its 2 x 2 windows are cut
CASES = {
    "llava": ("llava", {}),
    "video_llava-video": ("video_llava", {"video": True}),
    "video_llava-image": ("video_llava", {}),
    "llava_next-2x2": ("llava_next", {"size": (56, 56)}),
    "llava_next-1x2": ("llava_next", {"size": (28, 56)}),
    "llava_onevision": ("llava_onevision", {"size": (56, 56)}),
    "qwen2_5_vl": ("qwen2_5_vl", {"size": (112, 84)}),
    "qwen2_5_vl-edge-windows": ("qwen2_5_vl", {"size": (98, 70)}),
}
# FlopCounterMode module names: (vision tower, projector); Qwen's merger sits inside its tower module
MODULES = {
    "llava": ("model.vision_tower", "model.multi_modal_projector"),
    "video_llava": ("model.image_tower", "model.multi_modal_projector"),
    "llava_next": ("model.vision_tower", "model.multi_modal_projector"),
    "llava_onevision": ("model.vision_tower", "model.multi_modal_projector"),
    "qwen2_5_vl": ("model.visual", "model.visual.merger"),
}


@pytest.fixture(scope="module")
def models() -> dict:
    return {family: fam.build(family) for family in fam.FAMILIES}


def _methods(family: str, n_visual: int) -> list:
    positions = "original" if family == "qwen2_5_vl" else "contiguous"
    return [
        sparsevlm.Dense(),
        sparsevlm.SparseVLM(budget=n_visual // 3, positions=positions),
        sparsevlm.FastV(budget=n_visual // 4, positions=positions),
    ]


def _measured(model, method, inputs) -> tuple[dict[str, int], object]:
    with torch.no_grad(), sparsevlm.attach(model, method) as trace:
        _, per_module = flops.measure_flops(lambda: model(**inputs, logits_to_keep=1))
    prefix = type(model).__name__ + "."
    return {name.removeprefix(prefix): count for name, count in per_module.items()}, trace.last


@pytest.mark.parametrize("case", list(CASES))
def test_every_part_equals_flop_counter_mode(models, case):
    family, kwargs = CASES[case]
    model = models[family]
    inputs = fam.sample(model, family, question_length=9, **kwargs)
    (work,) = tower_work(model.config, inputs)
    tower_module, projector_module = MODULES[family]
    if kwargs.get("video"):
        tower_module = "model.video_tower"
    for method in _methods(family, int(torch.isin(inputs["input_ids"], torch.tensor([fam.IMAGE, fam.VIDEO])).sum())):
        measured, sample = _measured(model, method, inputs)
        full = flops.full_flops(model.config, sample, flops.scored_rows(method, sample), tower=work)
        llm = measured["model.language_model"]
        # exact: the decoder (GQA widths; qkv biases are additions, not counted) plus the method's in-model matmuls
        assert llm == 2 * (full.decoder + full.rater_selection + full.scoring), method.name
        assert llm == pytest.approx(2 * flops.paper_flops(model.config, sample), rel=0.02), method.name
        assert measured[projector_module] == 2 * full.projector
        tower = measured[tower_module] - (measured[projector_module] if family == "qwen2_5_vl" else 0)
        assert tower == 2 * full.vision
        assert measured["lm_head"] == 2 * full.lm_head
        if not isinstance(method, sparsevlm.Dense):
            assert sample.stages and full.scoring > 0


def test_tower_work_follows_the_input():
    models = {family: fam.build(family) for family in ("video_llava", "llava_next", "qwen2_5_vl")}
    video = fam.sample(models["video_llava"], "video_llava", video=True)
    assert tower_work(models["video_llava"].config, video) == [TowerWork(8, 8 * 17)]
    assert fixed_tower_work(models["video_llava"].config, 8 * 17) == TowerWork(8, 8 * 17)
    assert fixed_tower_work(models["video_llava"].config, 16) == TowerWork(1, 16)
    next_model = models["llava_next"]
    crops = [
        tower_work(next_model.config, fam.sample(next_model, "llava_next", size=size))[0]
        for size in ((56, 56), (28, 56))
    ]
    assert crops == [TowerWork(5, 5 * 16), TowerWork(3, 3 * 16)]  # base + 2 x 2 and base + 1 x 2 crops
    (qwen,) = tower_work(models["qwen2_5_vl"].config, fam.sample(models["qwen2_5_vl"], "qwen2_5_vl", size=(98, 70)))
    assert qwen == TowerWork(1, 35, ((1, 14, 10),))
    with pytest.raises(ValueError, match="tower: llava_next's vision work depends on the input"):
        fixed_tower_work(next_model.config, 88)


def test_qwen_window_layout_hand_computed():
    shape = flops.QwenVisionShape(
        hidden=2, intermediate=3, depth=2, patch_size=1, temporal_patch_size=1, channels=1, spatial_merge_size=2,
        window_size=4, full_attention_blocks=(1,), out_hidden=5,
    )  # fmt: skip
    # grid 1 x 6 x 4 patches: 3 x 2 merged, windows of 2 x 2 merged -> windows of 16 and 8 patches
    tower, merger = flops.qwen_vit_flops(shape, (1, 6, 4))
    n = 24
    dense = 4 * n * 2 * 2 + 3 * n * 2 * 3
    window = 2 * (16 * 16 + 8 * 8) * 2
    full = 2 * n * n * 2
    assert tower == n * 2 + 2 * dense + window + full
    assert merger == 6 * (8 * 8 + 8 * 5)


def test_tower_work_assigns_images_to_rows_by_their_visual_spans():
    """Two images in one prompt count twice in that row; a text-only input has no tower work."""
    model = fam.build("llava_next")
    pair, single = fam.two_images(model, "llava_next"), fam.sample(model, "llava_next", size=(56, 56))
    rows = tower_work(model.config, fam.batch(model, "llava_next", [pair, single]))
    alone = [tower_work(model.config, s)[0] for s in (pair, single)]
    assert rows == alone
    assert alone[0].passes == 3 + 3  # each 28 x 56 / 56 x 28 image: a base view and 2 crops
    assert tower_work(model.config, {"input_ids": torch.tensor([[1, 5, 6]])}) == [TowerWork(0, 0)]

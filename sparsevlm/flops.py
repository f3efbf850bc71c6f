"""Prefill FLOPs from what actually ran: the paper's decoder formula and a full count, both driven by a SampleTrace.

Conventions (docs/efficiency.md):
- Every count here is in **MACs** (one multiply-accumulate = 1 FLOP), the convention of the SparseVLM/FastV code
  formula. `torch.utils.flop_counter.FlopCounterMode` counts 2 FLOPs per MAC: compare with `2 * count`.
- Attention score and value products count the **full n x n square** (causal masking is not discounted), as the
  paper's 2n^2d term and FlopCounterMode both do.
- Only matrix products are counted: norms, activations, softmax, RoPE and residual adds are left out (< 1 % at LLaVA
  sizes), as in the paper's formula and in FlopCounterMode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sparsevlm.arch import TowerWork, fixed_tower_work
from sparsevlm.methods.base import PruningMethod
from sparsevlm.trace import SampleTrace


@dataclass(frozen=True)
class TextShape:
    """The decoder dimensions the formulas need (LLaMA-style: SwiGLU MLP, optional grouped KV heads)."""

    hidden: int  # d
    intermediate: int  # m
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab: int


@dataclass(frozen=True)
class VisionShape:
    """A CLIP- or SigLIP-ViT tower (two-matrix GELU MLP) and the LLaVA projector's output width."""

    hidden: int
    intermediate: int
    n_layers: int
    image_size: int
    patch_size: int
    channels: int
    projector_out: int
    cls_token: bool = True  # CLIP prepends a CLS token to the patches; SigLIP does not
    pooling_head: bool = False  # SigLIP's attention-pooling head: it runs although LLaVA never reads its output

    @property
    def n_patches(self) -> int:
        """Patch tokens of one pass (a CLS token comes on top for CLIP)."""
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class QwenVisionShape:
    """Qwen2.5-VL's ViT: 3-D patch embedding, window and full attention blocks (SwiGLU MLP), 2 x 2 patch merger."""

    hidden: int
    intermediate: int
    depth: int
    patch_size: int
    temporal_patch_size: int
    channels: int
    spatial_merge_size: int
    window_size: int  # pixels per window side
    full_attention_blocks: tuple[int, ...]
    out_hidden: int  # the merger's output width (the LLM's hidden size)


def text_shape(config: Any) -> TextShape:
    """TextShape of a multimodal config (its text_config) or of a text model's config."""
    text = getattr(config, "text_config", config)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return TextShape(
        hidden=text.hidden_size,
        intermediate=text.intermediate_size,
        n_layers=text.num_hidden_layers,
        n_heads=text.num_attention_heads,
        n_kv_heads=getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
        head_dim=head_dim,
        vocab=text.vocab_size,
    )


VIT_TOWERS = ("clip_vision_model", "siglip_vision_model")
QWEN_TOWERS = ("qwen2_5_vl_vision",)


def vision_shape(config: Any) -> VisionShape | QwenVisionShape:
    """The vision tower's shape from a multimodal config: a CLIP/SigLIP ViT (LLaVA family) or Qwen2.5-VL's ViT."""
    vision = config.vision_config
    if vision.model_type in QWEN_TOWERS:
        return QwenVisionShape(
            hidden=vision.hidden_size,
            intermediate=vision.intermediate_size,
            depth=vision.depth,
            patch_size=vision.patch_size,
            temporal_patch_size=vision.temporal_patch_size,
            channels=vision.in_channels,
            spatial_merge_size=vision.spatial_merge_size,
            window_size=vision.window_size,
            full_attention_blocks=tuple(vision.fullatt_block_indexes),
            out_hidden=vision.out_hidden_size,
        )
    if vision.model_type not in VIT_TOWERS:
        raise ValueError(
            f"vision_config.model_type: got {vision.model_type!r}, allowed: {', '.join(VIT_TOWERS + QWEN_TOWERS)}"
        )
    siglip = vision.model_type == "siglip_vision_model"
    return VisionShape(
        hidden=vision.hidden_size,
        intermediate=vision.intermediate_size,
        n_layers=vision.num_hidden_layers,
        image_size=vision.image_size,
        patch_size=vision.patch_size,
        channels=getattr(vision, "num_channels", 3),
        projector_out=config.text_config.hidden_size,
        cls_token=not siglip,
        pooling_head=siglip and bool(getattr(vision, "vision_use_head", False)),
    )


# ---------------------------------------------------------------------------------------------- the paper's formula
def paper_layer_flops(n: int, d: int, m: int, kv_width: int | None = None) -> int:
    """SparseVLM/FastV code formula for one decoder layer at n tokens: 4nd^2 + 2n^2d + 3ndm (MACs).

    4nd^2: q, k, v, o projections; 2n^2d: QK^T and AV over the full n x n square; 3ndm: SwiGLU gate, up, down.
    kv_width: the k and v projections' output width under grouped-query attention (Qwen2: kv heads x head_dim); the
    projection term is then 2nd^2 + 2nd * kv_width. None: no GQA (LLaVA's Vicuna), the formula as printed.
    """
    kv_width = d if kv_width is None else kv_width
    return 2 * n * d * (d + kv_width) + 2 * n * n * d + 3 * n * d * m


def paper_flops_from_counts(tokens_in: Sequence[int], d: int, m: int, kv_width: int | None = None) -> int:
    """The formula summed over layers, n = tokens entering each layer (a pruning layer counts at its full input)."""
    return sum(paper_layer_flops(n, d, m, kv_width) for n in tokens_in)


def paper_flops(config: Any, sample: SampleTrace) -> int:
    """Paper-convention prefill MACs of one traced sample (decoder stack only; what the authors print as TFLOPs),
    with the k and v projections at their real width on a GQA text model."""
    shape = text_shape(config)
    if len(sample.tokens_in) != shape.n_layers:
        raise ValueError(f"sample: traced {len(sample.tokens_in)} layers, the config has {shape.n_layers}")
    kv_width = shape.n_kv_heads * shape.head_dim if shape.n_kv_heads != shape.n_heads else None
    return paper_flops_from_counts(sample.tokens_in, shape.hidden, shape.intermediate, kv_width)


# ------------------------------------------------------------------------------------------------- the full count
def decoder_layer_flops(n: int, shape: TextShape) -> int:
    """One LLaMA decoder layer at n tokens with the real projection widths (GQA-aware; equals the paper without GQA)."""
    q_width, kv_width = shape.n_heads * shape.head_dim, shape.n_kv_heads * shape.head_dim
    projections = n * shape.hidden * (2 * q_width + 2 * kv_width)  # q, o: d x Hd; k, v: d x Hkv*d
    attention = 2 * n * n * q_width  # QK^T and AV, full square, every query head
    mlp = 3 * n * shape.hidden * shape.intermediate
    return projections + attention + mlp


def vit_pass_flops(shape: VisionShape) -> int:
    """One CLIP/SigLIP tower pass on one image or crop: patch conv + every encoder layer (+ SigLIP's pooling head).

    LLaVA reads hidden_states[-2] but Hugging Face's CLIP still runs all layers, so all are counted.
    """
    s, dv = shape.n_patches + shape.cls_token, shape.hidden
    patch_embed = shape.n_patches * dv * shape.channels * shape.patch_size**2
    layer = 4 * s * dv * dv + 2 * s * s * dv + 2 * s * dv * shape.intermediate
    # one probe query attends over the s tokens: q and out projections of one row, k and v of s rows, a 1-row MLP
    head = 2 * dv * dv + 2 * s * dv * dv + 2 * s * dv + 2 * dv * shape.intermediate if shape.pooling_head else 0
    return patch_embed + shape.n_layers * layer + head


def _window_sides(units: int, window: int) -> list[int]:
    """Merged-patch rows (or columns) of each window along one axis: full windows, then the remainder."""
    return [window] * (units // window) + ([units % window] if units % window else [])


def qwen_vit_flops(shape: QwenVisionShape, grid: tuple[int, int, int]) -> tuple[int, int]:
    """(tower, patch merger) MACs of Qwen2.5-VL's ViT on one image or video of (t, h, w) patches.

    Window blocks attend inside windows of window_size pixels (window_size / patch / merge merged patches a side, the
    last row and column of windows cut by the grid's edge); full blocks attend over each frame's h x w patches.
    """
    t, h, w = grid
    n, d, merge = t * h * w, shape.hidden, shape.spatial_merge_size
    window = shape.window_size // merge // shape.patch_size
    window_tokens = [
        rows * cols * merge * merge
        for rows in _window_sides(h // merge, window)
        for cols in _window_sides(w // merge, window)
    ]
    window_attention = t * sum(2 * s * s * d for s in window_tokens)
    full_attention = t * 2 * (h * w) ** 2 * d
    patch_embed = n * d * shape.channels * shape.temporal_patch_size * shape.patch_size**2
    dense_part = 4 * n * d * d + 3 * n * d * shape.intermediate  # fused qkv + proj; SwiGLU gate, up, down
    n_full = sum(1 for block in shape.full_attention_blocks if block < shape.depth)
    blocks = shape.depth * dense_part + n_full * full_attention + (shape.depth - n_full) * window_attention
    merged, width = n // merge**2, d * merge**2
    return patch_embed + blocks, merged * (width * width + width * shape.out_hidden)


def vision_flops(config: Any, work: TowerWork) -> tuple[int, int]:
    """(vision tower, projector) MACs of one sample's visual input; Qwen2.5-VL's patch merger is its projector."""
    shape = vision_shape(config)
    if isinstance(shape, QwenVisionShape):
        parts = [qwen_vit_flops(shape, grid) for grid in work.grids]
        return sum(tower for tower, _ in parts), sum(merger for _, merger in parts)
    d = shape.projector_out
    return work.passes * vit_pass_flops(shape), work.projector_rows * (shape.hidden * d + d * d)


@dataclass(frozen=True)
class FlopsBreakdown:
    """Full prefill MACs of one sample, by part; `total` is their sum."""

    decoder: int  # decoder stack at the traced per-layer token counts
    vision: int  # vision tower, every pass (images, frames, anyres crops)
    projector: int  # LLaVA's 2-layer MLP over every projected row; Qwen2.5-VL's patch merger
    lm_head: int  # last position only (generate passes logits_to_keep=1)
    rater_selection: int  # V @ T^T before layer 0
    scoring: int  # score rows x keys x heads x head_dim at each pruning layer
    recycling: int  # pairwise distances of the recycling candidates at each pruning layer (+ rank SVD for v1.0)

    @property
    def overhead(self) -> int:
        """The method's own work: rater selection, scoring and recycling."""
        return self.rater_selection + self.scoring + self.recycling

    @property
    def total(self) -> int:
        """Everything above."""
        return self.decoder + self.vision + self.projector + self.lm_head + self.overhead

    def to_dict(self) -> dict:
        """Plain-JSON form with the sums."""
        return {**asdict(self), "overhead": self.overhead, "total": self.total}


def full_flops(config: Any, sample: SampleTrace, score_rows: int, tower: TowerWork | None = None) -> FlopsBreakdown:
    """Full prefill MACs of one traced sample.

    score_rows: attention rows scored at each pruning layer (SparseVLM: the raters, len(sample.raters); FastV: 1;
    random: 0). Rater selection (Nv * Nt * d) is counted when sample.raters is non-empty; Nt = sample.text_tokens, the
    tokens after the image block as traced (left padding never counts).
    Recycling counts the candidates' distance matrix n1^2 * d, with n1 = the members of all merged groups; a v1.0 rank
    stage adds R * Nv * min(R, Nv) for the SVD (an order-of-magnitude estimate).
    tower: what the sample's vision tower ran on (sparsevlm.arch.tower_work of the model inputs); None where the family
    fixes it (LLaVA-1.5's one image; Video-LLaVA's image or 8-frame video, told apart by the visual count).
    """
    shape = text_shape(config)
    if len(sample.tokens_in) != shape.n_layers:
        raise ValueError(f"sample: traced {len(sample.tokens_in)} layers, the config has {shape.n_layers}")
    d = shape.hidden
    decoder = sum(decoder_layer_flops(n, shape) for n in sample.tokens_in)
    vision, projector = vision_flops(config, tower or fixed_tower_work(config, sample.n_visual))
    raters = sample.n_visual * sample.text_tokens * d if sample.raters else 0
    scoring = recycling = 0
    for stage in sample.stages:
        scoring += score_rows * sample.tokens_in[stage.layer] * shape.n_heads * shape.head_dim
        candidates = sum(len(group) for group in stage.merged_groups)
        recycling += candidates * candidates * d
        if stage.rank is not None:
            recycling += score_rows * stage.visual_in * min(score_rows, stage.visual_in)
    return FlopsBreakdown(decoder, vision, projector, d * shape.vocab, raters, scoring, recycling)


def scored_rows(method: PruningMethod, sample: SampleTrace) -> int:
    """Attention rows the method scores at each pruning layer: its raters, the last token (FastV), or none."""
    rows = method.for_sample(sample.n_visual).plan(sample.n_layers, sample.n_visual).score_rows
    return {"raters": len(sample.raters), "last": 1, None: 0}[rows]


# ------------------------------------- FlopCounterMode helpers (torch imported here: the formulas above need none)
def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FlopCounterMode hands shapes, not tensors, to mapped functions."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def sdpa_custom_mapping() -> dict:
    """FlopCounterMode mapping that counts CPU SDPA (missing from torch's registry), full S x S square."""
    import torch

    aten = torch.ops.aten
    return {
        aten.scaled_dot_product_attention: _sdpa_flops,
        aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops,
    }


def measure_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """Run fn() under FlopCounterMode (CPU SDPA counted); return (total FLOPs, per-module totals), 2 FLOPs per MAC."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=sdpa_custom_mapping()) as counter:
        fn()
    per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    return counter.get_total_flops(), per_module

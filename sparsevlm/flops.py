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
    """CLIP-ViT tower dimensions (two-matrix GELU MLP) and the LLaVA projector output width."""

    hidden: int
    intermediate: int
    n_layers: int
    image_size: int
    patch_size: int
    channels: int
    projector_out: int

    @property
    def n_patches(self) -> int:
        """Patch tokens (the CLS token comes on top)."""
        return (self.image_size // self.patch_size) ** 2


def text_shape(config: Any) -> TextShape:
    """TextShape of a LlavaConfig (its text_config) or of a LlamaConfig."""
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


def vision_shape(config: Any) -> VisionShape:
    """VisionShape of a LlavaConfig."""
    vision = config.vision_config
    return VisionShape(
        hidden=vision.hidden_size,
        intermediate=vision.intermediate_size,
        n_layers=vision.num_hidden_layers,
        image_size=vision.image_size,
        patch_size=vision.patch_size,
        channels=getattr(vision, "num_channels", 3),
        projector_out=config.text_config.hidden_size,
    )


# ---------------------------------------------------------------------------------------------- the paper's formula
def paper_layer_flops(n: int, d: int, m: int) -> int:
    """SparseVLM/FastV code formula for one decoder layer at n tokens: 4nd^2 + 2n^2d + 3ndm (MACs).

    4nd^2: q, k, v, o projections; 2n^2d: QK^T and AV over the full n x n square; 3ndm: SwiGLU gate, up, down.
    """
    return 4 * n * d * d + 2 * n * n * d + 3 * n * d * m


def paper_flops_from_counts(tokens_in: Sequence[int], d: int, m: int) -> int:
    """The formula summed over layers, n = tokens entering each layer (a pruning layer counts at its full input)."""
    return sum(paper_layer_flops(n, d, m) for n in tokens_in)


def paper_flops(config: Any, sample: SampleTrace) -> int:
    """Paper-convention prefill MACs of one traced sample (decoder stack only; what the authors print as TFLOPs)."""
    shape = text_shape(config)
    if len(sample.tokens_in) != shape.n_layers:
        raise ValueError(f"sample: traced {len(sample.tokens_in)} layers, the config has {shape.n_layers}")
    return paper_flops_from_counts(sample.tokens_in, shape.hidden, shape.intermediate)


# ------------------------------------------------------------------------------------------------- the full count
def decoder_layer_flops(n: int, shape: TextShape) -> int:
    """One LLaMA decoder layer at n tokens with the real projection widths (GQA-aware; equals the paper without GQA)."""
    q_width, kv_width = shape.n_heads * shape.head_dim, shape.n_kv_heads * shape.head_dim
    projections = n * shape.hidden * (2 * q_width + 2 * kv_width)  # q, o: d x Hd; k, v: d x Hkv*d
    attention = 2 * n * n * q_width  # QK^T and AV, full square, every query head
    mlp = 3 * n * shape.hidden * shape.intermediate
    return projections + attention + mlp


def vision_flops(shape: VisionShape, n_visual: int) -> tuple[int, int]:
    """(CLIP tower, projector) MACs for one image: patch conv + every encoder layer at patches + CLS; 2-layer MLP.

    LLaVA reads hidden_states[-2] but Hugging Face's CLIP still runs all layers, so all are counted.
    """
    s, dv = shape.n_patches + 1, shape.hidden
    patch_embed = shape.n_patches * dv * shape.channels * shape.patch_size**2
    layer = 4 * s * dv * dv + 2 * s * s * dv + 2 * s * dv * shape.intermediate
    projector = n_visual * (dv * shape.projector_out + shape.projector_out * shape.projector_out)
    return patch_embed + shape.n_layers * layer, projector


@dataclass(frozen=True)
class FlopsBreakdown:
    """Full prefill MACs of one sample, by part; `total` is their sum."""

    decoder: int  # decoder stack at the traced per-layer token counts
    vision: int  # CLIP tower
    projector: int
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


def full_flops(config: Any, sample: SampleTrace, score_rows: int) -> FlopsBreakdown:
    """Full prefill MACs of one traced sample.

    score_rows: attention rows scored at each pruning layer (SparseVLM: the raters, len(sample.raters); FastV: 1;
    random: 0). Rater selection (Nv * Nt * d) is counted when sample.raters is non-empty; Nt = sample.text_tokens, the
    tokens after the image block as traced (left padding never counts).
    Recycling counts the candidates' distance matrix n1^2 * d, with n1 = the members of all merged groups; a v1.0 rank
    stage adds R * Nv * min(R, Nv) for the SVD (an order-of-magnitude estimate).
    """
    shape, vshape = text_shape(config), vision_shape(config)
    if len(sample.tokens_in) != shape.n_layers:
        raise ValueError(f"sample: traced {len(sample.tokens_in)} layers, the config has {shape.n_layers}")
    d = shape.hidden
    decoder = sum(decoder_layer_flops(n, shape) for n in sample.tokens_in)
    vision, projector = vision_flops(vshape, sample.n_visual)
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

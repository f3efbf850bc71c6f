"""Scores without the L x L attention matrix: text raters, and exact softmax rows for a few query tokens."""

from __future__ import annotations

from collections.abc import Callable

import torch


def select_raters(
    visual: torch.Tensor, text: torch.Tensor, rule: str = "relevant", dtype: str = "model"
) -> torch.Tensor:
    """Indices (relative to the text start) of the text tokens that rate the image (SparseVLM §3.2).

    r = softmax over text of (V @ T^T), averaged over visual tokens (raw dot products, no 1/sqrt(D)); raters are the
    tokens with r above its mean. If none qualifies (a single text token, or all equal), every text token rates.
    """
    n_text = text.shape[0]
    if rule == "all" or n_text <= 1:
        return torch.arange(n_text, device=text.device)
    if dtype == "float32":
        visual, text = visual.float(), text.float()
    return above_mean((visual @ text.T).softmax(dim=-1).mean(dim=0))  # relevance [Nt]


def above_mean(relevance: torch.Tensor) -> torch.Tensor:
    """Indices strictly above the mean relevance (a token exactly at the mean does not rate); all if none is."""
    raters = (relevance > relevance.mean()).nonzero().squeeze(1)
    return raters if raters.numel() else torch.arange(relevance.numel(), device=relevance.device)


def attention_rows(
    query: torch.Tensor,
    key: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    rows: torch.Tensor,
    key_valid: torch.Tensor,
    apply_rope: Callable,
    scaling: float,
) -> torch.Tensor:
    """Exact attention probabilities [H, R, L] of the query tokens at `rows` over all keys, for one sample.

    query [L, H*d] and key [L, Hkv*d] are the layer's projections before RoPE; cos/sin [L, d] the layer's rotary
    terms. The causal mask and padding are applied, so each row equals the corresponding row of the layer's full
    softmax(QK^T/sqrt(d) + mask) -- at O(R*L) memory instead of O(L^2).
    """
    head_dim = cos.shape[-1]
    q = query[rows].view(rows.numel(), -1, head_dim).transpose(0, 1)  # [H, R, d]
    k = key.view(key.shape[0], -1, head_dim).transpose(0, 1)  # [Hkv, L, d]
    q, _ = apply_rope(q, q, cos[rows], sin[rows], unsqueeze_dim=0)
    k, _ = apply_rope(k, k, cos, sin, unsqueeze_dim=0)
    k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)  # GQA: one key head per query head
    logits = torch.matmul(q.float(), k.float().transpose(1, 2)) * scaling  # [H, R, L]
    positions = torch.arange(key.shape[0], device=key.device)
    allowed = key_valid[None, :] & (positions[None, :] <= rows[:, None])  # [R, L]
    return logits.masked_fill(~allowed, float("-inf")).softmax(dim=-1)


def gravity(
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    inv_freq: torch.Tensor,
    head_dim: int,
    attention_scaling: float = 1.0,
) -> torch.Tensor:
    """RoPE's distance prior G(delta) = q.k / sqrt(d) for all-ones q, k: (2 / sqrt(d)) * sum_i cos(delta * theta_i).

    SparseVLM+ (commit 9e1f649) divides the rater attention by it ("text-visual attention gravity correction").
    Returns [R, Nv] in fp32.
    """
    delta = (query_positions[:, None] - key_positions[None, :]).float()  # [R, Nv]
    total = torch.cos(delta[..., None] * inv_freq.float()).sum(dim=-1)
    return 2.0 * attention_scaling**2 * total / head_dim**0.5

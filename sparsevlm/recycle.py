"""Token recycling: DPC-kNN clustering of the best deleted tokens into a few averaged tokens (SparseVLM §3.4).

Any method that returns its scores can recycle (Plan.recycling); the engine calls `recycle_deleted` after the method's
decision.
"""

from __future__ import annotations

import torch

from sparsevlm.methods.base import Recycling

REFERENCE_SEED = 1234  # the authors' evaluation seeds torch with 1234 before each generate()


def recycle_deleted(
    hidden: torch.Tensor, scores: torch.Tensor, kept: torch.Tensor, recycling: Recycling, generator: torch.Generator
) -> tuple[torch.Tensor, list[list[int]]]:
    """Merged tokens [C, D] and their member groups (block positions) from the best-scored deleted tokens.

    Candidates are the int(fraction * n_deleted) + 1 deleted tokens with the highest scores, best first; they are
    clustered into int(candidates * cluster_ratio) + 1 groups (the authors' `n1` and `C`).
    """
    n_visual = scores.numel()
    is_deleted = torch.ones(n_visual, dtype=torch.bool, device=scores.device)
    is_deleted[kept] = False
    deleted = is_deleted.nonzero().squeeze(1)
    n_candidates = int(recycling.fraction * deleted.numel()) + 1
    candidates = deleted[scores[deleted].topk(n_candidates).indices]  # best deleted first
    n_clusters = int(n_candidates * recycling.cluster_ratio) + 1
    _, assign = dpc_knn_clusters(hidden[candidates], n_clusters, recycling.tie_break, generator)
    merged = merge_clusters(hidden[candidates], assign, n_clusters)
    return merged, [candidates[assign == c].tolist() for c in range(n_clusters)]


def dpc_knn_clusters(
    x: torch.Tensor, n_clusters: int, tie_break: str = "index", generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster rows of x [N, D] by density peaks; return (centre indices in strength order [C], assignment [N]).

    Follows the authors' `cluster_and_merge` (TCFormer DPC-kNN): distances scaled by 1/sqrt(D), density from the
    k = C nearest points (self included), delta = distance to the nearest denser point, centres = top-C delta*density.
    Ties in density are broken by `tie_break`: "index" (lower index is denser; deterministic), or "noise" and
    "reference" (the reference's 1e-6 * U[0, 1) added to the density: `torch.rand(1, N)` drawn from `generator` on its
    device, in the input's dtype; with a generator seeded as the reference seeds torch this is the reference's draw).
    """
    n, dim = x.shape
    dist = torch.cdist(x.float(), x.float()) / dim**0.5  # [N, N]
    knn = dist.topk(min(n_clusters, n), dim=-1, largest=False).values
    density = (-(knn**2).mean(dim=-1)).exp()  # [N]
    if tie_break in ("noise", "reference"):
        noise = torch.rand(1, n, generator=generator, device=generator.device, dtype=x.dtype).float()[0].to(x.device)
        density = density + noise * 1e-6
        denser = density[None, :] > density[:, None]  # denser[i, j]: j is denser than i
    else:
        order = torch.argsort(torch.argsort(-density, stable=True))  # 0 = densest; equal density -> lower index first
        denser = order[None, :] < order[:, None]
    dist_max = dist.max()
    delta = torch.where(denser, dist, dist_max).min(dim=-1).values  # the densest point gets the largest distance
    centres = (delta * density).topk(n_clusters).indices  # [C], strongest first
    assign = dist[centres].argmin(dim=0)  # [N], nearest centre
    assign[centres] = torch.arange(n_clusters, device=x.device)
    return centres, assign


def merge_clusters(x: torch.Tensor, assign: torch.Tensor, n_clusters: int) -> torch.Tensor:
    """Average members per cluster as the reference does: sum / (count + 1e-6), in x's dtype. Returns [C, D]."""
    counts = torch.zeros(n_clusters, device=x.device, dtype=x.dtype).index_add_(0, assign, torch.ones_like(x[:, 0]))
    sums = torch.zeros(n_clusters, x.shape[1], device=x.device, dtype=x.dtype).index_add_(0, assign, x)
    return sums / (counts[:, None] + 1e-6)

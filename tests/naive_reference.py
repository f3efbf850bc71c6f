"""A deliberately naive SparseVLM/FastV written straight from the spec, for B = 1: full eager attention maps.

Independent of `sparsevlm/` on purpose (own tables, own DPC-kNN, own gravity built from all-ones q/k as the
authors' code does). It drives the decoder layers itself, without a KV cache, and either decides by itself or
replays recorded decisions (to recompute decode steps without a cache).
"""

from __future__ import annotations

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

TABLES = {
    "1.5": {192: (300, 200, 110), 128: (303, 110, 36), 96: (238, 48, 26), 64: (66, 30, 17)},
    "2.0": {192: (300, 200, 118), 128: (238, 108, 60), 96: (246, 54, 28), 64: (66, 34, 20)},
}
SCALE_BIAS = {192: (13.5, 0.0), 128: (9.0, 6.0), 64: (0.8, 0.0)}


def inputs_embeds(model, inputs: dict) -> torch.Tensor:
    """The text model's input (image features scattered in), captured from a plain forward."""
    box = {}

    def grab(module, args, kwargs):
        box["x"] = kwargs["inputs_embeds"]

    handle = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
    handle.remove()
    return box["x"]


def visual_positions(model, ids: torch.Tensor) -> torch.Tensor:
    """Indices of the image or video tokens in a 1-D id row (one block, or several separated by text)."""
    config = model.config
    visual = [getattr(config, name) for name in ("image_token_id", "video_token_id") if hasattr(config, name)]
    return torch.isin(ids, torch.tensor(visual)).nonzero().squeeze(1)


def initial_positions(model, inputs: dict) -> torch.Tensor:
    """[R, 1, L] position rows: 0..L-1, or Qwen's (t, h, w) M-RoPE rows from the model's own rope index."""
    ids = inputs["input_ids"]
    if model.config.model_type != "qwen2_5_vl":
        return torch.arange(ids.shape[1])[None, None]
    types = (ids == model.config.image_token_id).int()
    rows, _ = model.model.get_rope_index(ids, types, image_grid_thw=inputs["image_grid_thw"])
    return rows


def raters_of(embeds: torch.Tensor, vis: torch.Tensor) -> list[int]:
    """Text tokens (after the last visual token) whose mean softmax relevance to the image is above average
    (absolute indices)."""
    end = int(vis[-1]) + 1
    v, t = embeds[0, vis], embeds[0, end:]
    r = torch.softmax(v @ t.T, dim=1).mean(dim=0)
    return [end + j for j in range(t.shape[0]) if r[j] > r.mean()]


def dpc_knn(x: torch.Tensor, c: int) -> list[list[int]]:
    """Clusters (lists of row indices, strongest centre first) by density peaks, ties to the lower index."""
    n = x.shape[0]
    d = torch.cdist(x, x) / x.shape[1] ** 0.5
    rho = [float(torch.exp(-(torch.sort(d[i]).values[:c] ** 2).mean())) for i in range(n)]
    order = sorted(range(n), key=lambda i: (-rho[i], i))
    rank = {i: r for r, i in enumerate(order)}
    dmax = float(d.max())
    delta = [min([float(d[i, j]) for j in range(n) if rank[j] < rank[i]], default=dmax) for i in range(n)]
    strength = torch.tensor([delta[i] * rho[i] for i in range(n)])
    centres = torch.topk(strength, c).indices.tolist()
    groups = [[] for _ in range(c)]
    for i in range(n):
        label = centres.index(i) if i in centres else int(torch.argmin(d[centres, i]))
        groups[label].append(i)
    return groups


def run(model, inputs: dict, decide, positions_mode: str = "contiguous") -> torch.Tensor:
    """Layer-by-layer prefill with full eager attention maps; decide(layer, A, h_out, vis, pos) -> (kept, groups) or
    None, where vis holds the visual tokens' indices.

    Returns the last-position logits. `kept` and `groups` index into vis; groups are merged by sum / (count + 1e-6) and
    inserted after the last visual token; other tokens keep their order.
    """
    text = model.model.language_model
    vis = visual_positions(model, inputs["input_ids"][0])
    h = inputs_embeds(model, inputs)
    rows = initial_positions(model, inputs)  # [R, 1, L]
    one_d = rows.shape[0] == 1
    pos = rows[0] if one_d else rows
    box = {}
    hooks = [layer.self_attn.register_forward_hook(lambda m, a, o: box.__setitem__("A", o[1])) for layer in text.layers]
    text.config._attn_implementation, saved = "eager", text.config._attn_implementation

    def apply(decision, h_out, pos, vis):
        """The sequence after one decision: tokens before the last visual one with only the kept visual ones, the
        merged groups, then the text; positions as the mode says."""
        kept, groups = decision
        end = int(vis[-1]) + 1
        kept_set = set(vis[kept].tolist())
        head = [i for i in range(end) if i not in set(vis.tolist()) or i in kept_set]
        merged = [h_out[0, vis[g]].sum(0) / (len(g) + 1e-6) for g in groups]
        parts = [h_out[0, head]] + ([torch.stack(merged)] if merged else []) + [h_out[0, end:]]
        new_pos = [pos[..., head]]
        new_pos += [pos[..., vis[torch.tensor([g[0] for g in groups])]]] if groups else []
        new_pos += [pos[..., end:]]
        h_out = torch.cat(parts)[None]
        pos = torch.cat(new_pos, dim=-1) if positions_mode == "original" else torch.arange(h_out.shape[1])[None]
        new_vis = [j for j, i in enumerate(head) if i in kept_set] + list(range(len(head), len(head) + len(groups)))
        return h_out, pos, torch.tensor(new_vis, dtype=torch.long)

    try:
        with torch.no_grad():
            before = decide(-1, None, h, vis, pos)  # a pre-LLM stage prunes the embeddings themselves
            if before is not None:
                h, pos, vis = apply(before, h, pos, vis)
            for index, layer in enumerate(text.layers):
                length = h.shape[1]
                causal = torch.full((length, length), torch.finfo(h.dtype).min).triu(1)[None, None]
                h_out = layer(
                    h,
                    attention_mask=causal,
                    position_ids=pos if one_d else None,
                    position_embeddings=text.rotary_emb(h, pos),
                )
                decision = decide(index, box["A"], h_out, vis, pos)
                if decision is not None:
                    h_out, pos, vis = apply(decision, h_out, pos, vis)
                h = h_out
            return model.lm_head(text.norm(h))[:, -1]
    finally:
        text.config._attn_implementation = saved
        for hook in hooks:
            hook.remove()


def sparsevlm_decider(
    model,
    inputs: dict,
    version: str,
    budget: int,
    record: list,
    top_heads: int | None = None,
    scale_bias=None,
    layers: tuple[int, ...] | None = None,
    keeps: tuple[int, ...] | None = None,
):
    """The spec's algorithm at layers 2/6/15 (v1.5, v2.0) or 2/6/15/19 with the rank rule (v1.0).

    top_heads: v2.0's head count (default 14, or all heads of a smaller model); scale_bias: the rank rule's values
    (default: the authors' calibration for the budget); layers and keeps: another depth's layers and keep counts.
    """
    embeds = inputs_embeds(model, inputs)
    vis0 = visual_positions(model, inputs["input_ids"][0])
    rater_rel = [j - int(vis0[-1]) - 1 for j in raters_of(embeds, vis0)]
    layers = layers or ((2, 6, 15, 19) if version == "1.0" else (2, 6, 15))
    head_dim = model.config.text_config.hidden_size // model.config.text_config.num_attention_heads
    rotary = model.model.language_model.rotary_emb

    def decide(layer, attn, h_out, vis, pos):
        if layer not in layers:
            return None
        nv = vis.numel()
        rows = [int(vis[-1]) + 1 + j for j in rater_rel]
        a = attn[0]  # [H, L, L]
        if version == "2.0":
            ones = torch.ones(1, a.shape[0], a.shape[1], head_dim)
            cos, sin = rotary(ones, pos)
            q, k = apply_rotary_pos_emb(ones, ones, cos, sin)
            a = a / (q @ k.transpose(2, 3) / head_dim**0.5)[0]
            n_top = top_heads or (14 if a.shape[0] >= 14 else a.shape[0])
            top = a[:, rows][:, :, vis].sum(dim=(1, 2)).topk(n_top).indices
            a = a[top]
        p = a.mean(dim=0)[rows][:, vis]
        score = p.mean(dim=0)
        if version == "1.0":
            scale, bias = scale_bias or SCALE_BIAS[budget]
            rank = int(torch.linalg.matrix_rank(p))
            keep = nv if nv - rank == 0 else min(int(rank * scale + bias), nv - 1)
        else:
            keep = min((keeps or TABLES[version][budget])[layers.index(layer)], nv - 1)
        kept = sorted(torch.topk(score, keep).indices.tolist())
        groups = []
        if version != "2.0" and keep < nv:
            deleted = [i for i in range(nv) if i not in set(kept)]
            n1 = int(0.3 * len(deleted)) + 1
            cand = [deleted[i] for i in torch.topk(score[deleted], n1).indices.tolist()]
            groups = [[cand[i] for i in g] for g in dpc_knn(h_out[0, vis][cand], int(n1 / 10) + 1)]
        record.append((layer, kept, groups))
        return torch.tensor(kept, dtype=torch.long), groups

    return decide


def fastv_decider(layer_k: int, keep: int, record: list):
    """FastV: at layer K-1, keep the top-`keep` visual tokens by the last token's head-averaged attention."""

    def decide(layer, attn, h_out, vis, pos):
        if layer != layer_k - 1:
            return None
        score = attn[0].mean(dim=0)[-1, vis]
        kept = sorted(torch.topk(score, keep).indices.tolist())
        record.append((layer, kept, []))
        return torch.tensor(kept, dtype=torch.long), []

    return decide


def replay_decider(stages):
    """Re-apply recorded StageRecords (kept + merged groups) instead of deciding."""
    by_layer = {s.layer: s for s in stages}

    def decide(layer, attn, h_out, vis, pos):
        if layer not in by_layer:
            return None
        stage = by_layer[layer]
        return torch.tensor(stage.kept, dtype=torch.long), stage.merged_groups

    return decide

"""Each baseline against a naive reference written here from its paper's algorithm (no code shared with sparsevlm/)."""

from __future__ import annotations

import naive_reference as naive
import pytest
import torch
from conftest import build_llava, make_inputs

import sparsevlm
from sparsevlm.methods.base import BEFORE_LLM

PRE_PROMPT = 5  # conftest.make_inputs puts 5 text tokens before the image


@pytest.fixture(scope="module")
def model():
    return build_llava(n_layers=8)


def _projected(model, inputs) -> torch.Tensor:
    """The projector outputs of the (single) sample's image, [576, D]: what pre-LLM methods select from."""
    return naive.inputs_embeds(model, inputs)[0, PRE_PROMPT : PRE_PROMPT + 576]


def _run(model, method, inputs):
    with sparsevlm.attach(model, method) as trace, torch.no_grad():
        model(**inputs)
    return trace.last.stages


# ------------------------------------------------------------------------------------------------------ DivPrune
def naive_divprune(x: torch.Tensor, k: int) -> list[int]:
    """Greedy max-min diversity on cosine distance: the most isolated point first, then the farthest from the set."""
    n = x.shape[0]
    d = [[1.0 - float(torch.nn.functional.cosine_similarity(x[i], x[j], dim=0)) for j in range(n)] for i in range(n)]
    first = max(range(n), key=lambda j: (min(d[i][j] for i in range(n) if i != j), -j))
    chosen = [first]
    while len(chosen) < k:
        chosen.append(max(range(n), key=lambda j: (min(d[c][j] for c in chosen), -j)))
    return sorted(chosen)


def test_divprune_keeps_the_naive_max_min_set(model):
    inputs = make_inputs(question_lengths=(6,), seed=11)
    features = _projected(model, inputs)[:96]  # naive is O(n^2 k) in Python: check the rule on a sub-block
    ours = sparsevlm.methods.divprune.max_min_diverse(features, 20).tolist()
    assert ours == naive_divprune(features, 20)
    (stage,) = _run(model, sparsevlm.make_method("divprune", 48), inputs)
    assert stage.layer == BEFORE_LLM and len(stage.kept) == 48 and stage.merged_groups == []
    # the first pick is the most isolated token of the whole block
    x = torch.nn.functional.normalize(_projected(model, inputs), dim=1)
    nearest = (1 - x @ x.T).fill_diagonal_(float("inf")).min(dim=0).values
    assert int(nearest.argmax()) in stage.kept


# ------------------------------------------------------------------------------------------------------- Pooling
@pytest.mark.parametrize(("budget", "cells"), [(64, (8, 8)), (128, (11, 11)), (192, (13, 14)), (48, (6, 8))])
def test_pooling_averages_the_grid_like_adaptive_average_pooling(model, budget, cells):
    inputs = make_inputs(question_lengths=(6,), seed=12)
    (stage,) = _run(model, sparsevlm.make_method("pooling", budget), inputs)
    assert stage.kept == [] and len(stage.merged_groups) == cells[0] * cells[1]
    features = _projected(model, inputs)
    grid = features.T.reshape(1, -1, 24, 24)  # [1, D, 24, 24]
    expected = torch.nn.functional.adaptive_avg_pool2d(grid, cells)[0].flatten(1).T  # [cells, D]
    ours = torch.stack([features[g].mean(dim=0) for g in stage.merged_groups])
    assert torch.allclose(ours, expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- PyramidDrop
def naive_pdrop_decider(model, layers: tuple[int, ...], keeps: tuple[int, ...], record: list):
    """After each stage layer, the next layer's norm + q/k, the last token's softmax row, head mean, top-k."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    text = model.model.language_model
    heads = model.config.text_config.num_attention_heads
    head_dim = model.config.text_config.hidden_size // heads

    def decide(layer, attn, h_out, vis, pos):
        if layer not in layers:
            return None
        nxt = text.layers[layer + 1]
        x = nxt.input_layernorm(h_out)
        length = x.shape[1]
        q = nxt.self_attn.q_proj(x).view(1, length, heads, head_dim).transpose(1, 2)
        k = nxt.self_attn.k_proj(x).view(1, length, heads, head_dim).transpose(1, 2)
        cos, sin = text.rotary_emb(x, pos)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        row = torch.softmax((q[:, :, -1:] @ k.transpose(-1, -2)).float() / head_dim**0.5, dim=-1)  # [1, H, 1, L]
        score = row.mean(dim=1)[0, 0, vis]
        kept = sorted(torch.topk(score, keeps[layers.index(layer)]).indices.tolist())
        record.append((layer, kept))
        return torch.tensor(kept), []

    return decide


def test_pdrop_matches_the_naive_pyramid(model):
    inputs = make_inputs(question_lengths=(9,), seed=13)
    method = sparsevlm.make_method("pdrop", 128)
    plan = method.plan(8, 576)
    record = []
    ref = naive.run(model, inputs, naive_pdrop_decider(model, plan.prune_layers, plan.keeps, record), "contiguous")
    with sparsevlm.attach(model, method) as trace, torch.no_grad():
        logits = model(**inputs).logits[:, -1]
    assert [(s.layer, s.kept) for s in trace.last.stages] == record
    assert (logits - ref).abs().max() < 1e-5
    # the schedule: lambda solved for the budget, keep counts int(576 * lambda ** stage)
    assert plan.prune_layers == (1, 3, 5) and len(record) == 3
    assert abs(trace.last.equivalent_tokens - 128) <= 2


def test_pdrop_paper_setting_is_270_input_side_tokens():
    plan = sparsevlm.make_method("pdrop", 192, ratio=0.5).plan(32, 576)
    assert plan.prune_layers == (7, 15, 23) and plan.keeps == (288, 144, 72)
    # input side: layers 0-7 read 576, then 8 layers each at 288, 144, 72
    assert (8 * 576 + 8 * 288 + 8 * 144 + 8 * 72) / 32 == 270


# ----------------------------------------------------------------------------------------------------------- DART
def naive_dart_decider(model, per_pivot: int, extra: int, record: list):
    """Pivots by key L1 norm (layer 1, after RoPE); in Python-set order, each takes its least similar candidates."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    text = model.model.language_model
    heads = model.config.text_config.num_attention_heads
    head_dim = model.config.text_config.hidden_size // heads
    box = {}
    box["handle"] = text.layers[1].self_attn.k_proj.register_forward_hook(lambda m, a, o: box.__setitem__("k", o))

    def decide(layer, attn, h_out, vis, pos):
        if layer != 1:
            return None
        k = box["k"].view(1, -1, heads, head_dim).transpose(1, 2)
        cos, sin = text.rotary_emb(h_out, pos)
        k, _ = apply_rotary_pos_emb(k, k, cos, sin)
        keys = k.transpose(1, 2).reshape(k.shape[2], -1)  # [L, H*d]
        norms = keys.abs().sum(-1)
        end = int(vis[-1]) + 1
        image = vis[norms[vis].topk(4).indices].tolist()
        query = (norms[end:].topk(4).indices + end).tolist()
        states = text.norm(h_out)[0]
        valid = set(vis.tolist()) - set(image)
        chosen = set(image)
        for visited, pivot in enumerate(list(set(image + query))):
            pool = list(valid)
            sims = torch.tensor(
                [float(torch.nn.functional.cosine_similarity(states[pivot], states[j], dim=0)) for j in pool]
            )
            take = [pool[i] for i in torch.topk(-sims, per_pivot + (visited < extra)).indices.tolist()]
            chosen.update(take)
            valid.difference_update(take)
        kept = sorted(vis.tolist().index(i) for i in chosen)
        record.append(kept)
        box["handle"].remove()
        return torch.tensor(kept), []

    return decide


def test_dart_matches_the_naive_pivot_greedy(model):
    inputs = make_inputs(question_lengths=(11,), seed=14)
    method = sparsevlm.make_method("dart", 96, layer=2)  # K = 2: after layer 1 (on 8 layers 64 is below the floor)
    keep = method.plan(8, 576).keeps[0]
    per_pivot, extra = divmod(keep - 4, 8)
    record = []
    ref = naive.run(model, inputs, naive_dart_decider(model, per_pivot, extra, record), "original")
    with sparsevlm.attach(model, method) as trace, torch.no_grad():
        logits = model(**inputs).logits[:, -1]
    (stage,) = trace.last.stages
    assert stage.layer == 1 and stage.kept == record[0] and len(stage.kept) == keep
    assert (logits - ref).abs().max() < 1e-5


def test_dart_retained_convention_reads_the_budget_as_the_codes_truncation():
    assert sparsevlm.make_method("dart", 128, convention="retained").plan(32, 576).keeps == (4 + 8 * 16,)


# ------------------------------------------------------------------------------------------- vision-stage methods
@pytest.fixture(scope="module")
def eager_model():
    """Eager attention everywhere, so the vision tower returns its attention maps (the naive side reads them)."""
    return build_llava(n_layers=8, attn="eager")


def vision_view(model, inputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features [577, Dv] with [CLS] first, attention [H, 577, 577], keys averaged over heads [577, dv]) of the
    vision layer LLaVA reads (hidden_states[-2]), from the tower's own outputs."""
    tower = model.model.vision_tower
    layer = tower.encoder.layers[-2]
    box = {}
    handle = layer.self_attn.k_proj.register_forward_hook(lambda m, a, o: box.__setitem__("k", o))
    with torch.no_grad():
        out = tower(inputs["pixel_values"][:1], output_hidden_states=True, output_attentions=True)
    handle.remove()
    heads = layer.self_attn.num_heads
    keys = box["k"][0].view(577, heads, -1).mean(dim=1)
    return out.hidden_states[-2][0], out.attentions[-2][0], keys


def logits_with_image_features(model, inputs, features: torch.Tensor) -> torch.Tensor:
    """Last-position logits when the image block is replaced by projector(features), positions renumbered."""
    embeds = naive.inputs_embeds(model, inputs)
    with torch.no_grad():
        image = model.model.multi_modal_projector(features[None])
        sequence = torch.cat([embeds[:, :PRE_PROMPT], image, embeds[:, PRE_PROMPT + 576 :]], dim=1)
        hidden = model.model.language_model(inputs_embeds=sequence).last_hidden_state
        return model.lm_head(hidden)[:, -1]


def naive_visionzip(hidden, attention, keys, dominant: int, contextual: int):
    """The paper's algorithm: [CLS] + top-attended patches, then every step-th remaining patch gathers the rest."""
    cls_scores = attention[:, 0, 1:].sum(dim=0)  # [576], summed over heads
    top = sorted((torch.topk(cls_scores, dominant).indices + 1).tolist())
    rest = [i for i in range(1, 577) if i not in set(top)]
    unit = keys[rest] / keys[rest].norm(dim=-1, keepdim=True)
    step = max(1, len(rest) // contextual)
    targets = list(range(0, len(rest), step))[:contextual]
    others = [i for i in range(len(rest)) if i not in set(targets)]
    owner = {o: max(targets, key=lambda t: (float(unit[o] @ unit[t]), -targets.index(t))) for o in others}
    contextual_tokens = []
    for t in targets:
        members = [rest[o] for o in others if owner[o] == t]
        mean = hidden[members].sum(dim=0) / max(len(members), 1)
        contextual_tokens.append(hidden[rest[t]] + mean)
    features = torch.cat([hidden[[0] + top], torch.stack(contextual_tokens)])
    return features, [i - 1 for i in top]


def test_visionzip_matches_the_naive_dominant_plus_contextual(eager_model):
    inputs = make_inputs(question_lengths=(7,), seed=15)
    hidden, attention, keys = vision_view(eager_model, inputs)
    features, kept = naive_visionzip(hidden, attention, keys, dominant=53, contextual=10)
    with sparsevlm.attach(eager_model, sparsevlm.make_method("visionzip", 64)) as trace, torch.no_grad():
        logits = eager_model(**inputs).logits[:, -1]
    (stage,) = trace.last.stages
    assert stage.layer == BEFORE_LLM and stage.kept == kept and len(stage.merged_groups) == 11
    assert stage.merged_groups[0] == [] and sum(len(g) for g in stage.merged_groups) == 576 - 53
    assert trace.last.visual_in[0] == 64
    assert (logits - logits_with_image_features(eager_model, inputs, features)).abs().max() < 1e-5


def naive_vispruner(hidden, attention, budget: int, important_ratio: float) -> list[int]:
    """Important patches by mean [CLS] attention; the rest thinned by even/odd duplicate matching, 8 per round."""
    order = attention[:, 0, 1:].mean(dim=0).argsort(descending=True).tolist()
    important = int(budget * important_ratio)
    residual = order[important:]
    patches = hidden[1:] / hidden[1:].norm(dim=-1, keepdim=True)
    while len(residual) > budget - important:
        remove = min(8, len(residual) - (budget - important))
        even, odd = residual[::2], residual[1::2]
        best = [max(float(patches[e] @ patches[o]) for o in odd) for e in even]
        keep_even = sorted(range(len(even)), key=lambda i: -best[i])[remove:]
        residual = [even[i] for i in keep_even] + odd
    return sorted(order[:important] + residual)


def test_vispruner_matches_the_naive_important_plus_diverse(eager_model):
    inputs = make_inputs(question_lengths=(7,), seed=16)
    hidden, attention, _ = vision_view(eager_model, inputs)
    kept = naive_vispruner(hidden, attention, budget=64, important_ratio=0.5)
    with sparsevlm.attach(eager_model, sparsevlm.make_method("vispruner", 64)) as trace, torch.no_grad():
        logits = eager_model(**inputs).logits[:, -1]
    (stage,) = trace.last.stages
    assert stage.kept == kept and stage.merged_groups == []
    assert (logits - logits_with_image_features(eager_model, inputs, hidden[1:][kept])).abs().max() < 1e-5


# ------------------------------------------------------------------------------------------------------ CDPruner
def naive_dpp(kernel: torch.Tensor, k: int) -> list[int]:
    """Greedy MAP of a DPP by determinants: each step adds the item maximising det(L_S) (no fast updates)."""
    chosen: list[int] = []
    for _ in range(k):
        best = max(
            (j for j in range(kernel.shape[0]) if j not in chosen),
            key=lambda j: float(torch.linalg.det(kernel[[*chosen, j]][:, [*chosen, j]].double())),
        )
        chosen.append(best)
    return sorted(chosen)


def test_cdpruner_is_the_greedy_dpp_map_of_its_kernel(model):
    inputs = make_inputs(question_lengths=(8,), seed=17)
    visual = _projected(model, inputs)[:60]  # determinants are O(n k^4): a sub-block suffices for the rule
    text = naive.inputs_embeds(model, inputs)[0, PRE_PROMPT + 576 :]
    relevance = sparsevlm.methods.cdpruner.instruction_relevance(visual, text)
    visual, text = visual.double(), text.double()
    unit = visual / visual.norm(dim=-1, keepdim=True)
    kernel = relevance[:, None] * (unit @ unit.T) * relevance[None, :]
    assert sparsevlm.methods.cdpruner.dpp_map(visual, relevance, 8).tolist() == naive_dpp(kernel, 8)
    # relevance: the code's min-max of the negated mean cosine
    negated = -(unit @ (text / text.norm(dim=-1, keepdim=True)).T).mean(dim=-1)
    expected = (negated - negated.min() + 1e-6) / (negated.max() - negated.min())
    assert torch.allclose(relevance, expected, atol=1e-12)
    (stage,) = _run(model, sparsevlm.make_method("cdpruner", 48), inputs)
    assert stage.layer == BEFORE_LLM and len(stage.kept) == 48


# ---------------------------------------------------------------------------------------------------------- ToMe
def naive_bipartite(tokens: torch.Tensor, keys: torch.Tensor, r: int) -> tuple[torch.Tensor, list[list[int]]]:
    """One ToMe step, by loops: A = even positions ([CLS] protected), B = odd; the r best-matched A tokens join their
    best B partner (mean, all sizes 1 here); output [CLS, unmerged A in order, B]."""
    unit = keys / keys.norm(dim=-1, keepdim=True)
    a, b = list(range(0, len(tokens), 2)), list(range(1, len(tokens), 2))
    best = {i: max(b, key=lambda j: float(unit[i] @ unit[j])) for i in a}
    value = {i: (-float("inf") if i == 0 else float(unit[i] @ unit[best[i]])) for i in a}
    merging = sorted(a, key=lambda i: -value[i])[:r]
    groups = {j: [j] for j in b}
    for i in merging:
        groups[best[i]].append(i)
    order = [[i] for i in a if i not in merging] + [sorted(groups[j]) for j in b]
    return torch.stack([tokens[g].mean(dim=0) for g in order]), order


def test_tome_merges_like_the_naive_bipartite_matching(model):
    inputs = make_inputs(question_lengths=(7,), seed=18)
    tower = model.model.vision_tower
    box = {}
    handle = tower.encoder.layers[0].self_attn.k_proj.register_forward_hook(lambda m, a, o: box.__setitem__("k", o))
    with torch.no_grad():
        out = tower(inputs["pixel_values"], output_hidden_states=True)
    handle.remove()
    heads = tower.encoder.layers[0].self_attn.num_heads
    keys = box["k"][0].view(577, heads, -1).mean(dim=1)
    merged, order = naive_bipartite(out.hidden_states[1][0], keys, 576 - 320)
    with sparsevlm.attach(model, sparsevlm.make_method("tome", 320)) as trace, torch.no_grad():
        logits = model(**inputs).logits[:, -1]
    (stage,) = trace.last.stages
    assert stage.kept == [] and stage.merged_groups == [[i - 1 for i in g] for g in order[1:]]
    assert (logits - logits_with_image_features(model, inputs, merged[1:])).abs().max() < 1e-5


def test_tome_schedule_is_constant_and_respects_the_bipartite_limit():
    method = sparsevlm.make_method("tome", 64)
    assert method.tower_schedule(23, 576) == (23,) * 22 + (6,)  # 512 merges over the 23 layers LLaVA-1.5 reads
    with pytest.raises(ValueError, match="budget=64 is unreachable for tome in 1 vision layers"):
        method.tower_schedule(1, 576)  # one layer merges at most half the tokens

"""CDPruner (Zhang et al., NeurIPS 2025): instruction-conditioned diversity by DPP MAP inference, before the LLM."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sparsevlm.methods.base import Plan, StageDecision, StageInput
from sparsevlm.methods.prellm import PreLLM
from sparsevlm.registry import register

RANK_EPSILON = 1e-10  # a conditional variance this small means the kernel's rank is exhausted


@register("cdpruner")
@dataclass(frozen=True)
class CDPruner(PreLLM):
    """CDPruner on the projector outputs (official code: Theia-4869/CDPruner @ 9541616).

    Kernel L = diag(r) S diag(r): S the cosine similarity of the projector outputs, r each token's relevance to the
    instruction, min-max normalised with 1e-6 in the numerator only and *negated* cosine, as the code computes it (the
    project page says cosine). The `budget` tokens are the greedy MAP of the DPP (fast Cholesky-style updates, from the
    largest diagonal); kept tokens keep their order.
    Deviation: the code takes relevance from CLIP (its text tower's embedding of the raw question against the
    projected patch embeddings); llava-hf checkpoints ship no CLIP text tower, so relevance here is the mean cosine
    between each projector output and the LLM input embeddings of the text after the image (same space, the prompt's
    template words included). The greedy runs in float64 (the code: float32), so that a token's picks do not depend on
    float32 rounding, e.g. batched or alone. Past the kernel's rank the greedy would pick numerical noise: the
    remaining picks then go to the most relevant tokens left (the code has no guard).
    """

    def plan(self, n_layers: int, n_visual: int) -> Plan:
        plan = super().plan(n_layers, n_visual)
        return dataclasses.replace(plan, needs=frozenset({"text"})) if plan.prune_layers else plan

    def decide(self, inp: StageInput, plan: Plan) -> StageDecision:
        relevance = instruction_relevance(inp.hidden, inp.text)
        return StageDecision(kept=dpp_map(inp.hidden, relevance, plan.keeps[inp.stage]), scores=relevance)


def instruction_relevance(visual, text):
    """Per visual token: min-max normalised negated mean cosine to the text tokens (the code's formula)."""
    unit_v = visual.double() / visual.double().norm(dim=-1, keepdim=True)
    unit_t = text.double() / text.double().norm(dim=-1, keepdim=True)
    relevance = (-(unit_v @ unit_t.T)).mean(dim=-1)
    return (relevance - relevance.min() + 1e-6) / (relevance.max() - relevance.min())


def dpp_map(features, relevance, k: int):
    """Indices (ascending) of the greedy MAP of the DPP with kernel diag(r) cos(features) diag(r)."""
    import torch

    unit = features.double() / features.double().norm(dim=-1, keepdim=True)
    relevance = relevance.double()
    kernel = relevance[:, None] * (unit @ unit.T) * relevance[None, :]
    n = kernel.shape[0]
    cis = torch.zeros(k, n, device=kernel.device, dtype=kernel.dtype)
    gains = torch.diagonal(kernel).clone()
    picked: list[int] = []
    for i in range(k):
        j = int(gains.argmax())
        if gains[j] <= RANK_EPSILON:  # rank exhausted: fill with the most relevant tokens not picked yet
            rest = relevance.clone()
            rest[picked] = -float("inf")
            picked += rest.topk(k - i).indices.tolist()
            break
        picked.append(j)
        cis[i] = (kernel[j] - cis[:i, j] @ cis[:i]) / gains[j].sqrt()
        gains -= cis[i].square()
        gains[j] = -float("inf")
    return torch.tensor(sorted(picked), device=features.device)

"""What actually ran: per-sample, per-layer token counts and the pruning decisions of every prefill."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class StageRecord:
    """One pruning decision, taken on the output of decoder layer `layer`."""

    layer: int
    visual_in: int  # visual tokens in the block before the decision (recycled tokens of earlier stages included)
    kept: list[int]  # kept positions inside the current visual block (sorted; "block coordinates")
    kept_original: list[int]  # kept tokens as indices into the prefill input_ids row; -1 for recycled tokens
    merged_groups: list[list[int]]  # recycled tokens in insertion order, each a list of block coordinates
    rank: int | None = None  # v1.0 rank rule: rank of the rater x visual attention matrix

    @property
    def visual_out(self) -> int:
        """Visual tokens after the decision: kept plus recycled."""
        return len(self.kept) + len(self.merged_groups)


@dataclass
class SampleTrace:
    """Everything one sample's prefill did, in the units the efficiency accounting needs."""

    n_layers: int
    n_visual: int  # visual tokens given to the LLM (576 for LLaVA-1.5)
    prompt_tokens: int  # valid (non-padding) prefill tokens, visual included
    tokens_in: list[int]  # valid tokens entering each decoder layer (the "n" of the FLOPs formula)
    visual_in: list[int]  # visual tokens entering each decoder layer
    visual_out: list[int]  # visual tokens leaving each decoder layer (paper's num_token[l])
    stages: list[StageRecord] = field(default_factory=list)
    raters: list[int] = field(default_factory=list)  # rater tokens as indices into the prefill input_ids row
    image_start: int = 0  # index of the first visual token in the prefill input_ids row (padding included)
    text_tokens: int = 0  # tokens after the visual block (the rater candidates); padding is on the left, never here

    @property
    def equivalent_tokens(self) -> float:
        """Paper convention (Gumpest/SparseVLMs#4, #10): mean over layers of each layer's *output* visual count."""
        return sum(self.visual_out) / self.n_layers

    @property
    def equivalent_tokens_input(self) -> float:
        """Input-side convention (Gumpest/SparseVLMs#35): mean over layers of each layer's *input* visual count."""
        return sum(self.visual_in) / self.n_layers

    @property
    def llm_input_tokens(self) -> int:
        """Visual tokens given to the LLM's first layer (fewer than n_visual only when pruned before the LLM)."""
        return self.visual_in[0] if self.visual_in else self.n_visual

    def to_dict(self) -> dict:
        """Plain-JSON form, with the token conventions spelled out."""
        out = asdict(self)
        out["equivalent_tokens"] = self.equivalent_tokens
        out["equivalent_tokens_input"] = self.equivalent_tokens_input
        out["llm_input_tokens"] = self.llm_input_tokens
        return out


@dataclass
class PruneTrace:
    """All prefills seen while a method was attached, in call order; one entry per batch row."""

    method: str
    samples: list[SampleTrace] = field(default_factory=list)

    @property
    def last(self) -> SampleTrace:
        """The most recent sample (the only one for a single-sample generate)."""
        if not self.samples:
            raise LookupError("no prefill with image tokens ran while the method was attached")
        return self.samples[-1]

    def to_dict(self) -> dict:
        """Plain-JSON form of the whole trace."""
        return {"method": self.method, "samples": [s.to_dict() for s in self.samples]}

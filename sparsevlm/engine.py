"""attach(): the only code that touches Hugging Face internals -- hooks, sequence surgery, positions, masks, cache.

How a prefill is pruned (no HF code is copied; everything is instance-scoped hooks removed on exit):
- a pre-hook on the multimodal model records `input_ids` (where the image tokens are);
- a pre-hook on the text model sees `inputs_embeds` (image features scattered in): chooses the text raters and
  starts the per-forward sequence state;
- forward hooks on q_proj/k_proj of each pruning layer keep the layer's projections, so the score rows can be
  computed exactly (softmax over all keys) without materialising the L x L attention matrix;
- a forward hook on each pruning layer rewrites its *output*: survivors, then recycled tokens, in sequence order;
- a pre-hook on every later layer hands it the shortened positions, rotary terms and attention mask.
During decoding each layer attends to its own (ragged) cache: the pre-hooks give every layer the mask of its own
cache and, with contiguous positions, the position that layer's cache length implies (the reference's behaviour).
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
import weakref
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn

from sparsevlm.arch import ArchSpec, check_hook_points, check_positions, resolve
from sparsevlm.methods.base import BEFORE_LLM, Plan, PruningMethod, StageDecision, StageInput
from sparsevlm.recycle import REFERENCE_SEED, recycle_deleted
from sparsevlm.scoring import attention_rows, gravity, select_raters
from sparsevlm.trace import PruneTrace, SampleTrace, StageRecord


@dataclass
class _Segment:
    """Cache geometry shared by consecutive layers after a prefill: real cached keys, and the position shift."""

    key_valid: torch.Tensor  # [B, T] bool
    shift: torch.Tensor  # [B] long: original position minus this layer's contiguous position
    pruned: bool
    shifted: bool = False  # any nonzero shift (contiguous positions after pruning)
    all_valid: bool = True  # no padding among the cached keys


@dataclass
class _Prefill:
    """Sequence state of one prefill while it runs through the decoder stack."""

    plans: list[Plan]
    positions: torch.Tensor  # [R, B, L] position rows of the current tokens (ArchSpec.position_rows)
    valid: torch.Tensor  # [B, L] bool, False for padding
    origin: torch.Tensor  # [B, L] index into the prefill input row; -1 for recycled tokens
    vis: list[torch.Tensor]  # per sample: indices of its visual tokens in the current sequence (one or several spans)
    raters: list[torch.Tensor | None]  # per sample, relative to the first token after its last visual token
    generators: list[torch.Generator]
    samples: list[SampleTrace]
    hf_mask_present: bool
    original_valid_count: torch.Tensor  # [B]
    input_len: int  # the prompt's length (padding included)
    segment: _Segment
    segments: list[_Segment] = field(default_factory=list)
    mask: torch.Tensor | None = None
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None
    changed: bool = False
    layer_rotary: tuple[torch.Tensor, torch.Tensor] | None = None
    captured: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class _Decode:
    """What a decode step needs from its prefill: per-layer cache geometry."""

    prefill_len: int  # layer 0's cache length after the prefill (shorter than the prompt after a pre-LLM stage)
    input_len: int  # the prompt's length: generate's 2-D mask keeps these columns before the new tokens
    segments: list[_Segment]
    tail_valid: torch.Tensor | None = None  # [B, t] validity of the tokens appended since the prefill
    tail_all_valid: bool = True
    per_segment: dict[int, tuple] = field(default_factory=dict)  # this step's (positions, rotary, mask) per segment


def attention_mask(key_valid: torch.Tensor, q_len: int, implementation: str, dtype: torch.dtype) -> torch.Tensor | None:
    """The mask HF's attention functions expect for queries that are the last q_len of K keys (None when not needed)."""
    n_keys = key_valid.shape[1]
    if implementation == "flash_attention_2":
        return None if bool(key_valid.all()) else key_valid.long()
    if implementation == "sdpa" and bool(key_valid.all()) and q_len in (1, n_keys):
        return None  # SDPA then applies is_causal itself, exactly as the unpatched model does
    keys = torch.arange(n_keys, device=key_valid.device)
    queries = keys[n_keys - q_len :]
    allowed = key_valid[:, None, :] & (keys[None, None, :] <= queries[None, :, None])
    allowed |= keys[None, None, :] == queries[None, :, None]  # a padding query sees itself: no all-masked row, no NaN
    if implementation == "sdpa":
        return allowed[:, None]
    return torch.zeros(allowed.shape, dtype=dtype, device=key_valid.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )[:, None]


SEED_STRIDE = 1_000_003  # a prime: different seeds give disjoint ranges of per-sample generator seeds


def _sample_generator(plan: Plan, ids: torch.Tensor, device: torch.device) -> torch.Generator:
    """A sample's generator: seeded like the authors' code for "reference" recycling, else from the plan's seed and
    the sample's own tokens (batch- and beam-invariant)."""
    if plan.recycling is not None and plan.recycling.tie_break == "reference":
        return torch.Generator(device=device).manual_seed(REFERENCE_SEED)
    digest = zlib.crc32(ids.detach().cpu().to(torch.int64).numpy().tobytes())
    return torch.Generator().manual_seed(plan.seed * SEED_STRIDE + digest)


@functools.lru_cache(maxsize=256)
def _cached_plan(method: PruningMethod, n_layers: int, n_visual: int) -> Plan:
    """A method's plan for one sample shape, computed once (budget matching searches are not free)."""
    return method.for_sample(n_visual).plan(n_layers, n_visual)


def _plan(method: PruningMethod, n_layers: int, n_visual: int) -> Plan:
    """The memoised plan (methods are frozen dataclasses; an unhashable one is planned every time)."""
    try:
        return _cached_plan(method, n_layers, n_visual)
    except TypeError:
        return method.for_sample(n_visual).plan(n_layers, n_visual)


def _square_grid(count: int) -> tuple[int, int] | None:
    """(side, side) when a visual block of `count` tokens is a whole square patch grid."""
    side = math.isqrt(count)
    return (side, side) if side * side == count else None


class _Engine:
    """Hooks of one attached method on one model instance."""

    def __init__(self, arch: ArchSpec, method: PruningMethod) -> None:
        self.arch = arch
        self.method = method
        self.trace = PruneTrace(method=method.name)
        self.prune_layers = method.pruning_layers(arch.n_layers)
        self._input_ids: torch.Tensor | None = None
        self._state: _Prefill | _Decode | None = None
        self._decode: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._warned = False  # an unpruned plan is reported once per attach
        self._vision_captured: dict[str, torch.Tensor] = {}
        self._vision_decisions: list[tuple[StageDecision, int]] = []  # per image: decision, real tokens
        self._tower: dict = {}  # a tower-merging method's state across the vision layers of one forward

    def install(self) -> list[torch.utils.hooks.RemovableHandle]:
        """Register every hook; the caller removes them."""
        arch, handles = self.arch, []
        handles.append(arch.mm_model.register_forward_pre_hook(self._on_mm_model, with_kwargs=True))
        handles.append(arch.text_model.register_forward_pre_hook(self._on_text_start, with_kwargs=True))
        handles.append(arch.text_model.register_forward_hook(self._on_text_end, with_kwargs=True))
        for index, layer in enumerate(arch.layers):
            handles.append(layer.register_forward_pre_hook(partial(self._before_layer, index), with_kwargs=True))
        for index in (i for i in self.prune_layers if i != BEFORE_LLM):
            attention = arch.layers[index].self_attn
            handles.append(attention.q_proj.register_forward_hook(partial(self._capture, "query")))
            handles.append(attention.k_proj.register_forward_hook(partial(self._capture, "key")))
            handles.append(arch.layers[index].register_forward_hook(partial(self._after_pruning_layer, index)))
        if self.method.merges_in_tower and arch.vision_layers is not None:
            for index in range(arch.vision_feature_index + 1):
                layer = arch.vision_layers[index]
                handles.append(layer.register_forward_pre_hook(partial(self._tower_before, index)))
                handles.append(layer.self_attn.k_proj.register_forward_hook(partial(self._capture_vision, "key")))
                handles.append(layer.register_forward_hook(partial(self._tower_after, index)))
        if self.method.hook == "vision" and arch.projector is not None:
            layer = arch.vision_layers[arch.vision_feature_index]
            handles.append(layer.self_attn.q_proj.register_forward_hook(partial(self._capture_vision, "query")))
            handles.append(layer.self_attn.k_proj.register_forward_hook(partial(self._capture_vision, "key")))
            handles.append(layer.register_forward_hook(partial(self._capture_vision, "hidden")))
            handles.append(arch.projector.register_forward_pre_hook(self._on_projector))
        return handles

    def _visual_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] bool: the image and video placeholder tokens."""
        ids = torch.tensor(self.arch.visual_token_ids, device=input_ids.device)
        return torch.isin(input_ids, ids)

    # ----------------------------------------------------------------------------------------------- forward entry
    def _on_mm_model(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._input_ids = kwargs.get("input_ids", args[0] if args else None)

    def _capture_vision(self, kind: str, module: nn.Module, args: tuple, output) -> None:
        self._vision_captured[kind] = output[0] if isinstance(output, tuple) else output

    def _tower_before(self, index: int, module: nn.Module, args: tuple):
        """Start the merge state at the tower's first layer; merged tokens get attention in proportion to their size."""
        hidden = args[0]
        if index == 0:
            batch, length = hidden.shape[:2]
            schedule = self.method.tower_schedule(self.arch.vision_feature_index + 1, length - 1)
            sources = [[[i] for i in range(length)] for _ in range(batch)]
            self._tower = {"size": hidden.new_ones(batch, length), "sources": sources, "schedule": schedule}
        size = self._tower["size"]
        if not bool((size > 1).any()):
            return None
        bias = size.log()[:, None, None, :].expand(-1, 1, hidden.shape[1], -1)  # proportional attention
        return (hidden, bias.to(hidden.dtype), *args[2:])

    def _tower_after(self, index: int, module: nn.Module, args: tuple, output):
        """Merge the layer's output tokens as the method's schedule says (in place of the block's own output)."""
        hidden = output[0] if isinstance(output, tuple) else output
        r = self._tower["schedule"][index]
        if r > 0:
            heads = self.arch.vision_layers[index].self_attn.num_heads
            keys = self._vision_captured["key"].view(hidden.shape[0], hidden.shape[1], heads, -1).mean(dim=2)
            hidden, self._tower["size"], self._tower["sources"] = self.method.tower_step(
                hidden, keys, self._tower["size"], self._tower["sources"], r
            )
        if index == self.arch.vision_feature_index:
            self._tower["hidden"] = hidden
        return hidden if r > 0 else None

    def _on_projector(self, module: nn.Module, args: tuple):
        """Vision stage: choose each image's features before the projector; pad back to the image token count.

        LLaVA scatters exactly one projected feature per image token, so the projector must still return as many
        rows; the chosen features come first and zero rows fill the rest, which the text model's pre-hook drops.
        """
        features = args[0]  # [images, Nv, Dv] (the [CLS] token already dropped)
        captured, self._vision_captured = self._vision_captured, {}
        tower, self._tower = self._tower, {}
        layer = self.arch.vision_layers[self.arch.vision_feature_index].self_attn
        n_images, n_visual = features.shape[0], self.arch.n_image_tokens
        plan = _plan(self.method, self.arch.n_layers, n_visual)
        self._vision_decisions = []
        if not plan.prune_layers:
            return None
        rows = []
        for image in range(n_images):
            if tower:  # a tower-merging method: what the LLM reads is the tower's merged tokens
                inp = StageInput(
                    0,
                    BEFORE_LLM,
                    features[image],
                    None,
                    torch.Generator(),
                    tower_tokens=tower["hidden"][image],
                    tower_sources=tower["sources"][image],
                )
                decision = self.method.decide(inp, plan)
                self._vision_decisions.append((decision, decision.merged.shape[0]))
                merged = decision.merged.to(features.dtype)
                rows.append(torch.cat([merged, merged.new_zeros(n_visual - merged.shape[0], merged.shape[1])]))
                continue
            queries = captured["query"][image].view(-1, layer.num_heads, layer.head_dim).transpose(0, 1)  # [Hv, L, d]
            keys = captured["key"][image].view(-1, layer.num_heads, layer.head_dim).transpose(0, 1)
            cls_row = ((queries[:, :1] @ keys.transpose(1, 2)).float() * layer.scale).softmax(dim=-1)[:, 0, 1:]
            inp = StageInput(
                0,
                BEFORE_LLM,
                features[image],
                None,
                torch.Generator().manual_seed(plan.seed),
                grid=_square_grid(n_visual),
                cls_hidden=captured["hidden"][image, 0],
                cls_attention=cls_row,
                vision_keys=captured["key"][image],
            )
            decision = self.method.decide(inp, plan)
            chosen = features[image][decision.kept]
            if decision.merged is not None:
                merged = decision.merged.to(chosen.dtype)
                first = decision.merged_first
                chosen = torch.cat([merged[:first], chosen, merged[first:]])
            self._vision_decisions.append((decision, chosen.shape[0]))
            rows.append(torch.cat([chosen, chosen.new_zeros(n_visual - chosen.shape[0], chosen.shape[1])]))
        return (torch.stack(rows), *args[1:])

    def _on_text_start(self, module: nn.Module, args: tuple, kwargs: dict):
        self._state = None
        input_ids, self._input_ids = self._input_ids, None
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            return None
        cache = kwargs.get("past_key_values")
        past = cache.get_seq_length() if cache is not None else 0
        batch, length = embeds.shape[:2]
        if kwargs.get("position_ids") is None:  # what the text model would compute, made explicit for the hooks
            rows = self.arch.position_rows(None, 1, length, past, embeds.device)
            kwargs["position_ids"] = self.arch.text_position_ids(rows)
        has_visual = input_ids is not None and bool(self._visual_mask(input_ids).any())
        if has_visual:
            if past > 0:
                raise ValueError(
                    "input_ids: image tokens after a non-empty KV cache (a later turn with a new image) cannot be "
                    "pruned; start a new generate() for each image"
                )
            state = self._state = self._start_prefill(
                input_ids, embeds, kwargs["position_ids"], kwargs.get("attention_mask")
            )
            if BEFORE_LLM in self.prune_layers:  # pre-LLM methods: the text model reads the shortened sequence
                shortened = self._stage(state, BEFORE_LLM, embeds)
                if shortened is not None:
                    kwargs["inputs_embeds"] = shortened
                    kwargs["attention_mask"] = state.valid.long()
                    kwargs["position_ids"] = self.arch.text_position_ids(state.positions)
        elif cache is not None and past > 0 and cache in self._decode:
            decode = self._decode[cache]
            mask2d = kwargs.get("attention_mask")
            n_new = past - decode.prefill_len + length
            tail = (
                mask2d[:, decode.input_len :].bool()
                if mask2d is not None and mask2d.dim() == 2
                else torch.ones(batch, n_new, dtype=torch.bool, device=embeds.device)
            )
            self._state = _Decode(decode.prefill_len, decode.input_len, decode.segments, tail, bool(tail.all()))
        return args, kwargs

    def _start_prefill(
        self, input_ids: torch.Tensor, embeds: torch.Tensor, position_ids: torch.Tensor, mask2d: torch.Tensor | None
    ) -> _Prefill:
        batch, length = input_ids.shape
        device = embeds.device
        valid = (
            mask2d.bool().clone()
            if mask2d is not None and mask2d.dim() == 2
            else torch.ones(batch, length, dtype=torch.bool, device=device)
        )
        plans, vis, raters, generators, samples = [], [], [], [], []
        n_layers = self.arch.n_layers
        visual_mask = self._visual_mask(input_ids)
        for row in range(batch):
            where = visual_mask[row].nonzero().squeeze(1)
            if where.numel() == 0:
                raise ValueError(
                    f"input_ids: sample {row} of the batch has no visual tokens (ids {self.arch.visual_token_ids}); "
                    "every sample needs an image or a video"
                )
            start, count, end = int(where[0]), where.numel(), int(where[-1]) + 1
            if end - start != count and self.arch.projector is not None and self.method.hook == "vision":
                raise ValueError(
                    f"input_ids: sample {row} has several images; {self.method.name} decides per image on the vision "
                    "tower, one image per sample"
                )
            if not bool(valid[row, start:].all()):
                raise ValueError("attention_mask: padding after the image; pad on the left (padding_side='left')")
            plan = _plan(self.method, n_layers, count)
            check_positions(self.arch.positions, plan)
            if plan.unpruned and not self._warned:
                warnings.warn(plan.unpruned, stacklevel=2)
                self._warned = True
            if plan.prune_layers and plan.prune_layers != self.prune_layers:
                raise AssertionError(f"{self.method.name}: plan layers {plan.prune_layers} != {self.prune_layers}")
            rater = None
            if plan.score_rows == "raters":
                rater = select_raters(embeds[row, where], embeds[row, end:], plan.raters, plan.rater_dtype)
            plans.append(plan)
            vis.append(where)
            raters.append(rater)
            generators.append(_sample_generator(plan, input_ids[row][valid[row]], device))
            samples.append(
                SampleTrace(
                    n_layers=n_layers,
                    n_visual=count,
                    prompt_tokens=int(valid[row].sum()),
                    tokens_in=[],
                    visual_in=[],
                    visual_out=[],
                    raters=[] if rater is None else (rater + end).tolist(),
                    image_start=start,
                    text_tokens=length - end,
                )
            )
        counts = valid.sum(dim=1)
        segment = _Segment(valid, torch.zeros(batch, dtype=torch.long, device=device), pruned=False)
        return _Prefill(
            plans=plans,
            positions=self.arch.position_rows(position_ids, batch, length, 0, device),
            valid=valid,
            origin=torch.arange(length, device=device).expand(batch, length).clone(),
            vis=vis,
            raters=raters,
            generators=generators,
            samples=samples,
            hf_mask_present=mask2d is not None and not bool(valid.all()),
            original_valid_count=counts,
            input_len=length,
            segment=segment,
        )

    # -------------------------------------------------------------------------------------------------- per layer
    def _before_layer(self, index: int, module: nn.Module, args: tuple, kwargs: dict):
        state = self._state
        if isinstance(state, _Prefill):  # no host sync here: counts are read once, at the end of the prefill
            for row, sample in enumerate(state.samples):
                sample.visual_in.append(state.vis[row].numel())
            state.segments.append(state.segment)
            if state.changed:
                kwargs["attention_mask"] = state.mask
                kwargs["position_ids"] = self.arch.layer_position_ids(state.positions)
                kwargs["position_embeddings"] = state.rotary
            if index in self.prune_layers:
                state.layer_rotary = kwargs["position_embeddings"]
            return (args, kwargs) if state.changed else None
        if isinstance(state, _Decode):
            segment = state.segments[index]
            if not segment.pruned:
                return None
            cached = state.per_segment.get(id(segment))
            if cached is None:  # once per segment and step: layers sharing a cache geometry share these
                hidden = args[0] if args else kwargs["hidden_states"]
                positions, rotary = kwargs["position_ids"], kwargs["position_embeddings"]
                if segment.shifted:  # 1-D positions only: contiguous renumbering is refused for M-RoPE (check)
                    positions = positions - segment.shift[:, None]
                    rotary = self.arch.rotary_terms(hidden, positions[None])
                single_query = hidden.shape[1] == 1
                if (
                    segment.all_valid
                    and state.tail_all_valid
                    and single_query
                    and self.arch.attn_implementation != "eager"
                ):
                    mask = None  # one query, no padding: SDPA/FA2 need no mask, as in the unpatched model
                else:
                    key_valid = torch.cat([segment.key_valid, state.tail_valid], dim=1)
                    mask = attention_mask(key_valid, hidden.shape[1], self.arch.attn_implementation, hidden.dtype)
                cached = state.per_segment[id(segment)] = (positions, rotary, mask)
            kwargs["position_ids"], kwargs["position_embeddings"], kwargs["attention_mask"] = cached
            return args, kwargs
        return None

    def _capture(self, kind: str, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if isinstance(self._state, _Prefill):
            self._state.captured[kind] = output

    @staticmethod
    def _row_rotary(state: _Prefill, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The pruning layer's rotary cos and sin for one sample (shared by the batch when they have one row)."""
        cos, sin = state.layer_rotary
        return (cos[row], sin[row]) if cos.shape[0] > 1 else (cos[0], sin[0])

    def _keys(self, state: _Prefill, row: int) -> torch.Tensor:
        """[Nv + Nt, Hkv * d] the pruning layer's keys of one sample after RoPE: its visual tokens, then the text."""
        vis = state.vis[row]
        cos, sin = self._row_rotary(state, row)
        index = torch.cat([vis, torch.arange(int(vis[-1]) + 1, cos.shape[0], device=vis.device)])
        key = state.captured["key"][row][index]
        heads = key.view(key.shape[0], -1, self.arch.head_dim).transpose(0, 1)  # [Hkv, L', d]
        rotated, _ = self.arch.apply_rope(heads, heads, cos[index], sin[index], unsqueeze_dim=0)
        return rotated.transpose(0, 1).reshape(key.shape[0], -1)

    def _score(self, state: _Prefill, row: int, plan: Plan, hidden: torch.Tensor, index: int) -> torch.Tensor | None:
        """[H, R, Nv] attention of the score rows over the current visual block of one sample."""
        if plan.score_rows is None:
            return None
        vis = state.vis[row]
        if plan.score_rows == "raters":
            rows = state.raters[row].to(hidden.device) + int(vis[-1]) + 1
        else:
            rows = torch.tensor([hidden.shape[1] - 1], device=hidden.device)
        query, key = state.captured["query"][row], state.captured["key"][row]
        if plan.score_with_next_layer:  # PyramidDrop: the next layer's view of this layer's output
            layer = self.arch.layers[index + 1]
            normed = layer.input_layernorm(hidden[row])
            query, key = layer.self_attn.q_proj(normed), layer.self_attn.k_proj(normed)
        probs = attention_rows(
            query,
            key,
            *self._row_rotary(state, row),
            rows,
            state.valid[row],
            self.arch.apply_rope,
            self.arch.scaling,
        )[:, :, vis]
        if plan.gravity:
            prior = gravity(  # 1-D positions only (check)
                state.positions[0, row, rows],
                state.positions[0, row, vis],
                self.arch.rotary.inv_freq,
                self.arch.head_dim,
                getattr(self.arch.rotary, "attention_scaling", 1.0),
            )
            if bool((prior <= 0).any()):
                raise ValueError(
                    f"gravity: the RoPE distance prior is <= 0 at distances up to "
                    f"{int(state.positions[0, row, rows].max() - state.positions[0, row, vis[0]])} (head_dim="
                    f"{self.arch.head_dim}); SparseVLM+'s correction is undefined this far, use gravity=False"
                )
            probs = probs / prior
        return probs

    def _after_pruning_layer(self, index: int, module: nn.Module, args: tuple, output: torch.Tensor):
        state = self._state
        if not isinstance(state, _Prefill):
            return None
        return self._stage(state, index, output)

    def _stage(self, state: _Prefill, index: int, hidden: torch.Tensor) -> torch.Tensor | None:
        """Decide (and recycle) for every sample pruned at `index`; the new hidden states, or None if none is."""
        decisions: list[StageDecision | None] = []
        for row, plan in enumerate(state.plans):
            if index not in plan.prune_layers:
                decisions.append(None)
                continue
            vis = state.vis[row]
            start, count, end = int(vis[0]), vis.numel(), int(vis[-1]) + 1
            stage = plan.prune_layers.index(index)
            visual = hidden[row, vis]
            if index == BEFORE_LLM and self._vision_decisions:  # decided on the vision tower (_on_projector)
                decision, n_real = self._vision_decisions[row]
                decisions.append(StageDecision(kept=torch.arange(n_real, device=visual.device)))
                self._record(state, row, index, count, decision)
                continue
            inp = StageInput(
                stage,
                index,
                visual,
                self._score(state, row, plan, hidden, index),
                state.generators[row],
                text=hidden[row, end:] if "text" in plan.needs else None,
                grid=_square_grid(count) if not state.samples[row].stages and end - start == count else None,
                keys=self._keys(state, row) if "keys" in plan.needs else None,
                final_norm=self.arch.text_model.norm if "final_norm" in plan.needs else None,
                image_start=start - int((~state.valid[row, :start]).sum()),
            )
            decision = self.method.decide(inp, plan)
            if plan.recycling is not None and decision.merged is None and decision.kept.numel() < count:
                if decision.scores is None:
                    raise ValueError(f"{self.method.name}: recycling needs the method's scores (StageDecision.scores)")
                merged, groups = recycle_deleted(visual, decision.scores, decision.kept, plan.recycling, inp.generator)
                decision = StageDecision(decision.kept, merged, groups, decision.rank, decision.scores)
            decisions.append(decision)
            self._record(state, row, index, count, decision)
        state.captured.clear()
        if all(d is None for d in decisions):
            return None
        return self._rebuild(state, hidden, decisions)

    @staticmethod
    def _record(state: _Prefill, row: int, index: int, count: int, decision: StageDecision) -> None:
        """Append one decision to the sample's trace (kept tokens also as indices into the prompt)."""
        origin = state.origin[row, state.vis[row]]
        state.samples[row].stages.append(
            StageRecord(
                layer=index,
                visual_in=count,
                kept=decision.kept.tolist(),
                kept_original=origin[decision.kept].tolist(),
                merged_groups=decision.merged_groups,
                rank=decision.rank,
            )
        )

    def _rebuild(self, state: _Prefill, hidden: torch.Tensor, decisions: list[StageDecision | None]) -> torch.Tensor:
        """New hidden states [pad | pre and kept, in order | recycled | text] per sample, left-padded to a common length
        (recycled tokens follow the last visual token; text between images stays in place)."""
        batch, length, dim = hidden.shape
        device = hidden.device
        n_merged = [0 if d is None or d.merged is None else d.merged.shape[0] for d in decisions]
        extra = max(n_merged)
        merged = hidden.new_zeros(batch, extra, dim)
        n_rows = state.positions.shape[0]
        merged_pos = torch.zeros(n_rows, batch, extra, dtype=state.positions.dtype, device=device)
        rows_index, rows_visual = [], []
        for row, decision in enumerate(decisions):
            vis = state.vis[row]
            end = int(vis[-1]) + 1
            kept = vis if decision is None else vis[decision.kept.to(device)]
            if n_merged[row]:
                merged[row, : n_merged[row]] = decision.merged
                centres = torch.tensor([g[0] for g in decision.merged_groups], device=device)  # best-scored member
                merged_pos[:, row, : n_merged[row]] = state.positions[:, row, vis[centres]]
            before = torch.ones(end, dtype=torch.bool, device=device)
            before[vis] = False
            head = torch.cat([before.nonzero().squeeze(1), kept]).sort().values
            recycled = length + torch.arange(n_merged[row], device=device)
            rows_index.append(torch.cat([head, recycled, torch.arange(end, length, device=device)]))
            rows_visual.append(torch.cat([torch.isin(head, kept), torch.ones_like(recycled, dtype=torch.bool)]))
        new_length = max(r.numel() for r in rows_index)
        index = torch.zeros(batch, new_length, dtype=torch.long, device=device)
        is_pad = torch.ones(batch, new_length, dtype=torch.bool, device=device)
        for row, row_index in enumerate(rows_index):
            pad = new_length - row_index.numel()
            index[row, pad:] = row_index
            is_pad[row, pad:] = False
            state.vis[row] = pad + rows_visual[row].nonzero().squeeze(1)
        ext_hidden = torch.cat([hidden, merged], dim=1)
        ext_valid = torch.cat([state.valid, torch.ones(batch, extra, dtype=torch.bool, device=device)], dim=1)
        ext_origin = torch.cat([state.origin, torch.full((batch, extra), -1, device=device)], dim=1)
        ext_positions = torch.cat([state.positions, merged_pos], dim=2)
        new_hidden = torch.gather(ext_hidden, 1, index[..., None].expand(batch, new_length, dim))
        state.valid = torch.gather(ext_valid, 1, index) & ~is_pad
        state.origin = torch.gather(ext_origin, 1, index).masked_fill(is_pad, -1)
        gathered = torch.gather(ext_positions, 2, index[None].expand(n_rows, -1, -1))
        if next(p for p in state.plans if p.prune_layers).positions == "contiguous":  # 1-D only (check)
            first = self._first_valid_position(ext_positions[0], ext_valid, index, is_pad)
            state.positions = (first[:, None] + state.valid.long().cumsum(dim=1) - 1).clamp(min=0)[None]
            shift = state.original_valid_count - state.valid.sum(dim=1)
        else:
            state.positions = gathered.masked_fill(is_pad[None], 0)
            shift = torch.zeros(batch, dtype=torch.long, device=device)
        state.changed = True
        state.rotary = self.arch.rotary_terms(new_hidden, state.positions)
        needs_mask = self.arch.attn_implementation == "eager" or state.hf_mask_present or not bool(state.valid.all())
        state.mask = (
            attention_mask(state.valid, new_length, self.arch.attn_implementation, hidden.dtype) if needs_mask else None
        )
        state.segment = _Segment(state.valid, shift, pruned=True)
        return new_hidden

    @staticmethod
    def _first_valid_position(
        positions: torch.Tensor, valid: torch.Tensor, index: torch.Tensor, is_pad: torch.Tensor
    ) -> torch.Tensor:
        """Position of each sample's first real token (0 for HF's left-padded batches)."""
        gathered_valid = torch.gather(valid, 1, index) & ~is_pad
        first = gathered_valid.long().argmax(dim=1, keepdim=True)
        return torch.gather(torch.gather(positions, 1, index), 1, first)[:, 0]

    # ------------------------------------------------------------------------------------------------ forward exit
    def _on_text_end(self, module: nn.Module, args: tuple, kwargs: dict, output) -> None:
        state, self._state = self._state, None
        self._vision_decisions = []
        if not isinstance(state, _Prefill):
            return
        counts: dict[int, list[int]] = {}
        for segment in state.segments:
            if id(segment) not in counts:
                counts[id(segment)] = segment.key_valid.sum(dim=1).tolist()
                segment.shifted = bool((segment.shift != 0).any())
                segment.all_valid = bool(segment.key_valid.all())
        for row, sample in enumerate(state.samples):
            sample.tokens_in = [int(counts[id(segment)][row]) for segment in state.segments]
            sample.visual_out = sample.visual_in[1:] + [state.vis[row].numel()]
            self.trace.samples.append(sample)
        cache = getattr(output, "past_key_values", None)
        if cache is not None:
            self._decode[cache] = _Decode(
                prefill_len=state.segments[0].key_valid.shape[1], input_len=state.input_len, segments=state.segments
            )


def check(model: nn.Module, method: PruningMethod) -> ArchSpec:
    """Raise the one-line error attach would (unsupported model, shape, tower or budget); install nothing.

    The budget is checked for the model's image-token count (LLaVA-1.5: 576), so an unreachable budget fails here, not
    at the first forward pass.
    """
    if not isinstance(method, PruningMethod):
        raise TypeError(f"method: expected a sparsevlm method (sparsevlm.make_method, SparseVLM, ...), got {method!r}")
    arch = resolve(model)
    method.check_model(arch.n_layers, arch.n_heads)
    check_hook_points(arch.model_type, method)
    if arch.projector is not None:
        method.check_tower(arch.vision_feature_index + 1, arch.n_image_tokens)
    if arch.n_image_tokens is not None:  # a family whose count varies per input is planned (and checked) per sample
        check_positions(arch.positions, _plan(method, arch.n_layers, arch.n_image_tokens))
    return arch


@contextlib.contextmanager
def attach(model: nn.Module, method: PruningMethod) -> Iterator[PruneTrace]:
    """Prune visual tokens of `model` with `method` inside the block; yields the trace of every prefill.

    Works in every generation mode (greedy, sampling, beam search) and with left-padded batches. On exit every
    hook is removed and the model is exactly as before.
    """
    arch = check(model, method)
    engine = _Engine(arch, method)
    handles = engine.install()
    try:
        yield engine.trace
    finally:
        for handle in handles:
            handle.remove()

"""Per-sample timing and memory of one generate() call, measured the same way for every method.

Timer boundaries (docs/efficiency.md):
- prefill: the prefill's decoder stack, from layer 0's first forward-pre-hook to the last layer's last forward hook --
  the reference's "CUDA time" (after rater selection, before the final norm and lm_head); pruning inside the stack
  (scoring, selection, recycling, sequence surgery) is included.
- ttft: from just before generate() to the end of the first model forward (vision tower, projector, rater
  selection, decoder stack, lm_head at the last position).
- decode_per_token: mean interval between the ends of consecutive model forwards after the first (one new token
  each, generate's own bookkeeping included).
- decode_stack: mean over decode steps of the same decoder-stack interval as prefill (one token per step): the
  fixed per-forward cost (kernel launches / Python dispatch) that does not shrink with pruning.
- e2e: the whole generate() call.
- overhead: time spent in other hooks on the text model and its layers during the prefill -- with a method
  attached, the method's own work (rater selection, scoring, selection, recycling, re-slicing the per-layer inputs).
CUDA events on a GPU (read after one synchronize at the end); on CPU time.perf_counter, plus time.process_time for
the prefill (robust when other processes share the cores).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from sparsevlm.arch import resolve
from sparsevlm.engine import attach
from sparsevlm.methods.base import PruningMethod
from sparsevlm.trace import PruneTrace


@dataclass(frozen=True)
class GenerateTiming:
    """Timings (seconds) and memory (bytes) of one generate() call; see the module docstring for the boundaries."""

    prefill_s: float
    ttft_s: float
    e2e_s: float
    decode_per_token_s: float | None  # None when only one token was generated
    decode_stack_s: float | None  # None when only one token was generated
    overhead_s: float
    new_tokens: int
    kv_cache_bytes: int  # keys + values of every layer right after the prefill (ragged lengths after pruning)
    peak_memory_bytes: int  # CUDA max allocated, or the process's peak RSS on CPU
    base_memory_bytes: int  # the same quantity just before generate(): weights and anything else already resident
    device: str
    prefill_cpu_s: float | None = None  # process CPU time of the prefill decoder stack (CPU only)
    decode_stack_cpu_s: float | None = None  # process CPU time of decode_stack (CPU only, None for one token)

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return asdict(self)


class _Clock:
    """CUDA events on a GPU, perf_counter (and process_time) on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter(), time.process_time()

    def seconds(self, start: Any, end: Any) -> float:
        if self.cuda:
            return start.elapsed_time(end) / 1000.0
        return end[0] - start[0]

    def cpu_seconds(self, start: Any, end: Any) -> float | None:
        return None if self.cuda else end[1] - start[1]

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def kv_cache_bytes(cache: Any) -> int:
    """Bytes of all key and value tensors in a transformers Cache (each layer counted at its own length)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def _rss_bytes(field_name: str) -> int | None:
    """VmRSS / VmHWM from /proc/self/status (Linux), in bytes."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_cpu_peak() -> bool:
    """Reset the process's peak RSS (Linux >= 4.0: write 5 to clear_refs); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def _cpu_peak(was_reset: bool) -> int:
    """Peak RSS since the reset, or since process start when the reset was not possible."""
    hwm = _rss_bytes("VmHWM") if was_reset else None
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class _Marks:
    """Clock marks collected by the hooks of one generate() call."""

    forward_ends: list[Any] = field(default_factory=list)
    stack_starts: list[Any] = field(default_factory=list)
    stack_ends: list[Any] = field(default_factory=list)
    overhead: list[tuple[Any, Any]] = field(default_factory=list)
    open_mark: dict[int, Any] = field(default_factory=dict)
    kv_bytes: int = 0

    @property
    def in_prefill(self) -> bool:
        return not self.forward_ends


def _install(model: nn.Module, clock: _Clock, marks: _Marks) -> list[torch.utils.hooks.RemovableHandle]:
    """Timing hooks; prepended ones run before, appended ones after every hook already on the module."""
    arch = resolve(model)
    handles = []

    def opener(key: int, *_args: Any) -> None:
        if marks.in_prefill:
            marks.open_mark[key] = clock.mark()

    def closer(key: int, *_args: Any) -> None:
        if marks.in_prefill and key in marks.open_mark:
            marks.overhead.append((marks.open_mark.pop(key), clock.mark()))

    def hook_pair(module: nn.Module, key: int, pre: bool) -> None:
        register: Callable = module.register_forward_pre_hook if pre else module.register_forward_hook
        handles.append(register(lambda *a: opener(key, *a), prepend=True))
        handles.append(register(lambda *a: closer(key, *a)))

    def stack_start(*_args: Any) -> None:
        marks.stack_starts.append(clock.mark())

    def stack_end(*_args: Any) -> None:
        marks.stack_ends.append(clock.mark())

    def forward_end(_module: nn.Module, _args: Any, output: Any) -> None:
        if marks.in_prefill:
            marks.kv_bytes = kv_cache_bytes(getattr(output, "past_key_values", None))
        marks.forward_ends.append(clock.mark())

    hook_pair(arch.text_model, -1, pre=True)  # rater selection lives in the text model's pre-hook
    for index, layer in enumerate(arch.layers):
        hook_pair(layer, 2 * index, pre=True)
        hook_pair(layer, 2 * index + 1, pre=False)
    handles.append(arch.layers[0].register_forward_pre_hook(stack_start, prepend=True))
    handles.append(arch.layers[-1].register_forward_hook(stack_end))
    handles.append(model.register_forward_hook(forward_end))
    return handles


def timed_generate(
    model: nn.Module, inputs: dict[str, torch.Tensor], method: PruningMethod, **generate_kwargs: Any
) -> tuple[GenerateTiming, PruneTrace, torch.Tensor]:
    """Run model.generate(**inputs, **generate_kwargs) with `method` attached; return (timing, trace, output ids)."""
    device = next(model.parameters()).device
    clock, marks = _Clock(device), _Marks()
    if clock.cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base_memory = torch.cuda.memory_allocated(device)
        was_reset = False
    else:
        base_memory = _rss_bytes("VmRSS") or 0
        was_reset = _reset_cpu_peak()
    with attach(model, method) as trace:
        handles = _install(model, clock, marks)  # after attach(): the method's hooks sit between each timing pair
        try:
            start = clock.mark()
            with torch.inference_mode():
                output = model.generate(**inputs, **generate_kwargs)
            end = clock.mark()
            clock.sync()
        finally:
            for handle in handles:
                handle.remove()
    peak = torch.cuda.max_memory_allocated(device) if clock.cuda else _cpu_peak(was_reset)
    ends, steps = marks.forward_ends, len(marks.forward_ends)
    if not steps or len(marks.stack_starts) != steps or len(marks.stack_ends) != steps:
        raise RuntimeError("timed_generate: expected one pass through the decoder stack per model forward")
    pairs = list(zip(marks.stack_starts, marks.stack_ends, strict=True))
    stacks = [clock.seconds(a, b) for a, b in pairs]
    stacks_cpu = [clock.cpu_seconds(a, b) for a, b in pairs]
    timing = GenerateTiming(
        prefill_s=stacks[0],
        ttft_s=clock.seconds(start, ends[0]),
        e2e_s=clock.seconds(start, end),
        decode_per_token_s=clock.seconds(ends[0], ends[-1]) / (steps - 1) if steps > 1 else None,
        decode_stack_s=sum(stacks[1:]) / (steps - 1) if steps > 1 else None,
        overhead_s=sum(clock.seconds(a, b) for a, b in marks.overhead),
        new_tokens=int(output.shape[1] - inputs["input_ids"].shape[1]),
        kv_cache_bytes=marks.kv_bytes,
        peak_memory_bytes=int(peak),
        base_memory_bytes=int(base_memory),
        device=str(device),
        prefill_cpu_s=stacks_cpu[0],
        decode_stack_cpu_s=sum(stacks_cpu[1:]) / (steps - 1) if steps > 1 and not clock.cuda else None,
    )
    return timing, trace, output

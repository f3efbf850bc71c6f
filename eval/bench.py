"""Efficiency benchmark: Dense vs SparseVLM (each version) vs other methods on a LLaVA: a named shape with random
weights, or a local checkpoint on the bundled synthetic questions.

    python -m eval.bench --shape cpu-32l --repeats 5
    python -m eval.bench --shape llava-1.5-7b --device cuda --repeats 20 --batches 1 4 8
    python -m eval.bench --model models/tiny-llava --budgets 48 32 16 --baselines fastv random --batch 8
    python -m eval.bench --shape cpu-32l --budgets 64 --baselines all       # every registered method
    python -m eval.bench --shape cpu-qwen2.5-vl --versions 1.5 --positions default original   # another family

Every configuration runs in one process, interleaved (each repeat visits every configuration once, in a rotated
order), after one untimed warm-up per configuration. Prints one table and writes it, with every per-run value, as
JSON under results/bench/. docs/efficiency.md explains each column.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

import sparsevlm
from eval.registry import METHODS, make_method, method_options
from eval.shapes import SHAPES, Shape, build_family_model, build_model, make_batch, make_family_batch
from sparsevlm import arch, flops
from sparsevlm.engine import check_positions
from sparsevlm.methods.base import PruningMethod
from sparsevlm.methods.sparsevlm import VERSION_DEFAULTS
from sparsevlm.timing import GenerateTiming, timed_generate

VERSIONS = tuple(VERSION_DEFAULTS)  # every released SparseVLM version the library implements
IMAGE_VERSIONS = tuple(v for v in VERSIONS if v != "video")  # the default: the video branch's schedule is for videos
BASELINES = tuple(name for name in METHODS if name not in ("dense", "sparsevlm"))  # registration order
# The CPU targets of the efficiency work: prefill time may exceed the FLOPs saving by at most 15 %, and a method's own
# work (scoring, selection, recycling) may cost at most 3 % of dense prefill.
MAX_TIME_OVER_FLOPS = 1.15
MAX_OVERHEAD_PCT = 3.0


@dataclass(frozen=True)
class Config:
    """One benchmarked method instance."""

    label: str
    method_name: str
    version: str | None
    budget: int | None
    method: PruningMethod


def configurations(
    budgets: list[int],
    versions: list[str],
    fastv_layer: int | None,
    baselines: tuple[str, ...] = ("fastv",),
    positions: tuple[str, ...] = ("default",),
) -> list[Config]:
    """Dense, then SparseVLM per version, then each baseline (FastV, random, the zoo), each at every budget; once per
    positions choice ("default": the method's own; "original": labelled +original, for methods with that option)."""
    out = [Config("dense", "dense", None, None, sparsevlm.Dense())]
    for choice in positions:
        option, suffix = ({}, "") if choice == "default" else ({"positions": choice}, f"+{choice}")
        for version in versions:
            for budget in budgets:  # v2.0's top-k heads follow the model's head count (the library's head_fraction)
                method = sparsevlm.SparseVLM(budget=budget, version=version, **option)
                out.append(Config(f"sparsevlm-{version}{suffix}@{budget}", "sparsevlm", version, budget, method))
        for name in baselines:
            if option and "positions" not in method_options(name):
                continue
            for budget in budgets:
                options = {"layer": fastv_layer} if "layer" in method_options(name) else {}
                method = make_method(name, budget, **options, **option)
                out.append(Config(f"{name}{suffix}@{budget}", name, None, budget, method))
    return out


def runnable(
    configs: list[Config], model: torch.nn.Module, n_visual: int | None = None
) -> tuple[list[Config], list[str]]:
    """The configurations this model can run, and one line per one it cannot (a budget below a method's floor, a tower
    method on a family that reshapes the tower's output, contiguous positions on M-RoPE). n_visual: the input's visual
    count, for families whose count varies per input (planned per sample, so checked here for this input)."""
    kept, skipped = [], []
    for config in configs:
        try:
            spec = sparsevlm.check(model, config.method)
            if n_visual is not None:
                check_positions(spec.positions, config.method.plan(spec.n_layers, n_visual))
        except ValueError as err:
            skipped.append(f"skipped {config.label}: {err}")
            continue
        kept.append(config)
    return kept, skipped


@contextlib.contextmanager
def forward_cpu_marks(model: torch.nn.Module) -> Iterator[list[float]]:
    """Process CPU time at the end of every top-level forward inside the block (the prefill, then one per new token)."""
    marks: list[float] = []
    handle = model.register_forward_hook(lambda *_: marks.append(time.process_time()))
    try:
        yield marks
    finally:
        handle.remove()


def run_once(model, inputs: dict, config: Config, new_tokens: int, repeat: int = 0) -> dict[str, Any]:
    """One timed generate plus the trace-driven FLOPs and token counts (per-sample means over the batch).

    Adds process CPU times of the whole generate and of each decode step (one token: every forward after the first),
    which other processes on the same cores disturb far less than wall time.
    """
    pad = model.config.text_config.pad_token_id
    started = time.process_time()
    with forward_cpu_marks(model) as marks:
        timing, trace, _ = timed_generate(
            model, inputs, config.method, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
            pad_token_id=0 if pad is None else pad,
        )  # fmt: skip
    e2e_cpu = time.process_time() - started
    samples = trace.samples
    towers = arch.tower_work(model.config, inputs)
    paper = [flops.paper_flops(model.config, s) for s in samples]
    full = [
        flops.full_flops(model.config, s, flops.scored_rows(config.method, s), tower)
        for s, tower in zip(samples, towers, strict=True)
    ]
    return {
        "label": config.label,
        "repeat": repeat,
        "timing": timing.to_dict(),
        "e2e_cpu_s": e2e_cpu,
        "decode_cpu_per_token_s": (marks[-1] - marks[0]) / (len(marks) - 1) if len(marks) > 1 else None,
        "batch": len(samples),
        "equivalent_tokens": statistics.fmean(s.equivalent_tokens for s in samples),
        "equivalent_tokens_input": statistics.fmean(s.equivalent_tokens_input for s in samples),
        "tokens_in": samples[0].tokens_in,
        "paper_flops": statistics.fmean(paper),
        "full_flops": statistics.fmean(f.total for f in full),
        "full_breakdown": full[0].to_dict(),
    }


def _value(run: dict, key: str) -> float | None:
    """A per-run quantity: a GenerateTiming field, or one of run_once's own CPU times."""
    return run[key] if key in run else run["timing"][key]


def _median(runs: list[dict], key: str) -> float | None:
    values = [_value(r, key) for r in runs if _value(r, key) is not None]
    return statistics.median(values) if values else None


def _spread(runs: list[dict], key: str, scale: float = 1.0) -> dict[str, float | None]:
    """Median, min and max of one quantity over the repeats (x scale)."""
    return _summary([scale * _value(r, key) for r in runs if _value(r, key) is not None])


def paired_ratios(runs: list[dict], dense: list[dict], key: str) -> dict[str, float | None]:
    """Median, min and max over repeats of run / dense run of the same repeat (interleaved, so paired in time)."""
    by_repeat = {r["repeat"]: _value(r, key) for r in dense}
    values = [
        _value(r, key) / by_repeat[r["repeat"]]
        for r in runs
        if _value(r, key) is not None and by_repeat.get(r["repeat"])
    ]
    return _summary(values)


def _summary(values: list[float]) -> dict[str, float | None]:
    """Median, min and max of some values (all None when there are none)."""
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(configs: list[Config], runs: list[dict]) -> list[dict[str, Any]]:
    """One row per configuration: medians (and ranges) over repeats, ratios to dense, overhead net of dense's floor."""
    by_label = {c.label: [r for r in runs if r["label"] == c.label] for c in configs}
    dense = by_label["dense"]
    dense_prefill, dense_cpu = _median(dense, "prefill_s"), _median(dense, "prefill_cpu_s")
    on_cpu = dense_cpu is not None
    prefill_key = "prefill_cpu_s" if on_cpu else "prefill_s"
    # fixed per-forward cost of the decoder stack (dispatch, launches): dense's decoder stack on a one-token step
    fixed = _median(dense, "decode_stack_cpu_s" if on_cpu else "decode_stack_s") or 0.0
    dense_paper, dense_overhead = dense[0]["paper_flops"], _median(dense, "overhead_s")
    rows = []
    for config in configs:
        group = by_label[config.label]
        prefill, cpu = _median(group, "prefill_s"), _median(group, "prefill_cpu_s")
        flops_ratio = group[0]["paper_flops"] / dense_paper
        time_ratio = cpu / dense_cpu if on_cpu else prefill / dense_prefill
        net_ratio = ((cpu if on_cpu else prefill) - fixed) / ((dense_cpu if on_cpu else dense_prefill) - fixed)
        overhead = _median(group, "overhead_s")
        peak_delta = statistics.median(
            r["timing"]["peak_memory_bytes"] - r["timing"]["base_memory_bytes"] for r in group
        )
        decode = _median(group, "decode_per_token_s")
        decode_cpu = _spread(group, "decode_cpu_per_token_s", 1e3)
        rows.append(
            {
                "label": config.label,
                "method": config.method_name,
                "version": config.version,
                "budget": config.budget,
                "repeats": len(group),
                "batch": group[0]["batch"],
                "equivalent_tokens": group[0]["equivalent_tokens"],
                "equivalent_tokens_input": group[0]["equivalent_tokens_input"],
                "paper_tflops": group[0]["paper_flops"] / 1e12,
                "full_tflops": group[0]["full_flops"] / 1e12,
                "flops_ratio": flops_ratio,
                "prefill_ms": 1e3 * prefill,
                "prefill_cpu_ms": None if cpu is None else 1e3 * cpu,
                "prefill_time_ms": _spread(group, prefill_key, 1e3),  # CPU time on CPU, CUDA time on a GPU
                "prefill_ratio": time_ratio,
                "prefill_ratio_paired": paired_ratios(group, dense, prefill_key),
                "ratio_over_flops_ratio": time_ratio / flops_ratio,
                "fixed_stack_ms": 1e3 * fixed,
                "net_ratio_over_flops_ratio": net_ratio / flops_ratio,
                "e2e_ms": 1e3 * _median(group, "e2e_s"),
                "e2e_time_ms": _spread(group, "e2e_cpu_s" if on_cpu else "e2e_s", 1e3),
                "e2e_ratio_paired": paired_ratios(group, dense, "e2e_cpu_s" if on_cpu else "e2e_s"),
                "ttft_ms": 1e3 * _median(group, "ttft_s"),
                "decode_ms_per_token": None if decode is None else 1e3 * decode,
                "decode_cpu_ms_per_token": decode_cpu["median"],
                "decode_time_ms": decode_cpu if on_cpu else _spread(group, "decode_per_token_s", 1e3),
                "decode_ratio_paired": paired_ratios(
                    group, dense, "decode_cpu_per_token_s" if on_cpu else "decode_per_token_s"
                ),
                "decode_stack_cpu_ms": None
                if _median(group, "decode_stack_cpu_s") is None
                else 1e3 * _median(group, "decode_stack_cpu_s"),
                "kv_mb": group[0]["timing"]["kv_cache_bytes"] / 2**20,
                "kv_mb_per_sample": group[0]["timing"]["kv_cache_bytes"] / 2**20 / group[0]["batch"],
                "peak_delta_mb": peak_delta / 2**20,
                "overhead_ms": 1e3 * overhead,
                "overhead_pct_of_dense": 100 * (overhead - dense_overhead) / dense_prefill,
                "overhead_flops_pct": 100 * group[0]["full_breakdown"]["overhead"] / dense_paper,
            }
        )
    return rows


def _ratio_text(ratio: dict[str, float | None]) -> str:
    """'0.93 (0.90-0.97)': median and range of paired ratios over repeats."""
    if ratio["median"] is None:
        return "-"
    return f"{ratio['median']:.2f} ({ratio['min']:.2f}-{ratio['max']:.2f})"


COLUMNS = [
    ("label", "config", "{}"),
    ("equivalent_tokens", "eq.tok", "{:.1f}"),
    ("paper_tflops", "TFLOPs paper", "{:.4g}"),
    ("full_tflops", "TFLOPs full", "{:.4g}"),
    ("flops_ratio", "FLOPs x", "{:.3f}"),
    ("prefill_ms", "prefill ms", "{:.1f}"),
    ("prefill_cpu_ms", "prefill CPU ms", "{:.1f}"),
    ("prefill_ratio", "prefill x", "{:.3f}"),
    ("ratio_over_flops_ratio", "time/FLOPs", "{:.2f}"),
    ("net_ratio_over_flops_ratio", "net time/FLOPs", "{:.2f}"),
    ("e2e_ms", "e2e ms", "{:.1f}"),
    ("ttft_ms", "TTFT ms", "{:.1f}"),
    ("decode_ms_per_token", "decode ms/tok", "{:.1f}"),
    ("decode_cpu_ms_per_token", "decode CPU ms/tok", "{:.2f}"),
    ("decode_ratio_paired", "decode x (range)", _ratio_text),
    ("kv_mb", "KV MB", "{:.2f}"),
    ("overhead_ms", "ovh ms", "{:.1f}"),
    ("overhead_pct_of_dense", "ovh % dense", "{:.2f}"),
]


def format_table(rows: list[dict], columns: list[tuple[str, str, Any]] = COLUMNS) -> str:
    """A Markdown table of the rows (a column's format is a format string or a function of the value)."""
    lines = ["| " + " | ".join(title for _, title, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [
            "-" if row[key] is None else (fmt(row[key]) if callable(fmt) else fmt.format(row[key]))
            for key, _, fmt in columns
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_targets(rows: list[dict], budget: int = 64) -> list[str]:
    """The CPU targets, one line per row at `budget`: time vs FLOPs ratio, method overhead, decode vs dense."""
    lines = []
    for row in rows:
        if row["budget"] != budget:
            continue
        ok_ratio = row["ratio_over_flops_ratio"] <= MAX_TIME_OVER_FLOPS
        ok_overhead = row["overhead_pct_of_dense"] <= MAX_OVERHEAD_PCT
        line = (
            f"{row['label']}: prefill ratio / FLOPs ratio = {row['ratio_over_flops_ratio']:.2f} "
            f"({'ok' if ok_ratio else 'MISSED'}, target <= {MAX_TIME_OVER_FLOPS:g}; "
            f"{row['net_ratio_over_flops_ratio']:.2f} net of the {row['fixed_stack_ms']:.0f} ms fixed stack cost); "
            "method overhead = "
            f"{row['overhead_pct_of_dense']:.2f} % of dense prefill "
            f"({'ok' if ok_overhead else 'MISSED'}, target <= {MAX_OVERHEAD_PCT:g} %)"
        )
        decode = row.get("decode_ratio_paired") or {}
        if decode.get("median") is not None:
            verdict = "SLOWER than dense" if decode["min"] > 1.0 else ("ok" if decode["median"] <= 1.0 else "noisy")
            line += f"; decode per token = {_ratio_text(decode)} x dense ({verdict}, target <= 1)"
        lines.append(line)
    return lines


def shape_inputs(model, shape: Shape, batch: int, args, device, dtype) -> dict[str, torch.Tensor]:
    """`batch` equal prompts of the shape's family: LLaVA-1.5 at --prompt-len tokens, the others with 118 text tokens
    around the visual block of the shape's input."""
    if shape.family == "llava":
        return make_batch(shape, batch, args.prompt_len, args.seed, device, dtype)
    return make_family_batch(model, shape, batch, seed=args.seed, device=device, dtype=dtype)


def throughput(model, shape: Shape, args, device, dtype) -> list[dict[str, Any]]:
    """Generation throughput per batch size for Dense and SparseVLM-1.5 at the smallest budget, interleaved."""
    methods = [
        ("dense", sparsevlm.Dense()),
        (f"sparsevlm-1.5@{min(args.budgets)}", sparsevlm.SparseVLM(min(args.budgets))),
    ]
    batches = {b: shape_inputs(model, shape, b, args, device, dtype) for b in args.batches}
    cases = [(b, label, method) for b in args.batches for label, method in methods]
    results: dict[tuple[int, str], list[GenerateTiming]] = {(b, label): [] for b, label, _ in cases}
    for repeat in range(-args.warmup, args.repeats):
        for b, label, method in cases:
            timing, _, _ = timed_generate(
                model, batches[b], method, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                do_sample=False, pad_token_id=0,
            )  # fmt: skip
            if repeat >= 0:
                results[(b, label)].append(timing)
            _progress(f"throughput {'warm-up' if repeat < 0 else repeat + 1}: batch {b} {label} {timing.e2e_s:.2f} s")
    rows = []
    for (b, label), timings in results.items():
        e2e = statistics.median(t.e2e_s for t in timings)
        prefill = statistics.median(t.prefill_s for t in timings)
        rows.append(
            {
                "label": label,
                "batch": b,
                "e2e_ms": 1e3 * e2e,
                "prefill_ms": 1e3 * prefill,
                "samples_per_s": b / e2e,
                "tokens_per_s": b * args.new_tokens / e2e,
                "prefill_samples_per_s": b / prefill,
            }
        )
    for row in rows:
        single = next(r for r in rows if r["label"] == row["label"] and r["batch"] == min(args.batches))
        row["speedup_vs_batch1"] = row["samples_per_s"] / single["samples_per_s"]
    return rows


THROUGHPUT_COLUMNS = [
    ("label", "config", "{}"),
    ("batch", "batch", "{}"),
    ("prefill_ms", "prefill ms", "{:.1f}"),
    ("e2e_ms", "e2e ms", "{:.1f}"),
    ("samples_per_s", "samples/s", "{:.3f}"),
    ("tokens_per_s", "new tok/s", "{:.2f}"),
    ("speedup_vs_batch1", "x batch 1", "{:.2f}"),
]


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m eval.bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="cpu-32l", help="model shape (random weights)")
    parser.add_argument(
        "--model", type=Path, default=None, help="a local LLaVA checkpoint instead of --shape (synthetic questions)"
    )
    parser.add_argument("--batch", type=int, default=1, help="prompts per generate call")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per configuration before timing")
    parser.add_argument(
        "--budgets", type=int, nargs="+", default=None, help="equivalent-token budgets; default: the shape's"
    )
    parser.add_argument(
        "--versions",
        nargs="*",
        default=list(IMAGE_VERSIONS),
        choices=VERSIONS,
        help="SparseVLM versions (default: image)",
    )
    parser.add_argument(
        "--baselines", nargs="*", default=["fastv"], choices=(*BASELINES, "all"), help="other methods; all: every one"
    )
    parser.add_argument(
        "--fastv-layer", type=int, default=None, help="FastV's K (prunes layer K-1's output); default: depth-mapped 2"
    )
    parser.add_argument(
        "--positions",
        nargs="+",
        default=["default"],
        choices=("default", "original"),
        help="positions of the survivors: each method's own, and/or original (M-RoPE models need original)",
    )
    parser.add_argument(
        "--prompt-len", type=int, default=694, help="prompt tokens, the visual ones included (LLaVA-1.5 shapes)"
    )
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens generated per sample (forced)")
    parser.add_argument("--batches", type=int, nargs="*", default=[], help="also measure throughput at these batches")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--dtype", default="auto", help="auto (cuda: bfloat16, cpu: float32) | float32 | bfloat16")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 on a shared machine)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the synthetic prompt")
    parser.add_argument("--out", type=Path, default=None, help="JSON path; default results/bench/<shape>-<device>.json")
    args = parser.parse_args(argv)
    args.budgets = args.budgets or list(SHAPES[args.shape].budgets)
    if args.model is not None and args.batches:
        parser.error("--batches (throughput) needs a --shape; time a checkpoint's batch with --batch")
    return args


def checkpoint_inputs(
    model_dir: Path, batch: int, device: torch.device, dtype: torch.dtype
) -> tuple[Any, dict[str, torch.Tensor]]:
    """A local LLaVA checkpoint and a left-padded batch of the bundled synthetic held-out questions.

    The questions are taken in turn from each question family (existence, MME, attribute, counting, relation), in
    the prompts lmms-eval sends, through the processor's chat template: the same kind of batch as the demo's cells.
    """
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from eval import synth

    model = LlavaForConditionalGeneration.from_pretrained(
        model_dir, local_files_only=True, dtype=dtype, attn_implementation="sdpa"
    ).to(device)
    processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    by_family: dict[str, list[dict]] = {}
    for item in synth.eval_items():
        by_family.setdefault(item["family"], []).append(item)
    families = sorted(by_family)
    items = [by_family[families[i % len(families)]][i // len(families)] for i in range(batch)]
    prompts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": it["prompt"]}]}],
            add_generation_prompt=True,
        )
        for it in items
    ]
    images = [Image.open(io.BytesIO(it["image"]["bytes"])).convert("RGB") for it in items]
    processor.tokenizer.padding_side = "left"  # the engine expects left-padded batches, as the harness sends them
    inputs = processor(images=images, text=prompts, padding=True, return_tensors="pt")
    inputs = {k: v.to(device) for k, v in inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    return model.eval(), inputs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the table(s); write the JSON; return what was written."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))  # fmt: skip
    dtype_name = args.dtype if args.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    dtype = getattr(torch, dtype_name)
    shape = SHAPES[args.shape]
    name = shape.name if args.model is None else args.model.name
    _progress(f"building {name} ({dtype_name}, {device}) ...")
    started = time.time()
    if args.model is None:
        build = build_model if shape.family == "llava" else build_family_model
        model = build(shape, dtype, device, args.seed)
        inputs = shape_inputs(model, shape, args.batch, args, device, dtype)
    else:
        model, inputs = checkpoint_inputs(args.model, args.batch, device, dtype)
    _progress(f"built in {time.time() - started:.1f} s")
    baselines = BASELINES if "all" in args.baselines else tuple(args.baselines)
    spec = arch.resolve(model)
    n_visual = (
        None
        if spec.n_image_tokens
        else int(
            torch.isin(
                inputs["input_ids"][0], torch.tensor(spec.visual_token_ids, device=inputs["input_ids"].device)
            ).sum()
        )
    )
    all_configs = configurations(args.budgets, args.versions, args.fastv_layer, baselines, tuple(args.positions))
    configs, skipped = runnable(all_configs, model, n_visual)
    for line in skipped:
        _progress(line)
    runs = []
    for repeat in range(-args.warmup, args.repeats):
        shift = repeat % len(configs)
        for config in configs[shift:] + configs[:shift]:
            run = run_once(model, inputs, config, args.new_tokens, repeat)
            tag = "warm-up" if repeat < 0 else f"repeat {repeat + 1}/{args.repeats}"
            _progress(f"{tag}: {config.label:<22} prefill {1e3 * run['timing']['prefill_s']:8.1f} ms")
            if repeat >= 0:
                runs.append(run)
    rows = summarize(configs, runs)
    table = format_table(rows)
    prompt = f"batch of {args.batch}, prompt {inputs['input_ids'].shape[1]} tokens"
    print(f"\n{name}, {device} {dtype_name}, {prompt}, {args.new_tokens} new tokens, median of {args.repeats}\n")
    print(table)
    targets = check_targets(rows, min(args.budgets))
    print("\n" + "\n".join(targets))
    result: dict[str, Any] = {
        "meta": {
            "command": "python -m eval.bench " + " ".join(sys.argv[1:] if argv is None else argv),
            "shape": vars(shape) if args.model is None else None,
            "model": None if args.model is None else str(args.model),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "device_type": device.type,
            "dtype": dtype_name,
            "threads": args.threads,
            "batch": args.batch,
            "repeats": args.repeats,
            "new_tokens": args.new_tokens,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        },
        "rows": rows,
        "table": table,
        "targets": targets,
        "skipped": skipped,
        "runs": runs,
    }
    if args.batches:
        tp_rows = throughput(model, shape, args, device, dtype)
        result["throughput"] = tp_rows
        print("\n" + format_table(tp_rows, THROUGHPUT_COLUMNS))
    out = args.out or Path("results/bench") / f"{name}-{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    _progress(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()

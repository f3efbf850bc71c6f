"""Efficiency benchmark: Dense vs SparseVLM (each version) vs FastV on a random-init LLaVA of a named shape.

    python -m eval.bench --shape cpu-32l --repeats 5
    python -m eval.bench --shape llava-1.5-7b --device cuda --repeats 20 --batches 1 4 8

Every configuration runs in one process, interleaved (each repeat visits every configuration once, in a rotated
order), after one untimed warm-up per configuration. Prints one table and writes it, with every per-run value, as
JSON under results/bench/. docs/efficiency.md explains each column.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

import sparsevlm
from eval.shapes import SHAPES, Shape, build_model, make_batch
from sparsevlm import flops
from sparsevlm.methods.base import PruningMethod
from sparsevlm.timing import GenerateTiming, timed_generate


@dataclass(frozen=True)
class Config:
    """One benchmarked method instance."""

    label: str
    method_name: str
    budget: int | None
    method: PruningMethod


def configurations(shape: Shape, budgets: list[int], versions: list[str], fastv_layer: int) -> list[Config]:
    """Dense, then SparseVLM per version and FastV, each at every budget."""
    out = [Config("dense", "dense", None, sparsevlm.Dense())]
    for version in versions:
        extra = {"heads": min(14, shape.heads)} if version == "2.0" else {}  # top-14 heads needs >= 14 heads
        for budget in budgets:
            method = sparsevlm.SparseVLM(budget=budget, version=version, **extra)
            out.append(Config(f"sparsevlm-{version}@{budget}", f"sparsevlm-{version}", budget, method))
    for budget in budgets:
        method = sparsevlm.FastV(budget=budget, layer=fastv_layer)
        out.append(Config(f"fastv@{budget}", "fastv", budget, method))
    return out


def run_once(model, inputs: dict, config: Config, new_tokens: int) -> dict[str, Any]:
    """One timed generate plus the trace-driven FLOPs and token counts (per-sample means over the batch)."""
    timing, trace, _ = timed_generate(
        model, inputs, config.method, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
        pad_token_id=0,
    )  # fmt: skip
    samples = trace.samples
    paper = [flops.paper_flops(model.config, s) for s in samples]
    full = [flops.full_flops(model.config, s, flops.scored_rows(config.method, s)) for s in samples]
    return {
        "label": config.label,
        "timing": timing.to_dict(),
        "equivalent_tokens": statistics.fmean(s.equivalent_tokens for s in samples),
        "equivalent_tokens_input": statistics.fmean(s.equivalent_tokens_input for s in samples),
        "tokens_in": samples[0].tokens_in,
        "paper_flops": statistics.fmean(paper),
        "full_flops": statistics.fmean(f.total for f in full),
        "full_breakdown": full[0].to_dict(),
    }


def _median(runs: list[dict], key: str) -> float | None:
    values = [r["timing"][key] for r in runs if r["timing"][key] is not None]
    return statistics.median(values) if values else None


def summarize(configs: list[Config], runs: list[dict]) -> list[dict[str, Any]]:
    """One row per configuration: medians over repeats, ratios to dense, overhead net of dense's hook floor."""
    by_label = {c.label: [r for r in runs if r["label"] == c.label] for c in configs}
    dense = by_label["dense"]
    dense_prefill, dense_cpu = _median(dense, "prefill_s"), _median(dense, "prefill_cpu_s")
    on_cpu = dense_cpu is not None
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
        rows.append(
            {
                "label": config.label,
                "method": config.method_name,
                "budget": config.budget,
                "repeats": len(group),
                "equivalent_tokens": group[0]["equivalent_tokens"],
                "equivalent_tokens_input": group[0]["equivalent_tokens_input"],
                "paper_tflops": group[0]["paper_flops"] / 1e12,
                "full_tflops": group[0]["full_flops"] / 1e12,
                "flops_ratio": flops_ratio,
                "prefill_ms": 1e3 * prefill,
                "prefill_cpu_ms": None if cpu is None else 1e3 * cpu,
                "prefill_ratio": time_ratio,
                "ratio_over_flops_ratio": time_ratio / flops_ratio,
                "fixed_stack_ms": 1e3 * fixed,
                "net_ratio_over_flops_ratio": net_ratio / flops_ratio,
                "e2e_ms": 1e3 * _median(group, "e2e_s"),
                "ttft_ms": 1e3 * _median(group, "ttft_s"),
                "decode_ms_per_token": None
                if _median(group, "decode_per_token_s") is None
                else 1e3 * _median(group, "decode_per_token_s"),
                "kv_mb": group[0]["timing"]["kv_cache_bytes"] / 2**20,
                "peak_delta_mb": peak_delta / 2**20,
                "overhead_ms": 1e3 * overhead,
                "overhead_pct_of_dense": 100 * (overhead - dense_overhead) / dense_prefill,
                "overhead_flops_pct": 100 * group[0]["full_breakdown"]["overhead"] / dense_paper,
            }
        )
    return rows


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
    ("kv_mb", "KV MB", "{:.2f}"),
    ("overhead_ms", "ovh ms", "{:.1f}"),
    ("overhead_pct_of_dense", "ovh % dense", "{:.2f}"),
]


def format_table(rows: list[dict], columns: list[tuple[str, str, str]] = COLUMNS) -> str:
    """A Markdown table of the rows."""
    lines = ["| " + " | ".join(title for _, title, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = ["-" if row[key] is None else fmt.format(row[key]) for key, _, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_targets(rows: list[dict], budget: int = 64) -> list[str]:
    """The issue's CPU targets, one line each: time ratio <= 1.15 x FLOPs ratio at `budget`; overhead <= 3 %."""
    lines = []
    for row in rows:
        if row["budget"] != budget:
            continue
        ok_ratio = row["ratio_over_flops_ratio"] <= 1.15
        ok_overhead = row["overhead_pct_of_dense"] <= 3.0
        lines.append(
            f"{row['label']}: prefill ratio / FLOPs ratio = {row['ratio_over_flops_ratio']:.2f} "
            f"({'ok' if ok_ratio else 'MISSED'}, target <= 1.15; "
            f"{row['net_ratio_over_flops_ratio']:.2f} net of the {row['fixed_stack_ms']:.0f} ms fixed stack cost); "
            "method overhead = "
            f"{row['overhead_pct_of_dense']:.2f} % of dense prefill "
            f"({'ok' if ok_overhead else 'MISSED'}, target <= 3 %)"
        )
    return lines


def throughput(model, shape: Shape, args, device, dtype) -> list[dict[str, Any]]:
    """Generation throughput per batch size for Dense and SparseVLM-1.5 at the smallest budget, interleaved."""
    methods = [
        ("dense", sparsevlm.Dense()),
        (f"sparsevlm-1.5@{min(args.budgets)}", sparsevlm.SparseVLM(min(args.budgets))),
    ]
    batches = {b: make_batch(shape, b, args.prompt_len, args.seed, device, dtype) for b in args.batches}
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
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per configuration before timing")
    parser.add_argument("--budgets", type=int, nargs="+", default=[192, 128, 64], help="equivalent-token budgets")
    parser.add_argument(
        "--versions", nargs="+", default=["1.0", "1.5", "2.0"], choices=["1.0", "1.5", "2.0"], help="SparseVLM versions"
    )
    parser.add_argument("--fastv-layer", type=int, default=2, help="FastV's K (prunes the output of layer K-1)")
    parser.add_argument("--prompt-len", type=int, default=694, help="prompt tokens, the 576 visual ones included")
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens generated per sample (forced)")
    parser.add_argument("--batches", type=int, nargs="*", default=[], help="also measure throughput at these batches")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--dtype", default="auto", help="auto (cuda: bfloat16, cpu: float32) | float32 | bfloat16")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 on a shared machine)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the synthetic prompt")
    parser.add_argument("--out", type=Path, default=None, help="JSON path; default results/bench/<shape>-<device>.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the table(s); write the JSON; return what was written."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))  # fmt: skip
    dtype_name = args.dtype if args.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    dtype = getattr(torch, dtype_name)
    shape = SHAPES[args.shape]
    _progress(f"building {shape.name} ({dtype_name}, {device}) ...")
    started = time.time()
    model = build_model(shape, dtype, device, args.seed)
    inputs = make_batch(shape, 1, args.prompt_len, args.seed, device, dtype)
    _progress(f"built in {time.time() - started:.1f} s")
    configs = configurations(shape, args.budgets, args.versions, args.fastv_layer)
    runs = []
    for repeat in range(-args.warmup, args.repeats):
        shift = repeat % len(configs)
        for config in configs[shift:] + configs[:shift]:
            run = run_once(model, inputs, config, args.new_tokens)
            tag = "warm-up" if repeat < 0 else f"repeat {repeat + 1}/{args.repeats}"
            _progress(f"{tag}: {config.label:<22} prefill {1e3 * run['timing']['prefill_s']:8.1f} ms")
            if repeat >= 0:
                runs.append(run)
    rows = summarize(configs, runs)
    table = format_table(rows)
    print(f"\n{shape.name}, {device} {dtype_name}, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, "
          f"median of {args.repeats}\n")  # fmt: skip
    print(table)
    targets = check_targets(rows, min(args.budgets))
    print("\n" + "\n".join(targets))
    result: dict[str, Any] = {
        "meta": {
            "command": "python -m eval.bench " + " ".join(sys.argv[1:] if argv is None else argv),
            "shape": vars(shape),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "dtype": dtype_name,
            "threads": args.threads,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        },
        "rows": rows,
        "table": table,
        "targets": targets,
        "runs": runs,
    }
    if args.batches:
        tp_rows = throughput(model, shape, args, device, dtype)
        result["throughput"] = tp_rows
        print("\n" + format_table(tp_rows, THROUGHPUT_COLUMNS))
    out = args.out or Path("results/bench") / f"{shape.name}-{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    _progress(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()

"""Prefill FLOPs of a real model shape from planned per-layer token counts, without building the model.

    python -m eval.planned_flops --shape qwen2.5-vl-7b

A 7B model in float32 does not fit this machine's memory, so nothing runs: the visual count of the shape's input is
counted on the meta device by the model's own code, each method's plan gives the visual tokens entering every decoder
layer (sparsevlm.budgets.planned_visual_in), and sparsevlm.flops turns them into MACs (the paper column, and the full
count with the vision tower and projector; the method's own scoring and recycling are not included). Measured traces
(eval.bench) replace this wherever the model fits.
"""

from __future__ import annotations

import argparse

import torch

import sparsevlm
from eval.shapes import SHAPES, build_family_model, make_family_batch
from sparsevlm import arch, flops
from sparsevlm.budgets import planned_visual_in
from sparsevlm.engine import check_positions


def planned_rows(shape_name: str, version: str) -> list[dict]:
    """Dense and SparseVLM (`version`, original positions on M-RoPE) at each of the shape's budgets."""
    shape = SHAPES[shape_name]
    model = build_family_model(shape, device="meta")
    inputs = make_family_batch(model, shape)  # on the CPU: the anyres count runs the (meta) tower on shapes only
    spec = arch.resolve(model)
    ids = inputs["input_ids"][0]
    n_visual = int(torch.isin(ids, torch.tensor(spec.visual_token_ids)).sum())
    n_other = ids.numel() - n_visual
    (tower,) = arch.tower_work(model.config, inputs)
    text = flops.text_shape(model.config)
    kv_width = text.n_kv_heads * text.head_dim if text.n_kv_heads != text.n_heads else None
    vision, projector = flops.vision_flops(model.config, tower)
    lm_head = text.hidden * text.vocab
    positions = {"positions": "original"} if spec.positions == "mrope" else {}
    methods = [("dense", sparsevlm.Dense())]
    methods += [
        (f"sparsevlm-{version}@{b}", sparsevlm.SparseVLM(b, version=version, **positions)) for b in shape.budgets
    ]
    rows = []
    for label, method in methods:
        plan = method.plan(text.n_layers, n_visual)
        check_positions(spec.positions, plan)
        visual_in = planned_visual_in(plan, n_visual, text.n_layers)
        paper = flops.paper_flops_from_counts(
            [n_other + v for v in visual_in], text.hidden, text.intermediate, kv_width
        )
        rows.append(
            {
                "config": label,
                "n_visual": n_visual,
                "equivalent_tokens_input": sum(visual_in) / text.n_layers,
                "paper_tflops": paper / 1e12,
                "full_tflops": (paper + vision + projector + lm_head) / 1e12,
                "vision_tflops": (vision + projector) / 1e12,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    """Print the planned FLOPs table of one shape."""
    parser = argparse.ArgumentParser(prog="python -m eval.planned_flops", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(n for n, s in SHAPES.items() if s.family != "llava"), required=True)
    parser.add_argument("--version", default="1.5", help="SparseVLM version (video: the video branch)")
    args = parser.parse_args(argv)
    rows = planned_rows(args.shape, args.version)
    dense = rows[0]["paper_tflops"]
    print(f"| {args.shape} | visual tokens | eq.tok (input side) | TFLOPs paper | x dense | TFLOPs full (+ vision) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['config']} | {row['n_visual']} | {row['equivalent_tokens_input']:.1f} | "
            f"{row['paper_tflops']:.3f} | "
            f"{row['paper_tflops'] / dense:.3f} | {row['full_tflops']:.3f} |"
        )
    return rows


if __name__ == "__main__":
    main()

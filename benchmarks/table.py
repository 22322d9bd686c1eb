"""Renders benchmarks/results.json as the README's Markdown table.

Run: python -m benchmarks.table [benchmarks/results.json]
"""

from __future__ import annotations

import json
import sys


def render(res: dict) -> str:
    peak = res["matmul_peak"]["flop_per_s"]
    rows = res["results"]
    out = [
        f"Device: {res['info']['device']} ({res['info']['cpu_count']} cores), jax {res['info']['jax']}; "
        f"measured float32 matmul peak {peak / 1e9:.1f} GFLOP/s.",
        "",
        "| exact l2 margins | batch | min ms | median ms | examples/s | GFLOP/s | % of matmul peak | XLA temp MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["bench"] == "margin_l2":
            g = f"{r['flop_per_s'] / 1e9:.1f}" if r["flop_per_s"] else "-"
            f = f"{100 * r['fraction_of_peak']:.0f}%" if r["fraction_of_peak"] else "-"
            out.append(
                f"| {r['method']} | {r['batch']} | {r['min_s'] * 1e3:.1f} | {r['median_s'] * 1e3:.1f} | {r['examples_per_s']:.0f} | {g} | {f} | {r.get('temp_mib', 0):.1f} |"
            )
        if r["bench"] == "torch_margin_l2":
            out.append(
                f"| PyTorch template (baseline) | {r['batch']} | {r['min_s'] * 1e3:.1f} | {r['median_s'] * 1e3:.1f} | {r['examples_per_s']:.0f} | - | - | - |"
            )
    out += ["", "| sampled mean ||grad z||^2 (Eq. 10) | batch | D' | min ms | mean relative error vs exact |", "|---|---|---|---|---|"]
    for r in rows:
        if r["bench"] == "sampled_sq_grad_mean":
            out.append(f"| axes | {r['batch']} | {r['num_samples']} | {r['min_s'] * 1e3:.1f} | {r['mean_relative_error']:.3f} |")
    out += ["", "| train step (batch 64) | min ms | median ms | x vanilla |", "|---|---|---|---|"]
    for r in rows:
        if r["bench"] == "train_step":
            out.append(f"| {r['variant']} | {r['min_s'] * 1e3:.1f} | {r['median_s'] * 1e3:.1f} | {r['ratio_to_vanilla']:.1f} |")
        if r["bench"] == "torch_train_step":
            out.append(
                f"| PyTorch {r['variant']} (baseline) | {r['min_s'] * 1e3:.1f} | {r['median_s'] * 1e3:.1f} | lld_jax {r['speedup_of_lld_jax']:.1f}x faster |"
            )
    mib = lambda v: f"{v:.1f}" if v is not None else "-"
    out += ["", "| scaling (MLP, l2 margins) | size | method | min ms | XLA temp MiB |", "|---|---|---|---|---|"]
    for r in rows:
        if r["bench"] in ("scaling_width", "scaling_depth", "scaling_batch"):
            key = r["bench"][8:]
            size = r["batch_size"] if key == "batch" else r[key]
            out.append(f"| {key} | {size} | {r['method']} | {r['min_s'] * 1e3:.1f} | {mib(r['temp_mib'])} |")
    cnn = [r for r in rows if r["bench"] == "scaling_input"]
    if cnn:
        out += [
            "",
            "| CNN input | exact l2 margin ms/example | exact temp MiB (chunk 16) | D'=3 ROLL grad, batch 8, ms | x vanilla grad | "
            "x vanilla, first conv by dense JVP | temp MiB (vs vanilla) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in cnn:
            ex = f"{r['exact_margin_1ex']['min_s'] * 1e3:.0f}" if "exact_margin_1ex" in r else "not timed"
            dense = f"{r['sampled3_dense_stem_ratio_to_vanilla']:.2f}" if "sampled3_dense_stem_ratio_to_vanilla" in r else "-"
            out.append(
                f"| {r['side']}x{r['side']}x3 | {ex} | {mib(r['exact_temp_mib'])} | {r['sampled3_grad_b8']['min_s'] * 1e3:.1f} | "
                f"{r['sampled3_ratio_to_vanilla']:.2f} | {dense} | {mib(r['sampled3_temp_mib'])} ({mib(r['vanilla_temp_mib'])}) |"
            )
    slices = [r for r in rows if r["bench"] == "slice_regions"]
    if slices:
        out += ["", "| 2-D slice enumeration | regions | seconds | regions/s |", "|---|---|---|---|"]
        out += [f"| {r['network']} | {r['regions']} | {r['seconds']:.2f} | {r['regions_per_s']:.0f} |" for r in slices]
    return "\n".join(out)


if __name__ == "__main__":
    with open(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results.json") as fh:
        print(render(json.load(fh)))

"""Certified accuracy of the MNIST models by the regions (lld_jax.certified_radius) and by bound propagation (CROWN, IBP).

For each trained run (vanilla and sampled ROLL, one seed) and the first ``--n``
test images: the fraction certified at each radius by our lower bound, by
CROWN and by IBP (``benchmarks/bounds.py``, written from their papers), the
linear-region attack's bound (our upper bound), PGD's bound (an attack peer:
40 steps, 2 random starts), and the time each method takes (per radius for
CROWN, IBP and PGD, which answer one radius per pass; once for
certified_radius, which returns the radius itself). certified_radius and
margin are also timed on all 10k test images (their cost ratio). Radii in
pixel units.

    python -m benchmarks.certify_compare --runs /work/runs/mnist_seeds --data-dir DIR [--n 1000]
    python -m benchmarks.certify_compare --runs - --plot-only   # redraw the figure from the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import lld_jax
from benchmarks.bounds import crown_margins, ibp_margins, pgd_attack
from experiments import mnist
from experiments.mnist_summary import COLOURS, NAMES
from lld_jax.data import MNIST_STD

RUNS = {
    "vanilla": {},
    "sampled_c0.25": {"lam": 2.0, "C": 0.25, "regularizer": "sampled"},
    "sampled_c1": {"lam": 2.0, "C": 1.0, "regularizer": "sampled"},
}


def _timed(fn):
    jax.block_until_ready(fn())  # compile
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t0


def compare(run_dir: str, config: mnist.Config, x_all: np.ndarray, y_all: np.ndarray, n: int, eps_pixel: dict) -> dict:
    """The comparison on the first ``n`` test images; the cost of certified_radius against margin on all of them."""
    net, params = mnist.build_model(config.widths, config.seed, config.init)
    params = lld_jax.training.load_best(run_dir, params)
    layers = [(jnp.asarray(w), jnp.asarray(b)) for w, b in net.dense_layers(params)]
    x, y = x_all[:n], y_all[:n]
    xs, ys = jnp.asarray(x.reshape(len(x), -1)), jnp.asarray(y)
    out = {}
    for p_name, eps_list in eps_pixel.items():
        p = 2 if p_name == 2 else np.inf
        res = lld_jax.batched.certified_radius(net, params, jnp.asarray(x), ys, p=p)
        _, t_ours = _timed(lambda p=p: lld_jax.batched.certified_radius(net, params, jnp.asarray(x_all), jnp.asarray(y_all), p=p))
        _, t_margin = _timed(lambda p=p: lld_jax.batched.margin(net, params, jnp.asarray(x_all), p=p))
        lower, upper = np.asarray(res.lower) * MNIST_STD, np.asarray(res.upper) * MNIST_STD
        rows = {"eps": list(eps_list), "ours_certified": [], "ours_attack_bound": [], "crown_certified": [], "ibp_certified": [], "pgd_bound": []}
        t_crown = t_ibp = t_pgd = 0.0
        unsound = 0  # examples certified by a sound method at a radius where an attack broke them
        for e in eps_list:
            en = jnp.asarray(e / MNIST_STD, xs.dtype)
            # Blocks of 32 examples: CROWN's per-example (N, D) coefficient matrices stay in memory.
            crown = jax.jit(
                lambda a, b, en=en, p=p: jax.lax.map(
                    lambda uv: jnp.all(crown_margins(layers, net.negative_slope, uv[0], uv[1], en, p) > 0), (a, b), batch_size=32
                )
            )
            ibp = jax.jit(jax.vmap(lambda u, v, en=en, p=p: jnp.all(ibp_margins(layers, net.negative_slope, u, v, en, p) > 0)))
            logits = lambda u: net.apply(params, u)[0]  # noqa: E731
            pgd = jax.jit(jax.vmap(lambda u, v, k, en=en, p=p: pgd_attack(logits, u, v, en, p, k)))
            keys = jax.random.split(jax.random.key(0), len(x))
            c, tc = _timed(lambda: crown(xs, ys))
            i, ti = _timed(lambda: ibp(xs, ys))
            a, ta = _timed(lambda: pgd(jnp.asarray(x), ys, keys))
            t_crown, t_ibp, t_pgd = t_crown + tc, t_ibp + ti, t_pgd + ta
            rows["ours_certified"].append(float(np.mean(lower > e)))
            rows["ours_attack_bound"].append(float(np.mean(upper > e)))
            rows["crown_certified"].append(float(np.mean(np.asarray(c))))
            rows["ibp_certified"].append(float(np.mean(np.asarray(i))))
            # PGD's bound counts the correctly classified examples it did not break.
            rows["pgd_bound"].append(float(np.mean((upper > 0) & ~np.asarray(a))))
            broken = (upper <= e) | np.asarray(a)
            unsound += int(np.sum(((lower > e) | np.asarray(c) | np.asarray(i)) & broken))
        correct = upper > 0
        # Cross-check of soundness, per example: no sound method certifies what either attack broke.
        rows["unsound_examples"] = unsound
        rows |= {
            "ours_lower_median": float(np.median(lower[correct])),
            "ours_upper_median": float(np.median(upper[correct])),
            "time_s": {"crown_all_radii": t_crown, "ibp_all_radii": t_ibp, "pgd_all_radii": t_pgd},
            "time_s_all_test_images": {"n": len(x_all), "certified_radius": t_ours, "margin": t_margin},
            "certified_radius_over_margin": t_ours / t_margin,
        }
        out[f"l{p_name}"] = rows
        print(f"{os.path.basename(run_dir)} l{p_name}: " + json.dumps(rows), flush=True)
    return out


def markdown(summary: dict) -> str:
    """The README's tables of a ``results_certify.json``: accuracy certified and attack bounds per radius, then times."""
    out = []
    results = summary["results"]
    for norm, label in (("l2", "l2"), ("linf", "l-inf")):
        eps = next(iter(results.values()))[norm]["eps"]
        out.append(f"| {label}, first {summary['n']} test images, seed {summary['seed']} | " + " | ".join(f"eps {e:g}" for e in eps) + " |")
        out.append("|---|" + "---|" * len(eps))
        for name, res in results.items():
            r = res[norm]
            cells = zip(r["ours_certified"], r["crown_certified"], r["ibp_certified"])
            out.append(
                f"| {NAMES[name]}: certified, regions / CROWN / IBP | " + " | ".join(f"{a:.1%} / {b:.1%} / {c:.1%}" for a, b, c in cells) + " |"
            )
            cells = zip(r["ours_attack_bound"], r["pgd_bound"])
            out.append(f"| {NAMES[name]}: attack bound, regions / PGD | " + " | ".join(f"{a:.1%} / {b:.1%}" for a, b in cells) + " |")
        out.append("")
    out.append(
        "| model | norm | certified_radius, 10k images (s) | margin, 10k images (s) | ratio | CROWN, all radii (s) | IBP, all radii (s) | PGD, all radii (s) | unsound examples |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|")
    for name, res in results.items():
        for norm, label in (("l2", "l2"), ("linf", "l-inf")):
            r = res[norm]
            t, ta = r["time_s"], r["time_s_all_test_images"]
            out.append(
                f"| {NAMES[name]} | {label} | {ta['certified_radius']:.1f} | {ta['margin']:.1f} | {r['certified_radius_over_margin']:.2f} "
                f"| {t['crown_all_radii']:.1f} | {t['ibp_all_radii']:.2f} | {t['pgd_all_radii']:.1f} | {r['unsound_examples']} |"
            )
    return "\n".join(out) + "\n"


def plot(summary: dict, stem: str) -> None:
    """Certified accuracy against the radius: regions (lower), CROWN, IBP and the two attacks' bounds, per model."""
    from experiments import _figures

    plt = _figures.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    for ax, (norm, label) in zip(axes, (("l2", "l2"), ("linf", "l-inf"))):
        for name, res in summary["results"].items():
            r, c = res[norm], COLOURS[name]
            ax.plot(r["eps"], r["ours_certified"], "-o", color=c, ms=3, label=f"{NAMES[name]}: regions, certified")
            ax.plot(r["eps"], r["crown_certified"], "-.s", color=c, ms=3, label=f"{NAMES[name]}: CROWN, certified")
            ax.plot(r["eps"], r["ibp_certified"], ":", color=c, lw=1, label=f"{NAMES[name]}: IBP, certified")
            upper = np.minimum(r["ours_attack_bound"], r["pgd_bound"])
            ax.plot(r["eps"], upper, "--", color=c, lw=1, label=f"{NAMES[name]}: attack bound (regions and PGD)")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"{label} radius (pixel scale [0, 1])")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"MNIST {label}, first {summary['n']} test images, seed {summary['seed']}", fontsize=10)
    from matplotlib.lines import Line2D

    # One legend: colour is the model, line style the method.
    handles = [Line2D([], [], color=c, lw=3, label=NAMES[n]) for n, c in COLOURS.items()]
    handles += [
        Line2D([], [], color="k", ls="-", marker="o", ms=3, label="regions: certified (lower)"),
        Line2D([], [], color="k", ls="-.", marker="s", ms=3, label="CROWN: certified"),
        Line2D([], [], color="k", ls=":", lw=1, label="IBP: certified"),
        Line2D([], [], color="k", ls="--", lw=1, label="attack bound: min(regions, PGD)"),
    ]
    axes[1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    _figures.save(fig, stem, dpi=100, small_png=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, help="folder with the runs of experiments/mnist_seeds.sh")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--n", type=int, default=1000, help="compare on the first N test images")
    ap.add_argument("--timing-n", type=int, default=10000, help="time certified_radius and margin on the first N test images")
    ap.add_argument("--out", default="benchmarks/results_certify.json")
    ap.add_argument("--figure", default="docs/figures/certify_compare", help="figure stem (.png and .pdf)")
    ap.add_argument("--plot-only", action="store_true", help="redraw the figure from --out without rerunning")
    args = ap.parse_args()
    if args.plot_only:
        with open(args.out) as fh:
            plot(json.load(fh), args.figure)
        return
    results = {}
    for name, flags in RUNS.items():
        config = mnist.Config(data_dir=args.data_dir, seed=args.seed, **flags)
        data = mnist.load(config)
        results[name] = compare(
            os.path.join(args.runs, f"{name}_seed{args.seed}"),
            config,
            data.test.x[: args.timing_n],
            data.test.y[: args.timing_n],
            args.n,
            mnist.CERTIFY_EPS,
        )
    info = {"device": jax.devices()[0].device_kind, "machine": platform.machine(), "cpu_count": os.cpu_count(), "jax": jax.__version__}
    with open(args.out, "w") as fh:
        json.dump({"info": info, "n": args.n, "seed": args.seed, "results": results}, fh, indent=2)
    with open(args.out) as fh:
        plot(json.load(fh), args.figure)
    print(f"wrote {args.out} and {args.figure}.png")


if __name__ == "__main__":
    main()

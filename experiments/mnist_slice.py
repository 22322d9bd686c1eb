"""Linear regions on the plane through three MNIST test digits (exact, float64).

For each trained run directory, enumerates the regions of the triangle spanned
by three test digits x_A, x_B, x_C: {x_A + u (x_B - x_A) + v (x_C - x_A) : u, v >= 0, u + v <= 1},
and plots them side by side, coloured by predicted class. The model of each
run is rebuilt from the architecture its ``config.json`` records.

Run: python -m experiments.mnist_slice runs/mnist/vanilla runs/mnist/roll_sampled3_c1 --out runs/mnist_slice
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments import _cli, _figures
from experiments.mnist import build_model
from lld_jax.data import load_mnist
from lld_jax.slices import draw_regions, enumerate_slice
from lld_jax.training import RunDir, load_best


def load_run(run: str):
    """``(network, params, recorded config)`` of a finished MNIST run directory; params in float64 under
    ``jax.enable_x64`` (as :func:`main` runs), else float32."""
    cfg = RunDir(run, write=False).stored_config()
    if cfg is None or cfg.get("experiment", {}).get("dataset") != "mnist":
        raise FileNotFoundError(f"{run} holds no MNIST run (no config.json written by experiments.mnist).")
    exp = cfg["experiment"]
    net, like = build_model(exp["widths"], exp["model_seed"], exp["init"])
    wide = jax.dtypes.canonicalize_dtype(jnp.float64)  # float32 unless x64 is on: no silent truncation warning
    params = jax.tree.map(lambda a: jnp.asarray(a, wide), load_best(run, like))
    return net, params, cfg


def main(argv: Sequence[str] | None = None) -> None:
    """The command line; runs in float64 (exact geometry) inside ``jax.enable_x64``, leaving the caller's precision as found."""
    with jax.enable_x64(True):
        return _main(argv)


def _main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    dflt = " (default: %(default)s)"
    ap.add_argument("runs", nargs="+", help="run directories written by experiments.mnist")
    ap.add_argument("--data-dir", default=None, help="MNIST IDX files (default: $LLD_JAX_DATA/mnist, the cache, or a verified download)")
    ap.add_argument("--digits", type=int, nargs=3, default=[0, 1, 2], help="indices of three test images" + dflt)
    ap.add_argument("--max-regions", type=int, default=300_000, help="stop enumerating a slice beyond this many regions" + dflt)
    ap.add_argument("--out", default="runs/mnist_slice", help="output directory (figure and mnist_slice.json)" + dflt)
    ap.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = ap.parse_args(argv)
    test = load_mnist(args.data_dir, val_size=1).test  # test images only: the split is irrelevant
    if not all(0 <= d < len(test.x) for d in args.digits):
        raise ValueError(f"--digits must be indices of test images in [0, {len(test.x)}), got {args.digits}.")
    runs = [(run, *load_run(run)) for run in args.runs]  # every run checked before any work
    xa, xb, xc = (jnp.asarray(test.x[i], jnp.float64) for i in args.digits)
    os.makedirs(args.out, exist_ok=True)
    fig, axes = _figures.pyplot().subplots(1, len(runs), figsize=(5 * len(runs), 4.6), squeeze=False)
    summary = {}
    for ax, (run, net, params, cfg) in zip(axes[0], runs):
        regions = enumerate_slice(net, params, xa, xb - xa, xc - xa, [(0, 0), (1, 0), (0, 1)], max_regions=args.max_regions)
        draw_regions(ax, regions, logit=None, fill="class", edge_width=0.05)
        train = cfg["train"]
        name = "vanilla" if train["lam"] == 0 else f"ROLL lam={train['lam']:g} C={train['C']:g}"
        ax.set_title(f"{name}: {len(regions)} regions")
        ax.set_xlabel(f"towards test digit #{args.digits[1]} (label {test.y[args.digits[1]]})")
        ax.set_ylabel(f"towards test digit #{args.digits[2]} (label {test.y[args.digits[2]]})")
        summary[run] = {
            "regions": len(regions),
            "classes": sorted({int(np.argmax(r.out_slope @ r.vertices.mean(0) + r.out_offset)) for r in regions}),
        }
        print(f"{run}: {len(regions)} regions", flush=True)
    _figures.save(fig, os.path.join(args.out, "mnist_slice"), dpi=90)
    RunDir(args.out).write_json("mnist_slice.json", summary)


if __name__ == "__main__":
    _cli.run(main)

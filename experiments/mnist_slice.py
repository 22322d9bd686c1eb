"""Linear regions on the plane through three MNIST test digits (exact, float64).

For each trained run directory, enumerates the regions of the triangle spanned
by three test digits x_A, x_B, x_C: {x_A + u (x_B - x_A) + v (x_C - x_A) : u, v >= 0, u + v <= 1},
and plots them side by side with the exact decision boundaries (argmax changes).

Run: python -m experiments.mnist_slice runs/mnist/vanilla runs/mnist/roll_sampled3_c1 --out runs/mnist_slice
"""

from __future__ import annotations

import argparse
import json
import os

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import lld_jax  # noqa: E402
from lld_jax.data import load_mnist  # noqa: E402
from lld_jax.loop import load_best  # noqa: E402
from lld_jax.slices import enumerate_slice  # noqa: E402
from experiments.mnist import DEFAULT_DATA  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run directories written by experiments.mnist")
    ap.add_argument("--data-dir", default=DEFAULT_DATA)
    ap.add_argument("--digits", type=int, nargs=3, default=[0, 1, 2], help="indices of three test images")
    ap.add_argument("--max-regions", type=int, default=300_000)
    ap.add_argument("--out", default="runs/mnist_slice")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    test = load_mnist(args.data_dir).test
    xa, xb, xc = (jnp.asarray(test.x[i], jnp.float64) for i in args.digits)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    fig, axes = plt.subplots(1, len(args.runs), figsize=(5 * len(args.runs), 4.6), squeeze=False)
    summary = {}
    for ax, run in zip(axes[0], args.runs):
        with open(os.path.join(run, "config.json")) as fh:
            cfg = json.load(fh)
        model = lld_jax.MLP((28, 28), [300] * 4, 10, rngs=nnx.Rngs(0))
        net, like = lld_jax.from_nnx(model)
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), load_best(run, like))
        regions = enumerate_slice(net, params, xa, xb - xa, xc - xa, [(0, 0), (1, 0), (0, 1)], max_regions=args.max_regions)
        # Colour each region by its predicted class at its centre.
        cls = [int(np.argmax(r.out_slope @ r.vertices.mean(0) + r.out_offset)) for r in regions]
        cmap = plt.get_cmap("tab10")
        ax.add_collection(PolyCollection([r.vertices for r in regions], facecolors=[cmap(c) for c in cls], edgecolors="k", linewidths=0.05, alpha=0.6))
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        name = "vanilla" if cfg["lam"] == 0 else f"ROLL lam={cfg['lam']:g} C={cfg['C']:g}"
        ax.set_title(f"{name}: {len(regions)} regions")
        ax.set_xlabel(f"towards test digit #{args.digits[1]} (label {test.y[args.digits[1]]})")
        ax.set_ylabel(f"towards test digit #{args.digits[2]} (label {test.y[args.digits[2]]})")
        summary[run] = {"regions": len(regions)}
        print(f"{run}: {len(regions)} regions", flush=True)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "mnist_slice.png"), dpi=90)
    fig.savefig(os.path.join(args.out, "mnist_slice.pdf"))
    with open(os.path.join(args.out, "mnist_slice.json"), "w") as fh:
        json.dump(summary, fh, indent=2)


if __name__ == "__main__":
    main()

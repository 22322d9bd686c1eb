"""Exact 2-D region enumeration against Regioncam (compiled Rust, PyPI ``regioncam``) on the same weights.

ReLU MLPs with 2 inputs (He-normal weights, zero-mean normal biases, float32,
one seed per size) on the box [-1, 1]^2: ``regioncam.Regioncam(size=1)`` with
each hidden layer's ``linear`` + ``relu``, against
``lld_jax.slices.enumerate_slice`` on the plane x0 = 0, a = e_1, b = e_2 over
the same box. Both are timed as best of ``--repeats`` whole calls in one
process (ours after one warm-up call that compiles; the compile time is
reported apart). Region counts must agree: the hidden layers define the
regions (the output layer cuts nothing); where they differ, the count with
``min_area=0`` (keeping the rounding slivers that ``enumerate_slice`` drops by
default) is recorded too. Regioncam supports linear layers and ReLU-type activations
(plus residual and max-pool over layers), not convolutions, so no CNN here.

    pip install -e ".[regioncam]"
    python -m benchmarks.regioncam_compare [--sizes 50x3 100x4 200x4] [--out benchmarks/results_regioncam.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import lld_jax
from lld_jax.training import write_json

BOX = [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]
SIZES = ("50x3", "100x2", "100x4", "100x6", "200x4")


def mlp_weights(width: int, depth: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Hidden layers ``[(W (fan_in, width), b (width,)), ...]`` and a 1-unit output layer, float32."""
    rng = np.random.default_rng(seed)
    dims = [2] + [width] * depth + [1]
    return [
        ((rng.standard_normal((i, o)) * np.sqrt(2.0 / i)).astype(np.float32), (0.1 * rng.standard_normal(o)).astype(np.float32))
        for i, o in zip(dims[:-1], dims[1:])
    ]


def apply(params, x):
    """The MLP as lld_jax's protocol: ``(output, preacts)`` for one 2-D point."""
    h, pre = x, []
    for w, b in params[:-1]:
        z = h @ w + b
        pre.append(z)
        h = jax.nn.relu(z)
    w, b = params[-1]
    return h @ w + b, tuple(pre)


def regioncam_count(layers: list[tuple[np.ndarray, np.ndarray]]) -> int:
    import regioncam

    rc = regioncam.Regioncam(size=1)
    for w, b in layers[:-1]:
        rc.linear(w, b)
        rc.relu()
    return int(rc.num_faces)


def ours_count(layers: list[tuple[np.ndarray, np.ndarray]], min_area: float = 1e-14) -> int:
    params = [(jnp.asarray(w), jnp.asarray(b)) for w, b in layers]
    e1, e2 = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])
    return len(lld_jax.slices.enumerate_slice(apply, params, jnp.zeros(2), e1, e2, BOX, max_regions=2_000_000, min_area=min_area))


def best_of(fn, repeats: int) -> tuple[float, object]:
    ts, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return min(ts), out


def compare(size: str, repeats: int) -> dict:
    width, depth = (int(s) for s in size.split("x"))
    layers = mlp_weights(width, depth)
    t0 = time.perf_counter()
    ours_count(layers)  # compiles the per-layer kernels
    first = time.perf_counter() - t0
    t_rc, n_rc = best_of(lambda: regioncam_count(layers), repeats)
    t_us, n_us = best_of(lambda: ours_count(layers), repeats)
    row = {
        "size": f"2-{width}x{depth}",
        "regions_regioncam": n_rc,
        "regions_lld_jax": n_us,
        "count_rel_diff": abs(n_us - n_rc) / n_rc,
        "regioncam_s": t_rc,
        "lld_jax_s": t_us,
        "lld_jax_first_call_s": first,
        "slowdown": t_us / t_rc,
        "regions_per_s_regioncam": n_rc / t_rc,
        "regions_per_s_lld_jax": n_us / t_us,
    }
    if n_us != n_rc:  # untimed: are the extra or missing regions rounding slivers (enumerate_slice drops pieces below 1e-14)?
        row["regions_lld_jax_min_area_0"] = ours_count(layers, min_area=0.0)
    print(
        f"{row['size']:>9}: regioncam {n_rc} regions {t_rc:.3f} s, lld_jax {n_us} regions {t_us:.3f} s ({row['slowdown']:.1f}x)",
        flush=True,
    )
    return row


def markdown(results: dict) -> str:
    """The README table of a results JSON."""
    lines = [
        "| MLP (2-D input) | regions Regioncam | regions lld_jax | Regioncam (s) | lld_jax (s) | lld_jax / Regioncam |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["results"]:
        if "regions_lld_jax_min_area_0" in r:
            r = {**r, "regions_lld_jax": f"{r['regions_lld_jax']:,} ({r['regions_lld_jax_min_area_0']:,} with slivers)"}
        lines.append(
            f"| {r['size']} | {r['regions_regioncam']:,} | {r['regions_lld_jax'] if isinstance(r['regions_lld_jax'], str) else format(r['regions_lld_jax'], ',')} | {r['regioncam_s']:.3f} | {r['lld_jax_s']:.3f} | {r['slowdown']:.1f}x |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), help="WIDTHxDEPTH of the hidden layers")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results_regioncam.json")
    args = ap.parse_args(argv)
    try:
        import regioncam  # noqa: F401
    except ImportError:
        ap.error('needs Regioncam: pip install -e ".[regioncam]"')
    from importlib.metadata import version

    dev = jax.devices()[0]
    info = {
        "device": f"{dev.platform}:{dev.device_kind}",
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "regioncam": version("regioncam"),
        "dtype": "float32",
        "box": "[-1, 1]^2",
        "repeats": args.repeats,
    }
    results = {"info": info, "results": [compare(s, args.repeats) for s in args.sizes]}
    write_json(args.out, results)
    print(markdown(results))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""The accelerator checks of issue 13, in one short process: the 10k-test-set margin time and the precision of exact margins.

Run: python -m benchmarks.accelerator [--data-dir DIR] [--out benchmarks/results_accelerator.json] [--test-size N]
(``benchmarks/accelerator.sh`` runs it first, then the paper-scale MNIST runs.)
The JSON is rewritten after each step, so a process cut short keeps what it measured.

1. Speed: exact l2, l1 and l-inf margins of the whole test set (10k images,
   784-300x4-10 MLP, PyTorch initialisation, float32, 64-bit types off as in
   ``benchmarks.run``), warm-up excluded, min of ``--repeats`` calls (target on
   an H100: l2 under 1 s).
2. Precision (then with 64-bit types on): every neuron's input-gradient l2 norm
   at ``--precision-examples`` test images through
   ``lld_jax.batched.neuron_gradient_norms`` in float32 on the default device,
   against the same network in float64. The library computes geometry under
   ``jax.default_matmul_precision("highest")``; for contrast the same norms
   from an unguarded ``jax.jacfwd`` under the backend's default precision (on
   GPUs float32 matmuls may run in TF32, about 1e-3 relative error, against
   ~1e-7 at full float32).
"""

from __future__ import annotations

import argparse
import json
import platform

import jax
import jax.numpy as jnp
import numpy as np

import lld_jax
from benchmarks.run import timeit, write_json
from experiments.mnist import build_model
from lld_jax.data import load_mnist


def unguarded_l2_norms(net, params, x):
    """||grad z_j||_2 of every neuron from a plain ``jax.jacfwd`` under the backend's default matmul precision (no guard)."""

    def one(u):
        flat = lambda v: jnp.concatenate([jnp.ravel(p) for p in net.apply(params, v)[1]])
        return jnp.linalg.norm(jax.jacfwd(flat)(u).reshape(-1, u.size), axis=1)

    return jax.jit(jax.vmap(one))(x)


def precision_check(net, params, x) -> dict:
    """Relative error of every neuron's float32 gradient norm against float64: the library's against an unguarded jacfwd's.

    Needs ``jax_enable_x64``. Neurons whose float64 gradient is 0 (dead
    from the first layer on) have no relative error and are left out.
    """
    p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    ref = np.asarray(lld_jax.batched.neuron_gradient_norms(net, p64, jnp.asarray(x, jnp.float64))[1])
    lib = np.asarray(lld_jax.batched.neuron_gradient_norms(net, params, jnp.asarray(x, jnp.float32))[1])
    raw = np.asarray(unguarded_l2_norms(net, params, jnp.asarray(x, jnp.float32)))
    live = ref > 0

    def rel(a):
        err = np.abs(a - ref)[live] / ref[live]
        return {"median": float(np.median(err)), "max": float(np.max(err))}

    out = {
        "examples": len(x),
        "neurons_compared": int(live.sum()),
        "library_float32_rel_err": rel(lib),
        "unguarded_jacfwd_default_precision_rel_err": rel(raw),
    }
    lib_e, raw_e = out["library_float32_rel_err"], out["unguarded_jacfwd_default_precision_rel_err"]
    print(
        f"precision (float32 vs float64 neuron gradient norms, relative error median / max): library {lib_e['median']:.1e} / {lib_e['max']:.1e}; "
        f"unguarded jacfwd at the backend's default precision {raw_e['median']:.1e} / {raw_e['max']:.1e}",
        flush=True,
    )
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None, help="folder with the four MNIST IDX files (default: lld_jax.data.locate's search)")
    ap.add_argument("--out", default="benchmarks/results_accelerator.json")
    ap.add_argument("--test-size", type=int, default=None, help="test images to time (default: all 10k)")
    ap.add_argument("--precision-examples", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    dev = jax.devices()[0]
    info = {"device": f"{dev.platform}:{dev.device_kind}", "num_devices": jax.device_count(), "machine": platform.machine(), "jax": jax.__version__}
    print(json.dumps(info), flush=True)
    x = load_mnist(args.data_dir, val_size=1, test_size=args.test_size).test.x  # test images only: the split is irrelevant
    net, params = build_model((300, 300, 300, 300), seed=0, init="torch")
    result = {"info": info}
    with jax.enable_x64(False):  # timings in float32, whatever the caller's setting; contexts leave it as found
        xs = jnp.asarray(x, jnp.float32)
        for p in (2, 1, "inf"):
            t = timeit(lambda: lld_jax.batched.margin(net, params, xs, p=p), args.repeats)
            result[f"margin_l{p}_test_set"] = {"examples": len(x), **t}
            print(f"exact l{p} margins of {len(x)} test images: min {t['min_s']:.3f} s, median {t['median_s']:.3f} s", flush=True)
            write_json(args.out, result)
    with jax.enable_x64(True):
        result["precision"] = precision_check(net, params, x[: args.precision_examples])
    write_json(args.out, result)


if __name__ == "__main__":
    main()

"""All benchmarks in one process: margins per gradient method, sampled estimators,
training steps, scaling, and achieved FLOP/s against a measured matmul peak.

Run: python -m benchmarks.run [--quick] [--out benchmarks/results.json] [--torch]

Every figure: warm-up (compilation) excluded, ``--repeats`` timed runs,
min and median reported. Ratios are only meaningful within one run.

FLOP counts (multiply-add = 2 FLOP), MLP D-N_1-...-N_M:
  forward margins  : 2 * B * D * sum_{i>=2} N_{i-1} N_i  (Jacobian of layer i+1 from layer i)
  gram l2 margins  : 2 * B * (sum_{i=2}^{M-1} 2 N_{i-1}^2 N_i + N_{M-1}^2 N_M)  (+ 2 D N_1^2 once)
  matmul peak      : 2 n^3 for an n x n matmul in the same dtype.
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
from flax import nnx

import lld_jax
from lld_jax.losses import roll_penalty, roll_penalty_sampled
from lld_jax.training import Trainer, TrainConfig, data_mesh


def timeit(fn, repeats: int) -> dict:
    jax.block_until_ready(fn())  # compile + warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t)
    return {"min_s": float(np.min(ts)), "median_s": float(np.median(ts))}


def matmul_peak(repeats: int, n: int = 2048) -> dict:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    t = timeit(lambda: f(a), repeats)
    return {**t, "n": n, "flops": 2 * n**3, "flop_per_s": 2 * n**3 / t["min_s"]}


def mnist_net(widths=(300, 300, 300, 300), d=784):
    model = lld_jax.MLP(d, list(widths), 10, rngs=nnx.Rngs(0))
    return lld_jax.from_nnx(model)


def margin_flops(method: str, b: int, d: int, widths) -> float:
    w = list(widths)
    if method == "gram":
        inner = sum(2 * w[i - 1] ** 2 * w[i] for i in range(1, len(w) - 1)) + w[-2] ** 2 * w[-1]
        return 2.0 * b * inner
    return 2.0 * b * d * sum(w[i - 1] * w[i] for i in range(1, len(w)))


def bench_margins(repeats: int, batches, peak: float) -> list[dict]:
    net, params = mnist_net()
    rows = []
    for b in batches:
        x = jax.random.normal(jax.random.key(1), (b, 784))
        exact = None
        for method in ("reverse", "forward", "template", "gram"):
            f = lambda: lld_jax.margin(net, params, x, p=2, method=method)
            t = timeit(f, repeats)
            if method == "gram":
                exact = lld_jax.neuron_gradient_norms(net, params, x, ord=2, method="gram", squared=True)[1]
            flops = margin_flops(method, b, 784, (300,) * 4) if method != "reverse" else None
            rows.append({"bench": "margin_l2", "batch": b, "method": method, **t, "examples_per_s": b / t["min_s"],
                         "flop_per_s": flops / t["min_s"] if flops else None, "fraction_of_peak": flops / t["min_s"] / peak if flops else None})
            print(f"margin_l2 B={b:4d} {method:9s} min {t['min_s'] * 1e3:9.2f} ms  median {t['median_s'] * 1e3:9.2f} ms  {b / t['min_s']:10.0f} ex/s"
                  + (f"  {flops / t['min_s'] / 1e9:7.1f} GFLOP/s ({100 * flops / t['min_s'] / peak:.0f}% of peak)" if flops else ""), flush=True)
        exact_mean = np.asarray(jnp.mean(exact, axis=1))
        for dp in (1, 3, 10, 100):
            f = jax.jit(lambda k: roll_penalty_sampled(net, params, x, k, C=0.0, num_samples=dp))
            t = timeit(lambda: f(jax.random.key(0)), repeats)
            draws = np.stack([np.asarray(f(k)) for k in jax.random.split(jax.random.key(1), 20)])
            rel = float(np.mean(np.abs(draws - exact_mean[None]) / exact_mean[None]))
            rows.append({"bench": "sampled_sq_grad_mean", "batch": b, "num_samples": dp, **t, "mean_relative_error": rel})
            print(f"sampled   B={b:4d} D'={dp:<6d} min {t['min_s'] * 1e3:9.2f} ms  median {t['median_s'] * 1e3:9.2f} ms  mean rel. error {rel:.3f}", flush=True)
    return rows


def bench_train_steps(repeats: int) -> list[dict]:
    net, params = mnist_net()
    x = np.random.default_rng(0).normal(size=(64, 784)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 10, 64).astype(np.int32)
    one = data_mesh(jax.devices()[:1])
    variants = {
        "vanilla": {},
        "roll_exact_reverse": dict(lam=2.0, C=1.0, method="reverse"),
        "roll_exact_forward": dict(lam=2.0, C=1.0, method="forward"),
        "roll_exact_template": dict(lam=2.0, C=1.0, method="template"),
        "roll_exact_gram": dict(lam=2.0, C=1.0, method="gram"),
        "roll_sampled_3": dict(lam=2.0, C=1.0, regularizer="sampled", num_samples=3),
    }
    rows = []
    for name, kw in variants.items():
        tr = Trainer(net, TrainConfig(**kw), mesh=one)
        state = [tr.init_state(params)]
        batch = tr.padded_batch(x, y, 64)

        def step():
            state[0], m = tr.train_step(state[0], *batch)
            return m

        t = timeit(step, repeats)
        rows.append({"bench": "train_step", "variant": name, "batch": 64, **t})
    base = rows[0]["min_s"]
    for r in rows:
        r["ratio_to_vanilla"] = r["min_s"] / base
        print(f"train step {r['variant']:22s} min {r['min_s'] * 1e3:9.2f} ms  median {r['median_s'] * 1e3:9.2f} ms  x{r['ratio_to_vanilla']:.1f} vanilla", flush=True)
    return rows


def bench_scaling(repeats: int, quick: bool) -> list[dict]:
    rows = []
    for width in (100, 300, 1000) if not quick else (100, 300):
        net, params = mnist_net((width,) * 4)
        x = jax.random.normal(jax.random.key(1), (64, 784))
        for method in ("forward", "gram"):
            t = timeit(lambda: lld_jax.margin(net, params, x, method=method), repeats)
            rows.append({"bench": "scaling_width", "width": width, "method": method, **t})
            print(f"scaling width={width:5d} {method:8s} min {t['min_s'] * 1e3:9.2f} ms", flush=True)
    for depth in (2, 4, 8) if not quick else (2, 4):
        net, params = mnist_net((300,) * depth)
        x = jax.random.normal(jax.random.key(1), (64, 784))
        for method in ("forward", "gram"):
            t = timeit(lambda: lld_jax.margin(net, params, x, method=method), repeats)
            rows.append({"bench": "scaling_depth", "depth": depth, "method": method, **t})
            print(f"scaling depth={depth:5d} {method:8s} min {t['min_s'] * 1e3:9.2f} ms", flush=True)
    for side in (16, 32) if quick else (16, 32, 64):
        model = lld_jax.CNN((side, side, 3), (8, 16), (64,), 10, rngs=nnx.Rngs(0))
        net, params = lld_jax.from_nnx(model)
        x = jax.random.normal(jax.random.key(1), (8, side, side, 3))
        t = timeit(lambda: lld_jax.margin(net, params, x, method="forward", chunk_size=256), repeats)
        rows.append({"bench": "scaling_input", "side": side, "method": "forward", "batch": 8, **t})
        print(f"scaling CNN input {side}x{side}x3 forward (chunk 256) min {t['min_s'] * 1e3:9.2f} ms", flush=True)
    return rows


def bench_slices(quick: bool) -> list[dict]:
    """Regions enumerated per second on a 2-D slice: an MLP and a small ResNet (float32 here)."""
    from lld_jax.slices import enumerate_slice

    rows = []
    cases = {
        "mlp_2-100x4": (lld_jax.MLP(2, [100] * 4, 1, rngs=nnx.Rngs(0)), 1.5),
        "resnet_16x16x3": (lld_jax.ResNet((16, 16, 3), (8, 16), (1, 1), 10, rngs=nnx.Rngs(0)), 0.1),
    }
    for name, (model, half) in cases.items():
        net, params = lld_jax.from_nnx(model)
        shape = net.input_shape
        keys = jax.random.split(jax.random.key(0), 3)
        x0, a, b = (jax.random.normal(k, shape) for k in keys)
        a, b = a / jnp.linalg.norm(a), b / jnp.linalg.norm(b)  # unit directions: the box is in input units
        if name.startswith("mlp"):
            x0, a, b = jnp.zeros(2), jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])
        box = [(-half, -half), (half, -half), (half, half), (-half, half)]
        enumerate_slice(net, params, x0, a, b, box)  # warm-up: compilation
        t = time.perf_counter()
        regions = enumerate_slice(net, params, x0, a, b, box)
        dt = time.perf_counter() - t
        rows.append({"bench": "slice_regions", "network": name, "regions": len(regions), "seconds": dt, "regions_per_s": len(regions) / dt})
        print(f"slice {name:16s} {len(regions):7d} regions in {dt:7.2f} s = {len(regions) / dt:8.0f} regions/s", flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats and sizes")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results.json")
    ap.add_argument("--torch", action="store_true", help="also run the PyTorch template baseline (needs the torch extra)")
    ap.add_argument("--only", choices=("slices",), default=None, help="run one group only")
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 10)
    dev = jax.devices()[0]
    info = {"device": f"{dev.platform}:{dev.device_kind}", "num_devices": jax.device_count(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "jax": jax.__version__, "repeats": repeats}
    print(json.dumps(info))
    if args.only == "slices":
        rows = bench_slices(args.quick)
        print(json.dumps(rows, indent=2))
        return
    peak = matmul_peak(repeats)
    print(f"matmul peak (float32, n={peak['n']}): {peak['flop_per_s'] / 1e9:.1f} GFLOP/s", flush=True)
    rows = bench_margins(repeats, (64, 256), peak["flop_per_s"])
    rows += bench_train_steps(repeats)
    if args.torch:
        from benchmarks.torch_baseline import run as torch_run

        trows = torch_run(repeats=repeats)
        rows += trows
        ours = {(r["bench"], r.get("batch"), r.get("method"), r.get("variant")): r["min_s"] for r in rows}
        for r in trows:
            if r["bench"] == "torch_margin_l2":
                best = min(v for (b, bs, m, _), v in ours.items() if b == "margin_l2" and bs == r["batch"])
                r["speedup_of_best_lld_jax"] = r["min_s"] / best
                print(f"torch template margins B={r['batch']:4d} min {r['min_s'] * 1e3:9.2f} ms -> lld_jax best is {r['speedup_of_best_lld_jax']:.1f}x faster", flush=True)
            else:
                mine = ours[("train_step", 64, None, r["variant"] if r["variant"] == "vanilla" else "roll_exact_gram")]
                r["speedup_of_lld_jax"] = r["min_s"] / mine
                print(f"torch train step {r['variant']:22s} min {r['min_s'] * 1e3:9.2f} ms -> lld_jax is {r['speedup_of_lld_jax']:.1f}x faster", flush=True)
    rows += bench_scaling(repeats, args.quick)
    rows += bench_slices(args.quick)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"info": info, "matmul_peak": peak, "results": rows}, fh, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""All benchmarks in one process: margins per gradient method, sampled estimators,
training steps, scaling, and achieved FLOP/s against a measured matmul peak.

Run: python -m benchmarks.run [--quick] [--out benchmarks/results.json] [--torch] [--only rnn|resnet|margins|scaling|slices]
(with --only, the JSON goes to benchmarks/results_<group>.json unless --out says otherwise)

Every figure: warm-up (compilation) excluded, ``--repeats`` timed runs,
min and median reported. Ratios are only meaningful within one run.

FLOP counts (multiply-add = 2 FLOP), MLP D-N_1-...-N_M:
  forward margins  : 2 * B * D * sum_{i>=2} N_{i-1} N_i  (Jacobian of layer i+1 from layer i)
  gram l2 margins  : 2 * B * r * sum_{i>=2} N_{i-1} N_i, r = min(D, N_1)  (+ QR of W_1^T once)
  matmul peak      : 2 n^3 for an n x n matmul in the same dtype.
Memory: XLA's compiled temporary buffer size (``memory_analysis().temp_size_in_bytes``)
of the jitted computation, in MiB; arguments and outputs excluded (the ResNet-18 rows
add them: see ``RESNET_NOTES``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import lld_jax
from lld_jax._src.causal import tangent_steps
from lld_jax.losses import roll_penalty_sampled
from lld_jax.training import TrainConfig, Trainer, data_mesh, task_losses
from lld_jax.training import write_json as _atomic_write_json


def margin_fn(net, **kw):
    """``(params, x) -> (B,)`` exact margins with the library's default checks."""
    return functools.partial(lld_jax.batched.margin, net, **kw)


def sampled_penalties(net, params, x, key, **kw):
    """Eq. 10 for every example of ``x`` (one key per example)."""
    keys = jax.random.split(key, x.shape[0])
    return jax.vmap(lambda xi, k: roll_penalty_sampled(net, params, xi, k, **kw))(x, keys)


def timeit(fn, repeats: int, min_total_s: float = 0.5) -> dict:
    """Min and median of at least ``repeats`` timed calls after a warm-up; fast
    kernels are repeated (up to 200 calls) until ``min_total_s`` is spent, so
    their minimum is not at the mercy of a few noisy samples."""
    jax.block_until_ready(fn())  # compile + warm-up
    ts = []
    while len(ts) < repeats or (sum(ts) < min_total_s and len(ts) < 200):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t)
    return {"min_s": float(np.min(ts)), "median_s": float(np.median(ts)), "calls": len(ts)}


def temp_mib(fn, *args) -> float | None:
    """Temporary memory XLA allocates for ``jit(fn)(*args)``, MiB (None if the backend does not say)."""
    stats = jax.jit(fn).lower(*args).compile().memory_analysis()
    return None if stats is None else stats.temp_size_in_bytes / 2**20


def matmul_peak(repeats: int, n: int = 2048) -> dict:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    t = timeit(lambda: f(a), repeats)
    return {**t, "n": n, "flops": 2 * n**3, "flop_per_s": 2 * n**3 / t["min_s"]}


def mnist_net(widths=(300, 300, 300, 300), d=784):
    model = lld_jax.models.MLP(d, list(widths), 10, rngs=nnx.Rngs(0))
    return lld_jax.from_nnx(model)


def margin_flops(method: str, b: int, d: int, widths) -> float:
    w = list(widths)
    r = min(d, w[0]) if method in ("gram", "rowspace") else d
    return 2.0 * b * r * sum(w[i - 1] * w[i] for i in range(1, len(w)))


def bench_margins(repeats: int, batches, peak: float) -> list[dict]:
    net, params = mnist_net()
    plain = lld_jax.as_network(net.apply)
    rows = []
    for b in batches:
        x = jax.random.normal(jax.random.key(1), (b, 784))
        exact = None
        # "reverse_per_neuron": one backward pass per neuron, in sequence (chunk_size=1), the
        # paper's back-propagation baseline; "reverse" vectorises the VJPs over neurons.
        variants = {"reverse_per_neuron": ("reverse", 1)} if b <= 64 else {}
        variants |= {m: (m, None) for m in ("reverse", "forward", "template", "gram")}
        # The same MLP as a plain function (no dense_layers, no frozen apply): what a user's own model gets.
        variants |= {f"plain_{m}": (m, None) for m in ("forward", "rowspace")}
        for name, (method, chunk) in variants.items():
            model = plain if name.startswith("plain_") else net
            f = lambda: lld_jax.batched.margin(model, params, x, p=2, method=method, chunk_size=chunk)
            t = timeit(f, repeats)
            if method == "gram":
                exact = lld_jax.batched.neuron_gradient_norms(net, params, x, p=2, method="gram", squared=True)[1]
            flops = margin_flops(method, b, 784, (300,) * 4) if method != "reverse" else None
            mem = temp_mib(margin_fn(model, p=2, method=method, chunk_size=chunk), params, x)
            rows.append(
                {
                    "bench": "margin_l2",
                    "batch": b,
                    "method": name,
                    **t,
                    "temp_mib": mem,
                    "examples_per_s": b / t["min_s"],
                    "flop_per_s": flops / t["min_s"] if flops else None,
                    "fraction_of_peak": flops / t["min_s"] / peak if flops else None,
                }
            )
            print(
                f"margin_l2 B={b:4d} {name:18s} min {t['min_s'] * 1e3:9.2f} ms  median {t['median_s'] * 1e3:9.2f} ms  {b / t['min_s']:10.0f} ex/s  {mem:7.1f} MiB"
                + (f"  {flops / t['min_s'] / 1e9:7.1f} GFLOP/s ({100 * flops / t['min_s'] / peak:.0f}% of peak)" if flops else ""),
                flush=True,
            )
        exact_mean = np.asarray(jnp.mean(exact, axis=1))
        for dp in (1, 3, 10, 100):
            f = jax.jit(lambda k: sampled_penalties(net, params, x, k, C=0.0, num_samples=dp))
            t = timeit(lambda: f(jax.random.key(0)), repeats)
            draws = np.stack([np.asarray(f(k)) for k in jax.random.split(jax.random.key(1), 20)])
            rel = float(np.mean(np.abs(draws - exact_mean[None]) / exact_mean[None]))
            rows.append({"bench": "sampled_sq_grad_mean", "batch": b, "num_samples": dp, **t, "mean_relative_error": rel})
            print(
                f"sampled   B={b:4d} D'={dp:<6d} min {t['min_s'] * 1e3:9.2f} ms  median {t['median_s'] * 1e3:9.2f} ms  mean rel. error {rel:.3f}",
                flush=True,
            )
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
        print(
            f"train step {r['variant']:22s} min {r['min_s'] * 1e3:9.2f} ms  median {r['median_s'] * 1e3:9.2f} ms  x{r['ratio_to_vanilla']:.1f} vanilla",
            flush=True,
        )
    return rows


def bench_rnn_steps(repeats: int, peak: float, quick: bool) -> list[dict]:
    """Training steps of the paper's Japanese Vowels scoRNN: vanilla against exact ROLL per gradient method.

    Padded sequences of T = 29 frames (12 features + the frame flag: D = 377),
    hidden 512 (N = 29 * 512 neurons), batch 32. FLOPs of the exact step are
    counted as its forward-mode Jacobian, 2 * B * D * T * H^2 (the tangent
    recurrences), times 3 for the backward pass through it. ``causal`` (the
    default for these models: tangents start at their own frame, no tangent along
    the frame flag, the batch sorted by length into groups of 8 that stop at
    their longest frame) is counted by its own schedule,
    2 * H^2 * (tangent-steps) * 3 (:func:`lld_jax._src.causal.tangent_steps`).
    ``reverse`` (N VJPs through the whole recurrence) and ``rowspace`` (the
    single preact holds every neuron, so its basis is all of R^D) do not apply
    at this size.
    """
    t_len, feats, hidden, b = 29, 12, (128 if quick else 512), 32
    model = lld_jax.models.ScoRNN(feats, 9, hidden=hidden, length=t_len, variable_length=True, rngs=nnx.Rngs(0))
    net, params = lld_jax.from_nnx(model)
    rng = np.random.default_rng(0)
    seqs = [rng.normal(size=(int(n), feats)) for n in rng.integers(7, t_len + 1, b)]
    x = lld_jax.data.pad_sequences(seqs, length=t_len)
    y = rng.integers(0, 9, b).astype(np.int32)
    one = data_mesh(jax.devices()[:1])
    variants = {
        "vanilla": {},
        "roll_exact_forward": dict(lam=0.5, C=4.0, method="forward"),
        "roll_exact_template": dict(lam=0.5, C=4.0, method="template"),
        "roll_exact_causal": dict(lam=0.5, C=4.0, method="causal"),
    }
    lengths = [len(s) for s in seqs]
    flops = {
        "roll_exact_forward": 3 * 2.0 * b * x[0].size * t_len * hidden**2,
        "roll_exact_template": 3 * 2.0 * b * x[0].size * t_len * hidden**2,
        "roll_exact_causal": 3 * 2.0 * hidden**2 * tangent_steps(lengths, t_len, feats, group=8),
    }
    rows = []
    for name, kw in variants.items():
        tr = Trainer(net, TrainConfig(optimizer="amsgrad", lr=1e-3, batch_size=b, **kw), mesh=one)
        state = [tr.init_state(params)]
        batch = tr.padded_batch(x, y, b)

        def step():
            state[0], m = tr.train_step(state[0], *batch)
            return m

        t = timeit(step, repeats, min_total_s=0.0)
        row = {"bench": "rnn_train_step", "variant": name, "batch": b, "hidden": hidden, "length": t_len, **t}
        if name != "vanilla":
            row |= {"flops": flops[name], "flop_per_s": flops[name] / t["min_s"], "fraction_of_peak": flops[name] / t["min_s"] / peak}
        rows.append(row)
    base = rows[0]["min_s"]
    forward = next(r["min_s"] for r in rows if r["variant"] == "roll_exact_forward")
    for r in rows:
        r["ratio_to_vanilla"] = r["min_s"] / base
        if r["variant"] != "vanilla":
            r["speedup_over_forward"] = forward / r["min_s"]
        extra = f"  {r['flop_per_s'] / 1e9:6.1f} GFLOP/s ({100 * r['fraction_of_peak']:.0f}% of peak)" if "flop_per_s" in r else ""
        print(f"scoRNN step {r['variant']:22s} min {r['min_s'] * 1e3:10.1f} ms  x{r['ratio_to_vanilla']:.1f} vanilla" + extra, flush=True)
    return rows


def _compiled_stats(compiled) -> dict:
    """XLA's own accounting of one compiled call: FLOPs and memory (temp + arguments + outputs), deterministic.

    XLA counts a loop body once, whatever its trip count: the FLOPs of a
    program with a ``lax.scan`` (chunked tangents) are not its total.
    """
    out = {}
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    if cost and cost.get("flops"):
        out["xla_flops"] = float(cost["flops"])
    mem = compiled.memory_analysis()
    if mem is not None:
        out["memory_mib"] = (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes) / 2**20
        out["temp_mib"] = mem.temp_size_in_bytes / 2**20
    return out


RESNET_NOTES = {
    "memory_mib": "the compiled step's memory_analysis(): temp + argument + output bytes (XLA's buffer assignment; deterministic, "
    "not a measured peak RSS)",
    "xla_flops": "the compiled step's cost_analysis(); XLA counts a loop body once, so chunked rows carry no xla_flops and their "
    "fraction_of_peak uses the unchunked program's FLOPs (useful work, rematerialisation excluded)",
    "timing": "the AOT-compiled step; 'timed' rows: min over calls after a warm-up call, 'once' rows: a single call without "
    "warm-up (tens of seconds each here), 'memory' rows: compiled, not run",
    "roll": "sampled ROLL (Eq. 10), axes stratified per channel (D'/3 each), lambda 1e-3, C 8; SGD Nesterov, momentum 0.5, lr 0.005",
    "stem": "ROLL rows start the tangents after the stem (lld_jax.models.Stem: the stem kernel placed at each sampled pixel); "
    "'_dense_stem' rows push the one-hot tangents through the stem convolution by a dense JVP instead",
    "chunks": "on XLA:CPU a convolution's weight gradient inside a loop body (the chunked scan) runs on a slow naive emitter "
    "(jax-ml/jax#12868): chunk_size pays for its bounded memory with a several-fold slower step on CPU",
}


def bench_resnet_steps(repeats: int, peak: float, quick: bool) -> list[dict]:
    """ResNet-18 (paper App. I variant, 101 classes) training steps: vanilla against approximate ROLL (Eq. 10).

    Per input size, in one run: vanilla; D' = 18 with all tangents at once
    (tangents from the stem on, and pushed through the stem by a dense JVP) and
    6 at a time; D' = 360 all at once and 24 at a time. The CPU affords tiny
    batches only (stated per row), and D' = 360 only where it runs in a
    minute (see ``RESNET_NOTES``: at 299x299 unchunked needs 28 GiB, more than
    this machine has, and chunked takes many minutes on CPU).
    """

    def roll(d, chunk, stem=True):
        return dict(lam=1e-3, C=8.0, regularizer="sampled", num_samples=d, stratify=True, chunk_size=chunk) | ({} if stem else {"stem": False})

    if quick:
        settings = [
            (32, 2, [("vanilla", {}, "timed"), ("roll_sampled_6", roll(6, None), "timed"), ("roll_sampled_6_dense_stem", roll(6, None, False), "timed"),
                     ("roll_sampled_6_chunk2", roll(6, 2), "timed")])
        ]  # fmt: skip
    else:
        common = [
            ("vanilla", {}, "timed"),
            ("roll_sampled_18", roll(18, None), "timed"),
            ("roll_sampled_18_dense_stem", roll(18, None, False), "timed"),
        ]
        settings = [
            (64, 2, common + [("roll_sampled_18_chunk6", roll(18, 6), "timed"), ("roll_sampled_360", roll(360, None), "once"),
                              ("roll_sampled_360_chunk24", roll(360, 24), "memory")]),
            (299, 1, common + [("roll_sampled_18_chunk6", roll(18, 6), "once"), ("roll_sampled_360", roll(360, None), "memory"),
                               ("roll_sampled_360_chunk24", roll(360, 24), "memory")]),
        ]  # fmt: skip
    one = data_mesh(jax.devices()[:1])
    rows = []
    for size, b, variants in settings:
        net, params = lld_jax.from_nnx(lld_jax.models.resnet18(101, input_shape=(size, size, 3), rngs=nnx.Rngs(0)))
        rng = np.random.default_rng(0)
        x = rng.uniform(size=(b, size, size, 3)).astype(np.float32)
        y = rng.integers(0, 101, b).astype(np.int32)
        base, unchunked_flops = None, {}
        for name, kw, mode in variants:
            # stem=False: the first convolution's tangents by a dense JVP instead of its placed kernel (lld_jax.models.Stem)
            cfg = {k: v for k, v in kw.items() if k != "stem"}
            tr = Trainer(
                net if kw.get("stem", True) else dataclasses.replace(net, stem=None),
                TrainConfig(lr=0.005, momentum=0.5, batch_size=b, **cfg),
                mesh=one,
            )
            state = [tr.init_state(params)]
            batch = tr.padded_batch(x, y, b)
            t0 = time.perf_counter()
            compiled = tr.train_step.lower(state[0], *batch).compile()
            stats = _compiled_stats(compiled)
            row = {
                "bench": "resnet18_train_step",
                "variant": name,
                "size": size,
                "batch": b,
                **kw,
                "mode": mode,
                "compile_s": time.perf_counter() - t0,
            }
            d = kw.get("num_samples")
            if kw.get("chunk_size") is not None and kw["chunk_size"] < d:
                stats.pop("xla_flops", None)  # one chunk's loop body only (see RESNET_NOTES)
                if unchunked_flops.get(d):
                    row["xla_flops_unchunked"] = unchunked_flops[d]
            elif d is not None and kw.get("stem", True):
                unchunked_flops[d] = stats.get("xla_flops")
            row |= stats
            if mode != "memory":

                def step():
                    state[0], m = compiled(state[0], *batch)
                    return m

                if mode == "once":
                    t = time.perf_counter()
                    jax.block_until_ready(step())
                    row |= {"min_s": time.perf_counter() - t, "calls": 1}
                    row["median_s"] = row["min_s"]
                else:
                    row |= timeit(step, repeats, min_total_s=3.0)
                flops = stats.get("xla_flops", row.get("xla_flops_unchunked"))
                if flops:
                    row |= {"flop_per_s": flops / row["min_s"], "fraction_of_peak": flops / row["min_s"] / peak}
                base = base or row["min_s"]
                row["ratio_to_vanilla"] = row["min_s"] / base
            rows.append(row)
            mem = f"  {stats['memory_mib']:8.0f} MiB" if "memory_mib" in stats else ""
            fl = f"  {100 * row['fraction_of_peak']:3.0f}% of peak" if "fraction_of_peak" in row else ""
            if mode == "memory":
                tm = f"{'(compiled for its memory only)':48s}"
            else:
                tm = f"min {row['min_s'] * 1e3:9.0f} ms ({row['calls']:2d} calls)  x{row['ratio_to_vanilla']:5.1f} vanilla"
            print(f"ResNet-18 {size:3d}x{size:<3d} B={b} {name:26s} {tm}{mem}{fl}", flush=True)
    return rows


def resnet18_tangent_windows(size: int) -> list[dict]:
    """Rows (= columns) of ResNet-18 feature maps that a one-hot input pixel's tangent reaches, per conv.

    Exact interval arithmetic of the convolutions' index maps (output o reads
    inputs o*s - p .. o*s - p + k - 1), averaged over pixel positions ("mean")
    and at its worst ("max": the fixed window a vmapped, cropped JVP would need).
    The multiply-adds a JVP restricted to that window keeps are the window's
    share of the layer's outputs. Checked against the non-zeros of real JVPs.
    """
    out_len = lambda n, k, s, p: (n + 2 * p - k) // s + 1
    layers, n, c = [("stem", "conv7x7/2", 7, 2, 3, 3, 64, "seq"), ("stem", "avgpool3x3/2", 3, 2, 1, 64, 64, "pool")], size, 64
    for st, ch in enumerate((64, 128, 256, 512), start=1):
        for blk in range(2):
            s = 2 if (st > 1 and blk == 0) else 1
            layers += [(f"stage{st}", f"b{blk}.conv1", 3, s, 1, c, ch, "block_in"), (f"stage{st}", f"b{blk}.conv2", 3, 1, 1, ch, ch, "seq")]
            layers.append(
                (f"stage{st}", f"b{blk}.shortcut1x1", 1, s, 0, c, ch, "shortcut")
                if s != 1 or c != ch
                else (f"stage{st}", "identity", 1, 1, 0, ch, ch, "identity")
            )
            c = ch
    sizes = []
    for _, _, k, s, p, _, _, kind in layers:
        if kind != "identity" and kind != "shortcut":
            n = out_len(n, k, s, p)
        sizes.append(n)

    def lengths(i: int) -> list[int]:
        a = b = i
        res, block_in = [], None
        for (_, _, k, s, p, _, _, kind), n_out in zip(layers, sizes):
            if kind == "identity":
                a, b = min(a, block_in[0]), max(b, block_in[1])
                res.append(0)
                continue
            src = block_in if kind == "shortcut" else (a, b)
            if kind == "block_in":
                block_in = (a, b)
            lo, hi = max(0, -(-(src[0] + p - k + 1) // s)), min(n_out - 1, (src[1] + p) // s)
            if kind == "shortcut":
                a, b = min(a, lo), max(b, hi)
            else:
                a, b = lo, hi
            res.append(hi - lo + 1)
        return res

    lens = np.array([lengths(i) for i in range(size)])
    rows = []
    for (stage, name, k, _, _, cin, cout, kind), n_out, mean, mx in zip(layers, sizes, lens.mean(0), lens.max(0)):
        if kind in ("identity", "pool"):
            continue
        macs = n_out**2 * k * k * cin * cout
        rows.append(
            {
                "bench": "resnet18_tangent_window",
                "size": size,
                "stage": stage,
                "layer": name,
                "out": int(n_out),
                "mean_window": float(mean),
                "max_window": int(mx),
                "macs": int(macs),
                "kept_mean": float(mean**2 / n_out**2),
                "kept_max": float(min(mx, n_out) ** 2 / n_out**2),
            }
        )
    return rows


def print_tangent_windows(rows: list[dict]) -> list[dict]:
    """Per stage: the share of the tangents' multiply-adds a window-restricted JVP would keep; returns summary rows."""
    out = []
    for size in sorted({r["size"] for r in rows}):
        rs = [r for r in rows if r["size"] == size]
        total = sum(r["macs"] for r in rs)
        for stage in dict.fromkeys(r["stage"] for r in rs):
            sr = [r for r in rs if r["stage"] == stage]
            m = sum(r["macs"] for r in sr)
            kept = {k: sum(r["macs"] * r[k] for r in sr) / m for k in ("kept_mean", "kept_max")}
            out.append({"bench": "resnet18_tangent_window_stage", "size": size, "stage": stage, "macs": m, "share_of_net": m / total, **kept})
        kept = {k: sum(r["macs"] * r[k] for r in rs) / total for k in ("kept_mean", "kept_max")}
        out.append({"bench": "resnet18_tangent_window_stage", "size": size, "stage": "all", "macs": total, "share_of_net": 1.0, **kept})
    for r in out:
        print(
            f"ResNet-18 {r['size']:3d}x{r['size']:<3d} one-hot tangent window, {r['stage']:6s} ({r['macs'] / 1e6:6.0f} MMAC, {100 * r['share_of_net']:3.0f}% of the net):"
            f" a restricted JVP keeps {100 * r['kept_mean']:5.1f}% (mean window) / {100 * r['kept_max']:5.1f}% (fixed max window) of its multiply-adds",
            flush=True,
        )
    return out


def bench_scaling(repeats: int, quick: bool) -> list[dict]:
    rows = []

    def mlp_case(bench: str, key: str, value: int, widths, batch: int = 64) -> None:
        net, params = mnist_net(widths)
        x = jax.random.normal(jax.random.key(1), (batch, 784))
        for method in ("forward", "gram"):
            fn = margin_fn(net, p=2, method=method)
            t = timeit(lambda: fn(params, x), repeats)
            mem = temp_mib(fn, params, x)
            rows.append({"bench": bench, key: value, "batch": batch, "method": method, **t, "temp_mib": mem})
            print(f"scaling {key}={value:5d} B={batch:4d} {method:8s} min {t['min_s'] * 1e3:9.2f} ms  temp {mem:8.1f} MiB", flush=True)

    for width in (100, 300) if quick else (100, 300, 1000):
        mlp_case("scaling_width", "width", width, (width,) * 4)
    for depth in (2, 4) if quick else (2, 4, 8):
        mlp_case("scaling_depth", "depth", depth, (300,) * depth)
    for batch in (16, 256) if quick else (16, 64, 256, 1024):
        mlp_case("scaling_batch", "batch_size", batch, (300,) * 4, batch)
    rows += bench_input_scaling(repeats, quick)
    return rows


def bench_input_scaling(repeats: int, quick: bool) -> list[dict]:
    """A small CNN (conv 8, conv 16, avg-pool, dense 64) on H x W x 3 inputs up to 224 x 224 x 3.

    Exact l2 margins stream over chunks of 16 input axes (memory ~ chunk x N,
    time ~ D forward passes: timed only where it takes seconds); the
    approximate-ROLL (D'=3) parameter gradient at batch 8 with the first conv
    placed per pixel (``CNN.stem_split``) and pushed through a dense JVP, and
    the vanilla one.
    """
    rows = []
    timed_exact = 32 if quick else 64
    for side in (16, 32, 64, 224) if quick else (16, 32, 64, 128, 224):
        model = lld_jax.models.CNN((side, side, 3), (8, 16), (64,), 10, rngs=nnx.Rngs(0))
        net, params = lld_jax.from_nnx(model)
        x1 = jax.random.normal(jax.random.key(1), (1, side, side, 3))
        x8 = jax.random.normal(jax.random.key(2), (8, side, side, 3))
        exact = margin_fn(net, p=2, method="forward", chunk_size=16)
        row = {"bench": "scaling_input", "side": side, "dim": side * side * 3, "exact_temp_mib": temp_mib(exact, params, x1)}
        if side <= timed_exact:
            row["exact_margin_1ex"] = timeit(lambda: exact(params, x1), repeats)
        y8 = jnp.zeros(8, jnp.int32)
        ce = lambda p: jnp.mean(task_losses(jax.vmap(lambda u: net.apply(p, u)[0])(x8), y8, "softmax")[0])
        vanilla = jax.grad(ce)
        sampled = jax.grad(lambda p, k: ce(p) + jnp.mean(sampled_penalties(net, p, x8, k, C=1.0, num_samples=3)))
        no_stem = dataclasses.replace(net, stem=None)  # the first conv pushed through a dense JVP, as before lld_jax.models.Stem
        sampled_dense = jax.grad(lambda p, k: ce(p) + jnp.mean(sampled_penalties(no_stem, p, x8, k, C=1.0, num_samples=3)))
        key = jax.random.key(0)
        vanilla_jit, sampled_jit, dense_jit = jax.jit(vanilla), jax.jit(sampled), jax.jit(sampled_dense)
        row["vanilla_grad_b8"] = timeit(lambda: vanilla_jit(params), repeats)
        row["sampled3_grad_b8"] = timeit(lambda: sampled_jit(params, key), repeats)
        row["sampled3_dense_stem_grad_b8"] = timeit(lambda: dense_jit(params, key), repeats)
        row["sampled3_temp_mib"] = temp_mib(sampled, params, key)
        row["vanilla_temp_mib"] = temp_mib(vanilla, params)
        row["sampled3_ratio_to_vanilla"] = row["sampled3_grad_b8"]["min_s"] / row["vanilla_grad_b8"]["min_s"]
        row["sampled3_dense_stem_ratio_to_vanilla"] = row["sampled3_dense_stem_grad_b8"]["min_s"] / row["vanilla_grad_b8"]["min_s"]
        rows.append(row)
        ex = f"exact margin {row['exact_margin_1ex']['min_s'] * 1e3:9.1f} ms/ex" if "exact_margin_1ex" in row else "exact margin (not timed)"
        print(
            f"scaling CNN {side:3d}x{side:3d}x3: {ex}, temp {row['exact_temp_mib']:7.1f} MiB | "
            f"D'=3 ROLL grad B=8 {row['sampled3_grad_b8']['min_s'] * 1e3:8.1f} ms = x{row['sampled3_ratio_to_vanilla']:.2f} vanilla "
            f"(first conv by dense JVP x{row['sampled3_dense_stem_ratio_to_vanilla']:.2f}), "
            f"temp {row['sampled3_temp_mib']:7.1f} vs {row['vanilla_temp_mib']:7.1f} MiB",
            flush=True,
        )
    return rows


def bench_slices(quick: bool) -> list[dict]:
    """Regions enumerated per second on a 2-D slice: an MLP and a small ResNet (float32 here)."""
    from lld_jax.slices import enumerate_slice

    rows = []
    cases = {
        "mlp_2-100x4": (lld_jax.models.MLP(2, [100] * 4, 1, rngs=nnx.Rngs(0)), 1.5),
        "resnet_16x16x3": (lld_jax.models.ResNet((16, 16, 3), (8, 16), (1, 1), 10, rngs=nnx.Rngs(0)), 0.1),
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


def bench_api(repeats: int) -> list[dict]:
    """What the drop-in API costs on the 784-300x4-10 MLP, ratios measured in one run.

    * the declaration check (dense_layers/negative_slope reproduce the network: a
      forward pass and a JVP) against the ``gram`` margin it guards;
    * per-example eager calls with a fresh lambda each time (a stable network key:
      no compilation after the first);
    * ``jit(vmap(margin))`` pure (failed checks poison) against ``lld_jax.checked``
      (host callbacks) and unchecked.
    """
    from lld_jax._src.declarations import dense_mismatch

    net, params = mnist_net()
    rows = []
    x = jax.random.normal(jax.random.key(1), (256, 784))
    gram = jax.jit(jax.vmap(lambda u: lld_jax.margin(net, params, u, method="gram", check=False)))
    check = jax.jit(jax.vmap(lambda u: dense_mismatch(net, params, u)))
    tg, tc = timeit(lambda: gram(x), repeats), timeit(lambda: check(x), repeats)
    rows.append(
        {"bench": "declaration_check", "batch": 256, "gram_margin_min_s": tg["min_s"], "check_min_s": tc["min_s"], "ratio": tc["min_s"] / tg["min_s"]}
    )
    print(
        f"declaration check B=256: {tc['min_s'] * 1e3:.2f} ms vs gram margin {tg['min_s'] * 1e3:.2f} ms ({100 * tc['min_s'] / tg['min_s']:.1f}%)",
        flush=True,
    )
    times = []
    for _ in range(4):
        f = lambda p, u: net.apply(p, u)  # a fresh function object each call, as in a user's loop
        t0 = time.perf_counter()
        jax.block_until_ready(lld_jax.margin(f, params, x[0]))
        times.append(time.perf_counter() - t0)
    rows.append({"bench": "fresh_lambda_per_example_call", "first_s": times[0], "later_max_s": max(times[1:])})
    print(f"per-example margin, fresh lambda each call: first {times[0]:.2f} s, later at most {max(times[1:]) * 1e3:.1f} ms", flush=True)
    one = lambda u: lld_jax.margin(net, params, u)
    variants = {
        "pure_checked_values": jax.jit(jax.vmap(one)),
        "lld_jax_checked": jax.jit(jax.vmap(lld_jax.checked(one))),
        "unchecked": jax.jit(jax.vmap(lambda u: lld_jax.margin(net, params, u, check=False))),
    }
    base = None
    for name, fn in variants.items():
        t = timeit(lambda: fn(x), repeats)
        base = base or t["min_s"]
        rows.append({"bench": "jit_vmap_margin", "batch": 256, "variant": name, **t, "ratio_to_pure": t["min_s"] / base})
        print(f"jit(vmap(margin)) B=256 {name:20s} min {t['min_s'] * 1e3:8.2f} ms ({t['min_s'] / base:.2f}x pure)", flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats and sizes")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", default=None, help="JSON path (default: benchmarks/results.json, or results_<group>.json with --only)")
    ap.add_argument("--torch", action="store_true", help="also run the PyTorch template baseline (needs the torch extra)")
    ap.add_argument("--only", choices=("slices", "scaling", "rnn", "margins", "resnet", "api"), default=None, help="run one group only")
    args = ap.parse_args(argv)
    if args.torch and importlib.util.find_spec("torch") is None:  # fail now, not after the JAX benchmarks
        ap.error('--torch needs PyTorch: pip install -e ".[torch]" (or leave --torch out).')
    repeats = args.repeats or (3 if args.quick else 10)
    if args.out is None:
        args.out = "benchmarks/results.json" if args.only is None else f"benchmarks/results_{args.only}.json"
    dev = jax.devices()[0]
    info = {
        "device": f"{dev.platform}:{dev.device_kind}",
        "num_devices": jax.device_count(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "repeats": repeats,
    }
    print(json.dumps(info))
    peak = matmul_peak(repeats)
    print(f"matmul peak (float32, n={peak['n']}): {peak['flop_per_s'] / 1e9:.1f} GFLOP/s", flush=True)
    if args.only in ("slices", "scaling"):
        rows = bench_slices(args.quick) if args.only == "slices" else bench_scaling(repeats, args.quick)
        _write(args.out, info, peak, rows)
        return
    if args.only == "api":
        _write(args.out, info, peak, bench_api(repeats))
        return
    if args.only == "rnn":
        _write(args.out, info, peak, bench_rnn_steps(min(repeats, 3), peak["flop_per_s"], args.quick))
        return
    if args.only == "resnet":
        rows = bench_resnet_steps(min(repeats, 3), peak["flop_per_s"], args.quick)
        windows = [r for size in ((32,) if args.quick else (64, 299)) for r in resnet18_tangent_windows(size)]
        rows += windows + print_tangent_windows(windows)
        _write(args.out, {**info, "notes": RESNET_NOTES}, peak, rows)
        return
    # The JSON is rewritten after each group: a run cut short (a time limit) keeps what it measured.
    rows = bench_margins(repeats, (64, 256), peak["flop_per_s"])
    _write(args.out, info, peak, rows)
    rows += bench_api(repeats)
    _write(args.out, info, peak, rows)
    if args.only != "margins":
        rows += bench_train_steps(repeats)
        _write(args.out, info, peak, rows)
    if args.torch:
        from benchmarks.torch_baseline import run as torch_run

        trows = torch_run(repeats=repeats)
        rows += trows
        ours = {(r["bench"], r.get("batch"), r.get("method"), r.get("variant")): r["min_s"] for r in rows if "min_s" in r}
        for r in trows:
            if r["bench"] == "torch_margin_l2":
                best = min(v for (b, bs, m, _), v in ours.items() if b == "margin_l2" and bs == r["batch"])
                r["speedup_of_best_lld_jax"] = r["min_s"] / best
                r["speedup_of_plain_function"] = r["min_s"] / ours[("margin_l2", r["batch"], "plain_rowspace", None)]
                print(
                    f"torch template margins B={r['batch']:4d} min {r['min_s'] * 1e3:9.2f} ms -> lld_jax best is {r['speedup_of_best_lld_jax']:.1f}x faster, "
                    f"a plain-function MLP (auto: rowspace) {r['speedup_of_plain_function']:.1f}x",
                    flush=True,
                )
            elif args.only != "margins":
                mine = ours[("train_step", 64, None, r["variant"] if r["variant"] == "vanilla" else "roll_exact_gram")]
                r["speedup_of_lld_jax"] = r["min_s"] / mine
                print(
                    f"torch train step {r['variant']:22s} min {r['min_s'] * 1e3:9.2f} ms -> lld_jax is {r['speedup_of_lld_jax']:.1f}x faster",
                    flush=True,
                )
    _write(args.out, info, peak, rows)
    if args.only != "margins":
        for group in (
            lambda: bench_rnn_steps(min(repeats, 3), peak["flop_per_s"], args.quick),
            lambda: bench_scaling(repeats, args.quick),
            lambda: bench_slices(args.quick),
        ):
            rows += group()
            _write(args.out, info, peak, rows)


def write_json(path: str, obj) -> None:
    """Writes ``obj`` as JSON atomically (a run killed mid-write keeps the previous file), creating the folder."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _atomic_write_json(path, obj)
    print(f"wrote {path}", flush=True)


def _write(path: str, info: dict, peak: dict, rows: list[dict]) -> None:
    write_json(path, {"info": info, "matmul_peak": peak, "results": rows})


if __name__ == "__main__":
    main()

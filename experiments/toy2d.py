"""Toy 2-D experiment of paper Figure 1: vanilla vs distance vs relaxed regularisation.

Data: the paper's generator is unknown, so we use the classic "two moons"
(100 points, Gaussian noise 0.1, seed 0), a standard non-linearly-separable
binary set. Network: FC 4x100 ReLU, one logit, sigmoid cross-entropy, Adam
(lr 1e-3), full batch, 5000 steps, the model of the lowest training loss kept
(App. F). Regularisers: distance (Eq. 4) and relaxed (Eq. 7, i.e. ROLL with
max aggregation), C = 5, lambda = 1 for both as in the paper; with several
``--lambdas`` the largest that keeps the training set perfectly classified is
taken (the first when none does, which the summary records).

Run: python -m experiments.toy2d [--steps 5000] [--out runs/toy2d]
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import lld_jax
from experiments import _cli, _figures
from experiments.configs.toy2d import Config
from lld_jax.evaluation import percentiles
from lld_jax.slices import draw_heatmap, draw_points, draw_regions, enumerate_slice
from lld_jax.training import RunDir, TrainConfig, Trainer, data_mesh


def two_moons(n: int = 100, noise: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The classic two interleaved half circles, centred and scaled to about [-1, 1]^2."""
    rng = np.random.default_rng(seed)
    n0 = n // 2
    t0, t1 = np.linspace(0, np.pi, n0), np.linspace(0, np.pi, n - n0)
    x = np.concatenate([np.stack([np.cos(t0), np.sin(t0)], 1), np.stack([1 - np.cos(t1), 0.5 - np.sin(t1)], 1)])
    x = x + noise * rng.normal(size=x.shape)
    x = (x - np.array([0.5, 0.25])) / 1.2
    y = np.concatenate([np.zeros(n0), np.ones(n - n0)]).astype(np.int32)
    return x.astype(np.float64), y


def train(config: Config, x, y, *, lam: float, regularizer: str):
    """Full-batch training; returns (network, params of the lowest training loss, their train accuracy)."""
    model = lld_jax.models.MLP(2, list(config.widths), 1, rngs=nnx.Rngs(config.seed), param_dtype=jnp.float64)
    net, params = lld_jax.from_nnx(model)
    cfg = TrainConfig(
        epochs=1,
        batch_size=len(x),
        optimizer="adam",
        lr=config.lr,
        lam=lam,
        C=config.C if lam else 0.0,
        gamma="max",
        regularizer=regularizer,
        task_loss="sigmoid",
        seed=config.seed,
    )
    tr = Trainer(net, cfg, mesh=data_mesh(jax.devices()[:1]))
    state = tr.init_state(params)
    batch = tr.padded_batch(x, y, len(x))
    best_loss, params = np.inf, state.params
    for _ in range(config.steps):
        before = jax.tree.map(lambda a: jnp.array(a, copy=True), state.params)  # the step donates its state
        state, m = tr.train_step(state, *batch)
        loss = float(m["loss"])  # the training loss at ``before`` (App. F: model chosen by training loss)
        if loss < best_loss:
            best_loss, params = loss, before
    logits = jax.vmap(lambda u: net.apply(params, u)[0][0])(jnp.asarray(x))
    acc = float(np.mean((np.asarray(logits) > 0) == (y > 0)))  # exact count: 1.0 means perfect
    return net, params, acc


def analyse(net, params, x, box):
    u0, u1, v0, v1 = box
    regions = enumerate_slice(net, params, jnp.zeros(2), jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]), [(u0, v0), (u1, v0), (u1, v1), (u0, v1)])
    margins = np.asarray(lld_jax.batched.margin(net, params, jnp.asarray(x), p=2))
    grads = np.asarray(jax.vmap(jax.grad(lambda u: net.apply(params, u)[0][0]))(jnp.asarray(x)))
    return regions, margins, grads


def train_and_evaluate(config: Config, workdir: str) -> dict:
    """Trains the three models of Figure 1, writes toy2d.json / .md / .png in ``workdir``; returns the summary.

    Runs in float64 (exact geometry on the slice) inside ``jax.enable_x64``: the caller's precision is untouched.
    """
    with jax.enable_x64(True):
        return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: Config, workdir: str) -> dict:
    """:func:`train_and_evaluate` with float64 in force."""
    config.validate()
    os.makedirs(workdir, exist_ok=True)
    x, y = two_moons(config.num_points, config.noise, config.data_seed)
    pad = 0.25
    box = (x[:, 0].min() - pad, x[:, 0].max() + pad, x[:, 1].min() - pad, x[:, 1].max() + pad)
    t0 = time.time()
    results = {}
    print(f"training vanilla ({config.steps} steps)...", flush=True)
    results["vanilla"] = (0.0, *train(config, x, y, lam=0.0, regularizer="roll"))
    sweep: dict[str, list[dict]] = {}
    for name, reg in (("distance", "distance"), ("relaxed", "roll")):
        best = None
        sweep[name] = []
        for lam in config.lambdas:  # the largest lambda that keeps the training set perfectly classified
            net, params, acc = train(config, x, y, lam=lam, regularizer=reg)
            print(f"  {name}: lambda={lam:g} train accuracy={acc:.3f}", flush=True)
            sweep[name].append({"lambda": lam, "train_accuracy": acc})
            if acc < 1.0:
                break
            best = (lam, net, params, acc)
        if best is None:
            print(
                f"  {name}: no lambda keeps the training set perfectly classified; keeping lambda={config.lambdas[0]:g} (train accuracy {acc:.3f})",
                flush=True,
            )
            best = (config.lambdas[0], net, params, acc)
        results[name] = best
    rows, panels = {}, {}
    for name, (lam, net, params, acc) in results.items():
        regions, margins, grads = analyse(net, params, x, box)
        panels[name] = (net, params, regions, margins, grads)
        rows[name] = {"lambda": lam, "train_accuracy": acc, "num_regions": len(regions), "margin_l2": percentiles(margins)}
    selection = {
        "rule": "the paper's (App. F): the largest lambda, tried in increasing order, that keeps the training set perfectly "
        "classified; the sweep stops at the first lambda that does not",
        "split": "training set (the toy has no other)",
        "candidates": list(config.lambdas),
        "sweep": sweep,
    }
    summary = {"config": dataclasses.asdict(config), "box": box, "selection": selection, "models": rows, "seconds": time.time() - t0}
    RunDir(workdir).write_json("toy2d.json", summary)
    with open(os.path.join(workdir, "toy2d.md"), "w") as fh:
        fh.write(markdown(summary))
    print(markdown(summary))
    plot(panels, rows, x, y, box, os.path.join(workdir, "toy2d"))
    print(f"figure: {workdir}/toy2d.png  ({time.time() - t0:.0f} s)")
    return summary


def markdown(summary: dict) -> str:
    """The README's table of a ``toy2d.json`` summary: the chosen models, then the selection sweep."""
    table = ["| model | lambda | train acc | #regions in box | l2 margin P25 | P50 | P75 | P100 |", "|---|---|---|---|---|---|---|---|"]
    for name, r in summary["models"].items():
        m = r["margin_l2"]
        table.append(
            f"| {name} | {r['lambda']:g} | {r['train_accuracy']:.2f} | {r['num_regions']} | {m['P25']:.4f} | {m['P50']:.4f} | {m['P75']:.4f} | {m['P100']:.4f} |"
        )
    sweep = summary.get("selection", {}).get("sweep", {})
    if sweep:
        table += ["", "| selection sweep (training accuracy) | " + " | ".join(f"lambda {c:g}" for c in summary["selection"]["candidates"]) + " |"]
        table.append("|---|" + "---|" * len(summary["selection"]["candidates"]))
        for name, tried in sweep.items():
            accs = {t["lambda"]: t["train_accuracy"] for t in tried}
            cells = [f"{accs[c]:.3f}" if c in accs else "not run" for c in summary["selection"]["candidates"]]
            table.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(table) + "\n"


def main(argv: Sequence[str] | None = None) -> dict:
    args = _cli.config_parser(Config, __doc__).parse_args(argv)
    config = _cli.config_from_args(Config, args).validate()
    return train_and_evaluate(config, config.out)


def plot(panels, rows, x, y, box, path):
    """Figure 1: one panel per model (regions, decision boundary, margins, gradients), with axes, legend and lambda."""
    from matplotlib.lines import Line2D

    plt = _figures.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    titles = {"vanilla": "(a) vanilla", "distance": "(b) distance regularisation (Eq. 4)", "relaxed": "(c) relaxed regularisation (Eq. 7)"}
    for ax, (name, (net, params, regions, margins, grads)) in zip(axes, panels.items()):
        draw_regions(ax, regions)
        # Arrow length proportional to the gradient norm; the longest spans 12% of the box width.
        scale = 0.12 * (box[1] - box[0]) / max(float(np.linalg.norm(grads, axis=1).max()), 1e-12)
        draw_points(ax, x, y, margins=margins, grads=grads, arrow_scale=scale)
        r = rows[name]
        lam = "" if name == "vanilla" else f", lambda = {r['lambda']:g}"
        ax.set_title(f"{titles[name]}\n{len(regions)} regions{lam}, train acc {r['train_accuracy']:.2f}", fontsize=10)
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
        inset = ax.inset_axes([0.72, 0.72, 0.27, 0.27])
        predict = jax.jit(jax.vmap(lambda u: jax.nn.sigmoid(net.apply(params, u)[0][0])))
        draw_heatmap(inset, lambda pts: predict(jnp.asarray(pts)), box, n=120)
    handles = [
        Line2D([], [], ls="", marker="o", mfc="tab:blue", mec="k", label="class 0"),
        Line2D([], [], ls="", marker="o", mfc="tab:red", mec="k", label="class 1"),
        Line2D([], [], ls="", marker="o", mfc="none", mec="tab:green", ms=10, label="exact l2 margin (ball in the region)"),
        Line2D([], [], color="0.1", marker=">", label="input gradient (length ~ norm)"),
        Line2D([], [], color="k", lw=2, label="decision boundary (inset: P(class 1))"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    _figures.save(fig, path, dpi=80, small_png=True)


if __name__ == "__main__":
    _cli.run(main)

"""MNIST reproduction of paper Table 1 and Figure 2 (784-300x4-10 ReLU network).

One run::

    python -m experiments.mnist --lam 2 --C 0.25 --out runs/mnist/roll_c0.25

Grid with the paper's selection rule and the Figure 2 plot::

    python -m experiments.mnist --grid --out runs/mnist_grid
    python -m experiments.mnist --grid --grid-cross --out runs/mnist_fig2   # only Figure 2's two slices

Paper defaults (App. G): SGD with Nesterov momentum 0.5, lr 0.01, batch 64,
20 epochs, gamma 100, best-validation-loss epoch kept; split 55k/5k/10k.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import time

import jax
import numpy as np
from flax import nnx

import lld_jax
from lld_jax.data import MNIST_STD, load_mnist
from lld_jax.evaluation import evaluate_model, table1_markdown
from lld_jax.loop import fit
from lld_jax.training import TrainConfig, maybe_initialize_distributed, write_json

DEFAULT_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist")


def parse_gamma(s: str):
    return "max" if s == "max" else float(s)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=DEFAULT_DATA, help="folder with the four MNIST IDX files")
    p.add_argument("--out", default="runs/mnist", help="run directory (resumed if it exists)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lam", type=float, default=0.0, help="lambda; 0 = vanilla")
    p.add_argument("--C", type=float, default=0.0)
    p.add_argument("--gamma", type=parse_gamma, default=100.0, help="'max', 25, 50, 75 or 100")
    p.add_argument("--regularizer", choices=("roll", "sampled", "distance"), default="roll")
    p.add_argument("--num-samples", type=int, default=3, help="D' for --regularizer sampled")
    p.add_argument("--method", default="auto", help="gradient method for the exact ROLL loss")
    p.add_argument("--train-size", type=int, default=None, help="use only the first N training examples")
    p.add_argument("--test-size", type=int, default=None, help="evaluate on the first N test examples")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--widths", type=int, nargs="+", default=[300, 300, 300, 300])
    p.add_argument("--grid", action="store_true", help="run the lambda x C x gamma grid, select, and plot Figure 2")
    p.add_argument("--grid-lam", type=float, nargs="+", default=[2.0**k for k in range(-3, 3)])
    p.add_argument("--grid-C", type=float, nargs="+", default=[2.0**k for k in range(-2, 4)])
    p.add_argument("--grid-gamma", type=parse_gamma, nargs="+", default=["max", 25.0, 50.0, 75.0, 100.0])
    p.add_argument("--grid-cross", action="store_true",
                   help="only the two slices Figure 2 plots (every lambda at the fixed C, every C at the fixed lambda): "
                   "|lambda| + |C| - 1 runs per gamma instead of |lambda| x |C|")
    p.add_argument("--no-progress", action="store_true")
    return p


def make_config(args, lam: float, C: float, gamma) -> TrainConfig:
    """The run's TrainConfig; raises on invalid hyper-parameters."""
    return TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lam=lam, C=C, gamma=gamma,
        regularizer=args.regularizer, num_samples=args.num_samples, method=args.method, seed=args.seed,
    ).validate()


def run_one(args, data, lam: float, C: float, gamma, out: str) -> dict:
    """Trains (or resumes) one model and writes report.json / report.md in ``out``."""
    cfg = make_config(args, lam, C, gamma)
    model = lld_jax.MLP((28, 28), args.widths, 10, rngs=nnx.Rngs(args.seed))
    net, params = lld_jax.from_nnx(model)
    progress = not args.no_progress
    t0 = time.time()
    params, history = fit(net, params, cfg, data.train, data.val, out, progress=progress)
    train_time = time.time() - t0
    test = data.test if args.test_size is None else type(data.test)(data.test.x[: args.test_size], data.test.y[: args.test_size])
    report = {
        "config": dataclasses.asdict(cfg),
        "train_time_s": train_time,
        "best_epoch": int(np.argmin([h["val_loss"] for h in history]) + 1) if history else None,
        **evaluate_model(net, params, test.x, test.y, scale=MNIST_STD, progress=progress),
        # Selection needs validation accuracy and l2 margins only: skip the costlier l1 margins.
        "val": evaluate_model(net, params, data.val.x, data.val.y, scale=MNIST_STD, ps=(2,), progress=progress),
        "device": str(jax.devices()[0].device_kind),
    }
    if jax.process_index() == 0:
        write_json(os.path.join(out, "report.json"), report)
        name = "Vanilla" if lam == 0 else f"ROLL (lam={lam:g}, gamma={gamma})"
        with open(os.path.join(out, "report.md"), "w") as fh:
            fh.write(table1_markdown([(name, "-" if lam == 0 else f"{C:g}", report)]) + "\n")
    return report


def select(reports: dict[str, dict], vanilla: dict) -> dict[str, str | None]:
    """Paper's rule: largest validation median l2 margin at vanilla's rounded validation accuracy, and 1 point lower."""
    target = round(100 * vanilla["val"]["accuracy"])
    picks = {}
    for label, acc in (("same_accuracy", target), ("one_point_lower", target - 1)):
        cands = [(r["val"]["margin_l2"]["P50"], k) for k, r in reports.items() if round(100 * r["val"]["accuracy"]) == acc]
        picks[label] = max(cands)[1] if cands else None
    return picks


def plot_figure2(reports: dict[str, dict], path: str, *, lam_fixed: float = 0.5, C_fixed: float = 1.0) -> None:
    """Figure 2: test accuracy and median l2 margin against C (at ``lam_fixed``) and lambda (at ``C_fixed``), one curve per gamma."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.5))
    rows = [r["config"] | {"acc": r["accuracy"], "m2": r["margin_l2"]["P50"]} for r in reports.values() if r["config"]["lam"] > 0]
    base = [{"acc": r["accuracy"], "m2": r["margin_l2"]["P50"]} for r in reports.values() if r["config"]["lam"] == 0]
    gammas = sorted({str(r["gamma"]) for r in rows})
    for col, (fixed, fval, var, metric) in enumerate([("lam", lam_fixed, "C", "acc"), ("lam", lam_fixed, "C", "m2"), ("C", C_fixed, "lam", "acc"), ("C", C_fixed, "lam", "m2")]):
        ax = axes[col]
        for g in gammas:
            pts = sorted((r[var], r[metric]) for r in rows if str(r["gamma"]) == g and np.isclose(r[fixed], fval))
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"gamma={g}")
        if base:
            ax.axhline(base[0][metric], color="gray", linestyle="--", label="vanilla")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(var)
        ax.set_ylabel("test accuracy" if metric == "acc" else "test median l2 margin (pixels)")
        ax.set_title(f"{fixed}={fval:g}")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path + ".png", dpi=100)
    fig.savefig(path + ".pdf")
    plt.close(fig)


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    maybe_initialize_distributed()
    grid = grid_points(args) if args.grid else [(args.lam, args.C, args.gamma)]
    for lam, C, gamma in grid:  # refuse bad hyper-parameters before any work
        make_config(args, lam, C, gamma)
    data = load_mnist(args.data_dir, train_size=args.train_size)
    if not args.grid:
        report = run_one(args, data, args.lam, args.C, args.gamma, args.out)
        print(json.dumps({k: report[k] for k in ("accuracy", "num_patterns", "num_jacobians", "margin_l1", "margin_l2", "spearman_l1_l2")}, indent=2))
        return
    run_grid(args, data)


def figure2_slices(args) -> tuple[float, float]:
    """(lambda, C) held fixed in Figure 2: the paper's 0.5 and 1, or the grid's middle values when absent."""
    lam_fixed = 0.5 if 0.5 in args.grid_lam else sorted(args.grid_lam)[len(args.grid_lam) // 2]
    C_fixed = 1.0 if 1.0 in args.grid_C else sorted(args.grid_C)[len(args.grid_C) // 2]
    return lam_fixed, C_fixed


def grid_points(args) -> list[tuple[float, float, object]]:
    """(lambda, C, gamma) of the grid: the full product, or with ``--grid-cross`` the two Figure 2 slices."""
    points = list(itertools.product(args.grid_lam, args.grid_C, args.grid_gamma))
    if args.grid_cross:
        lam_fixed, C_fixed = figure2_slices(args)
        points = [(lam, C, g) for lam, C, g in points if lam == lam_fixed or C == C_fixed]
    return points


def run_grid(args, data) -> tuple[dict[str, dict], dict[str, str | None]]:
    """Vanilla plus every grid point (:func:`grid_points`), the selection, Table 1 and Figure 2 in ``args.out``."""
    reports = {"vanilla": run_one(args, data, 0.0, 0.0, 100.0, os.path.join(args.out, "vanilla"))}
    for lam, C, gamma in grid_points(args):
        key = f"lam{lam:g}_C{C:g}_gamma{gamma}"
        reports[key] = run_one(args, data, lam, C, gamma, os.path.join(args.out, key))
    picks = select({k: v for k, v in reports.items() if k != "vanilla"}, reports["vanilla"])
    rows = [("Vanilla", "-", reports["vanilla"])] + [(f"ROLL {k} ({slot})", f"{reports[k]['config']['C']:g}", reports[k]) for slot, k in picks.items() if k]
    if jax.process_index() == 0:
        write_json(os.path.join(args.out, "selection.json"), picks)
        with open(os.path.join(args.out, "table1.md"), "w") as fh:
            fh.write(table1_markdown(rows) + "\n")
        lam_fixed, C_fixed = figure2_slices(args)
        plot_figure2(reports, os.path.join(args.out, "figure2"), lam_fixed=lam_fixed, C_fixed=C_fixed)
    print(table1_markdown(rows))
    return reports, picks


if __name__ == "__main__":
    main()

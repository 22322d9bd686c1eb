"""MNIST reproduction of paper Table 1 and Figure 2 (784-300x4-10 ReLU network).

One run::

    python -m experiments.mnist --lam 2 --C 0.25 --out runs/mnist/roll_c0.25
    python -m experiments.mnist --lam 2 --C 0.25 --out runs/mnist/roll_c0.25 --interim   # while it trains: its best checkpoint so far
    python -m experiments.mnist --lam 2 --C 0.25 --out runs/mnist/roll_c0.25 --certify   # a finished run's certified accuracy (l2, l-inf)

Grid with the paper's selection rule and the Figure 2 plot::

    python -m experiments.mnist --grid --out runs/mnist_grid
    python -m experiments.mnist --grid --grid-cross --out runs/mnist_fig2   # only Figure 2's two slices

Paper defaults (App. G): SGD with Nesterov momentum 0.5, lr 0.01, batch 64,
20 epochs, gamma 100, best-validation-loss epoch kept; split 55k/5k/10k.
Every setting is a field of :class:`Config` (and a flag); the run directory
records it, and rerunning a command resumes its run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

import lld_jax
from experiments import _cli, _figures, common
from experiments.configs.mnist import Config
from lld_jax.data import MNIST, MNIST_STD, load_mnist
from lld_jax.evaluation import certify_dataset, evaluate_model
from lld_jax.training import RunDir, TrainConfig, fit, load_best, maybe_initialize_distributed


def build_model(widths: Sequence[int], seed: int, init: str = "torch") -> tuple[lld_jax.Network, Any]:
    """The MNIST MLP ``784 - widths - 10`` as ``(network, params)``, initialised by ``init``."""
    return lld_jax.from_nnx(lld_jax.models.MLP((28, 28), list(widths), 10, init=init, rngs=nnx.Rngs(seed)))


def load(config: Config) -> MNIST:
    return load_mnist(config.data_dir, val_size=config.val_size, train_size=config.train_size, test_size=config.test_size, download=config.download)


def _experiment(config: Config, data: MNIST) -> dict:
    """What a run directory records about the data and the model besides the training config."""
    return {
        "dataset": "mnist",
        "train_size": len(data.train.x),
        "val_size": len(data.val.x),
        "seed_split": 1,
        "model": "MLP",
        "widths": list(config.widths),
        "init": config.init,
        "model_seed": config.seed,
    }


def _evaluation(config: Config, net: lld_jax.Network, params: Any, data: MNIST) -> dict:
    """A report's measured part: the test-set evaluation, the validation one (``val``) and the device."""
    return {
        **evaluate_model(net, params, data.test.x, data.test.y, scale=MNIST_STD, progress=config.progress, per_example=True),
        # Selection needs validation accuracy and l2 margins only: skip the costlier l1 margins.
        "val": evaluate_model(net, params, data.val.x, data.val.y, scale=MNIST_STD, ps=(2,), progress=config.progress),
        "device": str(jax.devices()[0].device_kind),
    }


def run_one(config: Config, data: MNIST, lam: float, C: float, gamma: Any, workdir: str) -> dict:
    """Trains (or resumes) one model and writes report.json / report.md in ``workdir``."""
    cfg = config.train_config(lam, C, gamma)
    net, params = build_model(config.widths, config.seed, config.init)
    experiment = _experiment(config, data)
    t0 = time.time()
    params, history = fit(net, params, cfg, data.train, data.val, workdir, experiment=experiment, progress=config.progress)
    train_time = time.time() - t0
    report = {
        "config": dataclasses.asdict(cfg),
        "experiment": experiment,
        "train_time_s": train_time,
        "best_epoch": common.best_epoch(history),
        **_evaluation(config, net, params, data),
    }
    name = "Vanilla" if lam == 0 else f"ROLL (lam={lam:g}, gamma={gamma})"
    # Per-example test results (pixel units) for paired comparisons across models and seeds.
    common.write_report(workdir, report, report.pop("per_example"), common.table1_markdown([(name, "-" if lam == 0 else f"{C:g}", report)]))
    return report


def interim_report(config: Config, data: MNIST, workdir: str) -> dict:
    """An unfinished run's report at its best checkpoint so far, written to ``report_interim.json``; trains nothing.

    ``interim`` says how far it got. The command line must name the run's
    settings (as to resume it): a run directory holding another config is refused.
    """
    cfg = config.train_config(config.lam, config.C, config.gamma)
    rd = RunDir(workdir, write=jax.process_index() == 0)
    if rd.stored_config() is None:
        raise FileNotFoundError(f"{workdir} holds no run (no config.json): start it without --interim first.")
    want = {"train": dataclasses.asdict(cfg), "experiment": _experiment(config, data)}
    diffs = rd.differences(want, defaults=TrainConfig.record_defaults(), parts=True)
    if diffs:
        raise ValueError(f"{workdir} holds a run with other settings ({'; '.join(diffs)}): give --interim the run's own flags.")
    history = rd.metrics()
    net, params = build_model(config.widths, config.seed, config.init)
    params = load_best(workdir, params)
    report = {
        "config": dataclasses.asdict(cfg),
        "experiment": want["experiment"],
        "interim": common.interim(history),
        **_evaluation(config, net, params, data),
    }
    report.pop("per_example")
    rd.write_json("report_interim.json", report)
    return report


# Radii of the certified-accuracy curves, in pixel units ([0, 1] images): the robustness literature's
# MNIST radii (l2 0.3, l-inf 0.1) and smaller ones, where regions of this size certify anything.
CERTIFY_EPS = {2: (0.001, 0.003, 0.01, 0.03, 0.1, 0.3), "inf": (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1)}


def certify_run(config: Config, data: MNIST, workdir: str) -> dict:
    """Certified radii (:func:`lld_jax.certified_radius`) of a finished run's model on the test set, l2 and l-inf.

    Writes ``certify.json`` (accuracy, exact and attack-success fractions,
    lower/upper percentiles, certified-accuracy curves at :data:`CERTIFY_EPS`)
    and ``certify.npz`` (per-example lower, upper, exact, correct) in pixel units.
    """
    rd = RunDir(workdir, write=jax.process_index() == 0)
    if not os.path.exists(rd.file("report.json")):
        raise FileNotFoundError(f"{workdir} holds no finished run (no report.json): train it first.")
    cfg = config.train_config(config.lam, config.C, config.gamma)
    diffs = rd.differences(
        {"train": dataclasses.asdict(cfg), "experiment": _experiment(config, data)}, defaults=TrainConfig.record_defaults(), parts=True
    )
    if diffs:
        raise ValueError(f"{workdir} holds a run with other settings ({'; '.join(diffs)}): give --certify the run's own flags.")
    net, params = build_model(config.widths, config.seed, config.init)
    params = load_best(workdir, params)
    out, arrays = {}, {}
    for p in (2, "inf"):
        t0 = time.time()
        rep = certify_dataset(net, params, data.test.x, data.test.y, p=p, eps=CERTIFY_EPS[p], scale=MNIST_STD, progress=config.progress)
        for k, v in rep.pop("per_example").items():
            arrays[f"l{p}_{k}"] = v
        out[f"l{p}"] = {**rep, "time_s": time.time() - t0}
    if rd.write:
        np.savez_compressed(rd.file("certify.npz"), **arrays)
    rd.write_json("certify.json", out)
    return out


def train_and_evaluate(config: Config, workdir: str) -> dict:
    """One run in ``workdir``; returns its report (a grid is :func:`run_grid`)."""
    if config.grid:
        raise ValueError("config.grid is set: call run_grid(config, workdir) for a grid.")
    config.validate()
    return run_one(config, load(config), config.lam, config.C, config.gamma, workdir)


def plot_figure2(reports: dict[str, dict], path: str, *, lam_fixed: float = 0.5, C_fixed: float = 1.0) -> None:
    """Figure 2: test accuracy and median l2 margin against C (at ``lam_fixed``) and lambda (at ``C_fixed``), one curve per gamma."""
    fig, axes = _figures.pyplot().subplots(1, 4, figsize=(16, 3.5))
    rows = [r["config"] | {"acc": r["accuracy"], "m2": r["margin_l2"]["P50"]} for r in reports.values() if r["config"]["lam"] > 0]
    base = [{"acc": r["accuracy"], "m2": r["margin_l2"]["P50"]} for r in reports.values() if r["config"]["lam"] == 0]
    gammas = sorted({str(r["gamma"]) for r in rows})
    for col, (fixed, fval, var, metric) in enumerate(
        [("lam", lam_fixed, "C", "acc"), ("lam", lam_fixed, "C", "m2"), ("C", C_fixed, "lam", "acc"), ("C", C_fixed, "lam", "m2")]
    ):
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
    _figures.save(fig, path, dpi=100)


def run_grid(config: Config, workdir: str) -> tuple[dict[str, dict], dict[str, str | None]]:
    """Vanilla plus every grid point, the selection, Table 1 and Figure 2 in ``workdir``."""
    config.validate()
    rd = RunDir(workdir, write=jax.process_index() == 0)
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("out", "progress", "data_dir", "download")}
    rd.claim({"grid": settings}, mutable=("grid.epochs",))  # the grid's own record, beside each run's
    data = load(config)
    reports = {"vanilla": run_one(config, data, 0.0, 0.0, 100.0, os.path.join(workdir, "vanilla"))}
    for lam, C, gamma in config.points():
        key = f"lam{lam:g}_C{C:g}_gamma{gamma}"
        reports[key] = run_one(config, data, lam, C, gamma, os.path.join(workdir, key))
    record = common.selection_record({k: v for k, v in reports.items() if k != "vanilla"}, reports["vanilla"])
    picks = record["picks"]
    rows = [("Vanilla", "-", reports["vanilla"])] + [
        (f"ROLL {k} ({slot})", f"{reports[k]['config']['C']:g}", reports[k]) for slot, k in picks.items() if k
    ]
    rd.write_json("selection.json", record)
    if rd.write:
        with open(rd.file("table1.md"), "w") as fh:
            fh.write(common.table1_markdown(rows) + "\n")
        lam_fixed, C_fixed = config.figure2_slices()
        plot_figure2(reports, rd.file("figure2"), lam_fixed=lam_fixed, C_fixed=C_fixed)
    print(common.table1_markdown(rows))
    return reports, picks


def parse(argv: Sequence[str] | None = None) -> Config:
    """The :class:`Config` of a command line."""
    args = _cli.config_parser(Config, __doc__).parse_args(argv)
    return _cli.config_from_args(Config, args)


def main(argv: Sequence[str] | None = None) -> None:
    config = parse(argv).validate()
    maybe_initialize_distributed()
    if config.grid:
        run_grid(config, config.out)
        return
    if config.certify:
        print(
            json.dumps(
                {
                    k: {f: v[f] for f in ("accuracy", "exact_fraction", "lower", "upper", "curve")}
                    for k, v in certify_run(config, load(config), config.out).items()
                },
                indent=2,
            )
        )
        return
    report = interim_report(config, load(config), config.out) if config.interim else train_and_evaluate(config, config.out)
    print(json.dumps({k: report[k] for k in ("accuracy", "num_patterns", "num_jacobians", "margin_l1", "margin_l2", "spearman_l1_l2")}, indent=2))


if __name__ == "__main__":
    _cli.run(main)

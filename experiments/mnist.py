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
import itertools
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
from lld_jax.data import MNIST, MNIST_STD, load_mnist
from lld_jax.evaluation import certify_dataset, evaluate_model, table1_markdown
from lld_jax.training import RunDir, TrainConfig, fit, load_best, maybe_initialize_distributed

MNIST_TRAIN, MNIST_TEST = 60000, 10000


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of an MNIST run or grid (paper App. G defaults)."""

    out: str = dataclasses.field(default="runs/mnist", metadata={"help": "run directory (resumed if it exists)"})
    data_dir: str | None = dataclasses.field(
        default=None, metadata={"help": "folder with the four MNIST IDX files (None: $LLD_JAX_DATA/mnist, the cache, or a verified download)"}
    )
    download: bool = dataclasses.field(default=True, metadata={"help": "fetch MNIST (checksummed) when it is not found"})
    train_size: int | None = dataclasses.field(default=None, metadata={"help": "use only the first N training examples"})
    val_size: int = 5000
    test_size: int | None = dataclasses.field(default=None, metadata={"help": "evaluate on the first N test examples"})
    widths: tuple[int, ...] = (300, 300, 300, 300)
    init: str = dataclasses.field(default="torch", metadata={"help": "weight initialisation: torch (the paper's code) or flax"})
    seed: int = 1
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.5
    lam: float = dataclasses.field(default=0.0, metadata={"help": "lambda; 0 = vanilla"})
    C: float = 0.0
    gamma: str | float = dataclasses.field(default=100.0, metadata={"help": "'max', 25, 50, 75 or 100"})
    regularizer: str = dataclasses.field(default="roll", metadata={"help": "roll (Eq. 9), sampled (Eq. 10) or distance (Eq. 4)"})
    num_samples: int = dataclasses.field(default=3, metadata={"help": "D' for --regularizer sampled"})
    method: str = dataclasses.field(default="auto", metadata={"help": "gradient method of the exact ROLL loss"})
    grid: bool = dataclasses.field(default=False, metadata={"help": "run the lambda x C x gamma grid, select, plot Figure 2"})
    grid_lam: tuple[float, ...] = tuple(2.0**k for k in range(-3, 3))
    grid_C: tuple[float, ...] = tuple(2.0**k for k in range(-2, 4))
    grid_gamma: tuple[str | float, ...] = ("max", 25.0, 50.0, 75.0, 100.0)
    grid_cross: bool = dataclasses.field(default=False, metadata={"help": "only the two slices Figure 2 plots"})
    certify: bool = dataclasses.field(
        default=False,
        metadata={"help": "certified radii and accuracy (l2, l-inf) of the finished run in --out (certify.json, certify.npz); trains nothing"},
    )
    interim: bool = dataclasses.field(
        default=False,
        metadata={"help": "evaluate the run in --out at its best checkpoint so far, without training (report_interim.json)"},
    )
    progress: bool = True

    def train_config(self, lam: float, C: float, gamma: Any) -> TrainConfig:
        """The :class:`~lld_jax.training.TrainConfig` of one run; raises on invalid values."""
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=self.momentum,
            lam=lam,
            C=C,
            gamma=gamma,
            regularizer=self.regularizer,
            num_samples=self.num_samples,
            method=self.method,
            seed=self.seed,
        ).validate()

    def points(self) -> list[tuple[float, float, Any]]:
        """(lambda, C, gamma) of every run: one, or the grid (with ``grid_cross`` the two Figure 2 slices)."""
        if not self.grid:
            return [(self.lam, self.C, self.gamma)]
        pts = list(itertools.product(self.grid_lam, self.grid_C, self.grid_gamma))
        if self.grid_cross:
            lam_fixed, C_fixed = self.figure2_slices()
            pts = [(lam, C, g) for lam, C, g in pts if lam == lam_fixed or C == C_fixed]
        return pts

    def figure2_slices(self) -> tuple[float, float]:
        """(lambda, C) held fixed in Figure 2: the paper's 0.5 and 1, or the grid's middle values when absent."""
        lam_fixed = 0.5 if 0.5 in self.grid_lam else sorted(self.grid_lam)[len(self.grid_lam) // 2]
        C_fixed = 1.0 if 1.0 in self.grid_C else sorted(self.grid_C)[len(self.grid_C) // 2]
        return lam_fixed, C_fixed

    def validate(self) -> Config:
        """Checks every setting (and every grid point) before anything is read or written."""
        if not (isinstance(self.val_size, int) and 1 <= self.val_size < MNIST_TRAIN):
            raise ValueError(f"val_size must be in [1, {MNIST_TRAIN - 1}], got {self.val_size}.")
        if self.train_size is not None and not 1 <= self.train_size <= MNIST_TRAIN - self.val_size:
            raise ValueError(f"train_size must be in [1, {MNIST_TRAIN - self.val_size}] (the training split), got {self.train_size}.")
        if self.test_size is not None and not 1 <= self.test_size <= MNIST_TEST:
            raise ValueError(f"test_size must be in [1, {MNIST_TEST}], got {self.test_size}.")
        if self.init not in lld_jax.models.INITS:
            raise ValueError(f"init must be one of {lld_jax.models.INITS}, got {self.init!r}.")
        if not self.widths or any(w < 1 for w in self.widths):
            raise ValueError(f"widths must be one or more positive layer widths, got {list(self.widths)}.")
        if self.grid and (self.interim or self.certify):
            raise ValueError("--interim and --certify evaluate one run: drop --grid.")
        if self.interim and self.certify:
            raise ValueError("--interim and --certify are two separate evaluations: give one.")
        if self.grid and not (self.grid_lam and self.grid_C and self.grid_gamma):
            raise ValueError("the grid needs at least one value of each of --grid-lam, --grid-C and --grid-gamma.")
        for lam, C, gamma in self.points():
            self.train_config(lam, C, gamma)
        if self.regularizer == "sampled" and self.num_samples > 784:
            raise ValueError(f"num_samples={self.num_samples} exceeds the input dimension 784.")
        return self


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
    common.write_report(workdir, report, report.pop("per_example"), table1_markdown([(name, "-" if lam == 0 else f"{C:g}", report)]))
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
            fh.write(table1_markdown(rows) + "\n")
        lam_fixed, C_fixed = config.figure2_slices()
        plot_figure2(reports, rd.file("figure2"), lam_fixed=lam_fixed, C_fixed=C_fixed)
    print(table1_markdown(rows))
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

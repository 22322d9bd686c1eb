"""Japanese Vowels speaker identification with a scoRNN (paper Sec. 5.2, Table 2, Figure 3; App. H).

One run::

    python -m experiments.vowels --lam 0.5 --C 4 --out runs/vowels/roll

Grid with the paper's selection rule, Table 2 and Figure 3 (or only the two
settings the paper selected, ``--paper-points``)::

    python -m experiments.vowels --grid --out runs/vowels_grid
    python -m experiments.vowels --grid --paper-points --epochs 30 --out runs/vowels_paper
    python -m experiments.vowels --grid --paper-points --epochs 30 --out runs/vowels_paper --collect  # table from finished runs

Paper settings: scoRNN with 512 LeakyReLU units, the hidden state at the last
real frame fed to one dense layer; AMSGrad, lr 1e-3, batch 32 sequences;
exact ROLL loss with gamma 100; raw (unnormalised) features; official
270/370 split. The paper selects on the test set (no validation split):
with ``--val-size 0`` (default) the test set also picks the best epoch and
the grid point, as in the paper; ``--val-size K`` carves K sequences per
speaker out of the training set for both instead. Margins are reported in
units of 1e-6 of the raw features. Settings the paper leaves open (epochs,
LeakyReLU slope, scoRNN's number of -1 entries) are flags.
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
from experiments.configs.vowels import Config
from lld_jax.data import Split, load_japanese_vowels, pad_sequences, sequence_lengths
from lld_jax.evaluation import evaluate_model
from lld_jax.training import RunDir, fit, maybe_initialize_distributed

UNIT = 1e-6  # Table 2 reports margins in units of 1e-6 of the raw features
CHANNEL = 8  # Figure 3 shows the 9th channel


class VowelsData:
    """The padded splits of one config: ``train``, ``val`` (or ``None``) and ``test``, each a :class:`~lld_jax.data.Split`."""

    def __init__(self, config: Config):
        raw = load_japanese_vowels(config.data_dir, download=config.download)
        length = max(len(s) for s in raw.train.x + raw.test.x)
        pad = lambda seqs: pad_sequences(seqs, length=length)
        rng = np.random.default_rng(config.seed)
        train_idx = np.arange(len(raw.train.x))
        val_idx = np.array([], int)
        if config.val_size:
            per = [rng.permutation(np.flatnonzero(raw.train.y == c)) for c in np.unique(raw.train.y)]
            val_idx = np.sort(np.concatenate([p[: config.val_size] for p in per]))
            train_idx = np.setdiff1d(train_idx, val_idx)
        if config.train_size is not None:
            if config.train_size > len(train_idx):
                raise ValueError(f"train_size={config.train_size} exceeds the {len(train_idx)} training sequences.")
            train_idx = np.sort(rng.permutation(train_idx)[: config.train_size])
        test_idx = np.arange(len(raw.test.x))
        if config.test_size is not None:
            if config.test_size > len(test_idx):
                raise ValueError(f"test_size={config.test_size} exceeds the {len(test_idx)} test sequences.")
            test_idx = np.sort(rng.permutation(test_idx)[: config.test_size])
        take = lambda split, idx: Split(pad([split.x[i] for i in idx]), split.y[idx])
        self.length = length
        self.train = take(raw.train, train_idx)
        self.val = take(raw.train, val_idx) if len(val_idx) else None
        self.test = take(raw.test, test_idx)

    @property
    def selection(self) -> Split:
        """The split that picks epochs and grid points: validation if carved, else test (the paper's protocol)."""
        return self.val if self.val is not None else self.test


def build_model(config: Config, length: int) -> tuple[lld_jax.Network, Any]:
    """The scoRNN of ``config`` for padded sequences of ``length`` frames, as ``(network, params)``."""
    model = lld_jax.models.ScoRNN(
        12,
        9,
        hidden=config.hidden,
        num_negative=config.num_negative,
        negative_slope=config.negative_slope,
        length=length,
        variable_length=True,
        rngs=nnx.Rngs(config.seed),
    )
    return lld_jax.from_nnx(model)


def run_one(config: Config, data: VowelsData, lam: float, C: float, workdir: str) -> dict:
    """Trains (or resumes) one model and writes report.json / report.md in ``workdir``."""
    cfg = config.train_config(lam, C)
    net, params = build_model(config, data.length)
    experiment = {
        "dataset": "japanese_vowels",
        "train_size": len(data.train.x),
        "val_size_per_speaker": config.val_size,
        "selection_split": "val" if data.val is not None else "test",
        "test_size": len(data.test.x),
        "model": "ScoRNN",
        "hidden": config.hidden,
        "num_negative": config.num_negative,
        "negative_slope": config.negative_slope,
        "model_seed": config.seed,
    }
    t0 = time.time()
    params, history = fit(net, params, cfg, data.train, data.selection, workdir, experiment=experiment, progress=config.progress)
    report = {
        "config": dataclasses.asdict(cfg),
        "experiment": experiment,
        "train_time_s": time.time() - t0,
        "best_epoch": common.best_epoch(history),
        **evaluate_model(net, params, data.test.x, data.test.y, batch_size=128, progress=config.progress, per_example=True),
        "device": str(jax.devices()[0].device_kind),
    }
    if data.val is not None:
        report["val"] = evaluate_model(net, params, data.val.x, data.val.y, batch_size=128, ps=(2,))
    # Per-example test results (raw feature units) for paired comparisons across models and seeds, and Figure 3's data.
    per_example = report.pop("per_example") | figure3_data(net, params, data.test.x)
    common.write_report(workdir, report, per_example, table2_markdown([(run_name(lam, C), report)]))
    return report


def run_name(lam: float, C: float) -> str:
    return "Vanilla" if lam == 0 else f"ROLL (lam={lam:g}, C={C:g})"


def table2_markdown(rows: list[tuple[str, dict]]) -> str:
    """Paper Table 2's layout: accuracy, l1 / l2 margin percentiles in units of 1e-6, patterns, Spearman."""
    return common.table1_markdown([(name, "-" if r["config"]["lam"] == 0 else f"{r['config']['C']:g}", r) for name, r in rows], UNIT, "raw features")


def load_params(config: Config, workdir: str, length: int) -> tuple[lld_jax.Network, Any]:
    """The best checkpoint of a finished run in ``workdir``."""
    from lld_jax.training import load_best

    net, params = build_model(config, length)
    return net, load_best(workdir, params)


def figure3_data(net: lld_jax.Network, params: Any, x: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Figure 3's data for every sequence of ``x``: channel 9's stability bounds, ``(N, T)`` float32 each (raw units).

    ``stability_lower`` / ``stability_upper`` are :func:`lld_jax.stability_bounds`
    along -e / +e of channel :data:`CHANNEL` at each frame (+inf on padding).
    Saved in every run's ``eval.npz``, so the figure is drawn from files
    (any run, any time) without its checkpoint.
    """
    lower, upper = [], []
    for lo in range(0, len(x), batch_size):
        b = lld_jax.batched.stability_bounds(net, params, x[lo : lo + batch_size])
        lower.append(np.asarray(b.lower)[..., CHANNEL])
        upper.append(np.asarray(b.upper)[..., CHANNEL])
    return {"stability_lower": np.concatenate(lower).astype(np.float32), "stability_upper": np.concatenate(upper).astype(np.float32)}


FIGURE3_KEYS = ("margin_l2", "stability_lower", "stability_upper")


def figure3_inputs(config: Config, data: VowelsData, run_dir: str) -> dict[str, np.ndarray]:
    """A run's per-sequence l2 margins and channel-9 stability bounds on the test set.

    Read from ``eval.npz``; a run whose file predates the stability bounds gets
    them from its best checkpoint (and its ``eval.npz`` is completed). A run
    still training (no ``eval.npz``) is evaluated at its best checkpoint.

    Raises:
      FileNotFoundError: neither the data nor a checkpoint: name the run to retrain.
    """
    path = os.path.join(run_dir, "eval.npz")
    saved = dict(np.load(path)) if os.path.exists(path) else {}
    if all(k in saved for k in FIGURE3_KEYS):
        return {k: saved[k] for k in FIGURE3_KEYS}
    try:
        net, params = load_params(config, run_dir, data.length)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{path} has no Figure 3 data (runs before the stability bounds were saved) and {run_dir} has no checkpoint to "
            f"compute them from: retrain that run (move its directory aside and rerun its command; training is seeded), "
            f"or drop it from the grid."
        ) from e
    got = figure3_data(net, params, data.test.x)
    got["margin_l2"] = saved.get("margin_l2", np.asarray(lld_jax.batched.margin(net, params, data.test.x, p=2)))
    if saved and jax.process_index() == 0:
        np.savez_compressed(path, **(saved | got))  # complete the finished run's per-example file
    return {k: got[k] for k in FIGURE3_KEYS}


def display_name(report: dict) -> str:
    """``vanilla`` or ``ROLL (λ 2^-5, C 2^3)``, from a report's config (powers of two as in paper Table 2)."""
    lam, C = report["config"]["lam"], report["config"]["C"]
    if lam == 0:
        return "vanilla"
    power = lambda v: f"2^{int(np.log2(v))}" if v > 0 and float(np.log2(v)).is_integer() else f"{v:g}"
    return f"ROLL (λ {power(lam)}, C {power(C)})"


def plot_figure3(runs: dict[str, dict[str, np.ndarray]], data: VowelsData, roll_name: str, path: str) -> dict:
    """Figure 3: channel 9 of the test sequences at the P50 and P75 of the ROLL model's l2 margin, with every frame's stability interval.

    ``runs`` maps a display name to :func:`figure3_inputs`. Rows: the two
    sequences. Columns: each model's channel over time with, per frame, the
    interval ``[x - lower, x + upper]`` within which that value alone can move
    while the model stays linear (its gradient, the explanation, unchanged);
    last column: the interval widths of all models on a log scale (the narrow
    early-frame intervals are invisible on the value scale). Returns what it
    plotted.
    """
    x, y = data.test
    radius = runs[roll_name]["margin_l2"]
    picks = {f"P{q}": int(np.argmin(np.abs(radius - np.percentile(radius, q)))) for q in (50, 75)}
    plt = _figures.pyplot()
    ncol = len(runs) + 1
    fig, axes = plt.subplots(len(picks), ncol, figsize=(4.2 * ncol, 3.4 * len(picks)), squeeze=False)
    out = {"sequences": picks, "models": list(runs), "intervals": {}}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, (q, i) in enumerate(picks.items()):
        n = int(sequence_lengths(x[i : i + 1])[0])
        t = np.arange(1, n + 1)
        v = x[i, :n, CHANNEL]
        span = max(np.ptp(v), 1e-3)
        width_ax = axes[row, -1]
        for col, (name, run) in enumerate(runs.items()):
            lo, up = run["stability_lower"][i, :n], run["stability_upper"][i, :n]
            ax = axes[row, col]
            ax.fill_between(t, v - lo, v + up, step="mid", alpha=0.35, color=colors[col], label="stability interval")
            ax.plot(t, v, marker="o", markersize=3, color="k", label=f"channel {CHANNEL + 1}")
            ax.set_ylim(v.min() - span, v.max() + span)  # infinite or huge intervals run off the panel
            ax.set_title(f"{name}\ntest sequence {i} (speaker {int(y[i]) + 1}), at {q} of ROLL's l2 margin", fontsize=8)
            ax.set_xlabel("frame")
            ax.set_ylabel(f"LPC cepstrum coefficient {CHANNEL + 1} (raw)")
            width = lo + up
            width_ax.semilogy(t, width, marker="o", markersize=3, color=colors[col], label=name)
            out["intervals"][f"{name}/{q}"] = {"width_median": float(np.median(width)), "frames": n}
        width_ax.set_title(f"interval width per frame, test sequence {i}", fontsize=8)
        width_ax.set_xlabel("frame")
        width_ax.set_ylabel("lower + upper (raw units, log scale)")
        width_ax.legend(fontsize=7)
    axes[0, 0].legend(fontsize=7, loc="upper right")
    _figures.save(fig, path, dpi=100)
    return out


def _row_name(key: str, slot: str | None, report: dict) -> str:
    name = f"ROLL {key}" + (f" ({slot})" if slot else "")
    if "interim" in report:
        name += f" [epoch {report['interim']['epochs_done']} of {report['config']['epochs']}, unfinished]"
    return name


def interim_report(config: Config, data: VowelsData, lam: float, C: float, run_dir: str) -> dict:
    """The report of an unfinished run, from its best checkpoint so far (``interim`` says how far it got)."""
    history = RunDir(run_dir).metrics()
    net, params = load_params(config, run_dir, data.length)
    report = {
        "config": dataclasses.asdict(config.train_config(lam, C)),
        "interim": common.interim(history),
        **evaluate_model(net, params, data.test.x, data.test.y, batch_size=128, progress=config.progress),
        "device": str(jax.devices()[0].device_kind),
    }
    if data.val is not None:
        report["val"] = evaluate_model(net, params, data.val.x, data.val.y, batch_size=128, ps=(2,))
    return report


def run_grid(config: Config, workdir: str) -> tuple[dict[str, dict], dict[str, str | None]]:
    """Vanilla plus every grid point, the selection, Table 2 and Figure 3 in ``workdir``."""
    config.validate()
    rd = RunDir(workdir, write=jax.process_index() == 0)
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("out", "progress", "data_dir", "download", "collect")}
    # Collecting only reads finished runs: it may gather a wider grid than the recorded one (the queue's widening),
    # and records nothing, so training still refuses another grid.
    gather = ("grid.grid_lam", "grid.grid_C") if config.collect else ()
    rd.claim({"grid": settings}, mutable=("grid.epochs", *gather), record=not config.collect)
    data = VowelsData(config)
    dirs = {"vanilla": os.path.join(workdir, "vanilla")}
    dirs |= {f"lam{lam:g}_C{C:g}": os.path.join(workdir, f"lam{lam:g}_C{C:g}") for lam, C in config.points()}
    if config.collect:  # finished runs, and unfinished ones at their best checkpoint so far (marked)
        reports = {}
        for (lam, C), (k, d) in zip([(0.0, 0.0), *config.points()], dirs.items()):
            if (report := common.read_report(d)) is not None:
                reports[k] = report
            elif k != "vanilla" and RunDir(d).metrics():  # one line per epoch, written with its checkpoint
                reports[k] = interim_report(config, data, lam, C, d)
        missing = sorted(set(dirs) - set(reports))
        if "vanilla" not in reports:
            raise FileNotFoundError(f"{dirs['vanilla']} has no report.json: train the vanilla model first (rerun without --collect).")
        if missing:
            print(f"not started, left out: {', '.join(missing)}")
    else:
        reports = {"vanilla": run_one(config, data, 0.0, 0.0, dirs["vanilla"])}
        for lam, C in config.points():
            key = f"lam{lam:g}_C{C:g}"
            reports[key] = run_one(config, data, lam, C, dirs[key])
    if len(reports) < 2:
        raise FileNotFoundError("no ROLL run of the grid has finished yet: nothing to compare with vanilla.")
    record = common.selection_record({k: v for k, v in reports.items() if k != "vanilla"}, reports["vanilla"])
    picks = record["picks"]
    slots = {k: slot for slot, k in picks.items() if k}
    # A few points (e.g. --paper-points): every row; a full grid: the selected ones.
    shown = [k for k in reports if k != "vanilla" and (len(reports) <= 5 or k in slots)]
    rows = [("Vanilla", reports["vanilla"])] + [(_row_name(k, slots.get(k), reports[k]), reports[k]) for k in shown]
    rd.write_json("selection.json", record)
    if rd.write:
        with open(rd.file("table2.md"), "w") as fh:
            fh.write(table2_markdown(rows) + "\n")
        roll = (
            picks["same_accuracy"]
            or picks["one_point_lower"]
            or max((k for k in reports if k != "vanilla"), key=lambda k: common.selection_metrics(reports[k])["margin_l2"]["P50"])
        )
        runs = {display_name(reports[k]): figure3_inputs(config, data, dirs[k]) for k in ("vanilla", roll)}
        rd.write_json("figure3.json", {"run": roll, **plot_figure3(runs, data, display_name(reports[roll]), rd.file("figure3"))})
    print(table2_markdown(rows))
    return reports, picks


def train_and_evaluate(config: Config, workdir: str) -> dict:
    """One run in ``workdir``; returns its report (a grid is :func:`run_grid`)."""
    if config.grid or config.collect:
        raise ValueError("config.grid (or collect) is set: call run_grid(config, workdir) for a grid.")
    config.validate()
    return run_one(config, VowelsData(config), config.lam, config.C, workdir)


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
    report = train_and_evaluate(config, config.out)
    print(json.dumps({k: report[k] for k in ("accuracy", "num_patterns", "num_jacobians", "margin_l1", "margin_l2", "spearman_l1_l2")}, indent=2))


if __name__ == "__main__":
    _cli.run(main)

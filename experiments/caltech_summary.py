"""Three-seed summary of the ``validated`` Caltech protocol (``experiments/caltech_queue.sh``), with paired intervals.

Reads ``OUT/seed<s>/`` for every seed found: vanilla in ``vanilla/`` and the
ROLL model in the run that ``seed0/selection.json`` chose (seed 0) or in
``roll/`` (the other seeds, trained at the chosen lambda and C); each run's
``report.json`` and ``eval.npz``. Writes into OUT (or ``--to``):

* ``summary.json``: per model, P@1, P@5, every percentile of the expected and
  maximal gradient distortion and the label-change count, per seed and as
  mean and sd over seeds; per seed, ROLL against vanilla on the same test
  images: the ratio of each distortion percentile and the P@1 difference,
  with 95% paired-bootstrap intervals (the same resampled images for both
  models, 2,000 resamples, seed 0);
* ``summary.md``: the README's tables;
* ``per_image.npz``: every model's and seed's per-image results (test index,
  top-1 and top-5 hits, expected and maximal distortion, label changed),
  small enough to commit, for other paired tests.

::

    python -m experiments.caltech_summary runs/caltech_validated [--to docs/results/caltech_validated]
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence

import numpy as np

from experiments import common
from lld_jax.evaluation import PERCENTILES

MODELS = ("vanilla", "roll")
RESAMPLES = 2000
PER_IMAGE = ("test_idx", "top1", "top5", "idx", "expected", "distortion", "prediction_changed")


def _seed_dirs(folder: str) -> dict[int, str]:
    seeds = sorted(int(d[4:]) for d in os.listdir(folder) if d.startswith("seed") and d[4:].isdigit())
    if 0 not in seeds:
        raise FileNotFoundError(f"{folder}/seed0 not found: run experiments/caltech_queue.sh {folder} first (seed 0 holds the selection).")
    return {s: os.path.join(folder, f"seed{s}") for s in seeds}


def _load(run_dir: str) -> tuple[dict, dict[str, np.ndarray]]:
    path = os.path.join(run_dir, "report.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: that run has not finished (rerun experiments/caltech_queue.sh to resume it).")
    with open(path) as fh:
        report = json.load(fh)
    with np.load(os.path.join(run_dir, "eval.npz")) as z:
        return report, {k: z[k] for k in PER_IMAGE}


def load_runs(folder: str) -> tuple[dict, dict[int, dict[str, tuple[dict, dict]]]]:
    """``(selection record, {seed: {model: (report, per-image arrays)}})``; checks that every seed's ROLL run has the chosen lambda and C."""
    dirs = _seed_dirs(folder)
    with open(os.path.join(dirs[0], "selection.json")) as fh:
        selection = json.load(fh)
    chosen = selection["chosen"]
    if chosen is None:
        raise ValueError(f"{dirs[0]}/selection.json chose no lambda: nothing to summarise.")
    runs = {}
    for s, d in dirs.items():
        runs[s] = {"vanilla": _load(os.path.join(d, "vanilla")), "roll": _load(os.path.join(d, chosen["run"] if s == 0 else "roll"))}
        cfg = runs[s]["roll"][0]["config"]
        if (cfg["lam"], cfg["C"]) != (chosen["lam"], chosen["C"]):
            raise ValueError(f"seed {s}'s ROLL run has lambda {cfg['lam']:g}, C {cfg['C']:g}, not the chosen {chosen['lam']:g}, {chosen['C']:g}.")
        for m in MODELS:
            if not np.array_equal(runs[s][m][1]["test_idx"], runs[0]["vanilla"][1]["test_idx"]):
                raise ValueError(f"seed {s}'s {m} run was tested on other images than seed 0's vanilla: the data seed differs.")
    return selection, runs


def paired(base: dict[str, np.ndarray], roll: dict[str, np.ndarray], rng: np.random.Generator) -> dict:
    """ROLL against vanilla on the same images: distortion-percentile ratios and the P@1 difference, with intervals."""
    if not np.array_equal(base["idx"], roll["idx"]):
        raise ValueError("the two models' distortions were measured on different test images: evaluate both with the same --eval-images and seeds.")
    stats = {
        f"{key}_P{p}_ratio": lambda idx, key=key, p=p: np.percentile(roll[key][idx], p, axis=1) / np.percentile(base[key][idx], p, axis=1)
        for key in ("expected", "distortion")
        for p in PERCENTILES
    }
    out = common.paired_bootstrap(len(base["idx"]), stats, rng, RESAMPLES)
    out |= common.paired_bootstrap(
        len(base["top1"]), {"precision_at_1_difference": lambda idx: roll["top1"][idx].mean(1) - base["top1"][idx].mean(1)}, rng, RESAMPLES
    )
    return out


def summarize(folder: str, loaded: tuple[dict, dict] | None = None) -> dict:
    """The summary of ``folder`` (or of its already ``loaded`` :func:`load_runs`)."""
    selection, runs = loaded or load_runs(folder)
    seeds = sorted(runs)
    spread = common.over_seeds
    models = {}
    for m in MODELS:
        reports = [runs[s][m][0] for s in seeds]
        entry = {k: spread([r[k] for r in reports]) for k in ("precision_at_1", "precision_at_5", "num_prediction_changed")}
        for key in ("expected_distortion", "max_distortion"):
            entry[key] = {f"P{p}": spread([r[key][f"P{p}"] for r in reports]) for p in PERCENTILES}
        entry["num_evaluated"] = reports[0]["num_evaluated"]
        models[m] = entry
    rng = np.random.default_rng(0)
    pairs = {str(s): paired(runs[s]["vanilla"][1], runs[s]["roll"][1], rng) for s in seeds}
    lower = {str(s): sum(pairs[str(s)][f"{k}_P{p}_ratio"]["ci95"][1] < 1 for k in ("expected", "distortion") for p in PERCENTILES) for s in seeds}
    return {
        "seeds": seeds,
        "resamples": RESAMPLES,
        "selection": selection,  # the rules' records (lambda, then C) and the chosen run
        "models": models,
        "paired": pairs,
        "percentiles_significantly_lower": lower,  # of the 8 distortion percentiles, how many have ROLL/vanilla's whole interval below 1
    }


def markdown(summary: dict) -> str:
    """The README's two tables: the models over seeds, then ROLL against vanilla per seed."""
    ms, n = summary["models"], len(summary["seeds"])
    fmt = lambda e, pct=False: (
        (f"{100 * e['mean']:.1f}" if pct else f"{e['mean']:.2f}")
        + ("" if e["sd"] is None else (f" ± {100 * e['sd']:.1f}" if pct else f" ± {e['sd']:.2f}"))
    )
    head = (
        f"| Model (mean ± sd, {n} seeds) | P@1 (%) | P@5 (%) | "
        + " | ".join(f"{k} P{p}" for k in ("E[Δ]", "max Δ") for p in PERCENTILES)
        + " | label changed |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    sel = summary["selection"]["chosen"]
    for m in MODELS:
        e = ms[m]
        name = "vanilla" if m == "vanilla" else f"ROLL lambda {sel['lam']:g}, C {sel['C']:g}"
        cells = [fmt(e["precision_at_1"], True), fmt(e["precision_at_5"], True)]
        cells += [fmt(e[k][f"P{p}"]) for k in ("expected_distortion", "max_distortion") for p in PERCENTILES]
        cells.append(f"{e['num_prediction_changed']['mean']:.1f} of {e['num_evaluated']}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    head = (
        "| ROLL / vanilla, same seed (95% CI) | P@1 difference (points) | "
        + " | ".join(f"{k} P{p}" for k in ("E[Δ]", "max Δ") for p in PERCENTILES)
        + " |"
    )
    lines += ["", head, "|" + "---|" * (head.count("|") - 1)]
    for s, pr in summary["paired"].items():
        d = pr["precision_at_1_difference"]
        cells = [f"{100 * d['estimate']:+.1f} ({100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f})"]
        for k in ("expected", "distortion"):
            for p in PERCENTILES:
                r = pr[f"{k}_P{p}_ratio"]
                cells.append(f"{r['estimate']:.2f} ({r['ci95'][0]:.2f}, {r['ci95'][1]:.2f})")
        lines.append(f"| seed {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def per_image(runs: dict[int, dict[str, tuple[dict, dict]]]) -> dict[str, np.ndarray]:
    """Every run's per-image arrays (``runs`` of :func:`load_runs`), keyed ``<model>_seed<s>_<field>``."""
    return {f"{m}_seed{s}_{k}": v for s, by_model in runs.items() for m, (_, arrays) in by_model.items() for k, v in arrays.items()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="the queue's output folder (seed0/, seed1/, ...)")
    parser.add_argument("--to", default=None, help="write the summary here (default: the folder itself)")
    args = parser.parse_args(argv)
    to = args.to or args.folder
    os.makedirs(to, exist_ok=True)
    loaded = load_runs(args.folder)
    summary = summarize(args.folder, loaded)
    with open(os.path.join(to, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    with open(os.path.join(to, "summary.md"), "w") as fh:
        fh.write(markdown(summary))
    np.savez_compressed(os.path.join(to, "per_image.npz"), **per_image(loaded[1]))
    print(markdown(summary))


if __name__ == "__main__":
    main()

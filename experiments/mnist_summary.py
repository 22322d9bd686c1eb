"""Three-seed summary of the MNIST runs of ``experiments/mnist_seeds.sh`` (paper Table 1 models), with paired intervals.

Reads, for each model (vanilla, sampled ROLL C = 0.25 and C = 1) and seed, the
run's report (``<model>_seed<s>.json``), its per-example test results
(``.eval.npz``) and, where present, its certified radii (``.certify.json``,
``.certify.npz``). Writes ``summary.json``, ``summary.md`` (the README's
tables) and ``certify.png`` (certified accuracy against the radius) into the
same folder::

    python -m experiments.mnist_summary docs/results/mnist_seeds

Intervals: for each seed, a paired bootstrap over the 10,000 test examples
(the same resampled examples for both models, 2,000 resamples, seed 0) of the
ratio of median margins and of the accuracy difference, ROLL minus vanilla of
the same seed (same data order and initialisation); 95% percentile intervals.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from experiments import common

MODELS = ("vanilla", "sampled_c0.25", "sampled_c1")
NAMES = {"vanilla": "Vanilla", "sampled_c0.25": "ROLL sampled, C = 0.25", "sampled_c1": "ROLL sampled, C = 1"}
COLOURS = {"vanilla": "tab:gray", "sampled_c0.25": "tab:blue", "sampled_c1": "tab:red"}
SEEDS = (1, 2, 3)
RESAMPLES = 2000
UNIT = 1e-4  # Table 1's unit (pixel scale [0, 1])


def _load(folder: str, model: str, seed: int) -> tuple[dict, dict, dict | None, dict | None]:
    stem = os.path.join(folder, f"{model}_seed{seed}")
    with open(stem + ".json") as fh:
        report = json.load(fh)
    with np.load(stem + ".eval.npz") as z:
        per = {k: z[k] for k in z.files}
    cert = cert_arrays = None
    if os.path.exists(stem + ".certify.json"):
        with open(stem + ".certify.json") as fh:
            cert = json.load(fh)
        with np.load(stem + ".certify.npz") as z:
            cert_arrays = {k: z[k] for k in z.files}
    return report, per, cert, cert_arrays


def _paired_intervals(base: dict, other: dict, rng: np.random.Generator) -> dict:
    stats = {
        f"median_l{p}_ratio": lambda idx, p=p: np.median(other[f"margin_l{p}"][idx], axis=1) / np.median(base[f"margin_l{p}"][idx], axis=1)
        for p in (1, 2)
    }
    stats["accuracy_difference"] = lambda idx: other["correct"][idx].mean(1) - base["correct"][idx].mean(1)
    return common.paired_bootstrap(len(base["correct"]), stats, rng, RESAMPLES)


def summarize(folder: str) -> dict:
    """The summary of every model and seed found in ``folder`` (all three seeds of every model are required)."""
    runs = {m: {s: _load(folder, m, s) for s in SEEDS} for m in MODELS}
    rng = np.random.default_rng(0)
    out: dict = {"seeds": list(SEEDS), "resamples": RESAMPLES, "models": {}}
    for m in MODELS:
        rows = [runs[m][s][0] for s in SEEDS]
        stat = common.over_seeds
        entry = {
            "accuracy": stat([r["accuracy"] for r in rows]),
            "median_l1": stat([r["margin_l1"]["P50"] for r in rows]),
            "median_l2": stat([r["margin_l2"]["P50"] for r in rows]),
        }
        if m != "vanilla":
            entry["paired"] = {str(s): _paired_intervals(runs["vanilla"][s][1], runs[m][s][1], rng) for s in SEEDS}
            for p in (1, 2):
                vals = [entry["paired"][str(s)][f"median_l{p}_ratio"]["estimate"] for s in SEEDS]
                entry[f"median_l{p}_ratio"] = stat(vals)
        certs = [runs[m][s][2] for s in SEEDS]
        if all(c is not None for c in certs):
            entry["certified"] = {}
            for norm in ("l2", "linf"):
                curves = [c[norm]["curve"] for c in certs]
                entry["certified"][norm] = {
                    "eps": curves[0]["eps"],
                    "certified_mean": [float(v) for v in np.mean([c["certified"] for c in curves], axis=0)],
                    "attack_bound_mean": [float(v) for v in np.mean([c["attack_bound"] for c in curves], axis=0)],
                    "lower_median_mean": float(np.mean([c[norm]["lower"]["P50"] for c in certs])),
                    "upper_median_mean": float(np.mean([c[norm]["upper"]["P50"] for c in certs])),
                    "exact_fraction_mean": float(np.mean([c[norm]["exact_fraction"] for c in certs])),
                    "attack_found_fraction_mean": float(np.mean([c[norm]["attack_found_fraction"] for c in certs])),
                    "time_s_mean": float(np.mean([c[norm]["time_s"] for c in certs])),
                }
        out["models"][m] = entry
    return out


def markdown(summary: dict) -> str:
    """The README's tables of ``summary``."""
    ms = summary["models"]
    lines = [
        "| model | test accuracy (mean ± sd) | median l1 (1e-4) | median l2 (1e-4) | l1 ratio | l2 ratio |",
        "|---|---|---|---|---|---|",
    ]
    for m in MODELS:
        e = ms[m]
        ratio = lambda p, e=e: (
            "1" if f"median_l{p}_ratio" not in e else f"{e[f'median_l{p}_ratio']['mean']:.1f} ± {e[f'median_l{p}_ratio']['sd']:.1f}"
        )
        lines.append(
            f"| {NAMES[m]} | {100 * e['accuracy']['mean']:.2f} ± {100 * e['accuracy']['sd']:.2f}% "
            f"| {e['median_l1']['mean'] / UNIT:.0f} ± {e['median_l1']['sd'] / UNIT:.0f} "
            f"| {e['median_l2']['mean'] / UNIT:.1f} ± {e['median_l2']['sd'] / UNIT:.1f} | {ratio(1)} | {ratio(2)} |"
        )
    lines += [
        "",
        "| ROLL vs vanilla, same seed | seed | accuracy difference (95% CI) | median l2 ratio (95% CI) | median l1 ratio (95% CI) |",
        "|---|---|---|---|---|",
    ]
    for m in MODELS[1:]:
        for s, pr in ms[m]["paired"].items():
            acc, l2, l1 = pr["accuracy_difference"], pr["median_l2_ratio"], pr["median_l1_ratio"]
            lines.append(
                f"| {NAMES[m]} | {s} | {100 * acc['estimate']:+.2f} ({100 * acc['ci95'][0]:+.2f}, {100 * acc['ci95'][1]:+.2f}) "
                f"| {l2['estimate']:.1f} ({l2['ci95'][0]:.1f}, {l2['ci95'][1]:.1f}) | {l1['estimate']:.1f} ({l1['ci95'][0]:.1f}, {l1['ci95'][1]:.1f}) |"
            )
    if all("certified" in ms[m] for m in MODELS):
        for norm, label in (("l2", "l2"), ("linf", "l-inf")):
            eps = ms[MODELS[0]]["certified"][norm]["eps"]
            lines += [
                "",
                f"| certified / attack-bound accuracy, {label} (mean of 3 seeds) | "
                + " | ".join(f"eps {e:g}" for e in eps)
                + " | median lower | median upper |",
                "|---|" + "---|" * (len(eps) + 2),
            ]
            for m in MODELS:
                c = ms[m]["certified"][norm]
                cells = [f"{100 * a:.1f} / {100 * b:.1f}%" for a, b in zip(c["certified_mean"], c["attack_bound_mean"])]
                lines.append(f"| {NAMES[m]} | " + " | ".join(cells) + f" | {c['lower_median_mean']:.2g} | {c['upper_median_mean']:.2g} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: str) -> None:
    """Certified accuracy (solid, sound) and the attack's bound (dashed) against the radius, l2 and l-inf."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, (norm, label) in zip(axes, (("l2", "l2"), ("linf", "l-inf"))):
        for m in MODELS:
            c = summary["models"][m]["certified"][norm]
            ax.plot(c["eps"], c["certified_mean"], "-o", color=COLOURS[m], ms=3, label=f"{NAMES[m]}: certified (lower)")
            ax.plot(c["eps"], c["attack_bound_mean"], "--", color=COLOURS[m], label=f"{NAMES[m]}: attack bound (upper)")
        ax.set_xscale("log")
        ax.set_xlabel(f"{label} radius (pixel scale [0, 1])")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"MNIST, {label}: robust accuracy between the two curves")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(folder: str) -> None:
    summary = summarize(folder)
    with open(os.path.join(folder, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    with open(os.path.join(folder, "summary.md"), "w") as fh:
        fh.write(markdown(summary))
    if all("certified" in summary["models"][m] for m in MODELS):
        plot(summary, os.path.join(folder, "certify.png"))
    print(markdown(summary))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/results/mnist_seeds")

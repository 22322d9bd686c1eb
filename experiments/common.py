"""What the experiments share: the kept epoch, the paper's selection rule and its record, run reports.

Harness code, not the library: :mod:`experiments.mnist` and
:mod:`experiments.vowels` (Tables 1 and 2) pick epochs and grid points here,
so both follow one rule, written once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from lld_jax.evaluation import PERCENTILES
from lld_jax.training import RunDir

SLOTS = (("same_accuracy", 0), ("one_point_lower", 1))  # (slot, points below vanilla's rounded accuracy)

SELECTION_RULE = (
    "paper Sec. 5 / App. H-I: among the ROLL runs, the largest median l2 margin at vanilla's accuracy rounded to a whole "
    "percent (slot same_accuracy) and at one point lower (slot one_point_lower); accuracy and margin measured on the "
    "selection split (validation when the run has one, else test, as the paper does for Japanese Vowels); an empty "
    "slot is null. Each run's checkpoint is the epoch of lowest total loss (task loss + lambda * penalty) on the same split."
)


def best_epoch(history: list[dict[str, Any]]) -> int:
    """The epoch (1-based) that :func:`lld_jax.training.fit` keeps: the lowest ``val_loss`` (total loss on the selection split)."""
    if not history:
        raise ValueError("no epoch recorded yet: the run has not finished its first epoch.")
    return int(np.argmin([h["val_loss"] for h in history]) + 1)


def interim(history: list[dict[str, Any]]) -> dict[str, int]:
    """How far an unfinished run got: ``{"epochs_done", "best_epoch"}`` (its report marks it unfinished)."""
    return {"epochs_done": len(history), "best_epoch": best_epoch(history)}


def selection_split(report: dict[str, Any]) -> str:
    """``"val"`` when the report has a validation evaluation, else ``"test"`` (the paper's Japanese Vowels protocol)."""
    return "val" if "val" in report else "test"


def selection_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """Accuracy and l2 margins of the split that selects (see :func:`selection_split`)."""
    return report["val"] if selection_split(report) == "val" else report


def select(reports: dict[str, dict[str, Any]], vanilla: dict[str, Any]) -> dict[str, str | None]:
    """The paper's rule (:data:`SELECTION_RULE`): the key of the chosen run per slot, or None.

    Args:
      reports: the ROLL runs' reports by key (vanilla excluded).
      vanilla: the vanilla run's report (its rounded accuracy sets the slots).
    """
    splits = {selection_split(r) for r in (vanilla, *reports.values())}
    if len(splits) > 1:
        raise ValueError(f"the runs were selected on different splits ({sorted(splits)}): rerun them with the same validation setting.")
    target = round(100 * selection_metrics(vanilla)["accuracy"])
    picks = {}
    for slot, below in SLOTS:
        cands = [
            (selection_metrics(r)["margin_l2"]["P50"], k)
            for k, r in reports.items()
            if round(100 * selection_metrics(r)["accuracy"]) == target - below
        ]
        picks[slot] = max(cands)[1] if cands else None
    return picks


def selection_record(reports: dict[str, dict[str, Any]], vanilla: dict[str, Any]) -> dict[str, Any]:
    """What ``selection.json`` holds: the rule, the split, vanilla's and every candidate's numbers, and the picks."""
    row = lambda r: {
        "accuracy": selection_metrics(r)["accuracy"],
        "margin_l2_P50": selection_metrics(r)["margin_l2"]["P50"],
        "lam": r["config"]["lam"],
        "C": r["config"]["C"],
    }
    return {
        "rule": SELECTION_RULE,
        "split": selection_split(vanilla),
        "vanilla": row(vanilla),
        "candidates": {k: row(r) | ({"unfinished": r["interim"]} if "interim" in r else {}) for k, r in reports.items()},
        "picks": select(reports, vanilla),
    }


def write_report(workdir: str, report: dict[str, Any], per_example: dict[str, np.ndarray], markdown: str) -> None:
    """A finished run's files in ``workdir`` (process 0 only): ``eval.npz`` (per-example results, for paired tests), ``report.json``, ``report.md``."""
    rd = RunDir(workdir, write=jax.process_index() == 0)
    if rd.write:
        np.savez_compressed(rd.file("eval.npz"), **per_example)
    rd.write_json("report.json", report)
    if rd.write:
        with open(rd.file("report.md"), "w") as fh:
            fh.write(markdown + "\n")


def read_report(workdir: str) -> dict[str, Any] | None:
    """A run's ``report.json``, or None while it has none (not finished)."""
    import json

    path = os.path.join(workdir, "report.json")
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)


RAISE_RULE = (
    "paper App. I: with the other settings fixed, {name} is raised through an increasing list; the kept {name} is the "
    "largest one reached before the first whose validation accuracy is significantly worse than vanilla's (one-sided exact "
    "McNemar test on the paired per-image predictions, p < alpha); none if the first candidate already is."
)


def mcnemar_worse(base_correct: np.ndarray, cand_correct: np.ndarray) -> tuple[int, int, float]:
    """One-sided exact McNemar test that a candidate is less accurate than the base on the same examples.

    Args:
      base_correct, cand_correct: bool arrays (N,), whether each model got each example right.

    Returns:
      ``(b, c, p)``: b examples only the base got right, c only the candidate, and
      ``p = P(Binomial(b + c, 1/2) >= b)`` (1.0 when b + c = 0).
    """
    base, cand = np.asarray(base_correct, bool), np.asarray(cand_correct, bool)
    if base.shape != cand.shape or base.ndim != 1:
        raise ValueError(f"need two per-example correctness vectors of one shape (N,); got {base.shape} and {cand.shape}.")
    b, c = int(np.sum(base & ~cand)), int(np.sum(~base & cand))
    n = b + c
    p = sum(math.comb(n, k) for k in range(b, n + 1)) / 2**n if n else 1.0
    return b, c, float(p)


def raise_until_worse(
    base_correct: np.ndarray, runs: Sequence[tuple[float, np.ndarray | None]], *, alpha: float = 0.05, name: str = "lam"
) -> dict[str, Any]:
    """The paper's tuning rule (:data:`RAISE_RULE`, App. I: lambda, then C) on validation predictions.

    Args:
      base_correct: vanilla's per-example correctness on the validation split, (N,) bool.
      runs: ``(value, correctness)`` of each ROLL run on the same examples, any order
        (sorted by value here; the list must not skip a value the rule would visit);
        correctness None for a run whose training diverged (non-finite loss), which
        counts as worse.
      alpha: the test's level.
      name: the raised hyper-parameter (``"lam"`` or ``"C"``), the candidates' key.

    Returns:
      The record: ``rule``, ``test``, ``alpha``, ``base_accuracy``, ``candidates`` (value,
      accuracy, b, c, p, worse; in increasing value, up to and including the first
      significantly worse) and ``chosen`` (a value, or None).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}.")
    values = [v for v, _ in runs]
    if len(set(values)) != len(values) or not values:
        raise ValueError(f"need at least one run and distinct values of {name}; got {values}.")
    chosen, rows = None, []
    for value, correct in sorted(runs, key=lambda r: r[0]):
        if correct is None:
            rows.append({name: value, "diverged": True, "worse": True})
            break
        b, c, p = mcnemar_worse(base_correct, correct)
        rows.append({name: value, "accuracy": float(np.mean(correct)), "b": b, "c": c, "p": p, "worse": p < alpha})
        if p < alpha:
            break
        chosen = value
    return {
        "rule": RAISE_RULE.format(name={"lam": "lambda"}.get(name, name)),
        "test": "one-sided exact McNemar",
        "alpha": alpha,
        "base_accuracy": float(np.mean(base_correct)),
        "candidates": rows,
        "chosen": chosen,
    }


def over_seeds(values: Sequence[float]) -> dict[str, Any]:
    """One number's spread over seeds: ``per_seed``, ``mean`` and ``sd`` (sample, ddof 1; None for one seed)."""
    return {
        "per_seed": [float(v) for v in values],
        "mean": float(np.mean(values)),
        "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
    }


def paired_bootstrap(
    n: int, stats: dict[str, Callable[[np.ndarray], np.ndarray]], rng: np.random.Generator, resamples: int = 2000
) -> dict[str, dict]:
    """Estimates and 95% percentile-bootstrap intervals of statistics of two models on the same n examples.

    Every statistic sees the same resampled examples (so the pairing is kept):
    ``stats[k](idx)`` maps index rows ``idx`` (R, n) to R values, for example
    ``lambda idx: np.median(b[idx], 1) - np.median(a[idx], 1)``; the estimate is its
    value on the examples themselves. Returns ``{k: {"estimate", "ci95": [lo, hi]}}``.
    """
    idx = rng.integers(0, n, size=(resamples, n))
    whole = np.arange(n)[None]
    return {k: {"estimate": float(stat(whole)[0]), "ci95": [float(v) for v in np.percentile(stat(idx), [2.5, 97.5])]} for k, stat in stats.items()}


def table1_markdown(rows: list[tuple[str, str, dict[str, Any]]], unit: float = 1e-4, scale_name: str = "pixel scale [0, 1]") -> str:
    """Markdown table in the layout of paper Tables 1 and 2; ``rows`` are (loss name, C, report), margins divided by ``unit``."""
    head = "| Loss | C | ACC | #patterns | #Jacobians | " + " | ".join(f"l{q} P{p}" for q in (1, 2) for p in PERCENTILES) + " | Spearman |"
    sep = "|" + "---|" * (head.count("|") - 1)
    lines = [head, sep]
    for name, c, r in rows:
        cells = [f"{r[f'margin_l{q}'][f'P{p}'] / unit:.0f}" for q in (1, 2) for p in PERCENTILES]
        lines.append(
            f"| {name} | {c} | {100 * r['accuracy']:.2f}% | {r['num_patterns']} | {r['num_jacobians']} | "
            + " | ".join(cells)
            + f" | {r['spearman_l1_l2']:.3f} |"
        )
    return "\n".join(lines) + f"\n\nMargins in units of {unit:g} ({scale_name})."

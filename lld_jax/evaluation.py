"""Evaluation report of a model in the layout of paper Table 1."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lld_jax.margins import margin
from lld_jax.network import Network, PyTree, pad_rows
from lld_jax.regions import count_regions

PERCENTILES = (25, 50, 75, 100)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""

    def ranks(v):
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        _, inv, counts = np.unique(v, return_inverse=True, return_counts=True)
        sums = np.bincount(inv, weights=r)
        return sums[inv] / counts[inv]

    ra, rb = ranks(np.asarray(a)), ranks(np.asarray(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def percentiles(values: np.ndarray, scale: float = 1.0) -> dict[str, float]:
    return {f"P{p}": float(np.percentile(values, p) * scale) for p in PERCENTILES}


def evaluate_model(
    net: Network, params: PyTree, x: np.ndarray, y: np.ndarray, *, scale: float = 1.0, batch_size: int = 500, progress: bool = False
) -> dict[str, Any]:
    """Accuracy, region counts, l1/l2 margin percentiles (times ``scale``) and their Spearman correlation.

    Args:
      scale: multiplies margins, e.g. the normalisation std (0.3081 on MNIST)
        to report them in pixel units (paper App. G).
    """
    m1, m2, correct = [], [], []
    logits_fn = jax.jit(jax.vmap(lambda p, xi: net.apply(p, xi)[0], in_axes=(None, 0)))
    it = range(0, len(x), batch_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="margins", unit="batch")
    for lo in it:
        xb = x[lo : lo + batch_size]
        n = len(xb)
        xb = jnp.asarray(pad_rows(xb, batch_size))
        m1.append(np.asarray(margin(net, params, xb, p=1))[:n])
        m2.append(np.asarray(margin(net, params, xb, p=2))[:n])
        correct.append(np.asarray(jnp.argmax(logits_fn(params, xb), -1))[:n] == y[lo : lo + n])
    m1, m2, correct = np.concatenate(m1), np.concatenate(m2), np.concatenate(correct)
    counts = count_regions(net, params, x, batch_size=batch_size, progress=progress)
    return {
        "n": int(len(x)),
        "accuracy": float(correct.mean()),
        "num_patterns": counts.num_patterns,
        "num_jacobians": counts.num_jacobians,
        "margin_l1": percentiles(m1, scale),
        "margin_l2": percentiles(m2, scale),
        "margin_l1_min": float(m1.min() * scale),
        "margin_l2_min": float(m2.min() * scale),
        "spearman_l1_l2": spearman(m1, m2),
        "scale": scale,
    }


def table1_markdown(rows: list[tuple[str, str, dict[str, Any]]], unit: float = 1e-4) -> str:
    """Markdown table in the layout of paper Table 1; ``rows`` are (loss name, C, report)."""
    head = "| Loss | C | ACC | #patterns | #Jacobians | " + " | ".join(f"l{q} P{p}" for q in (1, 2) for p in PERCENTILES) + " | Spearman |"
    sep = "|" + "---|" * (head.count("|") - 1)
    lines = [head, sep]
    for name, c, r in rows:
        cells = [f"{r[f'margin_l{q}'][f'P{p}'] / unit:.0f}" for q in (1, 2) for p in PERCENTILES]
        lines.append(
            f"| {name} | {c} | {100 * r['accuracy']:.2f}% | {r['num_patterns']} | {r['num_jacobians']} | " + " | ".join(cells) + f" | {r['spearman_l1_l2']:.3f} |"
        )
    return "\n".join(lines) + f"\n\nMargins in units of {unit:g} (pixel scale [0, 1])."

"""Evaluation report of a model in the layout of paper Table 1."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lld_jax import batched
from lld_jax._src.host import pad_rows
from lld_jax._src.network import Network, PyTree
from lld_jax._src.regions import count_regions

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
    """``{"P25": ..., "P50": ..., "P75": ..., "P100": ...}`` of ``values`` times ``scale``."""
    return {f"P{p}": float(np.percentile(values, p) * scale) for p in PERCENTILES}


@functools.partial(jax.jit, static_argnames="net")
def predict_labels(net: Network, params: PyTree, x: jax.Array) -> jax.Array:
    return jnp.argmax(jax.vmap(lambda xi: net.apply(params, xi)[0].reshape(-1))(x), -1)


def evaluate_model(
    net: Network,
    params: PyTree,
    x: np.ndarray,
    y: np.ndarray,
    *,
    scale: float = 1.0,
    batch_size: int = 500,
    ps: tuple[int, ...] = (1, 2),
    progress: bool = False,
    per_example: bool = False,
) -> dict[str, Any]:
    """Accuracy, region counts, l_p margin percentiles (times ``scale``) and the l1/l2 Spearman correlation.

    Args:
      scale: multiplies margins, e.g. the normalisation std (0.3081 on MNIST)
        to report them in pixel units (paper App. G).
      ps: which margins to report, from (1, 2); (2,) skips the l1 margin (a
        forward pass per input axis), e.g. for validation-set model selection.
      per_example: also return ``"per_example"``: NumPy arrays ``correct``
        (bool, (N,)) and ``margin_l{p}`` ((N,), times ``scale``), so that two
        models can be compared example by example (paired tests).
    """
    if not ps or not set(ps) <= {1, 2}:
        raise ValueError(f"ps must be a non-empty subset of (1, 2), got {ps!r}.")
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"evaluate_model needs at least one example and one label per example; got {len(x)} examples, {len(y)} labels.")
    margins: dict[int, list[np.ndarray]] = {p: [] for p in ps}
    correct = []
    it = range(0, len(x), batch_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="margins", unit="batch")
    for lo in it:
        xb = x[lo : lo + batch_size]
        n = len(xb)
        xb = jnp.asarray(pad_rows(xb, batch_size))
        for p in ps:
            r = batched.margin(net, params, xb, p=p)
            margins[p].append(np.asarray(r)[:n])
        correct.append(np.asarray(predict_labels(net, params, xb))[:n] == y[lo : lo + n])
    m = {p: np.concatenate(v) for p, v in margins.items()}
    correct = np.concatenate(correct)
    counts = count_regions(net, params, x, batch_size=batch_size, progress=progress)
    report = {
        "n": int(len(x)),
        "accuracy": float(correct.mean()),
        "num_patterns": counts.num_patterns,
        "num_jacobians": counts.num_jacobians,
        "scale": scale,
    }
    for p, v in m.items():
        report[f"margin_l{p}"] = percentiles(v, scale)
        report[f"margin_l{p}_min"] = float(v.min() * scale)
    if len(m) == 2:
        report["spearman_l1_l2"] = spearman(m[1], m[2])
    if per_example:
        report["per_example"] = {"correct": correct, **{f"margin_l{p}": v * scale for p, v in m.items()}}
    return report

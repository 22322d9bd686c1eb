"""Certified accuracy over a data set from :func:`lld_jax.certified_radius`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from lld_jax import batched
from lld_jax._src.arguments import positive_int
from lld_jax._src.evaluation import predict_labels
from lld_jax._src.gradients import canonical_ord
from lld_jax._src.host import pad_rows
from lld_jax._src.network import ApplyFn, Network, PyTree, as_network


def robustness_curve(lower: np.ndarray, upper: np.ndarray, eps: Sequence[float]) -> dict[str, list[float]]:
    """Certified accuracy and its attack bound at each radius in ``eps``.

    ``certified[i]``: the fraction of examples with ``lower > eps[i]`` (correct
    and no prediction change within eps: a misclassified example has
    ``lower = 0``). ``attack_bound[i]``: the fraction with ``upper > eps[i]``,
    an upper bound on the true robust accuracy (the others have a confirmed
    adversarial point within eps). The true value lies between the two.
    """
    lower, upper = np.asarray(lower), np.asarray(upper)
    return {
        "eps": [float(e) for e in eps],
        "certified": [float(np.mean(lower > e)) for e in eps],
        "attack_bound": [float(np.mean(upper > e)) for e in eps],
    }


def certify_dataset(
    net: ApplyFn | Network,
    params: PyTree,
    x: np.ndarray,
    y: np.ndarray,
    *,
    p: float | str = 2,
    eps: Sequence[float] = (),
    scale: float = 1.0,
    batch_size: int = 256,
    max_steps: int = 100,
    progress: bool = False,
) -> dict[str, Any]:
    """:func:`lld_jax.certified_radius` of every example, summarised; radii in input units times ``scale``.

    Args:
      x, y: the examples ``(n, *input_shape)`` and their labels ``(n,)``.
      p: the norm.
      eps: radii (in the scaled units) of the certified-accuracy curve.
      scale: multiplies every distance (e.g. the data's standard deviation,
        to report in pixel units when the network reads normalised inputs).
      batch_size: examples per compiled batch (the last one is padded).
      max_steps: the attack's budget per example.
      progress: a tqdm progress bar.

    Returns:
      ``{"p", "n", "accuracy", "exact_fraction", "attack_found_fraction",
      "lower"/"upper": percentiles of the correct examples, "curve":
      :func:`robustness_curve`, "per_example": {"lower", "upper", "exact",
      "correct"} arrays}``.
    """
    p_value = canonical_ord(p)
    batch_size = positive_int(batch_size, "batch_size")
    x, y = np.asarray(x), np.asarray(y)
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"x and y must hold the same positive number of examples; got {len(x)} and {len(y)}.")
    parts: dict[str, list[np.ndarray]] = {"lower": [], "upper": [], "exact": [], "correct": []}
    it = range(0, len(x), batch_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=-(-len(x) // batch_size), desc=f"certifying (l{'inf' if p_value == np.inf else int(p_value)})", unit="batch")
    for lo in it:
        n = min(batch_size, len(x) - lo)
        xb = jnp.asarray(pad_rows(x[lo : lo + n], batch_size))
        yb = jnp.asarray(pad_rows(y[lo : lo + n], batch_size))
        r = batched.certified_radius(net, params, xb, yb, p=p, max_steps=max_steps)
        for k in ("lower", "upper", "exact"):
            parts[k].append(np.asarray(getattr(r, k))[:n])
        parts["correct"].append(np.asarray(predict_labels(as_network(net), params, xb))[:n] == y[lo : lo + n])
    lower, upper, exact, correct = (np.concatenate(parts[k]) for k in ("lower", "upper", "exact", "correct"))
    if np.isnan(lower).any() or np.isnan(upper).any():
        raise ValueError(
            f"certified radii are NaN at example(s) {np.flatnonzero(np.isnan(lower) | np.isnan(upper))[:5].tolist()}: check those inputs."
        )
    lower, upper = lower * scale, upper * scale
    pct = lambda v: {f"P{q}": float(np.percentile(v, q)) for q in (25, 50, 75)} if v.size else {}
    return {
        "p": "inf" if p_value == np.inf else int(p_value),
        "n": int(len(x)),
        "accuracy": float(correct.mean()),
        "exact_fraction": float(exact[correct].mean()) if correct.any() else 0.0,
        "attack_found_fraction": float(np.isfinite(upper[correct]).mean()) if correct.any() else 0.0,
        "lower": pct(lower[correct]),
        "upper": pct(upper[correct]),
        "curve": robustness_curve(lower, upper, eps),
        "per_example": {"lower": lower, "upper": upper, "exact": exact, "correct": correct},
    }

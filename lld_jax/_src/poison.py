"""Poison: a result that must not be trusted becomes NaN, and so does its derivative.

The one mechanism by which a kernel reports a failed check from inside a
trace (no host sync, no callback): NaN where the check failed, the clean
entries untouched. A product rather than a ``where``, because ``jnp.where``
gives the poisoned entry a zero gradient: a plausible number that a training
step or an attack built on ``jax.grad`` of a margin would silently use.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lld_jax._src.network import Array, PyTree


def poison_where(x: Array, bad: Array) -> Array:
    """``x`` with NaN where ``bad``: per example when ``bad`` has one flag per row of ``x``, else everywhere.

    A product, not a ``where``: the derivative of a poisoned entry is NaN too
    (a ``where`` would give it a zero gradient, a plausible number that a
    training step would silently use), and a clean entry keeps its value and
    derivative exactly (times 1). Floating-point ``x`` only (NaN is a float).

    Raises:
      TypeError: ``x`` is not floating point.
    """
    x = jnp.asarray(x)
    bad = jnp.asarray(bad)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        raise TypeError(f"only a floating-point result can be poisoned with NaN; got dtype {x.dtype}.")
    if bad.ndim == 1 and x.ndim >= 1 and x.shape[0] == bad.shape[0] and bad.shape[0] > 1:
        mask = bad.reshape(bad.shape + (1,) * (x.ndim - 1))
    else:
        mask = jnp.any(bad)
    return x * jnp.where(jax.lax.stop_gradient(mask), jnp.asarray(jnp.nan, x.dtype), jnp.asarray(1, x.dtype))


def float_leaves(tree: PyTree) -> list[Array]:
    """The floating-point leaves of ``tree``."""
    return [a for a in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(a), jnp.inexact)]


def not_finite(tree: PyTree) -> Array:
    """Scalar: does any floating leaf of ``tree`` hold NaN or Inf?"""
    return jnp.any(jnp.stack([~jnp.all(jnp.isfinite(a)) for a in float_leaves(tree)] + [jnp.zeros((), bool)]))


def poison(result: Array, *trees: PyTree) -> Array:
    """``result`` (one example's float) turned NaN when any of ``trees`` holds NaN or Inf.

    Applied to every margin, with or without checks: a certificate computed
    from non-finite inputs or parameters is never finite. The parameter test
    is unbatched (computed once per call).
    """
    return poison_where(result, jnp.any(jnp.stack([not_finite(t) for t in trees])))

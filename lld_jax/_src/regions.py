"""Activation patterns, region membership and counting regions over a data set.

* Pattern (paper Def. 1): o_j = [z_j > 0]; z_j = 0 counts as inactive, which
  is the pattern whose sub-gradients JAX's relu uses.
* Membership: a point lies in x's region S(x) iff its own pattern equals x's
  (by induction over layers, Lemma 2); a convex hull lies in S(x) iff all its
  vertices do (Prop. 5), and the l1 ball B_eps,1(x) is the hull of its 2D
  vertices x +- eps e_k.
* Counting (Lemma 7): over a data set, #distinct Jacobians <= #complete linear
  regions <= #distinct patterns. Both counts stream in batches with memory
  bounded by the number of distinct items.
"""

from __future__ import annotations

import functools
import hashlib
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lld_jax._src.arguments import positive_int
from lld_jax._src.checks import CheckError, check_finite_array, check_values, example_shape, prepare, run_checked, working_dtype
from lld_jax._src.host import pad_rows
from lld_jax._src.network import ApplyFn, Network, PyTree, as_network, flat_preacts

Array = jax.Array


def _pattern(net: Network, params: PyTree, x: Array) -> Array:
    return flat_preacts(net, params, x)[1] > 0


@functools.partial(jax.jit, static_argnames=("net", "kind", "chunk", "check", "batched"))
def _membership(net, params, x, other, *, kind, chunk, check, batched):
    if check:
        x = check_values(net, params, x, batched=batched)
        if other is not None:
            other = check_finite_array(other, "y" if kind == "same" else "vertices", batched=batched)

    def one(xi, oi):
        p0 = _pattern(net, params, xi)
        if kind == "pattern":
            return p0
        if kind == "same":
            return jnp.all(_pattern(net, params, oi) == p0)
        same = jax.lax.map(lambda v: jnp.all(_pattern(net, params, v) == p0), oi, batch_size=chunk)
        return jnp.all(same)

    if other is None:
        other = x  # unused by "pattern"
    return jax.vmap(one)(x, other) if batched else one(x, other)


def membership_call(apply_fn, params, x, other, *, kind, chunk_size, check, batched) -> Array:
    """Shared body of the pattern and membership functions, per example and batched."""
    net = as_network(apply_fn)
    x, _ = prepare(net, params, x, batched=batched)
    if other is not None:
        other = jnp.asarray(other, x.dtype)
        lead = 1 if batched else 0
        if kind == "same" and other.shape != x.shape:
            raise ValueError(f"x and y must have the same shape, got {x.shape} and {other.shape}.")
        if kind == "hull" and (other.ndim != x.ndim + 1 or other.shape[:lead] != x.shape[:lead] or other.shape[lead + 1 :] != x.shape[lead:]):
            want = f"({x.shape[0]}, K, *{x.shape[1:]})" if batched else f"(K, *{x.shape})"
            raise ValueError(f"vertices must have shape {want}; got {other.shape}.")
    chunk_size = positive_int(chunk_size, "chunk_size")
    extras = {} if other is None else {"y" if kind == "same" else "vertices": other}
    return run_checked(_membership, net, params, x, other, kind=kind, chunk=chunk_size, check=check, batched=batched, extras=extras)


def activation_pattern(apply_fn: ApplyFn | Network, params: PyTree, x: Array, *, check: bool = True) -> Array:
    """Boolean activation pattern of ONE example, shape ``(N,)``: True where z_j > 0 (layers concatenated).

    Example:
      >>> import jax.numpy as jnp, lld_jax
      >>> f = lambda w, x: (x.sum(), (w @ x,))
      >>> lld_jax.activation_pattern(f, jnp.eye(3), jnp.array([1.0, 0.0, -2.0])).tolist()
      [True, False, False]
    """
    return membership_call(apply_fn, params, x, None, kind="pattern", chunk_size=1, check=check, batched=False)


def same_region(apply_fn: ApplyFn | Network, params: PyTree, x: Array, y: Array, *, check: bool = True) -> Array:
    """Scalar bool: does ``y`` lie in the linear region of ``x`` (equal patterns)? ONE example each."""
    return membership_call(apply_fn, params, x, y, kind="same", chunk_size=1, check=check, batched=False)


def hull_in_region(apply_fn: ApplyFn | Network, params: PyTree, x: Array, vertices: Array, *, chunk_size: int = 64, check: bool = True) -> Array:
    """Scalar bool: is the convex hull of ``vertices`` inside the region of ONE example ``x`` (Prop. 5)?

    Args:
      x: ``input_shape``.
      vertices: ``(K, *input_shape)``.
      chunk_size: vertices checked in parallel.
    """
    return membership_call(apply_fn, params, x, vertices, kind="hull", chunk_size=chunk_size, check=check, batched=False)


def l1_ball_vertices(x: Array, eps: Array | float) -> Array:
    """The 2D vertices x +- eps e_k of the l1 ball around ONE example: ``(2D, *x.shape)``.

    Example:
      >>> import jax.numpy as jnp, lld_jax
      >>> lld_jax.l1_ball_vertices(jnp.zeros(2), 0.5).tolist()
      [[0.5, 0.0], [0.0, 0.5], [-0.5, 0.0], [0.0, -0.5]]
    """
    x = jnp.asarray(x)
    d = math.prod(x.shape)
    basis = jnp.concatenate([jnp.eye(d, dtype=x.dtype), -jnp.eye(d, dtype=x.dtype)]).reshape((2 * d, *x.shape))
    return x[None] + jnp.asarray(eps, x.dtype) * basis


def check_radius(eps: Any) -> None:
    """Refuses a concrete negative, NaN or infinite ball radius (a traced one cannot be checked and passes)."""
    if isinstance(eps, jax.core.Tracer):
        return
    e = np.asarray(eps)
    if not (np.all(np.isfinite(e)) and np.all(e >= 0)):
        raise ValueError(f"eps must be a finite radius >= 0 (scalar or one per example), got {eps!r}.")


def l1_ball_in_region(
    apply_fn: ApplyFn | Network, params: PyTree, x: Array, eps: Array | float, *, chunk_size: int = 64, check: bool = True
) -> Array:
    """Scalar bool: does the l1 ball of radius ``eps`` around ONE example lie in its region (Prop. 5)?

    Raises:
      ValueError: a concrete ``eps`` that is negative, NaN or infinite.
    """
    check_radius(eps)
    x = jnp.asarray(x)
    x = x.astype(working_dtype(params, x))  # the ball in the precision of the margins, never rounded below it
    return hull_in_region(apply_fn, params, x, l1_ball_vertices(x, eps), chunk_size=chunk_size, check=check)


# --------------------------------------------------------------------------
# Counting over a data set.


class RegionCounts(NamedTuple):
    """Lemma 7's bounds on the number of complete linear regions hit by a data set."""

    num_patterns: int
    num_jacobians: int


@functools.partial(jax.jit, static_argnames=("net", "check", "batched"))
def _jacobians(net, params, x, *, check, batched):
    del batched  # always a batch
    if check:
        x = check_values(net, params, x, batched=True, name="xs")

    def one(xi):
        f = lambda u: net.apply(params, u.reshape(xi.shape))[0].reshape(-1)
        out_dim = math.prod(jax.eval_shape(f, xi.reshape(-1)).shape)
        jac = jax.jacrev(f) if out_dim <= xi.size else jax.jacfwd(f)
        return jac(xi.reshape(-1)), _pattern(net, params, xi)

    return jax.vmap(one)(x)


def count_regions(
    apply_fn: ApplyFn | Network,
    params: PyTree,
    xs: Array | np.ndarray,
    *,
    batch_size: int = 256,
    decimals: int = 4,
    progress: bool = False,
    check: bool = True,
) -> RegionCounts:
    """Distinct activation patterns and distinct input-output Jacobians over a data set ``xs``.

    Streams ``xs`` in batches (the last batch is padded and its padding
    ignored); memory grows only with the number of distinct items, each stored
    as a 20-byte digest. Jacobians are rounded to ``decimals`` decimals before
    comparison (as in the paper's code).

    Args:
      xs: ``(n, *input_shape)`` array (NumPy arrays stay on the host).
      batch_size: examples per compiled batch.
      decimals: rounding of Jacobian entries before comparison.
      progress: show a tqdm progress bar.
      check: value checks on every batch (finite inputs and parameters,
        piecewise linear).

    Returns:
      :class:`RegionCounts` ``(num_patterns, num_jacobians)``.
    """
    net = as_network(apply_fn)
    batch_size = positive_int(batch_size, "batch_size")
    n = len(xs)
    if n == 0:
        raise ValueError("xs is empty; pass at least one example.")
    example_shape(net, jax.ShapeDtypeStruct(np.shape(xs), np.float32), batched=True)  # names xs's own shape
    first, _ = prepare(net, params, np.asarray(xs[:1]), batched=True)
    patterns, jacobians = set(), set()
    it = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=-(-n // batch_size), desc="counting regions", unit="batch")
    for lo in it:
        xb = np.asarray(xs[lo : lo + batch_size])
        m = len(xb)
        xb = jnp.asarray(pad_rows(xb, batch_size), first.dtype)
        try:
            jac, pat = jax.device_get(run_checked(_jacobians, net, params, xb, check=check, batched=True, xname="xs"))
        except CheckError as err:  # name the rows of xs, not of the padded batch
            raise CheckError(f"{err} (the batch holds rows {lo} to {lo + m - 1} of xs)") from err
        jac = np.round(jac[:m], decimals) + 0.0  # + 0.0 folds -0.0 into 0.0
        for row_j, row_p in zip(jac, pat[:m]):
            patterns.add(np.packbits(row_p).tobytes())
            jacobians.add(hashlib.sha1(np.ascontiguousarray(row_j).tobytes()).digest())
    return RegionCounts(len(patterns), len(jacobians))

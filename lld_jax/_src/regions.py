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

import hashlib
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lld_jax._src.arguments import positive_int
from lld_jax._src.checks import CheckError, example_shape, prepare
from lld_jax._src.host import pad_rows
from lld_jax._src.kernel import Kernel, Plan, vectorize
from lld_jax._src.network import ApplyFn, Network, PyTree, as_network, flat_preacts

Array = jax.Array


def _pattern(net: Network, params: PyTree, x: Array) -> Array:
    return flat_preacts(net, params, x)[1] > 0


def _membership_body(net, params, x, *other, kind, chunk):
    p0 = _pattern(net, params, x)
    if kind == "pattern":
        return p0
    (o,) = other
    if kind == "same":
        return jnp.all(_pattern(net, params, o) == p0)
    vertices = l1_ball_vertices(x, o) if kind == "l1" else o
    return jnp.all(jax.lax.map(lambda v: jnp.all(_pattern(net, params, v) == p0), vertices, batch_size=chunk))


def _membership_plan(net, params, x, hidden, *other, kind, chunk_size, batched):
    static = (("kind", kind), ("chunk", positive_int(chunk_size, "chunk_size")))
    if kind == "pattern":
        return Plan(static=static)
    (o,) = other
    lead = 1 if batched else 0
    if kind == "l1":
        check_radius(o)
        eps = jnp.asarray(o, x.dtype)  # the ball in the precision of the margins, never rounded below it
        if eps.shape not in ((), x.shape[:lead]):
            raise ValueError(f"eps must be a scalar{' or one radius per example ' + str(x.shape[:1]) if batched else ''}; got shape {eps.shape}.")
        return Plan(mapped=(jnp.broadcast_to(eps, x.shape[:lead]),), static=static, names=("eps",))
    o = jnp.asarray(o, x.dtype)
    if kind == "same" and o.shape != x.shape:
        raise ValueError(f"x and y must have the same shape, got {x.shape} and {o.shape}.")
    if kind == "hull" and (o.ndim != x.ndim + 1 or o.shape[:lead] != x.shape[:lead] or o.shape[lead + 1 :] != x.shape[lead:]):
        want = f"({x.shape[0]}, K, *{x.shape[1:]})" if batched else f"(K, *{x.shape})"
        raise ValueError(f"vertices must have shape {want}; got {o.shape}.")
    return Plan(mapped=(o,), static=static, names=("y" if kind == "same" else "vertices",))


MEMBERSHIP = Kernel(_membership_body, _membership_plan, block=False)


def activation_pattern(apply_fn: ApplyFn | Network, params: PyTree, x: Array, *, check: bool = True) -> Array:
    """Boolean activation pattern of ONE example, shape ``(N,)``: True where z_j > 0 (layers concatenated).

    Example:
      >>> import jax.numpy as jnp, lld_jax
      >>> f = lambda w, x: (x.sum(), (w @ x,))
      >>> lld_jax.activation_pattern(f, jnp.eye(3), jnp.array([1.0, 0.0, -2.0])).tolist()
      [True, False, False]
    """
    return MEMBERSHIP(apply_fn, params, x, kind="pattern", chunk_size=1, check=check)


def same_region(apply_fn: ApplyFn | Network, params: PyTree, x: Array, y: Array, *, check: bool = True) -> Array:
    """Scalar bool: does ``y`` lie in the linear region of ``x`` (equal patterns)? ONE example each."""
    return MEMBERSHIP(apply_fn, params, x, y, kind="same", chunk_size=1, check=check)


def hull_in_region(apply_fn: ApplyFn | Network, params: PyTree, x: Array, vertices: Array, *, chunk_size: int = 64, check: bool = True) -> Array:
    """Scalar bool: is the convex hull of ``vertices`` inside the region of ONE example ``x`` (Prop. 5)?

    Args:
      x: ``input_shape``.
      vertices: ``(K, *input_shape)``.
      chunk_size: vertices checked in parallel.
    """
    return MEMBERSHIP(apply_fn, params, x, vertices, kind="hull", chunk_size=chunk_size, check=check)


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

    Args:
      eps: the radius (a scalar; the batched form also takes one per example, ``(B,)``).
      chunk_size: vertices checked in parallel.

    Raises:
      ValueError: a concrete ``eps`` that is negative, NaN or infinite.
    """
    return MEMBERSHIP(apply_fn, params, x, eps, kind="l1", chunk_size=chunk_size, check=check)


# --------------------------------------------------------------------------
# Counting over a data set.


class RegionCounts(NamedTuple):
    """Lemma 7's bounds on the number of complete linear regions hit by a data set."""

    num_patterns: int
    num_jacobians: int


def _jacobian_body(net, params, x):
    f = lambda u: net.apply(params, u.reshape(x.shape))[0].reshape(-1)
    out_dim = math.prod(jax.eval_shape(f, x.reshape(-1)).shape)
    jac = jax.jacrev(f) if out_dim <= x.size else jax.jacfwd(f)
    return jac(x.reshape(-1)), _pattern(net, params, x)


# The input-output Jacobian and the pattern of every row of a batch of xs (count_regions).
_jacobians = vectorize(Kernel(_jacobian_body, lambda *a, batched: Plan(), block=False, xname="xs"))


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
            jac, pat = jax.device_get(_jacobians(net, params, xb, check=check))
        except CheckError as err:  # name the rows of xs, not of the padded batch
            raise CheckError(f"{err} (the batch holds rows {lo} to {lo + m - 1} of xs)") from err
        jac = np.round(jac[:m], decimals) + 0.0  # + 0.0 folds -0.0 into 0.0
        for row_j, row_p in zip(jac, pat[:m]):
            patterns.add(np.packbits(row_p).tobytes())
            jacobians.add(hashlib.sha1(np.ascontiguousarray(row_j).tobytes()).digest())
    return RegionCounts(len(patterns), len(jacobians))

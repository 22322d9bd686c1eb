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
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lld_jax.network import ApplyFn, Network, PyTree, as_network, check_finite, flat_preacts, pad_rows, validate

Array = jax.Array


@functools.lru_cache(maxsize=256)
def _pattern_fn(net: Network):
    return jax.jit(jax.vmap(lambda params, x: flat_preacts(net, params, x)[1] > 0, in_axes=(None, 0)))


def activation_pattern(apply_fn: ApplyFn | Network, params: PyTree, x: Array) -> Array:
    """Boolean activation pattern ``(B, N)``: True where z_j > 0 (layers concatenated, flattened)."""
    net = as_network(apply_fn)
    x = jnp.asarray(x)
    validate(net, params, x)
    return _pattern_fn(net)(params, x)


def same_region(apply_fn: ApplyFn | Network, params: PyTree, x: Array, y: Array) -> Array:
    """``(B,)`` bool: does ``y[i]`` lie in the linear region of ``x[i]`` (equal patterns)?"""
    net = as_network(apply_fn)
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {x.shape} and {y.shape}.")
    validate(net, params, x)
    check_finite(y, "y")
    f = _pattern_fn(net)
    return jnp.all(f(params, x) == f(params, y), axis=1)


@functools.lru_cache(maxsize=256)
def _vertices_fn(net: Network, chunk: int):
    pattern = lambda params, u: flat_preacts(net, params, u)[1] > 0

    def one(params, x, verts):
        p0 = pattern(params, x)
        same = jax.lax.map(lambda v: jnp.all(pattern(params, v) == p0), verts, batch_size=chunk)
        return jnp.all(same)

    return jax.jit(jax.vmap(one, in_axes=(None, 0, 0)))


def hull_in_region(
    apply_fn: ApplyFn | Network, params: PyTree, x: Array, vertices: Array, *, chunk_size: int = 64
) -> Array:
    """``(B,)`` bool: is the convex hull of ``vertices[i]`` inside the region of ``x[i]``?

    Args:
      x: ``(B, *input_shape)``.
      vertices: ``(B, K, *input_shape)``.
      chunk_size: vertices checked in parallel per example.
    """
    net = as_network(apply_fn)
    x, vertices = jnp.asarray(x), jnp.asarray(vertices)
    validate(net, params, x)
    if vertices.ndim != x.ndim + 1 or vertices.shape[0] != x.shape[0] or vertices.shape[2:] != x.shape[1:]:
        raise ValueError(f"vertices must have shape (B, K, *input_shape) = ({x.shape[0]}, K, *{x.shape[1:]}); got {vertices.shape}.")
    check_finite(vertices, "vertices")
    return _vertices_fn(net, int(chunk_size))(params, x, vertices)


def l1_ball_vertices(x: Array, eps: Array | float) -> Array:
    """The 2D vertices x +- eps e_k of the l1 ball around each example: ``(B, 2D, *input_shape)``."""
    x = jnp.asarray(x)
    shape, d = x.shape[1:], math.prod(x.shape[1:])
    eps = jnp.broadcast_to(jnp.asarray(eps, x.dtype), (x.shape[0],))
    basis = jnp.concatenate([jnp.eye(d, dtype=x.dtype), -jnp.eye(d, dtype=x.dtype)]).reshape((2 * d, *shape))
    return x[:, None] + eps.reshape((-1,) + (1,) * (x.ndim)) * basis[None]


def l1_ball_in_region(apply_fn: ApplyFn | Network, params: PyTree, x: Array, eps: Array | float, *, chunk_size: int = 64) -> Array:
    """``(B,)`` bool: does the l1 ball of radius ``eps`` around ``x[i]`` lie in its region (Prop. 5)?"""
    return hull_in_region(apply_fn, params, x, l1_ball_vertices(x, eps), chunk_size=chunk_size)


# --------------------------------------------------------------------------
# Counting over a data set.


class RegionCounts(NamedTuple):
    """Lemma 7's bounds on the number of complete linear regions hit by a data set."""

    num_patterns: int
    num_jacobians: int


@functools.lru_cache(maxsize=64)
def _jacobian_fn(net: Network, out_dim: int, dim: int):
    def one(params, x):
        f = lambda u: net.apply(params, u.reshape(x.shape))[0].reshape(-1)
        jac = jax.jacrev(f) if out_dim <= dim else jax.jacfwd(f)
        return jac(x.reshape(-1)), flat_preacts(net, params, x)[1] > 0

    return jax.jit(jax.vmap(one, in_axes=(None, 0)))


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)


def count_regions(
    apply_fn: ApplyFn | Network,
    params: PyTree,
    xs: Array | np.ndarray,
    *,
    batch_size: int = 256,
    decimals: int = 4,
    progress: bool = False,
) -> RegionCounts:
    """Distinct activation patterns and distinct input-output Jacobians over ``xs``.

    Streams ``xs`` in batches (the last batch is padded and its padding
    ignored); memory grows only with the number of distinct items, each stored
    as a 20-byte digest. Jacobians are rounded to ``decimals`` decimals before
    comparison (as in the paper's code).

    Args:
      xs: ``(n, *input_shape)`` array (NumPy arrays stay on the host).
      progress: show a tqdm progress bar.
    """
    net = as_network(apply_fn)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    n = len(xs)
    validate(net, params, jnp.asarray(xs[: min(n, batch_size)]))
    first = jax.eval_shape(net.apply, params, jax.ShapeDtypeStruct(tuple(xs.shape[1:]), jnp.asarray(xs[:1]).dtype))
    fn = _jacobian_fn(net, math.prod(first[0].shape), math.prod(xs.shape[1:]))
    patterns, jacobians = set(), set()
    it = _batches(n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=-(-n // batch_size), desc="counting regions", unit="batch")
    for lo, hi in it:
        xb = np.asarray(xs[lo:hi])
        check_finite(xb, "xs")
        jac, pat = jax.device_get(fn(params, jnp.asarray(pad_rows(xb, batch_size))))
        jac = np.round(jac[: hi - lo], decimals) + 0.0  # + 0.0 folds -0.0 into 0.0
        for row_j, row_p in zip(jac, pat[: hi - lo]):
            patterns.add(np.packbits(row_p).tobytes())
            jacobians.add(hashlib.sha1(np.ascontiguousarray(row_j).tobytes()).digest())
    return RegionCounts(len(patterns), len(jacobians))

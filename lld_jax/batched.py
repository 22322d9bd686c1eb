"""Batched forms of the per-example geometry functions of :mod:`lld_jax`.

Each takes ``x`` with a leading batch axis, ``(B, *input_shape)``, and
returns the per-example results stacked along it. They are thin wrappers over
the per-example functions: one ``jax.jit`` per configuration, the batch
evaluated in cache-sized blocks on CPU and whole on accelerators, value checks
on every example (``check=True``) raised as ``ValueError``.

Example:
  >>> import jax, jax.numpy as jnp, lld_jax
  >>> f = lambda w, x: (jnp.sum(w @ x), (w @ x,))
  >>> xs = jnp.array([[1.0, 2.0], [-3.0, 0.5]])
  >>> lld_jax.batched.margin(f, jnp.eye(2), xs, p=2).tolist()
  [1.0, 0.5]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lld_jax._src.gradients import gradients_call
from lld_jax._src.margins import Margin, directional_call, margin_call
from lld_jax._src.network import ApplyFn, Network, PyTree
from lld_jax._src.regions import l1_ball_vertices as _l1_vertices
from lld_jax._src.regions import membership_call

Array = jax.Array

__all__ = [
    "activation_pattern",
    "directional_margin",
    "directional_margin_bisect",
    "hull_in_region",
    "l1_ball_in_region",
    "margin",
    "margin_with_neuron",
    "neuron_gradient_norms",
    "neuron_gradients",
    "same_region",
]


def margin(
    apply_fn: ApplyFn | Network,
    params: PyTree,
    x: Array,
    *,
    p: float | str = 2,
    method: str = "auto",
    chunk_size: int | None = None,
    check: bool = True,
) -> Array:
    """:func:`lld_jax.margin` of every example of ``x`` ``(B, *input_shape)``; returns ``(B,)``."""
    return margin_call(apply_fn, params, x, p=p, method=method, chunk_size=chunk_size, check=check, batched=True).radius


def margin_with_neuron(
    apply_fn: ApplyFn | Network,
    params: PyTree,
    x: Array,
    *,
    p: float | str = 2,
    method: str = "auto",
    chunk_size: int | None = None,
    check: bool = True,
) -> Margin:
    """:func:`lld_jax.margin_with_neuron` of every example; a :class:`~lld_jax.Margin` of ``(B,)`` arrays."""
    return margin_call(apply_fn, params, x, p=p, method=method, chunk_size=chunk_size, check=check, batched=True)


def neuron_gradients(
    apply_fn: ApplyFn | Network, params: PyTree, x: Array, *, method: str = "auto", chunk_size: int | None = None, check: bool = True
) -> tuple[Array, Array]:
    """:func:`lld_jax.neuron_gradients` of every example; returns ``z (B, N)`` and ``grads (B, N, D)``."""
    return gradients_call(apply_fn, params, x, ord=None, method=method, chunk_size=chunk_size, squared=False, check=check, batched=True)


def neuron_gradient_norms(
    apply_fn: ApplyFn | Network,
    params: PyTree,
    x: Array,
    *,
    ord: float | str = 2,
    method: str = "auto",
    chunk_size: int | None = None,
    squared: bool = False,
    check: bool = True,
) -> tuple[Array, Array]:
    """:func:`lld_jax.neuron_gradient_norms` of every example; returns ``z`` and ``norms``, both ``(B, N)``."""
    return gradients_call(apply_fn, params, x, ord=ord, method=method, chunk_size=chunk_size, squared=squared, check=check, batched=True)


def directional_margin(apply_fn: ApplyFn | Network, params: PyTree, x: Array, direction: Array, *, check: bool = True) -> Array:
    """:func:`lld_jax.directional_margin` of every example; ``direction`` is one shared direction
    ``input_shape`` or one per example ``(B, *input_shape)``. Returns ``(B,)``."""
    return directional_call(apply_fn, params, x, direction, kind="exact", t_max=1.0, steps=1, check=check, batched=True)


def directional_margin_bisect(
    apply_fn: ApplyFn | Network, params: PyTree, x: Array, direction: Array, *, t_max: float = 1e3, steps: int = 80, check: bool = True
) -> Array:
    """:func:`lld_jax.directional_margin_bisect` of every example; returns ``(B,)``."""
    return directional_call(apply_fn, params, x, direction, kind="bisect", t_max=t_max, steps=steps, check=check, batched=True)


def activation_pattern(apply_fn: ApplyFn | Network, params: PyTree, x: Array, *, check: bool = True) -> Array:
    """:func:`lld_jax.activation_pattern` of every example; returns ``(B, N)`` bool."""
    return membership_call(apply_fn, params, x, None, kind="pattern", chunk_size=1, check=check, batched=True)


def same_region(apply_fn: ApplyFn | Network, params: PyTree, x: Array, y: Array, *, check: bool = True) -> Array:
    """``(B,)`` bool: does ``y[i]`` lie in the region of ``x[i]``?"""
    return membership_call(apply_fn, params, x, y, kind="same", chunk_size=1, check=check, batched=True)


def hull_in_region(apply_fn: ApplyFn | Network, params: PyTree, x: Array, vertices: Array, *, chunk_size: int = 64, check: bool = True) -> Array:
    """``(B,)`` bool: is the hull of ``vertices[i]`` ``(B, K, *input_shape)`` inside the region of ``x[i]``?"""
    return membership_call(apply_fn, params, x, vertices, kind="hull", chunk_size=chunk_size, check=check, batched=True)


def l1_ball_in_region(
    apply_fn: ApplyFn | Network, params: PyTree, x: Array, eps: Array | float, *, chunk_size: int = 64, check: bool = True
) -> Array:
    """``(B,)`` bool: is the l1 ball of radius ``eps`` (scalar or ``(B,)``) around ``x[i]`` inside its region?"""
    x = jnp.asarray(x)
    eps = jnp.broadcast_to(jnp.asarray(eps, x.dtype), x.shape[:1])
    verts = jax.vmap(_l1_vertices)(x, eps)
    return hull_in_region(apply_fn, params, x, verts, chunk_size=chunk_size, check=check)

"""Batched forms of the per-example geometry functions of :mod:`lld_jax`.

Each takes ``x`` with a leading batch axis, ``(B, *input_shape)``, and
returns the per-example results stacked along it. They are thin wrappers over
the per-example functions: one ``jax.jit`` per configuration, the batch
evaluated in cache-sized blocks on CPU and whole on accelerators, value checks
on every example (``check=True``) raised as ``ValueError`` (as a
``jax.errors.JaxRuntimeError`` holding the same message when called inside a
user's ``jax.jit``).

Example:
  >>> import jax, jax.numpy as jnp, lld_jax
  >>> f = lambda w, x: (jnp.sum(w @ x), (w @ x,))
  >>> xs = jnp.array([[1.0, 2.0], [-3.0, 0.5]])
  >>> lld_jax.batched.margin(f, jnp.eye(2), xs, p=2).tolist()
  [1.0, 0.5]
"""

from __future__ import annotations

import jax as _jax
import jax.numpy as _jnp

from lld_jax._src.checks import working_dtype as _working_dtype
from lld_jax._src.gradients import gradients_call as _gradients_call
from lld_jax._src.margins import Margin as _Margin
from lld_jax._src.margins import directional_call as _directional_call
from lld_jax._src.margins import margin_call as _margin_call
from lld_jax._src.network import ApplyFn as _ApplyFn
from lld_jax._src.network import Network as _Network
from lld_jax._src.network import PyTree as _PyTree
from lld_jax._src.regions import check_radius as _check_radius
from lld_jax._src.regions import l1_ball_vertices as _l1_vertices
from lld_jax._src.regions import membership_call as _membership_call
from lld_jax._src.selfcheck import CertificateCheck as _CertificateCheck
from lld_jax._src.selfcheck import certificate_call as _certificate_call
from lld_jax._src.stability import stability_call as _stability_call

__all__ = [
    "activation_pattern",
    "check_certificate",
    "directional_margin",
    "directional_margin_bisect",
    "hull_in_region",
    "l1_ball_in_region",
    "margin",
    "margin_with_neuron",
    "neuron_gradient_norms",
    "neuron_gradients",
    "same_region",
    "stability_bounds",
]


def margin(
    apply_fn: _ApplyFn | _Network,
    params: _PyTree,
    x: _jax.Array,
    *,
    p: float | str = 2,
    method: str = "auto",
    chunk_size: int | None = None,
    check: bool = True,
) -> _jax.Array:
    """:func:`lld_jax.margin` of every example of ``x`` ``(B, *input_shape)``; returns ``(B,)``."""
    return _margin_call(apply_fn, params, x, p=p, method=method, chunk_size=chunk_size, check=check, batched=True).radius


def margin_with_neuron(
    apply_fn: _ApplyFn | _Network,
    params: _PyTree,
    x: _jax.Array,
    *,
    p: float | str = 2,
    method: str = "auto",
    chunk_size: int | None = None,
    check: bool = True,
) -> _Margin:
    """:func:`lld_jax.margin_with_neuron` of every example; a :class:`~lld_jax.Margin` of ``(B,)`` arrays."""
    return _margin_call(apply_fn, params, x, p=p, method=method, chunk_size=chunk_size, check=check, batched=True)


def neuron_gradients(
    apply_fn: _ApplyFn | _Network, params: _PyTree, x: _jax.Array, *, method: str = "auto", chunk_size: int | None = None, check: bool = True
) -> tuple[_jax.Array, _jax.Array]:
    """:func:`lld_jax.neuron_gradients` of every example; returns ``z (B, N)`` and ``grads (B, N, D)``."""
    return _gradients_call(apply_fn, params, x, ord=None, method=method, chunk_size=chunk_size, squared=False, check=check, batched=True)


def neuron_gradient_norms(
    apply_fn: _ApplyFn | _Network,
    params: _PyTree,
    x: _jax.Array,
    *,
    ord: float | str = 2,
    method: str = "auto",
    chunk_size: int | None = None,
    squared: bool = False,
    check: bool = True,
) -> tuple[_jax.Array, _jax.Array]:
    """:func:`lld_jax.neuron_gradient_norms` of every example; returns ``z`` and ``norms``, both ``(B, N)``."""
    return _gradients_call(apply_fn, params, x, ord=ord, method=method, chunk_size=chunk_size, squared=squared, check=check, batched=True)


def directional_margin(apply_fn: _ApplyFn | _Network, params: _PyTree, x: _jax.Array, direction: _jax.Array, *, check: bool = True) -> _jax.Array:
    """:func:`lld_jax.directional_margin` of every example; ``direction`` is one shared direction
    ``input_shape`` or one per example ``(B, *input_shape)``. Returns ``(B,)``."""
    return _directional_call(apply_fn, params, x, direction, kind="exact", t_max=1.0, steps=1, check=check, batched=True)


def directional_margin_bisect(
    apply_fn: _ApplyFn | _Network, params: _PyTree, x: _jax.Array, direction: _jax.Array, *, t_max: float = 1e3, steps: int = 80, check: bool = True
) -> _jax.Array:
    """:func:`lld_jax.directional_margin_bisect` of every example; returns ``(B,)``."""
    return _directional_call(apply_fn, params, x, direction, kind="bisect", t_max=t_max, steps=steps, check=check, batched=True)


def activation_pattern(apply_fn: _ApplyFn | _Network, params: _PyTree, x: _jax.Array, *, check: bool = True) -> _jax.Array:
    """:func:`lld_jax.activation_pattern` of every example; returns ``(B, N)`` bool."""
    return _membership_call(apply_fn, params, x, None, kind="pattern", chunk_size=1, check=check, batched=True)


def same_region(apply_fn: _ApplyFn | _Network, params: _PyTree, x: _jax.Array, y: _jax.Array, *, check: bool = True) -> _jax.Array:
    """``(B,)`` bool: does ``y[i]`` lie in the region of ``x[i]``?"""
    return _membership_call(apply_fn, params, x, y, kind="same", chunk_size=1, check=check, batched=True)


def hull_in_region(
    apply_fn: _ApplyFn | _Network, params: _PyTree, x: _jax.Array, vertices: _jax.Array, *, chunk_size: int = 64, check: bool = True
) -> _jax.Array:
    """``(B,)`` bool: is the hull of ``vertices[i]`` ``(B, K, *input_shape)`` inside the region of ``x[i]``?"""
    return _membership_call(apply_fn, params, x, vertices, kind="hull", chunk_size=chunk_size, check=check, batched=True)


def l1_ball_in_region(
    apply_fn: _ApplyFn | _Network, params: _PyTree, x: _jax.Array, eps: _jax.Array | float, *, chunk_size: int = 64, check: bool = True
) -> _jax.Array:
    """``(B,)`` bool: is the l1 ball of radius ``eps`` (scalar or ``(B,)``) around ``x[i]`` inside its region?

    Raises:
      ValueError: a concrete ``eps`` that is negative, NaN or infinite.
    """
    _check_radius(eps)
    x = _jnp.asarray(x)
    x = x.astype(_working_dtype(params, x))  # the ball in the precision of the margins
    eps = _jnp.broadcast_to(_jnp.asarray(eps, x.dtype), x.shape[:1])
    verts = _jax.vmap(_l1_vertices)(x, eps)
    return hull_in_region(apply_fn, params, x, verts, chunk_size=chunk_size, check=check)


def stability_bounds(
    apply_fn: _ApplyFn | _Network, params: _PyTree, x: _jax.Array, *, chunk_size: int | None = None, check: bool = True
) -> tuple[_jax.Array, _jax.Array]:
    """:func:`lld_jax.stability_bounds` of every example of ``x`` ``(B, *input_shape)``; returns ``(lower, upper)``, each shaped like ``x``."""
    return _stability_call(apply_fn, params, x, chunk_size=chunk_size, check=check, batched=True)


def check_certificate(
    apply_fn: _ApplyFn | _Network,
    params: _PyTree,
    x: _jax.Array,
    *,
    p: float | str = 2,
    num_samples: int = 64,
    key: _jax.Array | None = None,
    rtol: float | None = None,
    method: str = "auto",
    chunk_size: int | None = None,
    check: bool = True,
) -> _CertificateCheck:
    """:func:`lld_jax.check_certificate` of every example of ``x`` ``(B, *input_shape)``; a :class:`~lld_jax.CertificateCheck` of ``(B,)`` arrays.

    Each example gets its own key (``jax.random.split(key, B)``); a failure
    raises :class:`~lld_jax.CheckError` naming the failed examples.
    """
    return _certificate_call(
        apply_fn, params, x, p=p, num_samples=num_samples, key=key, rtol=rtol, method=method, chunk_size=chunk_size, check=check, batched=True
    )

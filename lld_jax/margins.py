"""Margins: the largest l_p ball, or segment along a direction, inside x's region.

For the polytope S(x) of x's activation pattern (paper Lemma 2), the l_p margin
is (Prop. 6 and its dual-norm generalisation, paper Sec. 1.6)

    eps_hat(x, p) = min_j |z_j| / ||grad_x z_j||_q,   1/p + 1/q = 1,

and along a direction d (closed form of Sec. 3.2.1)

    eps_hat(x, d) = min over j with o_j (grad z_j . d) < 0 of |z_j| / |grad z_j . d|.

Conventions: a neuron with an exactly zero gradient never bounds the region
(its term is +inf) unless z_j = 0; any z_j = 0 gives margin 0 (x sits on a
boundary). Distances are in the units of ``x``.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lld_jax.gradients import _resolve, canonical_ord, map_examples, per_example_norms
from lld_jax.network import (
    ApplyFn,
    Network,
    PyTree,
    as_network,
    check_finite,
    flat_preacts,
    neuron_location,
    validate,
)

Array = jax.Array


class Margin(NamedTuple):
    """A margin with the neuron that bounds it.

    Attributes:
      radius: (B,) the margin.
      layer: (B,) index of the bounding neuron's layer in ``preacts``.
      neuron: (B,) its index within that layer's flattened pre-activation.
    """

    radius: Array
    layer: Array
    neuron: Array


def dual_exponent(p: float) -> float:
    """q with 1/p + 1/q = 1 for p in {1, 2, inf}."""
    p = canonical_ord(p)
    if p == 1:
        return np.inf
    return 2 if p == 2 else 1


def margin_terms(z: Array, norms: Array) -> Array:
    """Per-neuron distances |z_j| / ||grad z_j|| with the zero conventions above."""
    safe = jnp.where(norms > 0, norms, 1)
    return jnp.where(norms > 0, jnp.abs(z) / safe, jnp.where(z == 0, 0.0, jnp.inf).astype(z.dtype))


@functools.lru_cache(maxsize=256)
def _compiled_margin(net: Network, q: float, method: str, chunk: int, hidden: tuple):
    def one(params, x):
        z, n = per_example_norms(net, params, x, ord=q, method=method, chunk=chunk)
        if q == 2:
            n = jnp.sqrt(n)
        terms = margin_terms(z, n)
        j = jnp.argmin(terms)
        return terms[j], j

    def batch(params, x):
        r, j = map_examples(lambda xi: one(params, xi), x)
        layer, idx = neuron_location(hidden, j)
        return Margin(r, layer, idx)

    return jax.jit(batch)


def margin(
    apply_fn: ApplyFn | Network,
    params: PyTree,
    x: Array,
    *,
    p: float = 2,
    method: str = "auto",
    chunk_size: int | None = None,
    return_neuron: bool = False,
) -> Array | Margin:
    """The exact l_p margin of each example: the largest ball inside its region.

    Args:
      apply_fn: the network, ``(params, x) -> (out, preacts)`` for one example,
        or an :class:`~lld_jax.Network`.
      params: its parameters.
      x: batch of inputs, shape ``(B, *input_shape)``.
      p: 1, 2 or ``inf`` (``"inf"`` and ``np.inf`` both work).
      method: gradient method (see :mod:`lld_jax.gradients`); ``"gram"`` only
        for ``p=2`` on MLPs.
      chunk_size: memory bound, see :func:`~lld_jax.neuron_gradients`.
      return_neuron: also return the bounding neuron.

    Returns:
      ``(B,)`` margins in input units, or a :class:`Margin` if
      ``return_neuron``.
    """
    net = as_network(apply_fn)
    q = dual_exponent(p)
    x = jnp.asarray(x)
    method, chunk, hidden = _resolve(net, params, x, method, chunk_size, q)
    res = _compiled_margin(net, q, method, chunk, hidden)(params, x)
    return res if return_neuron else res.radius


def margin_fn(
    apply_fn: ApplyFn | Network,
    *,
    p: float = 2,
    method: str = "auto",
    chunk_size: int | None = None,
    input_shape: Sequence[int] | None = None,
    return_neuron: bool = False,
) -> Callable[[PyTree, Array], Array | Margin]:
    """``margin`` as a function of ``(params, x)``, e.g. ``margin_l2 = margin_fn(net, p=2)``.

    The returned function takes a batch or, when the example shape is known
    (built-in models, or ``input_shape`` given), a single example, for which it
    returns a scalar. It can be called inside ``jax.jit``; value checks (NaN,
    piecewise linearity) then cannot run and are skipped.
    """
    net = as_network(apply_fn, input_shape=input_shape)
    dual_exponent(p)  # fail fast on a bad p

    def fn(params: PyTree, x: Array):
        x = jnp.asarray(x)
        single = net.input_shape is not None and x.ndim == len(net.input_shape)
        res = margin(net, params, x[None] if single else x, p=p, method=method, chunk_size=chunk_size, return_neuron=return_neuron)
        return jax.tree.map(lambda a: a[0], res) if single else res

    return fn


@functools.lru_cache(maxsize=256)
def _compiled_directional(net: Network):
    def one(params, x, d):
        f = lambda u: flat_preacts(net, params, u)[1]
        z, dz = jax.jvp(f, (x,), (d,))
        active = z > 0
        leaving = jnp.where(active, dz < 0, dz > 0)
        t = jnp.where(leaving, jnp.abs(z) / jnp.where(dz != 0, jnp.abs(dz), 1), jnp.inf)
        return jnp.min(t)

    return jax.jit(jax.vmap(one, in_axes=(None, 0, 0)))


def _batched_direction(x: Array, direction: Array) -> Array:
    direction = jnp.asarray(direction, x.dtype)
    if direction.shape == x.shape[1:]:
        direction = jnp.broadcast_to(direction, x.shape)
    if direction.shape != x.shape:
        raise ValueError(
            f"direction must have the shape of one example {x.shape[1:]} or of the batch {x.shape}; got {direction.shape}."
        )
    return direction


def directional_margin(apply_fn: ApplyFn | Network, params: PyTree, x: Array, direction: Array) -> Array:
    """Largest t >= 0 with x + s*direction in x's region for all s in [0, t] (exact).

    Closed form over all neurons with one JVP: t = min over neurons that the
    move drives towards their boundary of |z_j| / |grad z_j . direction|; +inf
    if none (Prop. 4: the whole ray is linear). ``t`` is in units of
    ``direction`` (the distance is t * ||direction||).

    Args:
      x: ``(B, *input_shape)``.
      direction: one direction for all examples ``input_shape`` or one per
        example ``(B, *input_shape)``; need not be normalised.

    Returns:
      ``(B,)`` array of t.
    """
    net = as_network(apply_fn)
    x = jnp.asarray(x)
    validate(net, params, x)
    d = _batched_direction(x, direction)
    check_finite(d, "direction")
    return _compiled_directional(net)(params, x, d)


@functools.lru_cache(maxsize=256)
def _compiled_bisect(net: Network, steps: int):
    def pattern(params, u):
        return flat_preacts(net, params, u)[1] > 0

    def one(params, x, d, t_max):
        p0 = pattern(params, x)
        inside = lambda t: jnp.all(pattern(params, x + t * d) == p0)

        def body(_, lohi):
            lo, hi = lohi
            mid = 0.5 * (lo + hi)
            ok = inside(mid)
            return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

        lo, hi = jax.lax.fori_loop(0, steps, body, (jnp.zeros((), x.dtype), t_max))
        return jnp.where(inside(t_max), jnp.inf, lo)

    return jax.jit(jax.vmap(one, in_axes=(None, 0, 0, None)))


def directional_margin_bisect(
    apply_fn: ApplyFn | Network,
    params: PyTree,
    x: Array,
    direction: Array,
    *,
    t_max: float = 1e3,
    steps: int = 80,
) -> Array:
    """The directional margin by bisection on forward-pass pattern checks (paper App. B).

    Sound by convexity (Prop. 4). Returns +inf when ``x + t_max * direction``
    is still in the region, and otherwise a lower bound within
    ``t_max / 2**steps`` of :func:`directional_margin`.
    """
    net = as_network(apply_fn)
    x = jnp.asarray(x)
    validate(net, params, x)
    d = _batched_direction(x, direction)
    if not t_max > 0:
        raise ValueError(f"t_max must be positive, got {t_max}.")
    return _compiled_bisect(net, int(steps))(params, x, d, jnp.asarray(t_max, x.dtype))

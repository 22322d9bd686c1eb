"""Margins: the largest l_p ball, or segment along a direction, inside x's region.

For the polytope S(x) of x's activation pattern (paper Lemma 2), the l_p margin
is (paper Prop. 6 and its dual-norm generalisation)

    eps_hat(x, p) = min_j |z_j| / ||grad_x z_j||_q,   1/p + 1/q = 1,

and along a direction d (closed form of Sec. 3.2.1)

    eps_hat(x, d) = min over j with o_j (grad z_j . d) < 0 of |z_j| / |grad z_j . d|.

Conventions: a neuron with an exactly zero gradient never bounds the region
(its term is +inf) unless z_j = 0; any z_j = 0 gives margin 0 (x sits on a
boundary); a NaN anywhere gives a NaN margin. Distances are in the units of ``x``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lld_jax._src.arguments import positive_int
from lld_jax._src.gradients import canonical_ord, norms_kernel, resolve_method
from lld_jax._src.kernel import Kernel, Plan
from lld_jax._src.network import ApplyFn, Network, PyTree, bounding_neuron, flat_preacts
from lld_jax._src.poison import poison, poison_where

Array = jax.Array


class Margin(NamedTuple):
    """A margin with the neuron that bounds it (scalars for one example, ``(B,)`` for a batch).

    Attributes:
      radius: the margin.
      layer: index of the bounding neuron's layer in ``preacts`` (int32; -1
        when the margin is infinite: no neuron bounds it).
      neuron: its index within that layer's flattened pre-activation (int32; -1
        for an infinite margin).
    """

    radius: Array
    layer: Array
    neuron: Array


def dual_exponent(p: float | str) -> float:
    """q with 1/p + 1/q = 1 for p in {1, 2, inf}: 1 -> inf, 2 -> 2, inf -> 1."""
    p = canonical_ord(p)
    if p == 1:
        return np.inf
    return 2 if p == 2 else 1


def margin_terms(z: Array, norms: Array) -> Array:
    """Per-neuron distances |z_j| / ||grad z_j|| with the conventions above (NaN-propagating)."""
    safe = jnp.where(norms > 0, norms, 1)
    terms = jnp.where(norms > 0, jnp.abs(z) / safe, jnp.where(z == 0, 0.0, jnp.inf).astype(z.dtype))
    return poison_where(terms, ~jnp.isfinite(z) | jnp.isnan(norms))


def _margin_body(net, params, x, *, q, method, chunk, hidden):
    z, n = norms_kernel(net, params, x, ord=q, method=method, chunk=chunk)
    terms = margin_terms(z, n)
    j = jnp.argmin(terms)
    return poison(terms[j], x, params), j


def _margin_plan(net, params, x, hidden, *, p, method, chunk_size, batched):
    q = dual_exponent(p)
    method, chunk = resolve_method(net, method, q, x, hidden, chunk_size, batched=batched)
    return Plan(static=(("q", q), ("method", method), ("chunk", chunk), ("hidden", hidden)))


def _margin_finish(out, *, check, hidden, **_):
    r, j = out
    return Margin(r, *bounding_neuron(hidden, j, r))


MARGIN = Kernel(_margin_body, _margin_plan, _margin_finish)


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
    """The exact l_p margin of ONE example: the radius of the largest ball inside its region.

    Composes with ``jax.vmap``, ``jax.jit`` and ``jax.grad``; for batches with
    fast CPU blocking use :func:`lld_jax.batched.margin`.

    Args:
      apply_fn: the network, ``(params, x) -> (out, preacts)`` for one example,
        or an :class:`~lld_jax.Network`.
      params: its parameters.
      x: one input, shape ``input_shape``.
      p: 1, 2 or ``inf`` (``"inf"`` and ``np.inf`` both work).
      method: gradient method (see :func:`~lld_jax.neuron_gradients`);
        ``"gram"`` only for ``p=2`` on MLPs.
      chunk_size: memory bound, see :func:`~lld_jax.neuron_gradients`.
      check: run the value checks (finite input and parameters, piecewise
        linear); they work eagerly and under ``jit``.

    Returns:
      The margin, a scalar in input units (NaN if ``x`` or ``params`` is not finite).

    Example:
      >>> import jax.numpy as jnp, lld_jax
      >>> f = lambda w, x: (jnp.sum(w @ x), (w @ x,))   # one hidden layer, z = W x
      >>> round(float(lld_jax.margin(f, jnp.array([[3.0, 4.0]]), jnp.array([1.0, 1.0]), p=2)), 6)
      1.4
    """
    return MARGIN(apply_fn, params, x, p=p, method=method, chunk_size=chunk_size, check=check).radius


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
    """:func:`margin` of ONE example and the neuron that bounds it, as a :class:`Margin`.

    Arguments as in :func:`margin`.
    """
    return MARGIN(apply_fn, params, x, p=p, method=method, chunk_size=chunk_size, check=check)


def direction_like(x: Array, direction: Array, *, batched: bool) -> Array:
    """``direction`` in ``x``'s dtype and shape (a batched call also takes one shared direction)."""
    direction = jnp.asarray(direction, x.dtype)
    if batched and direction.shape == x.shape[1:]:
        direction = jnp.broadcast_to(direction, x.shape)
    if direction.shape != x.shape:
        want = f"one example {x.shape[1:]} or of the batch {x.shape}" if batched else f"x {x.shape}"
        raise ValueError(f"direction must have the shape of {want}; got {direction.shape}.")
    return direction


def _directional_one(net, params, x, d):
    f = lambda u: flat_preacts(net, params, u)[1]
    z, dz = jax.jvp(f, (x,), (d,))
    active = z > 0
    leaving = jnp.where(active, dz < 0, dz > 0)
    t = jnp.where(leaving, jnp.abs(z) / jnp.where(dz != 0, jnp.abs(dz), 1), jnp.inf)
    return poison_where(jnp.min(t), jnp.any(jnp.isnan(dz) | jnp.isnan(z)))


def _bisect_one(net, params, x, d, t_max, steps):
    pattern = lambda u: flat_preacts(net, params, u)[1] > 0
    z0 = flat_preacts(net, params, x)[1]
    p0 = z0 > 0
    poisoned = jnp.any(jnp.isnan(z0)) | jnp.any(~jnp.isfinite(d))
    inside = lambda t: jnp.all(pattern(x + t * d) == p0)

    def body(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        ok = inside(mid)
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, steps, body, (jnp.zeros((), x.dtype), t_max))
    return poison_where(jnp.where(inside(t_max), jnp.inf, lo), poisoned)


def _directional_body(net, params, x, d, t_max, *, kind, steps):
    t = _directional_one(net, params, x, d) if kind == "exact" else _bisect_one(net, params, x, d, t_max, steps)
    return poison(t, x, d, params)


def _directional_plan(net, params, x, hidden, direction, *, kind, t_max, steps, batched):
    d = direction_like(x, direction, batched=batched)
    if not (0 < t_max < float("inf")):
        raise ValueError(f"t_max must be positive and finite, got {t_max}.")
    steps = positive_int(steps, "steps")
    return Plan(mapped=(d,), shared=(jnp.asarray(t_max, x.dtype),), static=(("kind", kind), ("steps", steps)), names=("direction",))


DIRECTIONAL = Kernel(_directional_body, _directional_plan, block=False)


def directional_margin(apply_fn: ApplyFn | Network, params: PyTree, x: Array, direction: Array, *, check: bool = True) -> Array:
    """Largest t >= 0 with x + s*direction in x's region for all s in [0, t], for ONE example (exact).

    Closed form over all neurons with one JVP: t = min over neurons that the
    move drives towards their boundary of ``|z_j| / |grad z_j . direction|``; +inf
    if none (Prop. 4: the whole ray is linear). ``t`` is in units of
    ``direction`` (the distance is t * ||direction||).

    Args:
      x: one input, shape ``input_shape``.
      direction: same shape; need not be normalised.
      check: value checks on ``x``, ``direction`` and the parameters.

    Returns:
      The scalar t (NaN for a non-finite input, direction or parameter).

    Example:
      >>> import jax.numpy as jnp, lld_jax
      >>> f = lambda w, x: (x.sum(), (x,))       # boundaries at x_k = 0
      >>> float(lld_jax.directional_margin(f, None, jnp.array([1.0, 2.0]), jnp.array([-1.0, 0.0])))
      1.0
    """
    return DIRECTIONAL(apply_fn, params, x, direction, kind="exact", t_max=1.0, steps=1, check=check)


def directional_margin_bisect(
    apply_fn: ApplyFn | Network,
    params: PyTree,
    x: Array,
    direction: Array,
    *,
    t_max: float = 1e3,
    steps: int = 80,
    check: bool = True,
) -> Array:
    """The directional margin of ONE example by bisection on forward-pass pattern checks (paper App. B).

    Sound by convexity (Prop. 4). Returns +inf when ``x + t_max * direction``
    is still in the region, and otherwise a lower bound within
    ``t_max / 2**steps`` of :func:`directional_margin`.
    """
    return DIRECTIONAL(apply_fn, params, x, direction, kind="bisect", t_max=t_max, steps=steps, check=check)

"""Robustness radius from the linear regions: a sound lower bound and an attack's upper bound.

For ONE example x with label y, let S(x) be its region (paper Lemma 2) and
f(u) = f(x) + J (u - x) the network's affine map on it (the logits). With q
the dual exponent of p:

* d_B, the region margin (:func:`lld_jax.margin`): the l_p ball of radius
  d_B around x lies in S(x), where f is affine.
* d_D, the distance to the affine piece's decision boundary:
  ``min over k != y of (f_y - f_k)(x) / ||J_y - J_k||_q`` (0 when x is
  already misclassified or tied).
* ``lower = min(d_B, d_D)``: no point of the open l_p ball of that radius
  changes the prediction. When ``d_D <= d_B`` the boundary point lies inside
  S(x): it is an adversarial example at distance d_D, so the radius is exact.
* Otherwise a linear-region attack gives ``upper``: from the current point,
  aim at the nearest point (to x) where the current affine piece changes the
  prediction; if the segment leaves the current region, step just past its
  exit (:func:`lld_jax.directional_margin`) into the next region and repeat.
  After ``max_steps // 2`` regions without success the aim switches to the
  point nearest to the current one (DeepFool's step, on exact pieces), which
  cycles less; at most ``max_steps`` steps in all. The attack can stall on a
  facet between two regions whose pieces point across each other: then
  ``upper`` is +inf. Every candidate is confirmed by a forward
  pass, then moved towards x by bisection on the prediction along the
  segment from x (``upper`` only decreases).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lld_jax._src.arguments import positive_int
from lld_jax._src.gradients import canonical_ord, norms_kernel, resolve_method
from lld_jax._src.kernel import Kernel, Plan
from lld_jax._src.margins import _directional_one, dual_exponent, margin_terms
from lld_jax._src.network import ApplyFn, Network, PyTree, flat_preacts
from lld_jax._src.poison import poison, poison_where

Array = jax.Array
# Overshoots tried past a boundary point, relative to its distance, in units of the dtype's
# epsilon: the smallest one a forward pass confirms is kept (rounding of the logits decides).
_OVERSHOOT = 4.0 ** np.arange(14)
# A point counts as adversarial only if another logit beats the label's by this many epsilons of
# the logits' scale: more than the rounding of any implementation of the same forward pass.
_CONFIRM = 64
# Relative slack, in epsilons, taken off the certified radius for the rounding of its computation.
_SLACK = 64
# Bisection steps that move a confirmed adversarial point towards x.
_BISECT = 40


class CertifiedRadius(NamedTuple):
    """Bounds on the l_p robustness radius of ONE example (a leading ``B`` axis when batched).

    Attributes:
      lower: a certified radius: no point at l_p distance < ``lower`` from x
        changes the prediction (``min(region_margin, boundary_distance)``,
        less 64 epsilons of the dtype, relative, for rounding).
      upper: the l_p distance of ``adversarial`` (+inf when the attack found none).
      exact: ``lower`` is the radius: the boundary point lies inside x's region
        and was confirmed, and ``upper`` equals ``lower`` up to rounding
        (relative ``min(sqrt(eps), 4**10 eps)`` of the dtype: 2.3e-10 in
        float64, 3.5e-4 in float32).
      adversarial: a point whose prediction differs from the label, shaped
        like x; NaN when none was found. Confirmed by a forward pass with
        room for rounding: another logit exceeds the label's by 64 epsilons
        of the logits' scale.
      region_margin: d_B, the l_p margin of x's region.
      boundary_distance: d_D, the distance to the decision boundary of x's affine piece.
      steps: attack steps taken (each a region or a move within one; 0 when
        the boundary point of x's own piece was confirmed).
    """

    lower: Array
    upper: Array
    exact: Array
    adversarial: Array
    region_margin: Array
    boundary_distance: Array
    steps: Array


def _logits(net, params, u):
    return jnp.ravel(flat_preacts(net, params, u)[0])


def _dual_direction(g: Array, p: float) -> Array:
    """The unit-l_p direction u minimising g . u (= -||g||_q), flat."""
    if p == 2:
        n = jnp.linalg.norm(g)
        return -g / jnp.where(n > 0, n, 1)
    if p == np.inf:
        return -jnp.sign(g)
    i = jnp.argmax(jnp.abs(g))
    return -jnp.sign(g[i]) * jax.nn.one_hot(i, g.size, dtype=g.dtype)


def _target(net, params, x, xc, y, p, q):
    """Nearest point to x (l_p) where the affine piece of xc ranks another class above y: (distance, unit direction)."""
    f, vjp = jax.vjp(lambda u: _logits(net, params, u), xc)
    k_all = f.shape[0]
    jac = jax.vmap(lambda e: vjp(e)[0].reshape(-1))(jnp.eye(k_all, dtype=x.dtype))  # (K, D)
    g = jac[y][None] - jac  # grad of f_y - f_k
    m = f[y] - f - g @ (xc - x).reshape(-1)  # margin of f_y - f_k, affine piece of xc, evaluated at x
    norms = jnp.linalg.norm(g, ord=q, axis=1) if q != 2 else jnp.linalg.norm(g, axis=1)
    dist = jnp.where(norms > 0, jnp.maximum(m, 0) / jnp.where(norms > 0, norms, 1), jnp.where(m > 0, jnp.inf, 0.0))
    dist = jnp.where(jnp.arange(k_all) == y, jnp.inf, dist)
    k = jnp.argmin(dist)
    return dist[k], _dual_direction(g[k], p).reshape(x.shape)


def _wrong(net, params, u, y):
    """Is u misclassified beyond rounding: another logit above the label's by _CONFIRM epsilons of their scale?"""
    f = _logits(net, params, u)
    other = jnp.max(jnp.where(jnp.arange(f.shape[0]) == y, -jnp.inf, f))
    return other - f[y] > _CONFIRM * jnp.finfo(f.dtype).eps * jnp.max(jnp.abs(f))


def _confirm(net, params, x, direction, t, y):
    """Smallest overshoot of ``x + t * direction`` that a forward pass confirms as misclassified: (distance or inf, point)."""
    eps = jnp.finfo(x.dtype).eps
    # Relative to the distance, and at least to the input's scale: a point already on the boundary moves off it.
    ts = t + eps * jnp.asarray(_OVERSHOOT, x.dtype) * jnp.maximum(t, jnp.maximum(1.0, jnp.max(jnp.abs(x))))
    wrong = jax.vmap(lambda s: _wrong(net, params, x + s * direction, y))(ts)
    i = jnp.argmax(wrong)
    return jnp.where(wrong[i], ts[i], jnp.inf), x + ts[i] * direction


def _norm(v: Array, p: float) -> Array:
    v = v.reshape(-1)
    return jnp.linalg.norm(v, ord=p) if p != 2 else jnp.linalg.norm(v)


def _bisect(net, params, x, adv, y):
    """Moves a confirmed adversarial point towards x along the segment, keeping it adversarial."""
    wrong = lambda s: _wrong(net, params, x + s * (adv - x), y)

    def body(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        w = wrong(mid)
        return jnp.where(w, lo, mid), jnp.where(w, mid, hi)

    _, hi = jax.lax.fori_loop(0, _BISECT, body, (jnp.zeros((), x.dtype), jnp.ones((), x.dtype)))
    return x + hi * (adv - x)


def _certify_body(net, params, x, y, *, p, q, method, chunk, max_steps):
    z, norms = norms_kernel(net, params, x, ord=q, method=method, chunk=chunk)
    d_b = jnp.min(margin_terms(z, norms))
    d_d, u0 = _target(net, params, x, x, y, p, q)
    eps = jnp.finfo(x.dtype).eps
    # Room for the rounding of d_B and d_D (relative ~N eps): the certificate errs on the safe side.
    lower = jnp.minimum(d_b, d_d) * (1 - _SLACK * eps)
    f0 = _logits(net, params, x)
    wrong = jnp.argmax(f0) != y
    # Inside the region: the boundary point of the affine piece is adversarial at distance d_D.
    t0, adv0 = _confirm(net, params, x, u0, d_d, y)
    inside = (d_d <= d_b) & jnp.isfinite(t0)

    def attack_step(state):
        xc, _, _, i = state
        # First half of the budget: aim at the point nearest to x (tight, may cycle between regions);
        # second half: at the point nearest to the current one (DeepFool's step on exact pieces: progresses).
        anchor = jnp.where(i < max_steps // 2, x, xc)
        dist, u = _target(net, params, anchor, xc, y, p, q)
        goal = anchor + dist * u
        t, cand = _confirm(net, params, anchor, u, dist, y)
        # Leave xc's region along the segment xc -> goal, just past its exit, unless the goal is inside.
        leave = _directional_one(net, params, xc, goal - xc)
        step = jnp.minimum(1.0, leave * (1 + 1e3 * jnp.finfo(x.dtype).eps) + jnp.finfo(x.dtype).eps)
        nxt = xc + step * (goal - xc)
        found = jnp.isfinite(t)
        return jnp.where(found, xc, nxt), jnp.where(found, t, jnp.inf), jnp.where(found, cand, jnp.nan), i + 1

    def go_on(state):
        xc, t, _, i = state
        return (i < max_steps) & ~jnp.isfinite(t) & jnp.all(jnp.isfinite(xc))

    start = (x, jnp.where(inside, t0, jnp.inf), jnp.where(inside, adv0, jnp.nan), jnp.zeros((), jnp.int32))
    _, t, adv, steps = jax.lax.while_loop(lambda s: ~inside & ~wrong & go_on(s), attack_step, start)
    found = jnp.isfinite(t)
    adv = jnp.where(found, _bisect(net, params, x, jnp.where(found, adv, x), y), adv)
    # Not clamped to lower: a confirmed point closer than the certificate would expose a bug (tested).
    upper = jnp.where(found, _norm(adv - x, p), jnp.inf)
    exact = inside & (jnp.abs(upper - lower) <= min(float(np.sqrt(eps)), float(4**10 * eps)) * lower)
    # Already misclassified: the radius is 0 and x itself is the adversarial point.
    lower, upper, exact = jnp.where(wrong, 0.0, lower), jnp.where(wrong, 0.0, upper), exact | wrong
    adv = jnp.where(wrong, x, adv)
    # A label outside [0, K) (only possible when traced: concrete ones are refused) poisons everything.
    bad_label = (y < 0) | (y >= f0.shape[0])
    bad = lambda a: poison_where(poison(a, x, params), bad_label)
    return CertifiedRadius(
        bad(lower),
        bad(upper),
        exact & jnp.isfinite(bad(lower)),
        poison_where(adv, jnp.isnan(bad(lower))),
        bad(d_b),
        bad(d_d),
        steps,
    )


def _certify_plan(net, params, x, hidden, y, *, p, method, chunk_size, max_steps, batched):
    p = canonical_ord(p)
    q = dual_exponent(p)
    out = jax.eval_shape(lambda u: _logits(net, params, u), jax.ShapeDtypeStruct(x.shape[1:] if batched else x.shape, x.dtype))
    num_classes = out.shape[0]
    if num_classes < 2:
        raise ValueError(f"certified_radius needs a classifier with at least 2 logits; the network's output has {num_classes}.")
    y = np.asarray(y) if not isinstance(y, jax.core.Tracer) else y
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"y must be an integer class label, got dtype {y.dtype}.")
    want = x.shape[:1] if batched else ()
    if y.shape != want:
        raise ValueError(f"y must have shape {want} (one label per example), got {y.shape}.")
    if not isinstance(y, jax.core.Tracer) and (np.any(y < 0) or np.any(y >= num_classes)):
        raise ValueError(f"labels must be in [0, {num_classes}) for a network with {num_classes} logits; got {np.asarray(y).tolist()}.")
    method, chunk = resolve_method(net, method, q, x, hidden, chunk_size, batched=batched)
    static = (("p", p), ("q", q), ("method", method), ("chunk", chunk), ("max_steps", positive_int(max_steps, "max_steps")))
    return Plan(mapped=(jnp.asarray(y, jnp.int32),), static=static, names=("",))


CERTIFY = Kernel(_certify_body, _certify_plan)


def certified_radius(
    apply_fn: ApplyFn | Network,
    params: PyTree,
    x: Array,
    y: Array | int,
    *,
    p: float | str = 2,
    max_steps: int = 100,
    method: str = "auto",
    chunk_size: int | None = None,
    check: bool = True,
) -> CertifiedRadius:
    """Lower and upper bounds on the l_p robustness radius of ONE example from its linear regions.

    ``lower = min(d_B, d_D)`` is sound (no prediction change in the open
    ball); when the affine piece's decision boundary is inside x's region
    the radius is exact and the boundary point is returned. Otherwise a
    linear-region attack over at most ``max_steps`` regions gives an
    adversarial point and ``upper`` (see the module docstring). A network
    whose prediction at x is not ``y`` gets ``lower = upper = 0``.

    Args:
      apply_fn: the network; its output is the logits (any shape, flattened).
      params: its parameters.
      x: one input, shape ``input_shape``.
      y: the label, an integer in ``[0, num_classes)``.
      p: 1, 2 or ``inf``.
      max_steps: regions the attack may visit (each: one Jacobian of the
        logits, one directional margin and a few forward passes).
      method, chunk_size: of the region margin, as in :func:`lld_jax.margin`.
      check: run the value checks.

    Returns:
      :class:`CertifiedRadius`.

    Example:
      >>> import jax.numpy as jnp, lld_jax
      >>> f = lambda w, x: (jnp.stack([x[0], -x[0]]), (x - 10.0,))  # class 0 iff x_0 > 0
      >>> r = lld_jax.certified_radius(f, None, jnp.array([3.0, 20.0]), 0)
      >>> round(float(r.lower), 4), bool(r.exact)  # lower carries 64 epsilons of slack (float32 here)
      (3.0, True)
    """
    return CERTIFY(apply_fn, params, x, y, p=p, method=method, chunk_size=chunk_size, max_steps=max_steps, check=check)

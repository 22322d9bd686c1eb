"""Bound-propagation baselines for certified robustness, written from their papers (benchmark peers, not the library).

PyPI's ``auto-lirpa`` (0.3, the only release there) does not import with
NumPy 2 (``numpy.lib.arraysetops`` is gone), so the peers are written here
from their papers, for dense ReLU / LeakyReLU networks (an MLP's
``dense_layers``) and one example, in JAX:

* **IBP** (Gowal et al. 2018, "On the effectiveness of interval bound
  propagation"): the l_p ball around x is boxed after the first affine layer
  (exact per-neuron ranges of ``W x`` over the ball), then intervals go
  through every layer.
* **CROWN** (Zhang et al. 2018, "Efficient neural network robustness
  certification with general activation functions"): every bound is a
  backward pass of linear relaxations to the input; an unstable neuron
  (l < 0 < u) is bounded above by the chord from (l, act(l)) to (u, act(u))
  and below by the line of slope 1 or the negative slope, whichever is
  closer (the adaptive choice); pre-activation bounds of each layer come
  from CROWN itself, layer by layer. At the input, ``min over ||d||_p <= eps``
  of ``a . (x + d)`` is ``a . x - eps ||a||_q``.

Both return lower bounds on ``f_y - f_k`` for every k over the whole ball: the
example is certified at eps when all are positive.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _dual_norm(a: Array, p: float) -> Array:
    """Row-wise ||a||_q with 1/p + 1/q = 1."""
    if p == 2:
        return jnp.linalg.norm(a, axis=-1)
    if p == np.inf:
        return jnp.sum(jnp.abs(a), axis=-1)
    return jnp.max(jnp.abs(a), axis=-1)


def _spec(num_classes: int, y: Array, dtype) -> Array:
    """``(K, K)`` rows e_y - e_k (the row k = y is zero: it is never a threat)."""
    return jax.nn.one_hot(y, num_classes, dtype=dtype)[None, :] - jnp.eye(num_classes, dtype=dtype)


def ibp_margins(layers: list[tuple[Array, Array]], slope: float, x: Array, y: Array, eps: Array, p: float) -> Array:
    """IBP lower bounds on ``f_y - f_k`` over the l_p ball of radius ``eps`` around ONE flat input ``x``: ``(K,)``."""
    w, b = layers[0]
    mid = w @ x + b
    rad = eps * _dual_norm(w, p)
    lo, hi = mid - rad, mid + rad
    act = lambda z: jnp.where(z > 0, z, slope * z)
    for w, b in layers[1:]:
        lo, hi = act(lo), act(hi)  # monotone activations
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        mid, rad = w @ mid + b, jnp.abs(w) @ rad
        lo, hi = mid - rad, mid + rad
    # f_y - f_k >= lo_y - hi_k (interval arithmetic on the logits)
    out = lo[y] - hi
    return jnp.where(jnp.arange(hi.shape[0]) == y, jnp.inf, out)


def _relax(lo: Array, hi: Array, slope: float) -> tuple[Array, Array, Array]:
    """Linear bounds of act on [lo, hi]: lower slope, upper slope, upper intercept (the lower line passes through 0)."""
    stable_on = lo >= 0
    stable_off = hi <= 0
    width = jnp.where(hi > lo, hi - lo, 1)
    up_slope = (hi - slope * lo) / width
    up_icpt = slope * lo - up_slope * lo
    low_slope = jnp.where(hi > -lo, 1.0, slope)  # adaptive: the closer of the two lines through 0
    lower = jnp.where(stable_on, 1.0, jnp.where(stable_off, slope, low_slope))
    upper = jnp.where(stable_on, 1.0, jnp.where(stable_off, slope, up_slope))
    icpt = jnp.where(stable_on | stable_off, 0.0, up_icpt)
    return lower.astype(lo.dtype), upper.astype(lo.dtype), icpt.astype(lo.dtype)


def _backward(spec: Array, layers: list[tuple[Array, Array]], relax: list[tuple[Array, Array, Array]], x: Array, eps: Array, p: float) -> Array:
    """Lower bound of ``spec @ z_L`` over the ball, z_L the pre-activation after ``layers`` (relaxations of the activations between)."""
    a = spec
    const = jnp.zeros(spec.shape[0], spec.dtype)
    for i in range(len(layers) - 1, -1, -1):
        w, b = layers[i]
        const = const + a @ b
        a = a @ w  # coefficients on the activations of layer i-1 (or on x)
        if i == 0:
            break
        low, up, icpt = relax[i - 1]
        pos, neg = jnp.maximum(a, 0), jnp.minimum(a, 0)
        const = const + neg @ icpt
        a = pos * low + neg * up
    return a @ x + const - eps * _dual_norm(a, p)


def crown_margins(layers: list[tuple[Array, Array]], slope: float, x: Array, y: Array, eps: Array, p: float) -> Array:
    """CROWN lower bounds on ``f_y - f_k`` over the l_p ball of radius ``eps`` around ONE flat input ``x``: ``(K,)``."""
    relax = []
    for i in range(1, len(layers)):
        n = layers[i - 1][0].shape[0]
        eye = jnp.eye(n, dtype=x.dtype)
        lo = _backward(eye, layers[:i], relax, x, eps, p)
        hi = -_backward(-eye, layers[:i], relax, x, eps, p)
        relax.append(_relax(lo, hi, slope))
    k = layers[-1][0].shape[0]
    out = _backward(_spec(k, y, x.dtype), layers, relax, x, eps, p)
    return jnp.where(jnp.arange(k) == y, jnp.inf, out)


def certified(margins_fn, layers, slope: float, x: Array, y: Array, eps: Array, p: float) -> Array:
    """Is ONE example certified at ``eps`` by ``margins_fn`` (all lower bounds positive, and correctly classified)?"""
    return jnp.all(margins_fn(layers, slope, x, y, eps, p) > 0)


def pgd_attack(apply_logits, x: Array, y: Array, eps: Array, p: float, key: Array, *, steps: int = 40, restarts: int = 2) -> Array:
    """Did PGD find a misclassified point within ``||d||_p <= eps`` of x? (Madry et al. 2018; one example.)

    Gradient steps on the margin ``f_y - max_{k != y} f_k`` (signed steps for
    l-inf, normalised ones for l2), projected on the ball, from ``restarts``
    random starts; step size 2.5 eps / steps. No clipping to a pixel box: the
    same threat model as the certificates, which hold over all of R^D. A hit
    is an upper bound on robustness (an attack), never a certificate.
    """

    def margin(u):
        z = apply_logits(u)
        return z[y] - jnp.max(jnp.where(jnp.arange(z.shape[0]) == y, -jnp.inf, z))

    def project(d):
        if p == np.inf:
            return jnp.clip(d, -eps, eps)
        n = jnp.linalg.norm(d)
        return d * jnp.minimum(1.0, eps / jnp.maximum(n, 1e-30))

    step = 2.5 * eps / steps

    def one(k):
        d0 = project(jax.random.uniform(k, x.shape, x.dtype, -1.0, 1.0) * eps * (1.0 if p == np.inf else 1.0 / jnp.sqrt(x.size)))

        def body(_, carry):
            d, hit = carry
            m, g = jax.value_and_grad(margin)(x + d)
            move = jnp.sign(g) if p == np.inf else g / jnp.maximum(jnp.linalg.norm(g), 1e-30)
            return project(d - step * move), hit | (m <= 0)

        d, hit = jax.lax.fori_loop(0, steps, body, (d0, jnp.zeros((), bool)))
        return hit | (margin(x + d) <= 0)

    return jnp.any(jax.vmap(one)(jax.random.split(key, restarts)))

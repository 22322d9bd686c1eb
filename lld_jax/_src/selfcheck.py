"""Certificate self-check: is the network really linear where its certificate says?

Margins are exact only if ``preacts`` exposes EVERY nonlinearity of the
network (paper Lemma 2): each ReLU-like input and each max-pool or maxout
switch (App. E, :func:`lld_jax.layers.max_pool`). Then x's region S(x), the polytope
of its activation pattern, is a linear region of the network and contains the
margin's l_p ball. A nonlinearity the pre-activations do not expose (a plain
``nnx.max_pool``, an ``abs``, a ``jnp.maximum`` of two features) cuts S(x)
without the library knowing: margins, directional margins and stability
bounds then claim linearity where there is none. The value checks catch
smooth nonlinearities (tanh, softmax: non-zero curvature) but not these,
which are piecewise linear too.

:func:`check_certificate` tests the certificate empirically. It computes the
margin r and its bounding neuron and draws ``num_samples`` unit-l_p
directions u:

* toward the bounding neuron and the next nearest neurons (the l_p direction
  that approaches each one's hyperplane fastest);
* at random (l_2: uniform on the sphere; l_1, l_inf: vertices of the ball).

Each direction is tested at two points: a point of the ball (0.999 r u for
the directed and half the random directions, a random fraction of it for the
others) and the region point 0.999 t u, where t is the directional margin
along u (how far S(x) extends that way; size max(1, ||x||_p) if unbounded).
The region points make the test sharp: a hidden switch that cuts S(x)
anywhere is usually seen, even far outside the ball. At each point x' the
output and the pre-activations must equal their first-order expansion at x,
e.g. ``out(x) + J_out (x' - x)`` (``jax.linearize``), within ``rtol``
relative to their scale ``max(|out(x)|, |out(x')|, |J_out (x' - x)|)`` (sup
norms), and no neuron may clearly (beyond ``rtol`` times that scale) change
side. An infinite margin is tested on a ball of radius max(1, ||x||_p).

The test is one-sided: passing is evidence, not proof; failing proves the
certificate wrong, and the message tells the two causes apart: a deviation
from linearity means a nonlinearity the pre-activations do not expose; a
side change of an affine pre-activation means a wrong margin.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lld_jax._src.arguments import positive_int
from lld_jax._src.checks import MARK, CheckError
from lld_jax._src.gradients import canonical_ord, norms_kernel, resolve_method
from lld_jax._src.kernel import Kernel, Plan
from lld_jax._src.margins import dual_exponent, margin_terms
from lld_jax._src.network import ApplyFn, Network, PyTree, bounding_neuron, flat_preacts
from lld_jax._src.poison import poison, poison_where

Array = jax.Array
# Sample points evaluated together: bounds the memory of the (points, network) block.
_SAMPLE_BLOCK = 16
# Fraction of the margin at which points are sampled (strictly inside the ball).
_INSIDE = 0.999


class CertificateCheck(NamedTuple):
    """The outcome of a passed :func:`check_certificate` (scalars for one example, ``(B,)`` for a batch).

    Attributes:
      radius: the margin that was checked, as :func:`lld_jax.margin` returns it.
      layer: index of the bounding neuron's layer in ``preacts`` (int32; -1 for an infinite margin).
      neuron: its index within that layer's flattened pre-activation (int32; -1 for an infinite margin).
      ball_error: the largest deviation of the output from its first-order
        expansion at x over the ball points, relative to the output scale
        (rounding level when the check passes).
      region_error: the same over the region points (beyond the ball, inside S(x)).
      num_changed: number of sampled points whose activation pattern differs
        from x's (0 when the check passes).
    """

    radius: Array
    layer: Array
    neuron: Array
    ball_error: Array
    region_error: Array
    num_changed: Array


def _unit(a: Array) -> Array:
    """Rows of ``a`` scaled to unit l2 norm (scale-safe; zero rows stay zero)."""
    m = jnp.max(jnp.abs(a), axis=-1, keepdims=True)
    a = a / jnp.where(m > 0, m, 1)
    n = jnp.linalg.norm(a, axis=-1, keepdims=True)
    return a / jnp.where(n > 0, n, 1)


def _toward(g: Array, z: Array, p: float) -> Array:
    """Unit-l_p directions (K, D) that approach each neuron's hyperplane fastest (the l_p ball's extreme point)."""
    s = jnp.where(z > 0, -1.0, 1.0).astype(g.dtype)[:, None]  # decrease an active neuron, increase an inactive one
    if p == 2:
        return s * _unit(g)
    if p == np.inf:
        return s * jnp.sign(g)
    k = jnp.argmax(jnp.abs(g), axis=-1)
    return s * jax.nn.one_hot(k, g.shape[-1], dtype=g.dtype) * jnp.sign(jnp.take_along_axis(g, k[:, None], -1))


def _random_directions(key: Array, p: float, n: int, dim: int, dtype) -> tuple[Array, Array]:
    """``n`` random points of the unit l_p sphere (uniform for l_2, vertices for l_1 and l_inf), (n, D), and n uniforms in (0, 1).

    All from one Gaussian draw (one random kernel to compile): the sign of a Gaussian is a
    fair coin, the index of a row's largest |entry| a uniform axis, and its CDF a uniform.
    """
    g = jax.random.normal(key, (n, dim + 1), dtype)
    u, extra = g[:, :dim], jax.scipy.special.ndtr(g[:, dim])
    if p == 2:
        return _unit(u), extra
    if p == np.inf:
        return jnp.where(u >= 0, 1.0, -1.0).astype(dtype), extra
    k = jnp.argmax(jnp.abs(u), axis=-1)
    sign = jnp.where(jnp.take_along_axis(u, k[:, None], -1) >= 0, 1.0, -1.0).astype(dtype)
    return jax.nn.one_hot(k, dim, dtype=dtype) * sign, extra


def _sup(a: Array) -> Array:
    return jnp.max(jnp.abs(a))


def _relative(err: Array, scale: Array) -> Array:
    """``err / scale``; 0 when ``err`` is 0 (also for a zero scale), NaN when ``err`` is."""
    return jnp.where(err > 0, err / jnp.where(scale > 0, scale, 1), jnp.where(jnp.isnan(err), jnp.nan, 0.0))


def _check_one(
    net: Network, params: PyTree, x: Array, key: Array, *, p: float, q: float, method: str, chunk: int, n_dir: int, n_rand: int, rtol: float
):
    """``(radius, flat bounding index, (ball error, region error, ball changes, region changes), failed)`` for ONE example."""
    shape, dim = x.shape, x.size
    xf = x.reshape(-1)
    z, norms = norms_kernel(net, params, x, ord=q, method=method, chunk=chunk)
    terms = margin_terms(z, norms)
    j = jnp.argmin(terms)
    r = poison(terms[j], x, params)
    both = lambda u: tuple(jnp.ravel(a) for a in flat_preacts(net, params, u.reshape(shape)))
    (out0, z0), lin = jax.linearize(both, xf)
    pattern = z0 > 0
    # Directions toward the n_dir nearest neurons (the first is the bounding one): one VJP each.
    nearest = jnp.argsort(terms)[:n_dir]
    vjp = jax.linear_transpose(lin, xf)
    g = jax.vmap(lambda i: vjp((jnp.zeros_like(out0), jax.nn.one_hot(i, z0.shape[0], dtype=z0.dtype)))[0])(nearest)
    n_surface = (n_rand + 1) // 2
    random_dirs, uniform = _random_directions(key, p, n_rand, dim, x.dtype)
    dirs = jnp.concatenate([_toward(g, z0[nearest], p), random_dirs])
    # Ball points: the directed ones and half the random ones on the surface (0.999 r), the rest inside.
    fraction = jnp.concatenate([jnp.ones((n_dir,), x.dtype), jnp.where(jnp.arange(n_rand) < n_surface, 1.0, uniform).astype(x.dtype)])
    # An infinite margin claims linearity everywhere: test it on a ball of radius max(1, ||x||_p).
    size = jnp.maximum(1.0, jnp.linalg.norm(xf, ord=p)).astype(x.dtype)
    rho = _INSIDE * jnp.where(jnp.isnan(r), 0.0, jnp.where(jnp.isinf(r), size, r))

    def probe(inp):
        """Tests direction u at its ball point and its region point: (relative deviations (2,), clear pattern changes (2,))."""
        u, frac = inp
        d_out, d_z = lin(u)
        # The region point lies 0.999 of the way along u to the boundary of x's region S(x): the
        # directional margin of the exposed pre-activations (size if S(x) is unbounded that way).
        leaving = jnp.where(pattern, d_z < 0, d_z > 0)
        t = jnp.min(jnp.where(leaving, jnp.abs(z0) / jnp.where(d_z != 0, jnp.abs(d_z), 1), jnp.inf))
        t = jnp.where(jnp.isinf(t), size / jnp.maximum(jnp.linalg.norm(u, ord=p), jnp.finfo(x.dtype).tiny), t)
        lengths = jnp.stack([rho * frac, _INSIDE * jnp.where(jnp.isnan(t), 0.0, t)])
        outs, zs = jax.vmap(lambda a: both(xf + a * u))(lengths)

        def deviation(a, out, zs):
            rel = lambda v, v0, dv: _relative(jnp.max(jnp.abs(v - v0 - dv)), jnp.maximum(_sup(v0), jnp.maximum(_sup(v), _sup(dv))))
            scale_z = jnp.maximum(_sup(z0), jnp.maximum(_sup(zs), _sup(a * d_z)))
            # A sign change within rounding of 0 (a point 0.999 of the way to a boundary) is not a change.
            flips = jnp.sum(((zs > 0) != pattern) & (jnp.abs(zs) > rtol * scale_z))
            return jnp.maximum(rel(out, out0, a * d_out), rel(zs, z0, a * d_z)), flips > 0

        return jax.vmap(deviation)(lengths, outs, zs)

    err, flips = jax.lax.map(probe, (dirs, fraction), batch_size=min(_SAMPLE_BLOCK, dirs.shape[0]))
    stats = (jnp.max(err[:, 0]), jnp.max(err[:, 1]), jnp.sum(flips[:, 0]), jnp.sum(flips[:, 1]))
    failed = jnp.isnan(r) | jnp.isnan(stats[0]) | jnp.isnan(stats[1]) | (stats[2] > 0) | (stats[3] > 0)
    return r, j, stats, failed


def _failure_message(bad: np.ndarray, radius: np.ndarray, stats: tuple[np.ndarray, ...], *, p: float, rtol: float, num_samples: int) -> str:
    idx = np.flatnonzero(bad.reshape(-1))
    where = "" if bad.ndim == 0 else " at example(s) " + ", ".join(str(i) for i in idx[:5]) + (", ..." if len(idx) > 5 else "") + " of the batch"
    pname = "inf" if p == np.inf else str(int(p))
    details, bent = [], False
    for i in idx[:3]:
        r, e_ball, e_region, c_ball, c_region = (float(np.reshape(a, -1)[i]) for a in (radius, *stats))
        head = "" if bad.ndim == 0 else f"example {i}: "
        if np.isnan(r):
            details.append(f"{head}the margin is NaN")
            continue
        bent = bent or max(e_ball, e_region) > rtol or np.isnan(e_ball) or np.isnan(e_region)
        inside = "the margin's ball itself fails" if (e_ball > rtol or c_ball > 0) else "seen beyond the margin's ball (its ball points passed)"
        details.append(
            f"{head}margin {r:.4g}, {inside}; largest deviation of the output and pre-activations from their first-order expansion at x "
            f"{e_ball:.3g} in the ball and {e_region:.3g} beyond it (relative, rtol {rtol:g}); {int(c_ball + c_region)} of {2 * num_samples} "
            "points change the activation pattern"
        )
    if bent:
        cause = (
            "Likely cause: a nonlinearity the pre-activations do not expose (e.g. a max-pool whose switching constraints are not reported: "
            "report them with lld_jax.layers.max_pool or lld_jax.layers.NeuronRecorder and a neuron_mask method), or preacts that are not the inputs "
            "of the network's ReLU-like units."
        )
    else:
        cause = "The network is affine there but the activation pattern changes: the margin is too large (a wrong neuron gradient or margin)."
    return (
        f"{MARK}certificate self-check failed{where}: the network is not linear on the region its activation pattern certifies "
        f"(the l_{pname} margin's ball and the polytope S(x) around it; {'; '.join(details)}). {cause} Its margins are not certificates."
    )


def _host_raise(bad, radius, *stats, p: float, rtol: float, num_samples: int) -> np.ndarray:
    bad = np.asarray(bad)
    if bad.any():
        raise CheckError(_failure_message(bad, np.asarray(radius), tuple(np.asarray(a) for a in stats), p=p, rtol=rtol, num_samples=num_samples))
    return np.zeros(bad.shape, np.bool_)


def _selfcheck_body(net, params, x, key, *, p, method, chunk, num_samples, rtol, hidden):
    n_dir = min(max(1, num_samples // 2), sum(int(np.prod(s)) for s in hidden))
    return _check_one(net, params, x, key, p=p, q=dual_exponent(p), method=method, chunk=chunk, n_dir=n_dir, n_rand=num_samples - n_dir, rtol=rtol)


def _selfcheck_finish(out, *, check, p, num_samples, rtol, hidden, **_):
    r, j, stats, failed = out
    bad = failed | (stats[0] > rtol) | (stats[1] > rtol)
    if check.raising:  # eager calls and lld_jax.checked: the named error, with the measured deviations
        raise_ = functools.partial(_host_raise, p=p, rtol=rtol, num_samples=num_samples)
        flag = jax.pure_callback(raise_, jax.ShapeDtypeStruct(bad.shape, jnp.bool_), bad, r, *stats, vmap_method="broadcast_all")
        r = poison_where(r, jnp.any(flag))  # ties the callback to the result: never dead-code eliminated
    else:  # pure: a failed self-check poisons its radius
        r = poison_where(r, bad)
    return CertificateCheck(r, *bounding_neuron(hidden, j, r), stats[0], stats[1], stats[2] + stats[3])


def _selfcheck_plan(net, params, x, hidden, *, p, num_samples, key, rtol, method, chunk_size, batched):
    p = canonical_ord(p)
    num_samples = positive_int(num_samples, "num_samples")
    if rtol is not None and not (isinstance(rtol, (int, float)) and not isinstance(rtol, bool) and 0 < rtol < float("inf")):
        raise ValueError(f"rtol must be a positive finite number (or None: sqrt of the dtype's epsilon), got {rtol!r}.")
    rtol = float(np.sqrt(np.finfo(x.dtype).eps)) if rtol is None else float(rtol)
    method, chunk = resolve_method(net, method, dual_exponent(p), x, hidden, chunk_size, batched=batched)
    key = jax.random.key(0) if key is None else key
    keys = jax.random.split(key, x.shape[0]) if batched else key  # one key per example
    static = (("p", p), ("method", method), ("chunk", chunk), ("num_samples", num_samples), ("rtol", rtol), ("hidden", hidden))
    return Plan(mapped=(keys,), static=static, names=("",))


CERTIFICATE = Kernel(_selfcheck_body, _selfcheck_plan, _selfcheck_finish)


def check_certificate(
    apply_fn: ApplyFn | Network,
    params: PyTree,
    x: Array,
    *,
    p: float | str = 2,
    num_samples: int = 64,
    key: Array | None = None,
    rtol: float | None = None,
    method: str = "auto",
    chunk_size: int | None = None,
    check: bool = True,
) -> CertificateCheck:
    """Tests that the network is exactly linear where the margin of ONE example certifies it (see the module docstring).

    Computes the margin r and its bounding neuron, draws ``num_samples``
    directions (half toward the nearest neurons, the first being the bounding
    one; half at random) and tests each at a point of the l_p ball (radius up
    to 0.999 r) and at the point 0.999 of the way to the boundary of x's
    region S(x). At each point the output must equal
    ``out(x) + J_out (x' - x)``, and the pre-activations their own expansion,
    within ``rtol`` relative to their scale, and the activation pattern must
    be x's (up to rounding). Composes with ``jax.vmap`` and
    ``jax.jit`` (a failure then surfaces as a ``jax.errors.JaxRuntimeError``
    holding the same message, naming the examples of the vmapped batch); for
    a batch use :func:`lld_jax.batched.check_certificate`.

    Args:
      apply_fn: the network, ``(params, x) -> (out, preacts)`` for one
        example, or an :class:`~lld_jax.Network`.
      params: its parameters.
      x: one input, shape ``input_shape``.
      p: 1, 2 or ``inf``: the ball of :func:`lld_jax.margin` ``(..., p=p)``.
      num_samples: directions sampled (each tested at two points).
      key: ``jax.random`` key of the random points (default ``key(0)``). The
        batched form splits it into one key per example
        (``jax.random.split(key, B)``), so its points differ from a
        per-example call with ``key`` itself.
      rtol: tolerance on the deviation of the output and the
        pre-activations from their first-order expansion, relative to their
        scale (sup norms). Default: the square root of the working dtype's
        epsilon, 3.5e-4 in float32 and 1.5e-8 in float64 (rounding reaches
        ~4e-5 on small float32 CNNs; a hidden max-pool switch typically
        deviates by 1e-3 to 1e-1).
      method: gradient method of the margin (see :func:`lld_jax.margin`).
      chunk_size: memory bound, see :func:`~lld_jax.neuron_gradients`.
      check: also run the library's value checks (finite input and
        parameters, piecewise linear).

    Returns:
      :class:`CertificateCheck`: the margin checked (equal to
      :func:`lld_jax.margin_with_neuron`'s), its bounding neuron, the
      largest relative deviations and the number of pattern changes.

    Raises:
      CheckError: a sampled point is not on x's linear piece (or the margin is
        NaN): the message names the examples, says whether the margin's ball
        itself is affected, gives the deviations, and names the likely cause,
        a nonlinearity the pre-activations do not expose (e.g. a max-pool
        whose switching constraints are not reported).

    Example:
      >>> import jax, jax.numpy as jnp, lld_jax
      >>> relu_net = lambda w, x: (jnp.sum(jax.nn.relu(w @ x)), (w @ x,))
      >>> x = jnp.array([1.0, -2.0])
      >>> float(lld_jax.check_certificate(relu_net, jnp.eye(2), x).radius)
      1.0
      >>> hidden = lambda w, x: (jnp.max(w @ x), (x + 10.0,))  # max(x_1, x_2) is not exposed
      >>> lld_jax.check_certificate(hidden, jnp.eye(2), x)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      lld_jax._src.checks.CheckError: [lld_jax] certificate self-check failed: the network is not linear on the region ...
    """
    return CERTIFICATE(apply_fn, params, x, p=p, num_samples=num_samples, key=key, rtol=rtol, method=method, chunk_size=chunk_size, check=check)

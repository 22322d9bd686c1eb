"""Gradient stability: how much the input gradient changes in an l_inf ball (paper Sec. 5.3, App. J, K).

For an example ``x`` with label ``y`` let g(x) = d f(x)_y / dx be the input
gradient of the label's logit (the label's, not the prediction's, so that
models are comparable). In the region

    B(x) = {x' : ||x' - x||_inf <= eps} ∩ [lo, hi]^D

(the l_inf ball cut by the valid input box, e.g. [0, 1] pixels) the l1
gradient distortion is Delta(x, x') = ||g(x') - g(x)||_1. A locally linear
network has Delta = 0 on its whole linear region, so the paper reports

* the expected distortion E_{x' ~ Unif(B(x))} Delta (Monte Carlo), and
* the maximal distortion max_{x' in B(x)} Delta, found by a genetic algorithm
  because Delta is piecewise constant (zero Hessian: no gradient ascent); its
  maximiser's gradient is the "adversarial gradient" of Figs. 4-6.

:func:`integrated_gradients` gives the attribution maps of Figs. 5-6.

B(x) is a box, so sampling it uniformly means sampling each coordinate
uniformly in its clipped interval (not clipping samples of the ball, which
would put mass on the box's faces). Every function evaluates gradients in
vectorised blocks of ``chunk_size`` backward passes, so memory is bounded
whatever the number of samples.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lld_jax._src.arguments import positive_int
from lld_jax._src.checks import error_if, example_shape, reraise, working_dtype
from lld_jax._src.network import ApplyFn, Network, PyTree, as_network
from lld_jax._src.poison import not_finite

Array = jax.Array
Box = tuple[float | Array, float | Array] | None
# Input elements per vectorised block of gradient evaluations (the default chunk_size):
# 2^22 float32 inputs are 16 MiB; the backward pass holds a model-dependent multiple of that.
_EVAL_ELEMENTS = 1 << 22


class GradientDistortion(NamedTuple):
    """Result of :func:`max_gradient_distortion`, one entry per example.

    Attributes:
      distortion: ``(B,)`` the largest l1 distortion ||g(x') - g(x)||_1 found.
      x_worst: ``(B, *input_shape)`` the point x' attaining it (in B(x)).
      grad_worst: ``(B, *input_shape)`` the "adversarial gradient" g(x_worst).
      grad: ``(B, *input_shape)`` the original gradient g(x).
      prediction_changed: ``(B,)`` bool, argmax f(x_worst) != argmax f(x).
    """

    distortion: Array
    x_worst: Array
    grad_worst: Array
    grad: Array
    prediction_changed: Array


# --------------------------------------------------------------------------
# Per-example maths (no checks).


def _logit(net: Network, params: PyTree, u: Array, y: Array) -> Array:
    return jnp.ravel(net.apply(params, u)[0])[y]


_label_grad = jax.grad(_logit, argnums=2)


def _prediction(net: Network, params: PyTree, u: Array) -> Array:
    return jnp.argmax(jnp.ravel(net.apply(params, u)[0]))


def _region(x: Array, eps: Array, lo: Array, hi: Array) -> tuple[Array, Array]:
    """Per-coordinate bounds of B(x); ``x`` is first moved into the box (it may sit outside by rounding)."""
    xc = jnp.clip(x, lo, hi)
    return jnp.maximum(xc - eps, lo), jnp.minimum(xc + eps, hi)


def _uniform(key: Array, rlo: Array, rhi: Array) -> Array:
    """One uniform point of the box [rlo, rhi] (the clip only undoes rounding of rlo + u (rhi - rlo))."""
    u = jax.random.uniform(key, rlo.shape, rlo.dtype)
    return jnp.clip(rlo + u * (rhi - rlo), rlo, rhi)


def _l1(a: Array) -> Array:
    return jnp.sum(jnp.abs(a))


def _chunks(chunk: int, n: int) -> int:
    return max(1, min(chunk, n))


def _map(f, xs, chunk: int):
    """``jax.lax.map(f, xs, batch_size=chunk)`` with the last block padded (by repeating the first element).

    ``lax.map`` would compile a second copy of ``f`` for a ragged remainder; padding wastes at most
    ``chunk - 1`` evaluations instead.
    """
    n = jax.tree.leaves(xs)[0].shape[0]
    c = _chunks(chunk, n)
    if c == n:  # one block: no loop to compile
        return jax.vmap(f)(xs)
    pad = -n % c
    if pad:
        xs = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)]), xs)
    ys = jax.lax.map(f, xs, batch_size=c)
    return jax.tree.map(lambda a: a[:n], ys) if pad else ys


def _map_examples(f, xs, per_block: int):
    """``f`` over the examples, ``per_block`` at a time (``lax.map`` handles a ragged last block: no wasted example)."""
    n = jax.tree.leaves(xs)[0].shape[0]
    if per_block >= n:
        return jax.vmap(f)(xs)
    return jax.lax.map(f, xs, batch_size=max(1, per_block))


# --------------------------------------------------------------------------
# Jitted kernels over a batch. ``chunk`` bounds the gradient evaluations vectorised at once.


@functools.partial(jax.jit, static_argnames=("net", "chunk"))
def _input_gradient(net, params, x, y, *, chunk):
    return _map(lambda a: _label_grad(net, params, *a), (x, y), chunk)


@functools.partial(jax.jit, static_argnames=("num_samples",))
def _samples(key, x, eps, lo, hi, *, num_samples):
    rlo, rhi = _region(x, eps, lo, hi)
    return jax.vmap(lambda s: _uniform(jax.random.fold_in(key, s), rlo, rhi))(jnp.arange(num_samples))


@functools.partial(jax.jit, static_argnames=("net", "num_samples", "chunk"))
def _expected(net, params, x, y, keys, eps, lo, hi, *, num_samples, chunk):
    g0 = _input_gradient(net, params, x, y, chunk=chunk)
    total = x.shape[0] * num_samples

    # One flat index per (example, sample) pair: the vectorised blocks fill up whether the
    # batch or the number of samples is small, and sample s of example b is always drawn
    # from fold_in(keys[b], s), so the result does not depend on chunk_size.
    def one(i):
        b, s = i // num_samples, i % num_samples
        xs = _uniform(jax.random.fold_in(keys[b], s), *_region(x[b], eps[b], lo, hi))
        return _l1(_label_grad(net, params, xs, y[b]) - g0[b])

    d = _map(one, jnp.arange(total), chunk)
    return jnp.mean(d.reshape(x.shape[0], num_samples), axis=1)


def _genetic_one(net, params, x, y, key, eps, lo, hi, *, population, num_keep, generations, chunk):
    """The genetic algorithm of App. J for one example; returns ``(x_worst, g0)``."""
    g0 = _label_grad(net, params, x, y)
    rlo, rhi = _region(x, eps, lo, hi)
    fitness = lambda u: _l1(_label_grad(net, params, u, y) - g0)
    k_init, k_gen = jax.random.split(key)
    sample = lambda i: _uniform(jax.random.fold_in(k_init, i), rlo, rhi)

    # Only the kept members are stored (num_keep points, not population): children are
    # evaluated on the fly and rebuilt from their parents' indices once selected.
    f0 = _map(lambda i: fitness(sample(i)), jnp.arange(population), chunk)
    kept_fit, idx = jax.lax.top_k(f0, num_keep)  # descending; ties keep the earlier candidate
    kept = _map(sample, idx, chunk)
    n_child = population - num_keep

    def generation(carry, k):
        kept, kept_fit = carry
        u = jax.random.uniform(k, (3, n_child), x.dtype)  # one draw: each random op is costly to compile
        pick = lambda v, m: jnp.minimum((v * m).astype(jnp.int32), m - 1)  # uniform on {0, ..., m - 1}
        a = pick(u[0], num_keep)
        # Two distinct parents when there are two: a pair (c, c) would only copy c.
        b = (a + 1 + pick(u[1], num_keep - 1)) % num_keep if num_keep > 1 else a
        t = u[2]
        # A convex combination of two points of the convex set B(x) is in B(x); the
        # projection (a clip, as in App. J) only removes rounding.
        child = lambda abt: jnp.clip(abt[2] * kept[abt[0]] + (1 - abt[2]) * kept[abt[1]], rlo, rhi)
        child_fit = _map(lambda abt: fitness(child(abt)), (a, b, t), chunk)
        new_fit, sel = jax.lax.top_k(jnp.concatenate([kept_fit, child_fit]), num_keep)
        old = sel < num_keep
        c = jnp.clip(sel - num_keep, 0, n_child - 1)
        # A survivor is the "child" (i, i, t = 1): exactly itself.
        src = (jnp.where(old, sel, a[c]), jnp.where(old, sel, b[c]), jnp.where(old, jnp.ones_like(t[c]), t[c]))
        return (_map(child, src, chunk), new_fit), None

    if n_child > 0 and generations > 0:
        (kept, kept_fit), _ = jax.lax.scan(generation, (kept, kept_fit), jax.random.split(k_gen, generations))
    # Selection is elitist, so the best member ever seen is the first kept one.
    return kept[0], g0


@functools.partial(jax.jit, static_argnames=("net", "population", "num_keep", "generations", "chunk"))
def _genetic(net, params, x, y, keys, eps, lo, hi, *, population, num_keep, generations, chunk):
    def one(args):
        xi, yi, ki, ei = args
        best, g0 = _genetic_one(net, params, xi, yi, ki, ei, lo, hi, population=population, num_keep=num_keep, generations=generations, chunk=chunk)
        gb = _label_grad(net, params, best, yi)
        # Recomputed at the returned point so that the three outputs agree exactly.
        changed = _prediction(net, params, best) != _prediction(net, params, xi)
        return GradientDistortion(_l1(gb - g0), best, gb, g0, changed)

    # One example at a time: its population already fills the vectorised blocks (and a second
    # level of vmap would make this large program much slower to compile).
    return jax.lax.map(one, (x, y, keys, eps))


@functools.partial(jax.jit, static_argnames=("net", "steps", "chunk"))
def _integrated(net, params, x, y, baseline, *, steps, chunk):
    inner = _chunks(chunk, steps)
    n_blocks = -(-steps // inner)

    def one(args):
        xi, yi, bi = args

        def block(acc, k):
            j = k * inner + jnp.arange(inner)
            alpha = (j + 0.5) / steps  # midpoint rule: exact for a network linear on the path
            pts = bi + alpha.astype(x.dtype).reshape((-1,) + (1,) * xi.ndim) * (xi - bi)
            g = jax.vmap(lambda u: _label_grad(net, params, u, yi))(pts)
            w = (j < steps).astype(x.dtype).reshape((-1,) + (1,) * xi.ndim)  # the last block's padding counts 0
            return acc + jnp.sum(w * g, axis=0), None

        acc, _ = jax.lax.scan(block, jnp.zeros_like(xi), jnp.arange(n_blocks))
        return (xi - bi) * acc / steps

    return _map_examples(one, (x, y, baseline), chunk // inner)


# --------------------------------------------------------------------------
# Validation shared by the public functions.


class _Checked(NamedTuple):
    net: Network
    x: Array
    y: Array
    eps: Array  # (B,)
    lo: Array  # one example's shape
    hi: Array
    baseline: Array | None
    chunk: int


@functools.partial(jax.jit, static_argnames=("n_out",))
def _value_flags(params, x, y, eps, lo, hi, baseline, ulp, *, n_out):
    """Every value check of a call as flags (per example or scalar), in one compiled function."""
    axes = tuple(range(1, x.ndim))
    # Inside the box up to rounding (in the caller's precision), e.g. pixels that went through
    # normalise / un-normalise in float32.
    tol = lambda b: 16 * ulp * jnp.where(jnp.isfinite(b), jnp.maximum(1, jnp.abs(b)), 1)
    return {
        "label": (y < 0) | (y >= n_out),
        "x": ~jnp.all(jnp.isfinite(x), axis=axes),
        "params": not_finite(params),
        "baseline": ~jnp.all(jnp.isfinite(baseline), axis=axes),
        "box": jnp.any(~(lo < hi)),
        "outside": jnp.any((x < lo - tol(lo)) | (x > hi + tol(hi)), axis=axes),
        "eps": ~(eps >= 0) | ~jnp.isfinite(eps),
    }


def _box_arrays(box: Box, shape: tuple[int, ...], dt) -> tuple[Array, Array]:
    if box is None:
        return jnp.full(shape, -jnp.inf, dt), jnp.full(shape, jnp.inf, dt)
    if not (isinstance(box, (tuple, list)) and len(box) == 2):
        raise ValueError(f"box must be a pair (lo, hi) of valid input values (scalars or arrays broadcastable to one example), or None; got {box!r}.")
    try:
        return tuple(jnp.broadcast_to(jnp.asarray(b, dt), shape) for b in box)
    except (TypeError, ValueError) as err:
        raise ValueError(f"box bounds must be scalars or arrays broadcastable to one example's shape {shape}: {err}") from err


def _prepare(apply_fn, params, x, y, chunk_size, *, eps=None, box: Box = None, baseline=None) -> _Checked:
    """Static checks (raised at once) and value checks (raised eagerly, or at run time under a trace)."""
    net = as_network(apply_fn)
    x = jnp.asarray(x)
    given = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    x = x.astype(working_dtype(params, x))
    ulp = jnp.asarray(max(float(jnp.finfo(given).eps), float(jnp.finfo(x.dtype).eps)), x.dtype)
    shape = example_shape(net, x, batched=True)
    try:
        out = jax.eval_shape(net.apply, params, jax.ShapeDtypeStruct(shape, x.dtype))[0]
    except Exception as err:  # re-raised with context, never swallowed
        raise ValueError(
            f"the network could not be applied to one example of shape {shape}: {err}. x must be a batch (B, *input_shape) of the shape the network expects."
        ) from err
    n_out = math.prod(out.shape)
    y = jnp.asarray(y)
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}.")
    if y.shape != x.shape[:1]:
        raise ValueError(f"y must have shape (B,) = {x.shape[:1]}, one label per example of x; got {y.shape}.")
    if chunk_size is None:
        chunk = max(1, _EVAL_ELEMENTS // max(1, math.prod(shape)))
    else:
        chunk = positive_int(chunk_size, "chunk_size")
    lo, hi = _box_arrays(box, shape, x.dtype)
    try:
        e = jnp.broadcast_to(jnp.asarray(0 if eps is None else eps, x.dtype), x.shape[:1])
    except (TypeError, ValueError) as err:
        raise ValueError(f"eps must be a scalar or one radius per example, shape {x.shape[:1]}; got shape {jnp.shape(eps)}.") from err
    if baseline is not None:
        baseline = jnp.asarray(baseline, x.dtype)
        if baseline.shape == shape:
            baseline = jnp.broadcast_to(baseline, x.shape)
        if baseline.shape != x.shape:
            raise ValueError(f"baseline must have the shape of one example {shape} or of the batch {x.shape}; got {baseline.shape}.")

    flags = _value_flags(params, x, y, e, lo, hi, x if baseline is None else baseline, ulp, n_out=n_out)
    # Tied to x, not y: error_if poisons its array with NaN, which an integer array cannot hold.
    x = error_if(x, flags["label"], f"y holds a label outside [0, {n_out}){{where}}: y indexes the network's flattened output of size {n_out}.")
    x = error_if(x, flags["x"], "x contains NaN or Inf{where}.")
    x = error_if(x, flags["params"], "the parameters contain NaN or Inf{where}; gradients are undefined.")
    if baseline is not None:
        baseline = error_if(baseline, flags["baseline"], "baseline contains NaN or Inf{where}.")
    if box is not None:
        x = error_if(x, flags["box"], f"box=(lo, hi) needs lo < hi everywhere{{where}}; got {box!r}.")
        msg = (
            "x lies outside the box{where}, so the region B_eps(x) ∩ box would not contain x. Pass the box "
            "your inputs live in (box=(lo, hi), e.g. the range of normalised pixels), or box=None for unbounded inputs."
        )
        x = error_if(x, flags["outside"], msg)
    if eps is not None:
        e = error_if(e, flags["eps"], "eps must be finite and >= 0 (the l_inf radius, in units of x){where}.")
    return _Checked(net, x, y, e, lo, hi, baseline, chunk)


def _keys(key, n: int) -> Array:
    try:
        return jax.random.split(key, n)
    except Exception as err:  # jax raises several types for a non-key
        raise TypeError(f"key must be a JAX PRNG key such as jax.random.key(0); got {key!r}.") from err


def _run(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except Exception as err:  # a check that failed inside a trace surfaces as a runtime error
        reraise(err)
        raise


# --------------------------------------------------------------------------
# Public functions.


def input_gradient(apply_fn: ApplyFn | Network, params: PyTree, x: Array, y: Array, *, chunk_size: int | None = None) -> Array:
    """Input gradients of the label logits, d f(x_i)_{y_i} / d x_i, of a batch.

    Args:
      apply_fn: the network, ``(params, x) -> (output, preacts)`` for one example, or a :class:`~lld_jax.Network`.
      params: its parameters.
      x: inputs, shape ``(B, *input_shape)``.
      y: integer labels, shape ``(B,)``, indexing the flattened output.
      chunk_size: examples per vectorised block (memory bound).

    Returns:
      Gradients, shape ``(B, *input_shape)``.
    """
    c = _prepare(apply_fn, params, x, y, chunk_size)
    return _run(_input_gradient, c.net, params, c.x, c.y, chunk=c.chunk)


def sample_linf_ball(key: Array, x: Array, eps: float | Array, num_samples: int, *, box: Box = (0.0, 1.0)) -> Array:
    """Uniform samples of B(x) = {x' : ||x' - x||_inf <= eps} ∩ box for ONE example (paper Sec. 5.3).

    The samples that :func:`expected_gradient_distortion` draws for an example with key ``key``.

    Args:
      key: a PRNG key; sample ``s`` is drawn from ``jax.random.fold_in(key, s)``.
      x: one example, any shape (must lie in the box up to rounding).
      eps: the l_inf radius (scalar, >= 0), in units of ``x``.
      num_samples: number of samples.
      box: ``(lo, hi)`` valid input range (scalars or arrays broadcastable to ``x``), or ``None``.

    Returns:
      Samples, shape ``(num_samples, *x.shape)``.
    """
    num_samples = positive_int(num_samples, "num_samples")
    one = lambda p, u: (jnp.zeros((1,), u.dtype), ())
    c = _prepare(one, None, jnp.asarray(x)[None], jnp.zeros((1,), jnp.int32), None, eps=eps, box=box)
    return _run(_samples, key, c.x[0], c.eps[0], c.lo, c.hi, num_samples=num_samples)


def expected_gradient_distortion(
    apply_fn: ApplyFn | Network,
    params: PyTree,
    x: Array,
    y: Array,
    *,
    eps: float | Array,
    num_samples: int,
    key: Array,
    box: Box = (0.0, 1.0),
    chunk_size: int | None = None,
) -> Array:
    """Monte Carlo expected l1 gradient distortion E_{x' ~ Unif(B(x))} ||g(x') - g(x)||_1 (paper Sec. 5.3, Table 4).

    g is the gradient of the label's logit and B(x) the l_inf ball of radius
    ``eps`` cut by ``box`` (the paper: eps = 8/256, box [0, 1], 8000 samples).

    Args:
      apply_fn: the network, ``(params, x) -> (output, preacts)`` for one example, or a :class:`~lld_jax.Network`.
      params: its parameters.
      x: inputs, shape ``(B, *input_shape)``, inside ``box``.
      y: integer labels, shape ``(B,)``, indexing the flattened output.
      eps: l_inf radius in units of ``x``, scalar or ``(B,)``.
      num_samples: samples per example.
      key: PRNG key; example ``i`` uses ``jax.random.split(key, B)[i]`` (see :func:`sample_linf_ball`).
      box: ``(lo, hi)`` valid input range (scalars or arrays broadcastable to one example), or ``None``.
      chunk_size: gradient evaluations vectorised at once (memory ~ chunk_size backward passes of one
        example); the default keeps chunk_size * input size near 2^22. Results do not depend on it beyond rounding.

    Returns:
      The estimates, shape ``(B,)``, in units of the gradient (logit per input unit) times input dimensions.
    """
    num_samples = positive_int(num_samples, "num_samples")
    c = _prepare(apply_fn, params, x, y, chunk_size, eps=eps, box=box)
    keys = _keys(key, c.x.shape[0])
    return _run(_expected, c.net, params, c.x, c.y, keys, c.eps, c.lo, c.hi, num_samples=num_samples, chunk=c.chunk)


def max_gradient_distortion(
    apply_fn: ApplyFn | Network,
    params: PyTree,
    x: Array,
    y: Array,
    *,
    eps: float | Array,
    key: Array,
    population: int = 4800,
    generations: int = 30,
    keep: float = 0.25,
    box: Box = (0.0, 1.0),
    chunk_size: int | None = None,
) -> GradientDistortion:
    """Maximal l1 gradient distortion max_{x' in B(x)} ||g(x') - g(x)||_1 by the paper's genetic algorithm (App. J).

    Initial population: ``population`` uniform points of B(x). Each generation
    keeps the ``keep`` fraction with the largest distortion and refills the
    population with children t a + (1 - t) b of two distinct random kept
    members a, b, t ~ U[0, 1], projected onto B(x); no mutation. Selection is
    elitist, so the result is the best point ever evaluated: a lower bound of
    the true maximum. Costs ``population + generations * (population - kept)``
    gradient evaluations per example.

    Args:
      apply_fn: the network, ``(params, x) -> (output, preacts)`` for one example, or a :class:`~lld_jax.Network`.
      params: its parameters.
      x: inputs, shape ``(B, *input_shape)``, inside ``box``.
      y: integer labels, shape ``(B,)``, indexing the flattened output.
      eps: l_inf radius in units of ``x``, scalar or ``(B,)``.
      key: PRNG key; example ``i`` uses ``jax.random.split(key, B)[i]``.
      population: candidates per generation (>= 2); the paper uses 4800.
      generations: crossover rounds (>= 0; 0 is pure random search); the paper uses 30.
      keep: fraction of the population kept by selection, in (0, 1]; the paper keeps 25%
        (1 leaves no room for children: random search).
      box: ``(lo, hi)`` valid input range (scalars or arrays broadcastable to one example), or ``None``.
      chunk_size: gradient evaluations vectorised at once. Memory per example is
        ``round(keep * population)`` stored points plus the chunk.

    Returns:
      A :class:`GradientDistortion`. On ties (many points of one linear region share a
      distortion) the earliest candidate wins, so ``x_worst`` may differ between chunk sizes
      by rounding while ``distortion`` agrees.

    Example:
      >>> import jax, jax.numpy as jnp, lld_jax
      >>> f = lambda w, x: (jnp.stack([jax.nn.relu(x[0] - 0.5), jnp.array(0.01)]), (x - 0.5,))
      >>> res = lld_jax.attribution.max_gradient_distortion(f, None, jnp.array([[0.55, 0.2]]), jnp.array([0]),
      ...                                       eps=0.1, key=jax.random.key(0), population=64, generations=3)
      >>> float(res.distortion[0]), bool(res.prediction_changed[0]), bool(res.x_worst[0, 0] <= 0.5)
      (1.0, True, True)
    """
    population = positive_int(population, "population", minimum=2)
    generations = positive_int(generations, "generations", minimum=0)
    if isinstance(keep, bool) or not isinstance(keep, numbers.Real) or not 0 < keep <= 1:
        raise ValueError(f"keep must be a fraction in (0, 1] (the share of the population that survives selection), got {keep!r}.")
    num_keep = min(population, max(1, round(keep * population)))
    c = _prepare(apply_fn, params, x, y, chunk_size, eps=eps, box=box)
    keys = _keys(key, c.x.shape[0])
    kw = dict(population=population, num_keep=num_keep, generations=generations, chunk=c.chunk)
    return _run(_genetic, c.net, params, c.x, c.y, keys, c.eps, c.lo, c.hi, **kw)


def integrated_gradients(
    apply_fn: ApplyFn | Network,
    params: PyTree,
    x: Array,
    y: Array,
    *,
    baseline: Array | None = None,
    steps: int = 50,
    chunk_size: int | None = None,
) -> Array:
    """Integrated gradients of the label logit (Sundararajan et al., 2017), as in paper Figs. 5-6.

    IG_k = (x_k - b_k) * (1/steps) * sum_j d f_y / d x_k (b + alpha_j (x - b)),
    alpha_j = (j + 1/2) / steps (midpoint rule). Completeness:
    sum_k IG_k ~= f(x)_y - f(b)_y, exactly when f is linear on the path; for a
    piecewise-linear f the error is O(1/steps) per crossed boundary.

    Args:
      apply_fn: the network, ``(params, x) -> (output, preacts)`` for one example, or a :class:`~lld_jax.Network`.
      params: its parameters.
      x: inputs, shape ``(B, *input_shape)``.
      y: integer labels, shape ``(B,)``, indexing the flattened output.
      baseline: ``input_shape`` (shared) or ``(B, *input_shape)``; zeros by default.
      steps: points on the path (>= 1).
      chunk_size: gradient evaluations vectorised at once.

    Returns:
      Attributions, shape ``(B, *input_shape)``, in units of the logit.
    """
    steps = positive_int(steps, "steps")
    c = _prepare(apply_fn, params, x, y, chunk_size, baseline=jnp.zeros(jnp.shape(x)[1:]) if baseline is None else baseline)
    return _run(_integrated, c.net, params, c.x, c.y, c.baseline, steps=steps, chunk=c.chunk)

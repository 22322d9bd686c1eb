"""Verification of what a network declares about itself, at the example, before a fast path trusts it.

The fast gradient paths compute on a network's declarations, not on its
``apply``: ``method="gram"`` and the sampled loss's MLP path on
``dense_layers`` and ``negative_slope``, ``method="template"`` on
``apply_frozen``, the sampled loss's conv path on ``stem``, ``method="causal"``
on ``recurrent_cell``. A stale or wrong
declaration (a LeakyReLU declared as a ReLU, weights that are not the
module's, a stem that is not its first layer) would give a plausible, wrong
margin. Each check here reproduces the network's own pre-activations (and
output) at the example from the declaration, together with their derivative
along one fixed pseudo-random direction (one JVP): two piecewise-linear maps
that agree in value and in a random directional derivative at ``x`` have the
same affine piece there with probability one. Cost: one JVP of ``apply``
shared by every declaration (the value checks reuse it for their curvature
probe), plus one evaluation of each declaration (on the 784-300x4-10 MLP, a
few percent of a ``gram`` margin; see ``benchmarks/run.py``). A traced
kernel that carries the value checks does not verify its fast path's
declaration again at the same example (:func:`verified_at`).

Each function returns a boolean scalar for ONE example: True when the
declaration disagrees. Kernels that use a declaration poison their result
with it (NaN); the value checks turn it into a named error.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lld_jax._src.network import Array, Network, PyTree, pattern_slopes
from lld_jax._src.poison import poison_where

# Whether kernels verify declarations per example (trace-time, static). The training step turns it
# off for its per-example losses and verifies one example of each batch instead: a wrong declaration
# is wrong at (almost) every input, and the check costs about as much as a sampled ROLL loss.
_PER_EXAMPLE: contextvars.ContextVar[bool] = contextvars.ContextVar("lld_jax_verify_per_example", default=True)


@contextlib.contextmanager
def verified_per_batch() -> Iterator[None]:
    """Within: kernels traced skip their per-example declaration checks (the caller verifies once per batch)."""
    token = _PER_EXAMPLE.set(False)
    try:
        yield
    finally:
        _PER_EXAMPLE.reset(token)


# The example (array or tracer) at which the running call's value checks verified every declaration.
_VERIFIED: contextvars.ContextVar[object] = contextvars.ContextVar("lld_jax_verified_example", default=None)


@contextlib.contextmanager
def verified_at(x: Array) -> Iterator[None]:
    """Within: :func:`poison_mismatch` at this very ``x`` (the same object) is skipped, the value checks traced
    in the same kernel having verified every declaration there (poisoning ``x`` where one fails)."""
    token = _VERIFIED.set(x)
    try:
        yield
    finally:
        _VERIFIED.reset(token)


def poison_mismatch(z: Array, mismatch: Callable[[Network, PyTree, Array], Array], net: Network, params: PyTree, x: Array) -> Array:
    """``z`` with NaN when ``mismatch(net, params, x)`` (a declaration a fast path trusts is not the network)."""
    if not _PER_EXAMPLE.get() or x is _VERIFIED.get():
        return z
    return poison_where(z, mismatch(net, params, x))


@functools.lru_cache(maxsize=4)
def _host_direction(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    rng = np.random.default_rng(7)
    if dtype in ("float32", "float64"):  # drawn in place: no float64 copy of a large float32 input
        return rng.standard_normal(shape, dtype=dtype)
    return rng.standard_normal(shape).astype(dtype)


def direction(x: Array) -> Array:
    """The checks' fixed pseudo-random direction for ``x``'s shape and dtype (standard normal entries).

    Drawn on the host and embedded as a constant: deterministic, independent of
    the declaration, and no random-number code in the compiled check (a
    threefry draw was about a third of a check's compile time).
    """
    return jnp.asarray(_host_direction(tuple(x.shape), np.dtype(x.dtype).name))


class Probe(NamedTuple):
    """``apply`` at ONE example, with its first and second derivatives along :func:`direction`.

    Each field is ``(out, preacts)``. One nested JVP serves every declaration
    check of a call and the piecewise-linearity probe of the value checks.
    """

    value: tuple
    slope: tuple
    curve: tuple


def probe(net: Network, params: PyTree, x: Array, *, second: bool = True) -> Probe:
    """The :class:`Probe` of ``net`` at ``x`` (one example); ``curve`` is None unless ``second``."""
    v = direction(x)
    first = lambda u: jax.jvp(lambda w: net.apply(params, w), (u,), (v,))
    if not second:
        return Probe(*first(x), None)
    (value, slope), (_, curve) = jax.jvp(first, (x,), (v,))
    return Probe(value, slope, curve)


def _differ(got: Array, want: Array, scale: Array, *dtypes) -> Array:
    """Any element of ``got`` off ``want`` by more than sqrt(eps) of ``scale`` (a layer's magnitude)? NaN counts as a difference.

    eps is that of the least precise of ``got``, ``want`` and ``dtypes`` (e.g. float32 weights under float64 inputs).
    """
    eps = max(float(jnp.finfo(d).eps) for d in (got.dtype, want.dtype, *dtypes))
    got, want = jnp.ravel(got).astype(want.dtype), jnp.ravel(want)
    if got.shape != want.shape:
        return jnp.ones((), bool)
    tol = jnp.sqrt(eps) * jnp.maximum(scale, jnp.finfo(want.dtype).tiny / eps)
    return jnp.any(~(jnp.abs(got - want) <= tol))


def _layer_scale(*arrays: Array) -> Array:
    return jnp.max(jnp.stack([jnp.max(jnp.abs(a)) if a.size else jnp.zeros((), a.dtype) for a in arrays]))


def _reference(net: Network, params: PyTree, x: Array, ref: Probe | None) -> tuple[tuple, tuple]:
    """``(out, preacts)`` of ``apply`` at ``x`` and their derivative along the check direction (from ``ref`` when given)."""
    ref = probe(net, params, x, second=False) if ref is None else ref
    return ref.value, ref.slope


def dense_mismatch(net: Network, params: PyTree, x: Array, ref: Probe | None = None) -> Array:
    """Do ``dense_layers`` and ``negative_slope`` fail to reproduce ``apply``'s pre-activations (and output) at ``x``?"""
    (out, pre), (dout, dpre) = _reference(net, params, x, ref)
    layers = net.dense_layers(params)
    if len(layers) < len(pre):
        return jnp.ones((), bool)  # fewer layers than pre-activations: not this network's stack
    # Value and directional derivative in one (D, 2) product per layer. The tolerance scale bounds
    # |W| |h| by the largest absolute row sum of W (independent of x: computed once under vmap)
    # times max |h|, instead of a second matrix product per layer.
    hd = jnp.stack([jnp.ravel(x), jnp.ravel(direction(x))], axis=1)
    bad = jnp.zeros((), bool)
    alpha = net.negative_slope
    for i, (w, b) in enumerate(layers):
        if w.ndim != 2 or w.shape[1] != hd.shape[0]:
            return jnp.ones((), bool)
        zd = w @ hd
        z, dz = zd[:, 0] + b, zd[:, 1]
        ref, dref = (pre[i], dpre[i]) if i < len(pre) else (out, dout)
        row = jnp.max(jnp.sum(jnp.abs(w), axis=1))
        reach = row * jnp.max(jnp.abs(hd), axis=0)  # bounds on max |W h| and max |W dh|
        bad |= _differ(z, ref, _layer_scale(reach[0] + jnp.max(jnp.abs(b)), ref), w.dtype)
        bad |= _differ(dz, dref, _layer_scale(reach[1], dref), w.dtype)
        if i + 1 == len(layers) or i + 1 > len(pre):
            break
        # The activation pattern of apply's own pre-activations, not of the declared ones: at a neuron
        # within rounding of its kink the two may round to different sides, which is no mismatch.
        slope = jnp.where(jnp.ravel(ref) > 0, 1.0, alpha).astype(z.dtype)
        hd = slope[:, None] * jnp.stack([z, dz], axis=1)
    return bad


def frozen_mismatch(net: Network, params: PyTree, x: Array, ref: Probe | None = None) -> Array:
    """Does ``apply_frozen`` at ``x``'s own slopes differ from ``apply`` (value or derivative)?"""
    (out, pre), (dout, dpre) = _reference(net, params, x, ref)
    slopes = jax.lax.stop_gradient(pattern_slopes(net, pre))
    (fout, fpre), (dfout, dfpre) = jax.jvp(lambda u: net.apply_frozen(params, u, slopes), (x,), (direction(x),))
    return _pairs_differ((out, *pre), (fout, *fpre)) | _pairs_differ((dout, *dpre), (dfout, *dfpre))


def stem_mismatch(net: Network, params: PyTree, x: Array, ref: Probe | None = None) -> Array:
    """Does ``stem`` fail to split ``apply`` after its first pre-activation (values, derivatives, one placed kernel)?"""
    (out, pre), (dout, dpre) = _reference(net, params, x, ref)
    stem = net.stem(params)
    z1, dz1 = jax.jvp(stem.first, (x,), (direction(x),))
    (rout, rpre), (drout, drpre) = jax.jvp(stem.rest, (z1,), (dz1,))
    bad = _pairs_differ((out, pre[0], *pre[1:]), (rout, z1, *rpre)) | _pairs_differ((dout, dpre[0], *dpre[1:]), (drout, dz1, *drpre))
    # One fixed pseudo-random input axis (drawn on the host, as the direction): the placed kernel against a JVP along e_k.
    k = jnp.asarray(int(np.random.default_rng(11).integers(math.prod(x.shape))), jnp.int32)  # an Array, as axis_tangent expects
    e_k = jax.nn.one_hot(k, math.prod(x.shape), dtype=x.dtype).reshape(x.shape)
    want = jax.jvp(lambda u: net.apply(params, u)[1][0], (x,), (e_k,))[1]
    return bad | _pairs_differ((want,), (stem.axis_tangent(k, tuple(x.shape)),))


def recurrent_mismatch(net: Network, params: PyTree, x: Array, ref: Probe | None = None) -> Array:
    """Does ``recurrent_cell`` (with ``negative_slope`` and the neuron mask's real frames) fail to reproduce ``apply``'s
    pre-activations at ``x`` (value and directional derivative)?"""
    (_, pre), (_, dpre) = _reference(net, params, x, ref)
    cell = net.recurrent_cell(params)
    w_in, w_rec, bias = (jnp.asarray(a) for a in cell)
    hidden, feats = w_in.shape
    if (
        len(pre) != 1
        or x.ndim != 2
        or x.shape[1] not in (feats, feats + 1)
        or pre[0].shape != (x.shape[0], hidden)
        or w_rec.shape != (hidden, hidden)
    ):
        return jnp.ones((), bool)  # not an Elman cell over (T, F[+1]) frames with one (T, H) preact
    valid = jnp.ones(x.shape[:1], bool) if net.neuron_mask is None else jnp.any(net.neuron_mask(params, x)[0], axis=-1)
    # Value and derivative recurrences in one (H, 2) product per step; slopes from apply's own pre-activations.
    wd = w_rec.dtype  # the declared weights' own precision sets the tolerance
    dt = jnp.result_type(w_in, w_rec, bias, x)  # e.g. float32 weights under float64 inputs
    w_in, w_rec, bias = w_in.astype(dt), w_rec.astype(dt), bias.astype(dt)
    ud = jnp.stack([x[:, :feats], direction(x)[:, :feats]], axis=-1).astype(dt)  # (T, F, 2)
    slope = jnp.where(pre[0] > 0, 1.0, net.negative_slope).astype(dt)

    def step(h, inp):
        u, s, v = inp
        z = w_in @ u + w_rec @ h + jnp.stack([bias, jnp.zeros_like(bias)], axis=1)
        return jnp.where(v, s[:, None] * z, h), z

    _, zd = jax.lax.scan(step, jnp.zeros((hidden, 2), dt), (ud, slope, valid))
    # Padded steps are not neurons: compare real frames only.
    got = jnp.where(valid[:, None, None], zd, jnp.stack([pre[0], dpre[0]], axis=-1))
    reach = jnp.max(jnp.sum(jnp.abs(w_in), axis=1)) * jnp.max(jnp.abs(ud)) + jnp.max(jnp.abs(zd)) + jnp.max(jnp.abs(bias))
    return _differ(got[..., 0], pre[0], _layer_scale(reach, pre[0]), wd) | _differ(got[..., 1], dpre[0], _layer_scale(reach, dpre[0]), wd)


def _pairs_differ(want: Sequence[Array], got: Sequence[Array]) -> Array:
    if len(want) != len(got):
        return jnp.ones((), bool)
    bad = jnp.zeros((), bool)
    for w, g in zip(want, got):
        if jnp.size(w) != jnp.size(g):
            return jnp.ones((), bool)
        bad |= _differ(g, w, _layer_scale(jnp.asarray(w), jnp.asarray(g)))
    return bad


def _declared(net: Network) -> list[tuple[str, object]]:
    checks = [("dense_layers/negative_slope", net.dense_layers, dense_mismatch), ("apply_frozen", net.apply_frozen, frozen_mismatch)]
    checks += [("stem", net.stem, stem_mismatch), ("recurrent_cell", net.recurrent_cell, recurrent_mismatch)]
    return [(name, fn) for name, declared, fn in checks if declared is not None]


def declared_names(net: Network) -> str:
    """The declarations ``net`` carries, comma-separated ('' for a plain function)."""
    return ", ".join(name for name, _ in _declared(net))


def declaration_mismatch(net: Network, params: PyTree, x: Array, ref: Probe | None = None) -> Array:
    """Does any declaration of ``net`` disagree with its ``apply`` at ``x`` (one example)? ``ref``: a :func:`probe` at ``x`` to reuse."""
    declared = _declared(net)
    if ref is None and len(declared) > 1:  # one reference for all
        ref = probe(net, params, x, second=False)
    bad = jnp.zeros((), bool)
    for _, fn in declared:
        bad |= fn(net, params, x, ref)
    return bad

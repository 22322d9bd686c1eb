"""A network's first layer split off, so that one-hot input tangents skip it (paper Eq. 10 on conv nets).

The sampled ROLL loss (Eq. 10) differentiates every pre-activation along D'
input axes e_k. A dense JVP pushes each one-hot e_k through the first
convolution as if it were a full image; but the first layer is affine, so
its derivative along e_k is the kernel placed at that pixel: at most
ceil(k_h / s_h) x ceil(k_w / s_w) outputs per channel, and no multiply-adds.
A network that can split itself after its first pre-activation
(:class:`Stem`) lets :func:`stem_columns` start the tangents there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lld_jax._src.declarations import poison_mismatch, stem_mismatch
from lld_jax._src.network import Array, Network, PyTree, flat_mask, mask_neurons


class Stem(NamedTuple):
    """A network split after its first pre-activation, for one example (params bound).

    Attributes:
      first: ``x -> z1``, the first pre-activation ``preacts[0]``; it must be
        affine in ``x``.
      axis_tangent: ``(k, input_shape) -> dz1/dx_k`` for a flat index ``k``
        (int scalar, traced) into an input of ``input_shape`` (static: the
        example's shape), shape of ``z1``: ``first``'s derivative along the
        input axis e_k, computed without a dense product
        (:func:`conv_axis_tangent`).
      rest: ``z1 -> (output, preacts[1:])``: the network from its first
        pre-activation on, so that ``apply(params, x)`` equals
        ``(rest(z1)[0], (z1, *rest(z1)[1]))`` with ``z1 = first(x)``.

    Verified at every example where the loss uses it (values, a random
    directional derivative and one placed kernel against ``apply``): a stem
    that is not the network's own first layer poisons the loss (NaN) and
    fails the value checks.
    """

    first: Callable[[Array], Array]
    axis_tangent: Callable[[Array, tuple[int, ...]], Array]
    rest: Callable[[Array], tuple[Array, tuple[Array, ...]]]


def conv_axis_tangent(
    kernel: Array,
    k: Array,
    input_shape: Sequence[int],
    strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
) -> Array:
    """Derivative of a bias-free 2-D convolution's output along the flat input axis ``k``: its kernel, placed.

    For the one-hot input e_(i, j, c), output (o, o') reads tap
    ``(i + p_h - o s_h, j + p_w - o' s_w)`` of input channel c, so the
    derivative is ``kernel[a, b, c, :]`` on the outputs whose tap lies in the
    kernel, and 0 elsewhere. Exactly ``conv(e_k)`` (cross-correlation, as
    ``lax.conv_general_dilated`` and ``nnx.Conv``; no dilation, no groups).

    Args:
      kernel: (k_h, k_w, C_in, C_out), HWIO.
      k: flat index into an input of ``input_shape`` (channels last).
      input_shape: (H, W, C_in).
      strides: (s_h, s_w).
      padding: ((lo_h, hi_h), (lo_w, hi_w)) in pixels.

    Returns:
      (H_out, W_out, C_out).
    """
    kh, kw, cin, cout = kernel.shape
    h, w, c = input_shape
    if c != cin:
        raise ValueError(f"the kernel reads {cin} channels but the input has {c}.")
    outs, starts, taps, oks = [], [], [], []
    for pos, n, kk, s, (lo, hi) in zip((k // (w * c), (k // c) % w), (h, w), (kh, kw), strides, padding):
        n_out = (n + lo + hi - kk) // s + 1
        m = min(-(-kk // s), n_out)  # outputs one pixel reaches, at most
        o0 = jnp.clip(-((kk - 1 - pos - lo) // s), 0, n_out - m)  # first of them: ceil((pos + lo - kk + 1) / s)
        tap = pos + lo - (o0 + jnp.arange(m)) * s
        outs.append(n_out)
        starts.append(o0.astype(jnp.int32))
        taps.append(jnp.clip(tap, 0, kk - 1))
        oks.append((tap >= 0) & (tap < kk))
    patch = kernel[taps[0][:, None], taps[1][None, :], k % c, :]  # (m_h, m_w, C_out)
    patch = patch * (oks[0][:, None] & oks[1][None, :])[..., None].astype(kernel.dtype)
    return jax.lax.dynamic_update_slice(jnp.zeros((outs[0], outs[1], cout), kernel.dtype), patch, (*starts, jnp.int32(0)))


def stem_columns(net: Network, params: PyTree, x: Array, idx: Array) -> tuple[Array, Array]:
    """``(z (N,), cols (K, N))`` for ONE example: all pre-activations and their derivatives along the axes ``idx`` (K,).

    The first layer's derivatives are ``net.stem``'s placed kernels; only the
    rest of the network runs JVPs. Equal to ``vmap(lin)(one_hot(idx))`` of
    :func:`~lld_jax._src.gradients.linearize_preacts` (masked neurons inert).
    """
    stem = net.stem(params)
    z1 = stem.first(x)

    def rest(u):
        return jnp.concatenate([jnp.ravel(p) for p in stem.rest(u)[1]])

    z_rest, lin = jax.linearize(rest, z1)
    # The parameters' dtype may be narrower than x's (float32 weights, float64 x): tangents follow z1.
    t1 = jax.vmap(lambda k: stem.axis_tangent(k, tuple(x.shape)))(idx).astype(z1.dtype)
    cols = jnp.concatenate([t1.reshape(idx.shape[0], -1), jax.vmap(lin)(t1)], axis=1)
    z = jnp.concatenate([jnp.ravel(z1), z_rest])
    z = poison_mismatch(z, stem_mismatch, net, params, x)  # a stem that is not this network's first layer: poison
    z, cols_t = mask_neurons(flat_mask(net, params, x), z, cols.T)
    return z, cols_t.T


def check_stem(net: Network, params: PyTree, x: Array, hidden: Sequence[tuple[int, ...]]) -> None:
    """Raises if ``net.stem`` disagrees with ``hidden``, the shapes of ``net.apply``'s pre-activations on ``x`` (trace-time only)."""
    shape = tuple(x.shape)
    stem = jax.eval_shape(lambda p, u: (lambda s: (s.first(u), s.axis_tangent(jnp.int32(0), shape), s.rest(s.first(u))[1]))(net.stem(p)), params, x)
    want = [tuple(h) for h in hidden]
    got = [tuple(stem[0].shape)] + [tuple(p.shape) for p in stem[2]]
    if got != want or tuple(stem[1].shape) != want[0]:
        raise ValueError(
            f"the network's stem does not match its apply: first/rest give pre-activations of shapes {got} and "
            f"axis_tangent {tuple(stem[1].shape)}, apply gives {want}. stem(params) must split apply after preacts[0]."
        )

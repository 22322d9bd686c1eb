"""The network protocol: what lld_jax needs to know about a piecewise-linear net.

A network is any function ``apply(params, x) -> (output, preacts)`` for ONE
example ``x``, where ``preacts`` is the tuple of every hidden pre-activation
(the inputs of each ReLU-like unit) in depth order (paper Sec. 1.1, 4.3).
:class:`Network` wraps such a function with optional extras that unlock the
faster gradient methods.

A :class:`Network` is hashable and compares by value, so it can be a static
argument of ``jax.jit``: two wrappers of the same model share compiled code.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
PyTree = Any
ApplyFn = Callable[[PyTree, Array], tuple[Array, tuple[Array, ...]]]


@dataclasses.dataclass(frozen=True)
class Network:
    """A piecewise-linear network in the form lld_jax understands.

    Attributes:
      apply: ``(params, x) -> (output, preacts)`` for one example.
      input_shape: shape of one example, or ``None`` if unknown.
      apply_frozen: ``(params, x, slopes) -> (output, preacts)`` with each
        activation ``a = act(z)`` replaced by ``a = slopes[i] * z``; ``slopes``
        has the structure of ``preacts`` (the linearised net g_theta of paper
        Sec. 3.1; needed by ``method="template"``).
      dense_layers: ``params -> [(W, b), ...]`` for an MLP, ``W`` of shape
        ``(fan_out, fan_in)``, hidden layers first, output layer last
        (``method="gram"`` and the sampled loss's fast path).
      negative_slope: slope of the activation for ``z <= 0`` (0 for ReLU,
        alpha for LeakyReLU).
      neuron_mask: ``(params, x) -> masks`` for one example, booleans with the
        structure of ``preacts``; False marks an entry that is not a neuron of
        this example (e.g. the time steps of a padded sequence). Masked
        entries never bound a margin, never count in a loss's mean, and read
        as inactive in patterns, so a padded example gets exactly the results
        of the unpadded one.
    """

    apply: ApplyFn
    input_shape: tuple[int, ...] | None = None
    apply_frozen: Callable[..., tuple[Array, tuple[Array, ...]]] | None = None
    dense_layers: Callable[[PyTree], list[tuple[Array, Array]]] | None = None
    negative_slope: float = 0.0
    neuron_mask: Callable[[PyTree, Array], tuple[Array, ...]] | None = None

    def __call__(self, params: PyTree, x: Array) -> tuple[Array, tuple[Array, ...]]:
        return self.apply(params, x)


def as_network(apply_fn: ApplyFn | Network, *, input_shape: Sequence[int] | None = None) -> Network:
    """Returns ``apply_fn`` as a :class:`Network` (no-op if it already is one).

    Args:
      apply_fn: a :class:`Network` or a function ``(params, x) -> (output,
        preacts)`` for one example.
      input_shape: shape of one example, recorded if the network has none.

    Returns:
      The :class:`Network`.
    """
    if isinstance(apply_fn, Network):
        if input_shape is not None and apply_fn.input_shape is None:
            return dataclasses.replace(apply_fn, input_shape=tuple(input_shape))
        return apply_fn
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be a callable (params, x) -> (output, preacts) or an lld_jax.Network, got {type(apply_fn).__name__}.")
    return Network(apply=apply_fn, input_shape=None if input_shape is None else tuple(input_shape))


def hidden_shapes(net: Network, params: PyTree, shape: tuple[int, ...], dtype: Any) -> tuple[tuple[int, ...], ...]:
    """Shapes of the pre-activations of one example; validates the protocol (trace-time only)."""
    try:
        out = jax.eval_shape(net.apply, params, jax.ShapeDtypeStruct(shape, dtype))
    except Exception as err:  # re-raised with context, never swallowed
        raise ValueError(
            f"the network could not be applied to one example of shape {shape}: {err}. Check that x "
            "has the shape of one example (batched functions: a leading batch axis) and that it is "
            "the shape the network expects."
        ) from err
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TypeError("apply_fn must return a pair (output, preacts) for one example.")
    preacts = out[1]
    if not isinstance(preacts, (tuple, list)):
        raise TypeError("apply_fn must return preacts as a tuple of arrays (one per hidden layer).")
    if sum(math.prod(p.shape) for p in preacts) == 0:
        raise ValueError("the network has no hidden neurons (preacts is empty): its region is the whole input space and margins are undefined.")
    return tuple(tuple(p.shape) for p in preacts)


# What a masked entry reads as: inactive, constant in x and params (zero gradient),
# with |z| = 1 so the ROLL hinge max(0, 1 - |z|) is 0 and |z| / ||grad z|| is +inf.
MASKED_PREACT = -1.0


def flat_mask(net: Network, params: PyTree, x: Array) -> Array | None:
    """``(N,)`` booleans: which entries of ``preacts`` are neurons of this example (``None``: all)."""
    if net.neuron_mask is None:
        return None
    return jax.lax.stop_gradient(jnp.concatenate([jnp.ravel(m) for m in net.neuron_mask(params, x)]).astype(bool))


def mask_neurons(mask: Array | None, z: Array, *per_neuron: Array) -> tuple[Array, ...]:
    """Sets masked neurons to :data:`MASKED_PREACT` in ``z`` and to 0 in per-neuron arrays (leading axis N)."""
    if mask is None:
        return (z, *per_neuron)
    zero = lambda a: jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, 0)
    return (jnp.where(mask, z, MASKED_PREACT), *(zero(a) for a in per_neuron))


def neuron_count(mask: Array | None, n: int) -> Array | int:
    """Number of neurons of the example: ``n``, or the number of True entries of ``mask``."""
    return n if mask is None else jnp.sum(mask)


def flat_preacts(net: Network, params: PyTree, x: Array) -> tuple[Array, Array]:
    """``(output, z)`` for one example with all pre-activations concatenated, ``z`` of shape (N,) (masked neurons inert)."""
    out, pre = net.apply(params, x)
    z = jnp.concatenate([jnp.ravel(p) for p in pre])
    return out, mask_neurons(flat_mask(net, params, x), z)[0]


def pattern_slopes(net: Network, preacts: Sequence[Array]) -> tuple[Array, ...]:
    """Slopes of each activation at the given pre-activations (1 if z > 0, else alpha)."""
    a = net.negative_slope
    return tuple(jnp.where(p > 0, jnp.ones_like(p), jnp.full_like(p, a)) for p in preacts)


def neuron_location(hidden: Sequence[tuple[int, ...]], flat_index: Array) -> tuple[Array, Array]:
    """Maps a flat neuron index to ``(layer, index within that layer's flattened preact)``."""
    sizes = np.array([math.prod(s) for s in hidden])
    starts = jnp.asarray(np.concatenate([[0], np.cumsum(sizes)[:-1]]))
    layer = jnp.searchsorted(jnp.asarray(np.cumsum(sizes)), flat_index, side="right")
    return layer, flat_index - starts[layer]

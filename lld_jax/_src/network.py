"""The network protocol: what lld_jax needs to know about a piecewise-linear net.

A network is any function ``apply(params, x) -> (output, preacts)`` for ONE
example ``x``, where ``preacts`` is the tuple of every hidden pre-activation
(the inputs of each ReLU-like unit) in depth order (paper Sec. 4.3).
:class:`Network` wraps such a function with optional extras that unlock the
faster gradient methods.

A :class:`Network` is hashable and compares by a stable identity of its
functions (:func:`function_key`), so it can be a static argument of
``jax.jit``: two wrappers of the same model, or two lambdas written by the
same line over the same captured objects, share compiled code.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
PyTree = Any
ApplyFn = Callable[[PyTree, Array], tuple[Array, tuple[Array, ...]]]


class _Same:
    """An object compared by identity (kept alive while the key lives): arrays, modules, anything unhashable."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


def _value_key(v: Any, depth: int) -> Any:
    if isinstance(v, (types.FunctionType, functools.partial, types.MethodType)):
        return function_key(v, depth + 1)
    if isinstance(v, tuple):
        return ("tuple", *(_value_key(e, depth + 1) for e in v))
    if isinstance(v, dict):
        return ("dict", *((k, _value_key(e, depth + 1)) for k, e in v.items()))
    try:
        hash(v)
    except TypeError:
        return _Same(v)
    return (type(v), v)  # hashable: by value (numbers, strings, frozen dataclasses, Networks)


def function_key(f: Any, depth: int = 0) -> Any:
    """A stable identity of a callable, for compile caches: equal keys mean the same computation.

    A Python function is keyed by its code, its module's globals, its
    defaults and what it captures (hashable values by value, everything else,
    e.g. arrays and modules, by identity); ``functools.partial`` by its
    function and arguments; a bound method by its function and instance
    (identity). So ``lambda p, u: model(p, u)`` built afresh in a loop reuses
    the compiled code. As with any ``jax.jit`` static argument, state read
    through a captured mutable object is fixed at trace time: pass what
    changes (the weights) in ``params``.
    """
    if depth > 8:  # deep or self-referencing closures: fall back to identity
        return _Same(f)
    if isinstance(f, types.FunctionType):
        cells = tuple(_value_key(c.cell_contents, depth) if _filled(c) else ("empty",) for c in f.__closure__ or ())
        return ("function", f.__code__, _Same(f.__globals__), cells, _value_key(f.__defaults__, depth), _value_key(f.__kwdefaults__, depth))
    if isinstance(f, functools.partial):
        return ("partial", function_key(f.func, depth + 1), _value_key(f.args, depth), _value_key(f.keywords, depth))
    if isinstance(f, types.MethodType):
        return ("method", function_key(f.__func__, depth + 1), _Same(f.__self__))
    return _value_key(f, depth)


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:  # a cell not yet assigned
        return False
    return True


_CALLABLE_FIELDS = ("apply", "apply_frozen", "dense_layers", "neuron_mask", "stem", "recurrent_cell")


@dataclasses.dataclass(frozen=True, eq=False)
class Network:
    """A piecewise-linear network in the form lld_jax understands.

    Attributes:
      apply: ``(params, x) -> (output, preacts)`` for one example.
      input_shape: shape of one example, or ``None`` if unknown.
      apply_frozen: ``(params, x, slopes) -> (output, preacts)`` with each
        activation ``a = act(z)`` replaced by ``a = slopes[i] * z``; ``slopes``
        has the structure of ``preacts`` (the linearised net g_theta of paper
        Sec. 4.1; needed by ``method="template"``).
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
      stem: ``params -> Stem``: the network split after its first
        pre-activation, with that layer's derivative along an input axis
        computed directly (:class:`lld_jax.models.Stem`; a convolution's kernel
        placed at the pixel). The sampled loss's axis estimator then runs
        JVPs from the first pre-activation on (ResNet-18 at 299x299, D' = 18:
        18% less time per training step on CPU).
      recurrent_cell: ``params -> (w_in (H, F), w_rec (H, H), bias (H,))``
        (a :class:`lld_jax.models.RecurrentCell` or a plain tuple) for an
        Elman-type recurrent network (one preact ``(T, H)``: ``z_t = w_in x_t +
        bias + w_rec h_{t-1}`` on real frames, ``x`` of shape ``(T, F)`` or
        ``(T, F + 1)`` with the frame flag last); unlocks ``method="causal"``,
        the exact gradient schedule whose tangents start at their own frame.
    """

    apply: ApplyFn
    input_shape: tuple[int, ...] | None = None
    apply_frozen: Callable[..., tuple[Array, tuple[Array, ...]]] | None = None
    dense_layers: Callable[[PyTree], list[tuple[Array, Array]]] | None = None
    negative_slope: float = 0.0
    neuron_mask: Callable[[PyTree, Array], tuple[Array, ...]] | None = None
    stem: Callable[[PyTree], Any] | None = None
    recurrent_cell: Callable[[PyTree], Any] | None = None

    def __call__(self, params: PyTree, x: Array) -> tuple[Array, tuple[Array, ...]]:
        return self.apply(params, x)

    def _key(self) -> tuple:
        return (
            *(None if getattr(self, f) is None else function_key(getattr(self, f)) for f in _CALLABLE_FIELDS),
            self.input_shape,
            self.negative_slope,
        )

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Network) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


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


@dataclasses.dataclass(frozen=True)
class _Standardized:
    """``fn(params, (x - mean) / std, *rest)``; hashable (tuples), so jit caches compile once per model."""

    fn: Callable[..., Any]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, params: PyTree, x: Array, *rest: Any) -> Any:
        return self.fn(params, _standardize(x, self.mean, self.std), *rest)


def _standardize(x: Array, mean: tuple[float, ...], std: tuple[float, ...]) -> Array:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"normalized_inputs needs floating-point inputs (e.g. [0, 1] pixels as float32), got {x.dtype}; convert x first.")
    return (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(std, x.dtype)


@dataclasses.dataclass(frozen=True)
class _StandardizedStem:
    """The stem of a network behind :func:`normalized_inputs`: tangents along raw input axes are divided by their channel's std."""

    stem: Callable[[PyTree], Any]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, params: PyTree) -> Any:
        st = self.stem(params)
        std = jnp.asarray(self.std)

        def first(x: Array) -> Array:
            return st.first(_standardize(x, self.mean, self.std))

        def axis_tangent(k: Array, input_shape: tuple[int, ...]) -> Array:
            t = st.axis_tangent(k, input_shape)
            return t / std[k % len(self.std)].astype(t.dtype)

        return st._replace(first=first, axis_tangent=axis_tangent)


def normalized_inputs(net: ApplyFn | Network, mean: Sequence[float], std: Sequence[float]) -> Network:
    """``net`` behind a per-channel standardisation ``(x - mean) / std`` (channels on the last axis).

    The result takes raw inputs (e.g. [0, 1] pixels), so margins, balls and
    distortions are in raw units; it stays piecewise linear (an affine map
    first). Keeps the frozen-pattern apply, the neuron mask and the stem;
    drops ``dense_layers`` and ``recurrent_cell`` (the first layer's weights change).

    Args:
      net: the network on standardised inputs.
      mean, std: per-channel statistics (one number each for a single channel).

    Returns:
      The :class:`Network` on raw inputs.
    """
    net = as_network(net)
    mean, std = tuple(float(m) for m in np.ravel(mean)), tuple(float(s) for s in np.ravel(std))
    if len(mean) != len(std) or not mean:
        raise ValueError(f"mean and std need one number per channel each, got {len(mean)} and {len(std)}.")
    if not all(s > 0 for s in std):
        raise ValueError(f"std must be positive, got {std}.")
    if net.input_shape is not None and len(mean) not in (1, net.input_shape[-1]):
        raise ValueError(f"{len(mean)} channel statistics for inputs of shape {net.input_shape} (channels last).")
    wrap = lambda f: None if f is None else _Standardized(f, mean, std)
    return dataclasses.replace(
        net,
        apply=_Standardized(net.apply, mean, std),
        apply_frozen=wrap(net.apply_frozen),
        dense_layers=None,
        recurrent_cell=None,
        neuron_mask=wrap(net.neuron_mask),
        stem=None if net.stem is None else _StandardizedStem(net.stem, mean, std),
    )


class ProtocolError(TypeError, ValueError):
    """A network that does not follow the ``(params, x) -> (output, preacts)`` protocol (both a
    ``TypeError`` and a ``ValueError``, as such errors were before they had their own class)."""


def hidden_shapes(net: Network, params: PyTree, shape: tuple[int, ...], dtype: Any) -> tuple[tuple[int, ...], ...]:
    """Shapes of the pre-activations of one example; validates the protocol (trace-time only)."""
    try:
        out = jax.eval_shape(net.apply, params, jax.ShapeDtypeStruct(shape, dtype))
    except ProtocolError:
        raise  # says what the network returned; the shape is not the problem
    except Exception as err:  # re-raised with context, never swallowed
        raise ValueError(
            f"the network could not be applied to one example of shape {shape}: {str(err).rstrip('.')}. Check that x "
            "has the shape of one example (batched functions: a leading batch axis) and that it is "
            "the shape the network expects."
        ) from err
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise ProtocolError("apply_fn must return a pair (output, preacts) for one example.")
    preacts = out[1]
    if not isinstance(preacts, (tuple, list)):
        raise ProtocolError("apply_fn must return preacts as a tuple of arrays (one per hidden layer).")
    for i, p in enumerate(preacts):
        if not isinstance(p, jax.ShapeDtypeStruct):
            raise ProtocolError(
                f"preacts[{i}] is a {type(p).__name__}, not an array: return preacts as a flat tuple of arrays, one per hidden layer "
                "(concatenate or flatten nested groups, e.g. tuple(jax.tree.leaves(groups)))."
            )
        if not jnp.issubdtype(p.dtype, jnp.floating):
            raise ProtocolError(f"preacts[{i}] has dtype {p.dtype}: pre-activations must be floating point (the inputs of the ReLU-like units).")
        if math.prod(p.shape) == 0:
            raise ProtocolError(f"preacts[{i}] has shape {tuple(p.shape)}, no entries: drop the empty layer from preacts.")
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


def bounding_neuron(hidden: Sequence[tuple[int, ...]], flat_index: Array, radius: Array) -> tuple[Array, Array]:
    """``(layer, neuron)`` (int32) of the neuron bounding a margin ``radius``; -1 for an infinite one (nothing bounds it)."""
    layer, neuron = neuron_location(hidden, flat_index)
    unbounded = jnp.isinf(radius)
    return jnp.where(unbounded, -1, layer).astype(jnp.int32), jnp.where(unbounded, -1, neuron).astype(jnp.int32)


def neuron_location(hidden: Sequence[tuple[int, ...]], flat_index: Array) -> tuple[Array, Array]:
    """Maps a flat neuron index to ``(layer, index within that layer's flattened preact)``."""
    sizes = np.array([math.prod(s) for s in hidden])
    starts = jnp.asarray(np.concatenate([[0], np.cumsum(sizes)[:-1]]))
    layer = jnp.searchsorted(jnp.asarray(np.cumsum(sizes)), flat_index, side="right")
    return layer, flat_index - starts[layer]

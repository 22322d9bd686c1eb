"""The network protocol: what lld_jax needs to know about a piecewise-linear net.

A network is any function ``apply(params, x) -> (output, preacts)`` for ONE
example ``x``, where ``preacts`` is the tuple of every hidden pre-activation
(the inputs of each ReLU-like unit) in depth order (paper Sec. 1.1, 4.3).
:class:`Network` wraps such a function with optional extras that unlock the
faster gradient methods:

* ``apply_frozen(params, x, slopes)``: the same network with every activation
  replaced by multiplication with the given slopes (the paper's linearised net
  g_theta of Sec. 3.1; needed by ``method="template"``);
* ``dense_layers(params)``: the ``(W, b)`` chain of an MLP (``method="gram"``);
* ``input_shape``: shape of one example, so batched and unbatched calls can be
  told apart;
* ``negative_slope``: the activation's slope on the inactive side (0 for ReLU,
  alpha for LeakyReLU).

Every public function of the package accepts a plain callable or a
:class:`Network`; :func:`as_network` converts.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

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
        has the structure of ``preacts``.
      dense_layers: ``params -> [(W, b), ...]`` for an MLP, ``W`` of shape
        ``(fan_out, fan_in)``, hidden layers first, output layer last.
      negative_slope: slope of the activation for ``z <= 0``.
    """

    apply: ApplyFn
    input_shape: tuple[int, ...] | None = None
    apply_frozen: Callable[..., tuple[Array, tuple[Array, ...]]] | None = None
    dense_layers: Callable[[PyTree], list[tuple[Array, Array]]] | None = None
    negative_slope: float = 0.0

    def __call__(self, params: PyTree, x: Array) -> tuple[Array, tuple[Array, ...]]:
        return self.apply(params, x)


def as_network(apply_fn: ApplyFn | Network, *, input_shape: Sequence[int] | None = None) -> Network:
    """Returns ``apply_fn`` as a :class:`Network` (no-op if it already is one)."""
    if isinstance(apply_fn, Network):
        if input_shape is not None and apply_fn.input_shape is None:
            return dataclasses.replace(apply_fn, input_shape=tuple(input_shape))
        return apply_fn
    if not callable(apply_fn):
        raise TypeError(
            f"apply_fn must be a callable (params, x) -> (output, preacts) or an lld_jax.Network, "
            f"got {type(apply_fn).__name__}."
        )
    return Network(apply=apply_fn, input_shape=None if input_shape is None else tuple(input_shape))


def from_nnx(module: Any, *, input_shape: Sequence[int] | None = None) -> tuple[Network, PyTree]:
    """Adapts a Flax NNX module to the protocol; returns ``(network, params)``.

    ``params`` is the module's whole state (parameters and BatchNorm
    statistics) as a plain nested dict.

    The module is called on one example and must either return
    ``(output, preacts)``, or return the output and ``sow`` each hidden
    pre-activation as ``nnx.Intermediate`` in depth order (they are read back in
    call order, not name order). Modules with a ``slopes`` keyword (the
    built-in models) also get the frozen-pattern apply used by the template
    method, and MLPs their dense chain.
    """
    from flax import nnx

    graphdef, state = nnx.split(module)
    params = nnx.to_pure_dict(state)  # plain nested dict: friendly to optax, orbax and users

    def _call(params, x, **kw):
        model = nnx.merge(graphdef, params)
        res, captured = nnx.capture(model, nnx.Intermediate)(x, **kw)
        if isinstance(res, tuple) and len(res) == 2 and isinstance(res[1], (tuple, list)):
            return res[0], tuple(res[1])
        sown = _sown(captured)
        if not sown:
            raise ValueError(
                f"{type(module).__name__} returned a single output and sowed no nnx.Intermediate: "
                "return (output, preacts) or sow each hidden pre-activation with "
                "self.sow(nnx.Intermediate, name, z)."
            )
        return res, sown

    apply = lambda params, x: _call(params, x)
    frozen = None
    if "slopes" in _call_params(module):
        frozen = lambda params, x, slopes: _call(params, x, slopes=slopes)
    dense = getattr(type(module), "dense_layers", None)
    dense_fn = None
    if dense is not None:
        dense_fn = lambda params: nnx.merge(graphdef, params).dense_layers()
    shape = input_shape if input_shape is not None else getattr(module, "input_shape", None)
    net = Network(
        apply=apply,
        input_shape=None if shape is None else tuple(shape),
        apply_frozen=frozen,
        dense_layers=dense_fn,
        negative_slope=float(getattr(module, "negative_slope", 0.0)),
    )
    return net, params


def _call_params(module: Any) -> tuple[str, ...]:
    import inspect

    return tuple(inspect.signature(type(module).__call__).parameters)


def _sown(captured: Any) -> tuple[Array, ...]:
    from flax import nnx

    # nnx.capture keeps sow order inside each name's tuple but sorts the names
    # as strings (z10 before z2); sort them naturally instead (z2 before z10).
    out = []
    for _, var in sorted(nnx.to_flat_state(captured), key=lambda kv: _natural_key(kv[0])):
        value = var.get_value() if hasattr(var, "get_value") else var.value
        out.extend(value if isinstance(value, tuple) else (value,))
    return tuple(out)


def _natural_key(path: tuple) -> tuple:
    import re

    key = []
    for p in path:
        for part in re.split(r"(\d+)", str(p)):
            key.append((0, int(part), "") if part.isdigit() else (1, 0, part))
    return tuple(key)


# --------------------------------------------------------------------------
# Validation shared by every entry point.


def is_concrete(*trees: Any) -> bool:
    """True when no leaf is a JAX tracer (so value checks can run eagerly)."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(trees))


def example_shape(net: Network, params: PyTree, x: Array) -> tuple[int, ...]:
    """Shape of one example of a BATCH ``x``, checked against the network."""
    x = jnp.asarray(x)
    if x.ndim == 0:
        raise ValueError("x must be a batch of examples with a leading batch axis; got a scalar.")
    if x.shape[0] == 0:
        raise ValueError(f"x is an empty batch (shape {x.shape}); pass at least one example.")
    shape = tuple(x.shape[1:])
    if net.input_shape is not None and shape != tuple(net.input_shape):
        raise ValueError(
            f"input shape mismatch: the network takes examples of shape {tuple(net.input_shape)}, "
            f"but x has shape {x.shape} (batch axis first)."
        )
    return shape


def hidden_shapes(net: Network, params: PyTree, shape: tuple[int, ...], dtype: Any) -> tuple[tuple[int, ...], ...]:
    """Shapes of the pre-activations of one example; validates the protocol."""
    try:
        out = jax.eval_shape(net.apply, params, jax.ShapeDtypeStruct(shape, dtype))
    except Exception as err:  # re-raised with context, never swallowed
        raise ValueError(
            f"the network could not be applied to one example of shape {shape}: {err}. Check that x "
            "has a leading batch axis and that each example has the shape the network expects."
        ) from err
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TypeError("apply_fn must return a pair (output, preacts) for one example.")
    preacts = out[1]
    if not isinstance(preacts, (tuple, list)):
        raise TypeError("apply_fn must return preacts as a tuple of arrays (one per hidden layer).")
    if sum(math.prod(p.shape) for p in preacts) == 0:
        raise ValueError(
            "the network has no hidden neurons (preacts is empty): its region is the whole input "
            "space and margins are undefined."
        )
    return tuple(tuple(p.shape) for p in preacts)


def check_finite(x: Array, name: str = "x") -> None:
    """Raises if a concrete array holds NaN or Inf."""
    if not is_concrete(x):
        return
    bad = ~np.isfinite(np.asarray(x))
    if bad.any():
        idx = np.argwhere(bad)[0]
        raise ValueError(
            f"{name} contains {int(bad.sum())} NaN or Inf value(s) (first at index {tuple(idx.tolist())}); "
            "margins are only defined for finite inputs."
        )


def check_piecewise_linear(net: Network, params: PyTree, x: Array, *, seed: int = 0) -> None:
    """Raises if the network is not piecewise linear around one example ``x``.

    A piecewise-linear map has zero second directional derivative almost
    everywhere, and JAX's derivatives of relu/leaky_relu/abs/max are exactly
    zero there; tanh, GELU or a softmax inside the network are not.
    """
    if not is_concrete(params, x):
        return
    stats = np.asarray(_curvature(net)(params, x, jax.random.key(seed)))
    for name, (scale, curv) in zip(("output", "preacts"), stats):
        if curv > 1e-6 * (1.0 + scale):
            raise ValueError(
                f"the network is not piecewise linear: its {name} has a non-zero second derivative "
                f"({curv:.3g}) at the first example. lld_jax needs affine maps and piecewise-linear "
                "activations only (ReLU, LeakyReLU, abs, max-pooling); remove tanh, GELU, sigmoid or "
                "softmax from inside the network (put softmax in the loss)."
            )


@functools.lru_cache(maxsize=256)
def _curvature(net: Network):
    """Jitted: max |first| and max |second| directional derivative of (output, preacts)."""

    def stats(params, x, key):
        v = jax.random.normal(key, x.shape, x.dtype)
        first = lambda xx: jax.jvp(lambda u: net.apply(params, u), (xx,), (v,))[1]
        d1, d2 = jax.jvp(first, (x,), (v,))
        amax = lambda t: jnp.max(jnp.stack([jnp.max(jnp.abs(a)) for a in jax.tree.leaves(t)] + [jnp.zeros((), x.dtype)]))
        return jnp.stack([jnp.stack([amax(d1[0]), amax(d2[0])]), jnp.stack([amax(d1[1]), amax(d2[1])])])

    return jax.jit(stats)


def validate(net: Network, params: PyTree, x: Array) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """All input checks for a batch ``x``; returns (example shape, hidden shapes)."""
    shape = example_shape(net, params, x)
    hidden = hidden_shapes(net, params, shape, jnp.asarray(x).dtype)
    check_finite(x)
    if is_concrete(params, x):
        check_piecewise_linear(net, params, jnp.asarray(x)[0])
    return shape, hidden


def flat_preacts(net: Network, params: PyTree, x: Array) -> tuple[Array, Array]:
    """``(output, z)`` for one example with all pre-activations concatenated, ``z`` of shape (N,)."""
    out, pre = net.apply(params, x)
    return out, jnp.concatenate([jnp.ravel(p) for p in pre])


def pad_rows(x: np.ndarray, size: int) -> np.ndarray:
    """Pads a host batch to ``size`` rows with copies of its first row (one compiled shape);
    callers drop the padded results."""
    n = len(x)
    return x if n >= size else np.concatenate([x, np.repeat(x[:1], size - n, axis=0)])


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

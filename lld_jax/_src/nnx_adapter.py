"""Adapter from Flax NNX modules to the network protocol."""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx

from lld_jax._src.network import Array, Network, ProtocolError, PyTree


@dataclasses.dataclass(frozen=True)
class _Merged:
    """Rebuilds the module from ``params``: the non-``nnx.Param`` leaves (``held``, e.g. BatchNorm statistics)
    behind ``stop_gradient``, so losses and optimisers never move them; the RNG streams (unused in
    inference mode, and not differentiable) and leftover sown values come from ``rngs``, kept out of ``params``.

    Compares by graph definition and ``held`` (not by the RNG values), so two ``from_nnx`` calls on
    models of the same structure give equal networks and share ``jax.jit`` caches.
    """

    graphdef: Any
    held: tuple[tuple[Any, ...], ...] = ()
    rngs: Any = dataclasses.field(default=None, compare=False)

    def module(self, params: PyTree) -> nnx.Module:
        if self.held:
            params = _stop_gradient_at(params, self.held)
        return nnx.merge(self.graphdef, self.rngs or {}, params)


@dataclasses.dataclass(frozen=True)
class _NNXApply(_Merged):
    """``(params, x[, slopes]) -> (output, preacts)`` of an NNX module."""

    name: str = ""
    frozen: bool = False

    def __call__(self, params: PyTree, x: Array, slopes: Sequence[Array] | None = None):
        model = self.module(params)
        kw = {} if not self.frozen else {"slopes": slopes}
        res, captured = nnx.capture(model, nnx.Intermediate)(x, **kw)
        if isinstance(res, tuple) and len(res) == 2 and isinstance(res[1], (tuple, list)):
            return res[0], tuple(res[1])
        sown = _sown(captured)
        if not sown:
            raise ProtocolError(
                f"{self.name} returned a single output and sowed no nnx.Intermediate, so it has no hidden pre-activations "
                "to certify: return (output, preacts) from __call__, or sow each hidden pre-activation with "
                "self.sow(nnx.Intermediate, name, z) in depth order."
            )
        return res, sown


@dataclasses.dataclass(frozen=True)
class _NNXMask(_Merged):
    """``(params, x) -> masks`` from a module's ``neuron_mask(x)`` method."""

    def __call__(self, params: PyTree, x: Array) -> tuple[Array, ...]:
        return tuple(self.module(params).neuron_mask(x))


@dataclasses.dataclass(frozen=True)
class _NNXStem(_Merged):
    """``params -> Stem`` from a module's ``stem_split()`` method."""

    def __call__(self, params: PyTree) -> Any:
        return self.module(params).stem_split()


@dataclasses.dataclass(frozen=True)
class _NNXDense(_Merged):
    def __call__(self, params: PyTree) -> list[tuple[Array, Array]]:
        return self.module(params).dense_layers()


@dataclasses.dataclass(frozen=True)
class _NNXCell(_Merged):
    """``params -> RecurrentCell`` from a module's ``recurrent_cell()`` method."""

    def __call__(self, params: PyTree) -> Any:
        return self.module(params).recurrent_cell()


def _stop_gradient_at(params: PyTree, paths: tuple[tuple[Any, ...], ...]) -> PyTree:
    out = dict(params)
    for path in paths:
        node = out
        for k in path[:-1]:
            node[k] = dict(node[k])
            node = node[k]
        node[path[-1]] = jax.lax.stop_gradient(node[path[-1]])
    return out


def _check_inference_mode(module: nnx.Module, name: str) -> None:
    """Refuses a module whose BatchNorm or Dropout is in training mode: not one fixed piecewise-linear function."""
    walk = getattr(nnx, "iter_modules", None)  # newer Flax; older ones have the method only
    for path, sub in walk(module) if walk is not None else module.iter_modules():
        where = ".".join(map(str, (name, *path)))
        if isinstance(sub, nnx.BatchNorm) and not sub.use_running_average:
            raise ValueError(
                f"{where} is a BatchNorm in training mode: it would normalise each example by its own statistics, "
                "which is not the network you trained. Call module.eval() (or build it with use_running_average=True) before from_nnx."
            )
        if isinstance(sub, nnx.Dropout) and not sub.deterministic and sub.rate > 0:
            raise ValueError(f"{where} is a Dropout in training mode (random): call module.eval() (or set deterministic=True) before from_nnx.")


def from_nnx(module: nnx.Module, *, input_shape: Sequence[int] | None = None) -> tuple[Network, PyTree]:
    """Adapts a Flax NNX module to the protocol; returns ``(network, params)``.

    The module is called on one example and must either return
    ``(output, preacts)``, or return the output and ``sow`` each hidden
    pre-activation as ``nnx.Intermediate`` in depth order (read back in natural
    name order: ``z2`` before ``z10``). Modules with a ``slopes`` keyword (the
    built-in models) also get the frozen-pattern apply used by the template
    method, modules with a ``dense_layers()`` method (MLPs) their dense
    chain, and modules with a ``neuron_mask(x)`` method (padded sequences,
    max-pooling and maxout) the :attr:`~lld_jax.Network.neuron_mask` that
    marks the entries that are not neurons, and modules with a
    ``stem_split()`` method (:class:`~lld_jax.models.ResNet`, :class:`~lld_jax.models.CNN`) the
    :attr:`~lld_jax.Network.stem` of the sampled loss's fast path, and modules with a
    ``recurrent_cell()`` method (:class:`~lld_jax.models.RNN`, :class:`~lld_jax.models.ScoRNN`) the
    :attr:`~lld_jax.Network.recurrent_cell` of ``method="causal"``. Three optional module attributes,
    read here once, switch these off: ``supports_frozen_pattern = False``
    (no frozen-pattern apply even with a ``slopes`` keyword: max-pooling,
    whose pattern cannot be frozen), ``has_neuron_mask = False`` (the
    ``neuron_mask`` method is ignored: every entry is a neuron) and
    ``has_stem = False`` (the ``stem_split`` method is ignored).

    Args:
      module: the NNX module.
      input_shape: shape of one example (default: ``module.input_shape`` if
        the module has one).

    Returns:
      ``(network, params)``; ``params`` is the module's state (parameters
      and BatchNorm statistics) as a plain nested dict, friendly to optax,
      Orbax and users. Everything that is not an ``nnx.Param`` (BatchNorm
      statistics) is held constant: no gradient reaches it, so training moves
      only the parameters. RNG streams (e.g. a Dropout's) stay in the network,
      out of ``params``. Networks of modules with the same structure compare
      equal, so calling ``from_nnx`` again does not recompile.

    Raises:
      ValueError: a BatchNorm or Dropout of the module is in training mode
        (call ``module.eval()`` first).
    """
    name = type(module).__name__
    _check_inference_mode(module, name)
    # RNG streams and values sown by an earlier plain call are not parameters: they stay in the network.
    graphdef, aside, state = nnx.split(module, nnx.Any(nnx.RngState, nnx.Intermediate), ...)
    params = nnx.to_pure_dict(state)
    held = tuple(tuple(path) for path, var in nnx.to_flat_state(state) if not isinstance(var, nnx.Param))
    merged = {"graphdef": graphdef, "held": held, "rngs": nnx.to_pure_dict(aside) or None}
    has_slopes = "slopes" in inspect.signature(type(module).__call__).parameters and getattr(module, "supports_frozen_pattern", True)
    has_mask = hasattr(type(module), "neuron_mask") and getattr(module, "has_neuron_mask", True)
    shape = input_shape if input_shape is not None else getattr(module, "input_shape", None)
    net = Network(
        apply=_NNXApply(**merged, name=name),
        input_shape=None if shape is None else tuple(shape),
        apply_frozen=_NNXApply(**merged, name=name, frozen=True) if has_slopes else None,
        dense_layers=_NNXDense(**merged) if hasattr(type(module), "dense_layers") else None,
        negative_slope=float(getattr(module, "negative_slope", 0.0)),
        neuron_mask=_NNXMask(**merged) if has_mask else None,
        stem=_NNXStem(**merged) if hasattr(type(module), "stem_split") and getattr(module, "has_stem", True) else None,
        recurrent_cell=_NNXCell(**merged) if hasattr(type(module), "recurrent_cell") else None,
    )
    return net, params


def _sown(captured: Any) -> tuple[Array, ...]:
    # nnx.capture keeps sow order inside each name's tuple but sorts the names
    # as strings (z10 before z2); sort them naturally instead (z2 before z10).
    out = []
    for _, var in sorted(nnx.to_flat_state(captured), key=lambda kv: _natural_key(kv[0])):
        value = var.get_value() if hasattr(var, "get_value") else var.value
        out.extend(value if isinstance(value, tuple) else (value,))
    return tuple(out)


def _natural_key(path: tuple) -> tuple:
    key = []
    for p in path:
        for part in re.split(r"(\d+)", str(p)):
            key.append((0, int(part), "") if part.isdigit() else (1, 0, part))
    return tuple(key)

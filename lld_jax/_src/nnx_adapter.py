"""Adapter from Flax NNX modules to the network protocol."""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Sequence
from typing import Any

from flax import nnx

from lld_jax._src.network import Array, Network, PyTree


@dataclasses.dataclass(frozen=True)
class _NNXApply:
    """``(params, x[, slopes]) -> (output, preacts)`` of an NNX module.

    Compares by graph definition, so two ``from_nnx`` calls on models of the
    same structure give equal networks and share ``jax.jit`` caches.
    """

    graphdef: Any
    name: str
    frozen: bool = False

    def __call__(self, params: PyTree, x: Array, slopes: Sequence[Array] | None = None):
        model = nnx.merge(self.graphdef, params)
        kw = {} if not self.frozen else {"slopes": slopes}
        res, captured = nnx.capture(model, nnx.Intermediate)(x, **kw)
        if isinstance(res, tuple) and len(res) == 2 and isinstance(res[1], (tuple, list)):
            return res[0], tuple(res[1])
        sown = _sown(captured)
        if not sown:
            raise ValueError(
                f"{self.name} returned a single output and sowed no nnx.Intermediate: "
                "return (output, preacts) or sow each hidden pre-activation with "
                "self.sow(nnx.Intermediate, name, z)."
            )
        return res, sown


@dataclasses.dataclass(frozen=True)
class _NNXMask:
    """``(params, x) -> masks`` from a module's ``neuron_mask(x)`` method."""

    graphdef: Any

    def __call__(self, params: PyTree, x: Array) -> tuple[Array, ...]:
        return tuple(nnx.merge(self.graphdef, params).neuron_mask(x))


@dataclasses.dataclass(frozen=True)
class _NNXStem:
    """``params -> Stem`` from a module's ``stem_split()`` method."""

    graphdef: Any

    def __call__(self, params: PyTree) -> Any:
        return nnx.merge(self.graphdef, params).stem_split()


@dataclasses.dataclass(frozen=True)
class _NNXDense:
    graphdef: Any

    def __call__(self, params: PyTree) -> list[tuple[Array, Array]]:
        return nnx.merge(self.graphdef, params).dense_layers()


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
    ``stem_split()`` method (:class:`~lld_jax.ResNet`, :class:`~lld_jax.CNN`) the
    :attr:`~lld_jax.Network.stem` of the sampled loss's fast path. Three optional module attributes,
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
      ``(network, params)``; ``params`` is the module's whole state
      (parameters and BatchNorm statistics) as a plain nested dict, friendly
      to optax, Orbax and users. Networks of modules with the same structure
      compare equal, so calling ``from_nnx`` again does not recompile.
    """
    graphdef, state = nnx.split(module)
    params = nnx.to_pure_dict(state)
    name = type(module).__name__
    has_slopes = "slopes" in inspect.signature(type(module).__call__).parameters and getattr(module, "supports_frozen_pattern", True)
    has_mask = hasattr(type(module), "neuron_mask") and getattr(module, "has_neuron_mask", True)
    shape = input_shape if input_shape is not None else getattr(module, "input_shape", None)
    net = Network(
        apply=_NNXApply(graphdef, name),
        input_shape=None if shape is None else tuple(shape),
        apply_frozen=_NNXApply(graphdef, name, frozen=True) if has_slopes else None,
        dense_layers=_NNXDense(graphdef) if hasattr(type(module), "dense_layers") else None,
        negative_slope=float(getattr(module, "negative_slope", 0.0)),
        neuron_mask=_NNXMask(graphdef) if has_mask else None,
        stem=_NNXStem(graphdef) if hasattr(type(module), "stem_split") and getattr(module, "has_stem", True) else None,
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

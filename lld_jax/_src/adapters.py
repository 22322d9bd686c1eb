"""Adapters from Flax Linen and Equinox models to the network protocol (``from_nnx`` is in ``nnx_adapter``).

Each returns ``(network, params)`` like :func:`lld_jax.from_nnx`. A dense
stack (a model whose parameters are a chain of dense layers) is recognised
and declared, so ``method="gram"`` and the sampled loss's MLP path apply: the
declaration (weights and the activation's negative slope) is adopted only if
it reproduces the model at probe inputs, and it is verified again at every
example a fast path uses (:mod:`lld_jax._src.declarations`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from lld_jax._src.adapter_stems import adopt_stem, equinox_convs, equinox_stem_at, linen_stem
from lld_jax._src.declarations import dense_mismatch
from lld_jax._src.network import Array, Network, ProtocolError, PyTree, function_key

# Slopes tried when recognising a dense stack: ReLU, then common LeakyReLU slopes (Flax's default 0.01).
_SLOPES = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.3, 0.5)


def _pair_or_sown(res: Any, sown: tuple, name: str) -> tuple[Array, tuple[Array, ...]]:
    if isinstance(res, tuple) and len(res) == 2 and isinstance(res[1], (tuple, list)):
        return res[0], tuple(res[1])
    if not sown:
        raise ProtocolError(
            f"{name} returned a single output and sowed no pre-activations, so it has no hidden neurons to certify: return "
            "(output, preacts) from __call__, or sow each hidden pre-activation (Linen: self.sow('intermediates', name, z)) in depth order."
        )
    return res, sown


def _in_call_order(tree: Any) -> tuple[Array, ...]:
    """The sown values of a Linen ``intermediates`` collection in the order they were sown (dicts keep insertion order)."""
    out: list[Array] = []
    if isinstance(tree, (tuple, list)):
        for v in tree:
            out.extend(_in_call_order(v))
    elif hasattr(tree, "items"):
        for v in tree.values():
            out.extend(_in_call_order(v))
    else:
        out.append(tree)
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class _LinenApply:
    """``(params, x) -> (output, preacts)`` of a Linen module; collections other than ``params`` behind ``stop_gradient``."""

    module: Any

    def __call__(self, params: PyTree, x: Array):
        from flax import errors

        variables = {k: (v if k == "params" else jax.lax.stop_gradient(v)) for k, v in params.items()}
        name = type(self.module).__name__
        try:
            res, state = self.module.apply(variables, x, mutable=["intermediates"])
        except errors.ModifyScopeVariableError as err:
            raise ValueError(
                f"{name} updates {err} while applied: a BatchNorm in training mode normalises each example by its own statistics. "
                "Build the module with use_running_average=True before from_linen."
            ) from err
        except errors.InvalidRngError as err:
            raise ValueError(f"{name} needs random numbers ({err}): a Dropout in training mode. Build it with deterministic=True.") from err
        return _pair_or_sown(res, _in_call_order(state.get("intermediates", {})), name)


@dataclasses.dataclass(frozen=True)
class _LinenDense:
    """``params -> [(W, b), ...]`` of a Linen module whose parameters are dense layers, in creation order."""

    names: tuple[str, ...]

    def __call__(self, params: PyTree) -> list[tuple[Array, Array]]:
        return [(params["params"][k]["kernel"].T, params["params"][k]["bias"]) for k in self.names]


def _adopt_dense(net: Network, params: PyTree, layers: list[tuple[Array, Array]] | None, dense: Any) -> Network:
    """``net`` declaring ``dense`` (and the slope) if the layers chain from the input and reproduce the network at probe inputs."""
    shape = net.input_shape
    if shape is None or not layers or len(layers) < 2:
        return net
    dims = [math.prod(shape)]
    for w, b in layers:
        if w.ndim != 2 or b.ndim != 1 or w.shape[1] != dims[-1] or b.shape[0] != w.shape[0]:
            return net
        dims.append(w.shape[0])
    dtype = jnp.result_type(jnp.float32, layers[0][0].dtype)
    probe = jax.random.normal(jax.random.key(3), (3, *shape), dtype)
    try:
        n_pre = len(jax.eval_shape(net.apply, params, jax.ShapeDtypeStruct(shape, dtype))[1])
    except Exception:  # the protocol error surfaces, with its message, at the first real call
        return net
    if n_pre != len(layers) - 1:
        return net
    for alpha in _SLOPES:
        cand = dataclasses.replace(net, dense_layers=dense, negative_slope=alpha)
        if not bool(jnp.any(jax.vmap(lambda u, c=cand: dense_mismatch(c, params, u))(probe))):
            return cand
    return net


def from_linen(module: Any, variables: PyTree, *, input_shape: Sequence[int] | None = None) -> tuple[Network, PyTree]:
    """Adapts a Flax Linen module to the protocol; returns ``(network, params)``.

    The module is applied to one example and must either return ``(output,
    preacts)``, or return the output and ``self.sow("intermediates", name, z)``
    each hidden pre-activation in depth order (read back in the order sown).
    BatchNorm and Dropout must be in inference mode (``use_running_average=True``,
    ``deterministic=True``); collections other than ``params`` (BatchNorm
    statistics) are held constant (no gradient). A module whose parameters
    are a chain of ``nn.Dense`` layers gets the dense-stack declaration (the
    ``gram`` path), with its activation's slope recognised and verified; one
    whose first pre-activation is an ``nn.Conv`` applied to the input gets
    the stem of the sampled loss's conv path (:class:`~lld_jax.models.Stem`),
    verified likewise.

    Args:
      module: the ``flax.linen.Module``.
      variables: its variables, as returned by ``module.init``.
      input_shape: shape of one example (needed for the dense-stack fast path).

    Returns:
      ``(network, params)``; ``params`` is ``variables`` without any
      ``intermediates``.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn, lld_jax
      >>> class Net(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x):
      ...         z = nn.Dense(8)(x)
      ...         self.sow("intermediates", "z", z)
      ...         return nn.Dense(2)(nn.relu(z))
      >>> net, params = lld_jax.from_linen(Net(), Net().init(jax.random.key(0), jnp.ones(3)), input_shape=(3,))
      >>> net.dense_layers is not None, float(lld_jax.margin(net, params, jnp.ones(3))) > 0
      (True, True)
    """
    from flax import linen as nn

    if not isinstance(module, nn.Module):
        raise TypeError(f"from_linen takes a flax.linen.Module, got {type(module).__name__} (NNX modules: from_nnx; Equinox: from_equinox).")
    params = {k: v for k, v in dict(variables).items() if k != "intermediates"}
    if "params" not in params:
        raise ValueError(f"variables of {type(module).__name__} hold no 'params' collection: pass module.init(key, x), got {sorted(params)}.")
    net = Network(apply=_LinenApply(module), input_shape=None if input_shape is None else tuple(input_shape))
    top = params["params"]
    names = tuple(top)
    if all(hasattr(top[k], "keys") and set(top[k]) == {"kernel", "bias"} for k in names):
        dense = _LinenDense(names)
        net = _adopt_dense(net, params, dense(params), dense)
    return linen_stem(net, params, module), params


class _Static:
    """Compares an Equinox model's non-array part by its tree structure and leaves (lists of layers are unhashable)."""

    static: Any

    def _key(self) -> tuple:
        leaves, treedef = jax.tree_util.tree_flatten(self.static)
        return (type(self), treedef, tuple(function_key(leaf) for leaf in leaves))

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, _Static) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


@dataclasses.dataclass(frozen=True, eq=False)
class _EqxApply(_Static):
    """``(params, x) -> (output, preacts)`` of an Equinox model split into arrays (``params``) and the rest."""

    static: Any

    def __call__(self, params: PyTree, x: Array):
        import equinox as eqx

        model = eqx.combine(params, self.static)
        return _pair_or_sown(model(x), (), type(model).__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class _EqxDense(_Static):
    """``params -> [(W, b), ...]`` from an Equinox model's ``layers`` of ``eqx.nn.Linear``."""

    static: Any

    def __call__(self, params: PyTree) -> list[tuple[Array, Array]]:
        import equinox as eqx

        return [(layer.weight, layer.bias) for layer in eqx.combine(params, self.static).layers]


@dataclasses.dataclass(frozen=True, eq=False)
class _EqxStem(_Static):
    """``params -> Stem`` of an Equinox model whose first pre-activation is the ``eqx.nn.Conv2d`` at ``path`` applied to the input."""

    static: Any
    path: tuple
    input_shape: tuple[int, ...]

    def _key(self) -> tuple:
        return (super()._key(), self.path, self.input_shape)

    def apply_with(self, model: Any, x: Array) -> tuple[Array, tuple[Array, ...]]:
        return _pair_or_sown(model(x), (), type(model).__name__)

    def __call__(self, params: PyTree) -> Any:
        return equinox_stem_at(self, params)


def from_equinox(model: Any, *, input_shape: Sequence[int] | None = None) -> tuple[Network, PyTree]:
    """Adapts an Equinox model to the protocol; returns ``(network, params)``.

    ``model(x)`` on one example must return ``(output, preacts)``. ``params``
    holds the model's floating-point arrays (``eqx.partition(model,
    eqx.is_inexact_array)``), everything else stays in the network; put
    Dropout in inference mode first (``eqx.nn.inference_mode(model)``). A
    model with a ``layers`` sequence of ``eqx.nn.Linear`` (biases on) whose
    pre-activations are those layers' outputs gets the dense-stack
    declaration (the ``gram`` path), and one whose first pre-activation is
    an ``eqx.nn.Conv2d`` applied to the (channels-first) input gets the
    conv stem, each verified as in :func:`from_linen`.

    Args:
      model: the ``equinox.Module``.
      input_shape: shape of one example (needed for the dense-stack fast path).

    Returns:
      ``(network, params)``.
    """
    try:
        import equinox as eqx
    except ImportError as err:  # an optional extra
        raise ImportError('from_equinox needs Equinox: pip install -e ".[equinox]".') from err
    if not isinstance(model, eqx.Module):
        raise TypeError(f"from_equinox takes an equinox.Module, got {type(model).__name__} (NNX: from_nnx; Linen: from_linen).")
    params, static = eqx.partition(model, eqx.is_inexact_array)
    net = Network(apply=_EqxApply(static), input_shape=None if input_shape is None else tuple(input_shape))
    layers = getattr(model, "layers", None)
    if isinstance(layers, (list, tuple)) and layers and all(isinstance(la, eqx.nn.Linear) and la.bias is not None for la in layers):
        dense = _EqxDense(static)
        net = _adopt_dense(net, params, dense(params), dense)
    if net.input_shape is not None and len(net.input_shape) == 3:
        for path in equinox_convs(model)[:4]:  # the first conv called is almost always among the first few in the tree
            cand = adopt_stem(net, params, _EqxStem(static, path, net.input_shape))
            if cand is not net:
                return cand, params
    return net, params

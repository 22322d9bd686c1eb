"""The sampled loss's conv fast path (:class:`~lld_jax.models.Stem`) for Linen and Equinox models.

A model whose first pre-activation is the output of a 2-D convolution that
reads the input directly gets a stem without writing ``stem_split``: the
convolution is found (Linen: the first ``nn.Conv`` called on the input, seen
through ``nn.intercept_methods``; Equinox: an ``eqx.nn.Conv2d`` in the
model's tree), ``first`` is that convolution, ``axis_tangent`` its kernel
placed at the pixel (:func:`~lld_jax.models.conv_axis_tangent`), and ``rest``
the model run with that convolution's output replaced by ``z1``. The stem is
adopted only if it reproduces the model at probe inputs
(:func:`~lld_jax._src.declarations.stem_mismatch`), and it is verified again at
every example the loss uses it. Convolutions with dilation, groups, circular
or causal padding, or a model that mixes the raw input in elsewhere (a
residual from ``x``), keep the generic path.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from lld_jax._src.declarations import stem_mismatch
from lld_jax._src.network import Array, Network, PyTree
from lld_jax._src.stem import Stem, conv_axis_tangent


def _pairs(padding: Any, kernel_size: Sequence[int], strides: Sequence[int], spatial: Sequence[int]) -> tuple[tuple[int, int], ...] | None:
    """Explicit ((lo, hi), (lo, hi)) padding, or None for a padding the placed kernel does not cover."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            return None  # CIRCULAR, CAUSAL, REFLECT: not a zero-padded correlation of the input
        return tuple(tuple(int(v) for v in p) for p in jax.lax.padtype_to_pads(tuple(spatial), tuple(kernel_size), tuple(strides), padding.upper()))
    if isinstance(padding, int):
        return ((padding, padding),) * 2
    pads = tuple(padding)
    if len(pads) != 2:
        return None
    return tuple((int(p), int(p)) if isinstance(p, int) else (int(p[0]), int(p[1])) for p in pads)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if v is None or isinstance(v, int) else tuple(int(u) for u in v)


def adopt_stem(net: Network, params: PyTree, stem: Any) -> Network:
    """``net`` with ``stem`` if it splits the network after its first pre-activation at three probe inputs, else ``net``."""
    cand = dataclasses.replace(net, stem=stem)
    probe = jax.random.normal(jax.random.key(5), (3, *net.input_shape), jnp.result_type(*[jnp.float32, *jax.tree_util.tree_leaves(params)]))
    try:
        bad = jax.vmap(lambda u: stem_mismatch(cand, params, u))(probe)
    except Exception:  # a candidate that does not even trace (shapes, layouts) is simply not the stem
        return net
    return net if bool(jnp.any(bad)) else cand


# --- Linen ---------------------------------------------------------------------------------------


def _linen_path(module: Any) -> tuple[str, ...]:
    return tuple(module.scope.path)


def find_linen_conv(module: Any, variables: PyTree, input_shape: tuple[int, ...]) -> tuple[tuple[str, ...], Any] | None:
    """``(scope path, unbound clone)`` of the first ``nn.Conv`` applied to the model's input itself, or None."""
    from flax import linen as nn

    found: list[Any] = []
    seen: dict[str, Any] = {}

    def spy(next_fun, args, kwargs, context):
        mod = context.module
        if context.method_name == "__call__" and mod.scope is not None:
            if not _linen_path(mod):
                seen.setdefault("x", args[0] if args else None)
            elif not found and isinstance(mod, nn.Conv) and args and args[0] is seen.get("x"):
                found.append((_linen_path(mod), mod.clone(parent=None)))
        return next_fun(*args, **kwargs)

    try:
        with nn.intercept_methods(spy):
            jax.eval_shape(lambda v, u: module.apply(v, u, mutable=["intermediates"]), variables, jax.ShapeDtypeStruct(input_shape, jnp.float32))
    except Exception:  # the protocol error surfaces, with its message, at the first real call
        return None
    return found[0] if found else None


@dataclasses.dataclass(frozen=True)
class LinenStem:
    """``params -> Stem`` of a Linen model whose first pre-activation is the conv at ``path`` applied to the input."""

    apply: Any  # the adapter's (params, x) -> (output, preacts)
    path: tuple[str, ...]
    conv: Any  # the nn.Conv, unbound
    input_shape: tuple[int, ...]

    def __call__(self, params: PyTree) -> Stem:
        from flax import linen as nn

        sub = params["params"]
        for name in self.path:
            sub = sub[name]
        conv, kernel = self.conv, sub["kernel"]
        strides = _pair(conv.strides)
        pads = _pairs(conv.padding, conv.kernel_size, strides, self.input_shape[:2])

        def first(x: Array) -> Array:
            return conv.apply({"params": sub}, x)

        def axis_tangent(k: Array, input_shape: tuple[int, ...]) -> Array:
            return conv_axis_tangent(kernel, k, input_shape, strides, pads)

        def rest(z1: Array) -> tuple[Array, tuple[Array, ...]]:
            def replace(next_fun, args, kwargs, context):
                mod = context.module
                if context.method_name == "__call__" and mod.scope is not None and _linen_path(mod) == self.path:
                    return z1
                return next_fun(*args, **kwargs)

            with nn.intercept_methods(replace):
                out, pre = self.apply(params, jnp.zeros(self.input_shape, z1.dtype))
            return out, tuple(pre)[1:]

        return Stem(first, axis_tangent, rest)


def linen_stem(net: Network, params: PyTree, module: Any) -> Network:
    """``net`` with the stem of its first input convolution, when it has one that verifies."""
    shape = net.input_shape
    if shape is None or len(shape) != 3:
        return net
    hit = find_linen_conv(module, params, shape)
    if hit is None:
        return net
    path, conv = hit
    ks = tuple(conv.kernel_size)
    if (
        len(ks) != 2
        or conv.feature_group_count != 1
        or _pair(conv.kernel_dilation) != (1, 1)
        or _pair(conv.input_dilation) != (1, 1)
        or _pairs(conv.padding, ks, _pair(conv.strides), shape[:2]) is None
    ):
        return net
    return adopt_stem(net, params, LinenStem(net.apply, path, conv, tuple(shape)))


# --- Equinox -------------------------------------------------------------------------------------


def _at(tree: Any, path: tuple) -> Any:
    for key in path:
        if isinstance(key, jax.tree_util.GetAttrKey):
            tree = getattr(tree, key.name)
        elif isinstance(key, jax.tree_util.SequenceKey):
            tree = tree[key.idx]
        else:  # DictKey
            tree = tree[key.key]
    return tree


def equinox_convs(model: Any) -> list[tuple]:
    """Key paths of the model's ``eqx.nn.Conv2d`` layers that the placed kernel covers, in tree order."""
    import equinox as eqx

    is_conv = lambda m: isinstance(m, eqx.nn.Conv2d)  # noqa: E731
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(model, is_leaf=is_conv)[0]:
        if is_conv(leaf) and leaf.groups == 1 and _pair(leaf.dilation) == (1, 1) and getattr(leaf, "padding_mode", "ZEROS") == "ZEROS":
            out.append(tuple(path))
    return out


@functools.cache
def _constant_type() -> type:
    import equinox as eqx

    class Constant(eqx.Module):
        """Stands in for the first conv in ``rest``: returns ``z1`` whatever it is given."""

        z: Array

        def __call__(self, x: Array, *, key: Any = None) -> Array:
            return self.z

    return Constant


def equinox_stem_at(static_stem: Any, params: PyTree) -> Stem:
    """The :class:`Stem` of an Equinox model (``params`` combined with the adapter's static part) at a conv's key path."""
    import equinox as eqx

    model = eqx.combine(params, static_stem.static)
    conv = _at(model, static_stem.path)
    c, h, w = static_stem.input_shape
    # Equinox is channels-first: (C_out, C_in, kh, kw) kernels on (C, H, W) inputs.
    kernel = jnp.transpose(conv.weight, (2, 3, 1, 0))
    strides = _pair(conv.stride)
    pads = _pairs(conv.padding, kernel.shape[:2], strides, (h, w))

    def axis_tangent(k: Array, input_shape: tuple[int, ...]) -> Array:
        ch, pix = k // (h * w), k % (h * w)  # flat (C, H, W) index -> flat (H, W, C) index
        return jnp.transpose(conv_axis_tangent(kernel, pix * c + ch, (h, w, c), strides, pads), (2, 0, 1))

    def rest(z1: Array) -> tuple[Array, tuple[Array, ...]]:
        stand_in = eqx.tree_at(lambda m: _at(m, static_stem.path), model, _constant_type()(z1))
        out, pre = static_stem.apply_with(stand_in, jnp.zeros(static_stem.input_shape, z1.dtype))
        return out, tuple(pre)[1:]

    return Stem(conv, axis_tangent, rest)

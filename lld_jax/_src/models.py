"""Built-in Flax NNX models that expose their pre-activations.

Every model acts on ONE example (callers vmap) and its ``__call__(x, slopes=None)``
returns ``(output, preacts)``: the tuple of every hidden pre-activation in
depth order. With ``slopes`` given (same structure as ``preacts``) each
activation ``act(z)`` becomes ``slopes[i] * z``: the paper's linearised
network at a frozen pattern (paper Sec. 4.1), used by the ``template`` method.

Use :func:`lld_jax.from_nnx` to get ``(network, params)`` from a model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lld_jax._src.arguments import positive_int
from lld_jax._src.pooling import max_pool
from lld_jax._src.stem import Stem, conv_axis_tangent

Array = jax.Array


def leaky(z: Array, negative_slope: float, slope: Array | None = None) -> Array:
    """ReLU (slope 0) or LeakyReLU; ``z == 0`` counts as inactive, matching the pattern."""
    if slope is not None:
        return slope * z
    return jnp.where(z > 0, z, negative_slope * z)


class _Act:
    """Feeds activations in depth order from an optional slope tuple."""

    def __init__(self, negative_slope: float, slopes: Sequence[Array] | None):
        self.alpha, self.slopes, self.preacts = negative_slope, slopes, []

    def __call__(self, z: Array) -> Array:
        s = None if self.slopes is None else self.slopes[len(self.preacts)]
        self.preacts.append(z)
        return leaky(z, self.alpha, s)


class MLP(nnx.Module):
    """Fully connected ReLU/LeakyReLU network (paper Eq. 1).

    Args:
      in_features: input size D, or an input shape (flattened internally).
      widths: hidden widths N_1..N_M.
      out_features: output size L.
      negative_slope: 0 for ReLU, alpha for LeakyReLU.
      init: ``"flax"`` or ``"torch"`` (see :func:`reinitialize`).
    """

    def __init__(
        self,
        in_features: int | Sequence[int],
        widths: Sequence[int],
        out_features: int,
        *,
        negative_slope: float = 0.0,
        init: str = "flax",
        rngs: nnx.Rngs,
        param_dtype=jnp.float32,
    ):
        shape = (in_features,) if isinstance(in_features, int) else tuple(in_features)
        if not widths:
            raise ValueError("an MLP needs at least one hidden layer (widths is empty).")
        _check_sizes("widths", widths)
        self.input_shape = shape
        self.negative_slope = float(negative_slope)
        sizes = [math.prod(shape), *widths, out_features]
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs, param_dtype=param_dtype) for a, b in zip(sizes[:-1], sizes[1:])])
        reinitialize(self, init, rngs)

    def __call__(self, x: Array, slopes: Sequence[Array] | None = None):
        act = _Act(self.negative_slope, slopes)
        h = x.reshape(-1)
        for layer in self.layers[:-1]:
            h = act(layer(h))
        return self.layers[-1](h), tuple(act.preacts)

    def dense_layers(self) -> list[tuple[Array, Array]]:
        """``[(W, b), ...]`` with ``W`` of shape (fan_out, fan_in), output layer last."""
        return [(layer.kernel[...].T, layer.bias[...]) for layer in self.layers]


INITS = ("flax", "torch")


def reinitialize(module: nnx.Module, init: str, rngs: nnx.Rngs) -> None:
    """Re-draws the weights of every ``nnx.Linear`` and ``nnx.Conv`` in ``module`` by ``init``.

    ``"flax"`` keeps Flax's defaults (LeCun-normal weights, zero biases);
    ``"torch"`` is PyTorch's default for ``nn.Linear`` / ``nn.Conv2d`` (weights
    and biases uniform in +-1/sqrt(fan_in)), which the paper's code used.
    Only parameter values change, so networks of either init compare equal
    (and share compiled code).
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}.")
    if init == "flax":
        return
    for _, layer in nnx.iter_graph(module):
        if isinstance(layer, (nnx.Linear, nnx.Conv)):
            kernel = layer.kernel[...]
            bound = 1.0 / math.sqrt(math.prod(kernel.shape[:-1]))
            layer.kernel[...] = jax.random.uniform(rngs.params(), kernel.shape, kernel.dtype, -bound, bound)
            if layer.bias is not None:
                bias = layer.bias[...]
                layer.bias[...] = jax.random.uniform(rngs.params(), bias.shape, bias.dtype, -bound, bound)


def _check_sizes(name: str, sizes: Sequence[int]) -> None:
    for n in sizes:
        positive_int(n, f"every entry of {name}")


DOWNSAMPLES = ("avg", "stride", "max")


def _pool(h: Array, kind: str) -> Array:
    return nnx.avg_pool(h, (2, 2), strides=(2, 2)) if kind == "avg" else h


class CNN(nnx.Module):
    """Conv-ReLU stack with average pooling, strided convs or max pooling, and a dense head.

    With ``downsample="max"`` each conv's pre-activation is max-pooled (2x2,
    stride 2, VALID) and then activated: the same function as pooling after
    the (Leaky)ReLU, which is monotone, but with switching constraints between
    affine functions (pooling after a ReLU ties wherever a window has two
    inactive inputs, and a tie is a boundary: margin 0). Each pool reports its
    constraints ``(H', W', C, 4)`` as a pre-activation just before the pooled
    neurons (paper App. E, :func:`lld_jax.layers.max_pool`), the model's
    ``neuron_mask(x)`` marks their arg-max entries, and there is no
    frozen-pattern apply (``method="template"`` is unavailable). With "avg"
    and "stride" ``neuron_mask`` is all True and :func:`lld_jax.from_nnx` sets
    no mask, and :meth:`stem_split` lets the sampled loss place the first
    conv's kernel per input pixel instead of a JVP through it (``has_stem``).

    Args:
      input_shape: (H, W, C) of one example.
      channels: output channels of each 3x3 conv.
      hidden: widths of the dense hidden layers after flattening.
      out_features: number of outputs.
      downsample: "avg" (2x2 average pooling after each conv), "stride"
        (stride-2 convs) or "max" (2x2 max pooling, see above).
      init: ``"flax"`` or ``"torch"`` (see :func:`reinitialize`).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        channels: Sequence[int],
        hidden: Sequence[int],
        out_features: int,
        *,
        downsample: str = "avg",
        negative_slope: float = 0.0,
        init: str = "flax",
        rngs: nnx.Rngs,
        param_dtype=jnp.float32,
    ):
        if downsample not in DOWNSAMPLES:
            raise ValueError(f"downsample must be one of {DOWNSAMPLES}, got {downsample!r}.")
        _check_sizes("channels", channels)
        _check_sizes("hidden", hidden)
        self.input_shape = tuple(input_shape)
        self.negative_slope = float(negative_slope)
        self.downsample = downsample
        # Read by from_nnx: max pooling has no frozen-pattern apply, and only it masks neurons (the arg-max entries).
        self.supports_frozen_pattern = downsample != "max"
        self.has_neuron_mask = downsample == "max"
        # Read by from_nnx: the stem split needs preacts[0] to be the first conv's output, which max pooling replaces.
        self.has_stem = downsample != "max" and len(channels) > 0
        if downsample == "max":
            h, w = self.input_shape[:2]
            for i in range(len(channels)):
                if h < 2 or w < 2:
                    raise ValueError(
                        f"input_shape {self.input_shape} is too small for {len(channels)} 2x2 max-pools: the input of pool {i + 1} is {h}x{w}."
                    )
                h, w = h // 2, w // 2
        c = self.input_shape[-1]
        stride = 2 if downsample == "stride" else 1
        convs = []
        for ch in channels:
            convs.append(nnx.Conv(c, ch, (3, 3), strides=stride, padding="SAME", rngs=rngs, param_dtype=param_dtype))
            c = ch
        self.convs = nnx.List(convs)
        flat = self._flat_size()
        sizes = [flat, *hidden, out_features]
        self.dense = nnx.List([nnx.Linear(a, b, rngs=rngs, param_dtype=param_dtype) for a, b in zip(sizes[:-1], sizes[1:])])
        reinitialize(self, init, rngs)

    def _flat_size(self) -> int:
        h, w, c = self.input_shape
        for conv in self.convs:
            if self.downsample == "stride":
                h, w = -(-h // 2), -(-w // 2)
            else:
                h, w = h // 2, w // 2
            c = conv.out_features
        return h * w * c

    def __call__(self, x: Array, slopes: Sequence[Array] | None = None):
        out, preacts, _ = self._forward(x, slopes)
        return out, preacts

    def neuron_mask(self, x: Array) -> tuple[Array, ...]:
        """Which pre-activation entries are neurons: False at each max-pool window's arg-max (all True without max pooling)."""
        return self._forward(x, None)[2]

    def _forward(self, x: Array, slopes: Sequence[Array] | None) -> tuple[Array, tuple[Array, ...], tuple[Array, ...]]:
        if slopes is not None and self.downsample == "max":
            raise ValueError(
                "a max-pooling CNN has no frozen-pattern apply (freezing needs each window's arg-max); use method='forward' or 'reverse'."
            )
        return self._from_first_conv(self.convs[0](x) if len(self.convs) else x, _Act(self.negative_slope, slopes))

    def _from_first_conv(self, z1: Array, act: _Act) -> tuple[Array, tuple[Array, ...], tuple[Array, ...]]:
        """The network from the first conv's output ``z1`` on (from ``x`` itself when there is no conv)."""
        masks = {}  # position in act.preacts -> mask, for the max-pool constraints
        h = z1
        for i, conv in enumerate(self.convs):
            z = z1 if i == 0 else conv(h)
            if self.downsample == "max":
                pool = max_pool(z, (2, 2))
                masks[len(act.preacts)] = pool.mask
                act.preacts.append(pool.constraints)
                h = act(pool.output)
            else:
                h = _pool(act(z), self.downsample)
        h = h.reshape(-1)
        for layer in self.dense[:-1]:
            h = act(layer(h))
        preacts = tuple(act.preacts)
        return self.dense[-1](h), preacts, tuple(masks.get(i, jnp.ones(p.shape, bool)) for i, p in enumerate(preacts))

    def stem_split(self) -> Stem:
        """The network split after the first conv's pre-activation: :class:`lld_jax.models.Stem` (not with max pooling).

        Its derivative along an input axis is the first 3x3 kernel placed at
        the pixel (:func:`lld_jax.models.conv_axis_tangent`; the bias drops out).
        With ``downsample="max"`` the first pre-activation is the pool's
        switching constraints, which depend on the arg-max at ``x``, so there
        is no stem (and :func:`lld_jax.from_nnx` sets none).
        """
        if not self.has_stem:
            raise ValueError(
                "this CNN has no stem split: with max pooling its first pre-activation is the pool's constraints, "
                "and without convolutions there is no first conv."
            )
        conv = self.convs[0]
        strides = _strides(conv)

        def axis_tangent(k: Array, input_shape: tuple[int, ...]) -> Array:
            pads = jax.lax.padtype_to_pads(input_shape[:2], conv.kernel_size, strides, conv.padding)
            return conv_axis_tangent(conv.kernel[...], k, input_shape, strides, pads)

        def rest(z1: Array) -> tuple[Array, tuple[Array, ...]]:
            out, pre, _ = self._from_first_conv(z1, _Act(self.negative_slope, None))
            return out, pre[1:]

        return Stem(conv, axis_tangent, rest)


def _strides(conv: nnx.Conv) -> tuple[int, int]:
    return (conv.strides,) * 2 if isinstance(conv.strides, int) else tuple(conv.strides)


def _conv(cin: int, cout: int, k: int, stride: int, rngs: nnx.Rngs, param_dtype) -> nnx.Conv:
    # PyTorch's symmetric k // 2 padding (not "SAME", which pads stride-2 layers asymmetrically),
    # so torchvision weights give torchvision's outputs.
    pad = ((k // 2, k // 2), (k // 2, k // 2))
    return nnx.Conv(cin, cout, (k, k), strides=stride, padding=pad, use_bias=False, rngs=rngs, param_dtype=param_dtype)


def _bn(c: int, rngs: nnx.Rngs, param_dtype) -> nnx.BatchNorm:
    bn = nnx.BatchNorm(c, use_running_average=True, rngs=rngs, param_dtype=param_dtype)
    # Flax stores the statistics in float32 whatever param_dtype is: a float64 network would
    # round its BatchNorm slope to float32 (3e-7 relative), and eager and jitted calls differ there.
    # (At least float32: bfloat16 weights keep float32 statistics, as before.)
    dtype = jnp.promote_types(param_dtype, jnp.float32)
    bn.mean, bn.var = nnx.BatchStat(bn.mean[...].astype(dtype)), nnx.BatchStat(bn.var[...].astype(dtype))
    return bn


def frozen_batchnorm(bn: nnx.BatchNorm, x: Array) -> Array:
    """BatchNorm with its stored statistics held constant: an affine map per example.

    The statistics get no gradient, so training (SGD, Adam) updates only
    ``scale`` and ``bias`` and the statistics stay those loaded (e.g. ImageNet's)
    or initialised (0 and 1): the network is the same piecewise-linear function of
    each example in training and in certification (no batch statistics).
    """
    return (x - jax.lax.stop_gradient(bn.mean[...])) * batchnorm_scale(bn) + bn.bias[...]


def batchnorm_scale(bn: nnx.BatchNorm) -> Array:
    """The per-channel slope of :func:`frozen_batchnorm`: ``scale / sqrt(var + eps)``, statistics held constant."""
    return bn.scale[...] * jax.lax.rsqrt(jax.lax.stop_gradient(bn.var[...]) + bn.epsilon)


class BasicBlock(nnx.Module):
    """ResNet basic block: conv-BN-act-conv-BN, plus shortcut, then act (torchvision's layout)."""

    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.conv1, self.bn1 = _conv(cin, cout, 3, stride, rngs, param_dtype), _bn(cout, rngs, param_dtype)
        self.conv2, self.bn2 = _conv(cout, cout, 3, 1, rngs, param_dtype), _bn(cout, rngs, param_dtype)
        self.project = stride != 1 or cin != cout
        if self.project:
            self.conv_sc, self.bn_sc = _conv(cin, cout, 1, stride, rngs, param_dtype), _bn(cout, rngs, param_dtype)

    def __call__(self, x: Array, act: _Act) -> Array:
        h = act(frozen_batchnorm(self.bn1, self.conv1(x)))
        h = frozen_batchnorm(self.bn2, self.conv2(h))
        shortcut = frozen_batchnorm(self.bn_sc, self.conv_sc(x)) if self.project else x
        return act(h + shortcut)


class ResNet(nnx.Module):
    """Residual network of basic blocks; BatchNorm is its inference-time affine map.

    BatchNorm always uses its stored statistics, held constant in training too
    (:func:`frozen_batchnorm`) and kept in ``param_dtype`` or float32, whichever is
    wider (Flax keeps them in float32), so the network stays one piecewise-linear function of each
    example, float64 throughout when asked; the paper's ResNet-18 variant replaces the
    stem's max pooling by average pooling (App. I), which :func:`resnet18`
    builds. Convolutions pad like PyTorch's, so torchvision weights load
    exactly (:func:`lld_jax.models.load_torch_resnet`).

    Args:
      input_shape: (H, W, C).
      stage_channels: channels of each stage; stage k > 0 starts with stride 2.
      blocks_per_stage: number of basic blocks per stage.
      out_features: number of outputs.
      stem: "small" (3x3 conv) or "imagenet" (7x7 stride-2 conv, then 3x3
        stride-2 average pooling).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        stage_channels: Sequence[int],
        blocks_per_stage: Sequence[int],
        out_features: int,
        *,
        stem: str = "small",
        negative_slope: float = 0.0,
        rngs: nnx.Rngs,
        param_dtype=jnp.float32,
    ):
        if stem not in ("small", "imagenet"):
            raise ValueError(f"stem must be 'small' or 'imagenet', got {stem!r}.")
        if len(stage_channels) != len(blocks_per_stage):
            raise ValueError("stage_channels and blocks_per_stage must have the same length.")
        self.input_shape = tuple(input_shape)
        self.negative_slope = float(negative_slope)
        self.stem_kind = stem
        cin = self.input_shape[-1]
        k, s = (7, 2) if stem == "imagenet" else (3, 1)
        self.stem_conv = _conv(cin, stage_channels[0], k, s, rngs, param_dtype)
        self.stem_bn = _bn(stage_channels[0], rngs, param_dtype)
        blocks, c = [], stage_channels[0]
        for i, (ch, n) in enumerate(zip(stage_channels, blocks_per_stage)):
            for j in range(n):
                blocks.append(BasicBlock(c, ch, 2 if (i > 0 and j == 0) else 1, rngs=rngs, param_dtype=param_dtype))
                c = ch
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(c, out_features, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x: Array, slopes: Sequence[Array] | None = None):
        return self._from_stem(frozen_batchnorm(self.stem_bn, self.stem_conv(x)), _Act(self.negative_slope, slopes))

    def _from_stem(self, z1: Array, act: _Act) -> tuple[Array, tuple[Array, ...]]:
        h = act(z1)
        if self.stem_kind == "imagenet":  # torchvision's 3x3 stride-2 pad-1 pooling, averaged (zeros counted, as torch's default)
            h = nnx.avg_pool(h, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), count_include_pad=True)
        for block in self.blocks:
            h = block(h, act)
        return self.head(jnp.mean(h, axis=(0, 1))), tuple(act.preacts)

    def stem_split(self) -> Stem:
        """The network split after the stem's pre-activation (conv, BatchNorm): :class:`lld_jax.models.Stem`.

        Its derivative along an input axis is the stem kernel placed at the
        pixel times BatchNorm's slope (:func:`lld_jax.models.conv_axis_tangent`).
        """
        conv = self.stem_conv
        strides = _strides(conv)

        def axis_tangent(k: Array, input_shape: tuple[int, ...]) -> Array:
            t = conv_axis_tangent(conv.kernel[...], k, input_shape, strides, conv.padding)
            return t * batchnorm_scale(self.stem_bn)

        def rest(z1: Array) -> tuple[Array, tuple[Array, ...]]:
            out, pre = self._from_stem(z1, _Act(self.negative_slope, None))
            return out, pre[1:]

        return Stem(lambda x: frozen_batchnorm(self.stem_bn, conv(x)), axis_tangent, rest)


def resnet18(out_features: int, *, input_shape: Sequence[int] = (224, 224, 3), rngs: nnx.Rngs, **kw) -> ResNet:
    """The paper's ResNet-18 variant: average instead of max pooling after the stem (App. I)."""
    return ResNet(input_shape, (64, 128, 256, 512), (2, 2, 2, 2), out_features, stem="imagenet", rngs=rngs, **kw)

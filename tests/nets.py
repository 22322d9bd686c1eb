"""Small random networks of every kind, shared by the tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

import lld_jax as L


def _randomize_batchnorm(model, key):
    # Fresh BatchNorm is the identity; random statistics make it a real affine map.
    for _path, bn in nnx.iter_graph(model):
        if isinstance(bn, nnx.BatchNorm):
            key, *ks = jax.random.split(key, 5)
            c = bn.mean.shape
            bn.mean[...] = 0.3 * jax.random.normal(ks[0], c, bn.mean.dtype)
            bn.var[...] = 0.5 + jax.random.uniform(ks[1], c, bn.var.dtype)
            bn.scale[...] = 1.0 + 0.3 * jax.random.normal(ks[2], c, bn.scale.dtype)
            bn.bias[...] = 0.1 * jax.random.normal(ks[3], c, bn.bias.dtype)


def randomize_biases(model, key):
    # Flax's Linear and Conv start with zero biases, where z = J x exactly and every region
    # is a cone at 0; random biases give the polytopes real offsets (as after training).
    for _path, layer in nnx.iter_graph(model):
        if isinstance(layer, (nnx.Linear, nnx.Conv)) and layer.bias is not None:
            key, k = jax.random.split(key)
            layer.bias[...] = 0.3 * jax.random.normal(k, layer.bias.shape, layer.bias.dtype)


def make(kind: str, dtype=None, seed: int = 0):
    """Returns (network, params, x batch) for each kind of :data:`KINDS`, in float64 where x64 is on, else float32."""
    dtype = jnp.asarray(1.0).dtype if dtype is None else dtype
    rngs = nnx.Rngs(seed)
    kx = jax.random.key(seed + 100)
    if kind == "mlp":
        model, shape = L.models.MLP(6, [12, 12, 12], 3, rngs=rngs, param_dtype=dtype), (6,)
    elif kind == "narrow_mlp":  # D > N_1: the gram method's QR-compressed first layer
        model, shape = L.models.MLP(10, [8, 7, 5], 3, rngs=rngs, param_dtype=dtype), (10,)
    elif kind == "leaky_mlp":
        model, shape = L.models.MLP(6, [12, 12], 3, negative_slope=0.1, rngs=rngs, param_dtype=dtype), (6,)
    elif kind == "cnn":
        model, shape = L.models.CNN((6, 6, 2), (3, 4), (8,), 3, rngs=rngs, param_dtype=dtype), (6, 6, 2)
    elif kind == "cnn_stride":
        model, shape = L.models.CNN((6, 6, 2), (3, 4), (8,), 3, downsample="stride", rngs=rngs, param_dtype=dtype), (6, 6, 2)
    elif kind == "cnn_max":  # max-pooling: switching constraints as masked preacts (paper App. E)
        model, shape = L.models.CNN((6, 6, 2), (3, 4), (8,), 3, downsample="max", rngs=rngs, param_dtype=dtype), (6, 6, 2)
    elif kind == "maxout":
        model, shape = L.layers.MaxoutMLP(6, [8, 8], 3, k=3, rngs=rngs, param_dtype=dtype), (6,)
    elif kind == "resnet":
        model, shape = L.models.ResNet((6, 6, 2), (3, 4), (1, 1), 3, rngs=rngs, param_dtype=dtype), (6, 6, 2)
        _randomize_batchnorm(model, jax.random.key(seed + 7))
    elif kind == "rnn":
        model, shape = L.models.RNN(3, 8, 4, negative_slope=0.1, length=5, rngs=rngs, param_dtype=dtype), (5, 3)
    elif kind == "scornn":
        model = L.models.ScoRNN(3, 4, hidden=8, num_negative=3, negative_slope=0.1, length=5, rngs=rngs, param_dtype=dtype)
        shape = (5, 3)
    else:
        raise KeyError(kind)
    randomize_biases(model, jax.random.key(seed + 11))
    net, params = L.from_nnx(model)
    x = jax.random.normal(kx, (4, *shape), dtype)
    return net, params, x


KINDS = ("mlp", "narrow_mlp", "leaky_mlp", "cnn", "cnn_stride", "cnn_max", "maxout", "resnet", "rnn", "scornn")
# Max-pooling and maxout: switching constraints (paper App. E), tested against their own reference in test_pooling.py.
POOLED = ("cnn_max", "maxout")
# The generic soundness and tightness tests: every kind whose region is given by ReLU signs alone.
GEOMETRY_KINDS = tuple(k for k in KINDS if k not in POOLED)

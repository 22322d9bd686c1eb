"""The split-off first layer (lld_jax.models.Stem): placed kernels against real convolutions, the sampled loss
with and without the stem, and networks behind an input standardisation (float64)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lld_jax as L
from lld_jax._src.losses import roll_penalty_sampled

# Exactness against float64 references (see conftest: the suite runs float32 unless a test opts in).
pytestmark = pytest.mark.float64


def _conv(x, kernel, strides, padding):
    return jax.lax.conv_general_dilated(x[None], kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]


@pytest.mark.parametrize(
    "shape,ksize,strides,padding",
    [
        ((9, 11, 3), (7, 7), (2, 2), ((3, 3), (3, 3))),  # the ImageNet stem
        ((8, 8, 2), (3, 3), (1, 1), ((1, 1), (1, 1))),
        ((10, 7, 1), (5, 3), (3, 2), ((0, 2), (1, 0))),  # asymmetric padding, unequal strides
        ((6, 6, 2), (2, 2), (3, 3), ((0, 0), (0, 0))),  # stride > kernel: some pixels reach no output
        ((4, 5, 1), (5, 5), (1, 1), ((2, 2), (2, 2))),  # fewer outputs than a pixel could reach
    ],
)
def test_conv_axis_tangent_is_the_convolution_of_each_one_hot(shape, ksize, strides, padding):
    rng = np.random.default_rng(0)
    kernel = jnp.asarray(rng.normal(size=(*ksize, shape[-1], 4)))
    d = int(np.prod(shape))
    want = jax.vmap(lambda e: _conv(e.reshape(shape), kernel, strides, padding))(jnp.eye(d))
    got = jax.jit(jax.vmap(lambda k: L.models.conv_axis_tangent(kernel, k, shape, strides, padding)))(jnp.arange(d))
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_conv_axis_tangent_refuses_mismatched_channels():
    with pytest.raises(ValueError, match="channels"):
        L.models.conv_axis_tangent(jnp.zeros((3, 3, 2, 4)), 0, (5, 5, 3), (1, 1), ((1, 1), (1, 1)))


def _resnet(stem, size, seed=0, stages=1):
    """A small float64 ResNet (one stage unless asked: compile time dominates these tests) with non-trivial BatchNorm."""
    widths = (4, 8)[:stages]
    model = L.models.ResNet((size, size, 3), widths, (1,) * stages, 5, stem=stem, rngs=nnx.Rngs(seed), param_dtype=jnp.float64)
    net, params = L.from_nnx(model)
    # Non-trivial BatchNorm statistics, so the stem's slope is not the identity.
    rng = np.random.default_rng(seed)
    params["stem_bn"]["var"] = jnp.asarray(rng.uniform(0.5, 2.0, 4))
    params["stem_bn"]["mean"] = jnp.asarray(rng.normal(size=4))
    params["stem_bn"]["scale"] = jnp.asarray(rng.normal(size=4))
    x = jnp.asarray(rng.uniform(size=(size, size, 3)))
    return net, params, x


@pytest.mark.parametrize("stem,size", [("imagenet", 19), ("small", 7)])
def test_resnet_stem_splits_apply(stem, size):
    net, params, x = _resnet(stem, size)
    assert net.stem is not None
    st = net.stem(params)
    out, pre = net.apply(params, x)
    z1 = st.first(x)
    out2, rest = st.rest(z1)
    np.testing.assert_allclose(z1, pre[0], rtol=1e-12)
    np.testing.assert_allclose(out2, out, rtol=1e-12)
    assert len(rest) == len(pre) - 1
    # axis_tangent is first's Jacobian column, BatchNorm slope included.
    jac = jax.jacfwd(st.first)(x).reshape(*z1.shape, -1)
    cols = jax.vmap(lambda k: st.axis_tangent(k, x.shape))(jnp.arange(x.size))
    np.testing.assert_allclose(cols, jnp.moveaxis(jac, -1, 0), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("stem,size,chunk,standardize", [("imagenet", 19, None, True), ("imagenet", 19, 4, False), ("small", 7, None, False)])
def test_sampled_loss_with_stem_equals_dense_jvps(stem, size, chunk, standardize):
    """Same axes, same value and parameter gradient, whether the first layer is placed or pushed through a JVP."""
    net, params, x = _resnet(stem, size, stages=2)  # two stages: a projection shortcut too
    if standardize:
        net = L.normalized_inputs(net, (0.4, 0.5, 0.6), (0.2, 0.3, 0.25))
    _stem_vs_dense(net, params, x, 1e-10, num_samples=12, chunk=chunk)


def _stem_vs_dense(net, params, x, rtol, num_samples=6, chunk=None):
    """Asserts equal sampled-loss values and parameter gradients (same axes) with and without the stem; returns the value."""
    key = jax.random.key(2)

    def loss(p, n):
        return roll_penalty_sampled(n, p, x, key, C=8.0, num_samples=num_samples, stratify=True, chunk_size=chunk)

    loss = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    a, ga = loss(params, net)
    b, gb = loss(params, dataclasses.replace(net, stem=None))
    np.testing.assert_allclose(a, b, rtol=rtol)
    for u, v in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=rtol * float(jnp.max(jnp.abs(v)) + 1))
    return float(a)


@pytest.mark.parametrize("downsample,shape", [("avg", (7, 7, 3)), ("stride", (8, 9, 2))])
def test_cnn_stem_splits_apply_and_gives_the_dense_loss(downsample, shape):
    """The CNN's first conv ("SAME" padding; stride 2 on an even side pads (0, 1), on an odd one (1, 1); a bias) placed per pixel."""
    model = L.models.CNN(shape, (3, 4), (6,), 5, downsample=downsample, rngs=nnx.Rngs(1), param_dtype=jnp.float64)
    net, params = L.from_nnx(model)
    assert net.stem is not None
    x = jnp.asarray(np.random.default_rng(8).uniform(size=shape))
    st = net.stem(params)
    out, pre = net.apply(params, x)
    out2, rest = st.rest(st.first(x))
    np.testing.assert_allclose(st.first(x), pre[0], rtol=1e-12)
    np.testing.assert_allclose(out2, out, rtol=1e-12)
    assert len(rest) == len(pre) - 1
    jac = jax.jacfwd(st.first)(x).reshape(*pre[0].shape, -1)
    cols = jax.vmap(lambda k: st.axis_tangent(k, x.shape))(jnp.arange(x.size))
    np.testing.assert_allclose(cols, jnp.moveaxis(jac, -1, 0), rtol=1e-12, atol=1e-14)
    _stem_vs_dense(net, params, x, 1e-10)


def test_cnns_without_a_first_conv_output_have_no_stem():
    """Max pooling (preacts[0] is the pool's constraints) and no convolution at all: no stem, a named error."""
    for channels, downsample in (((3,), "max"), ((), "avg")):
        model = L.models.CNN((6, 6, 1), channels, (4,), 3, downsample=downsample, rngs=nnx.Rngs(0))
        net, params = L.from_nnx(model)
        assert net.stem is None
        with pytest.raises(ValueError, match="no stem split"):
            model.stem_split()
    assert net.apply(params, jnp.ones((6, 6, 1)))[0].shape == (3,)  # a conv-less CNN is a dense net on the pixels


def test_stem_follows_the_input_size_not_the_built_one():
    """ResNets take any image size (global average pooling): the placed kernels must follow x, not input_shape."""
    net, params, _ = _resnet("imagenet", 19)
    x = jnp.asarray(np.random.default_rng(5).uniform(size=(23, 21, 3)))
    _stem_vs_dense(net, params, x, 1e-10)


def test_stem_with_float32_weights_and_float64_inputs():
    model = L.models.ResNet((11, 11, 3), (4,), (1,), 5, stem="imagenet", rngs=nnx.Rngs(0))
    net, params = L.from_nnx(model)
    x = jnp.asarray(np.random.default_rng(6).uniform(size=(11, 11, 3)))  # float64
    _stem_vs_dense(net, params, x, 1e-5)


def test_stem_with_masked_neurons():
    """Masked entries are inert in the stem path as in the dense one (count, hinge and columns)."""
    net, params, x = _resnet("small", 7)
    pre = net.apply(params, x)[1]
    rng = np.random.default_rng(7)
    masks = tuple(jnp.asarray(rng.uniform(size=p.shape) < 0.7) for p in pre)
    masked = dataclasses.replace(net, neuron_mask=lambda p, u: masks)
    value = _stem_vs_dense(masked, params, x, 1e-10)
    # The mask matters: without it the penalty differs.
    unmasked = roll_penalty_sampled(net, params, x, jax.random.key(2), C=8.0, num_samples=6, stratify=True)
    assert abs(value - float(unmasked)) > 1e-6 * abs(float(unmasked))


def test_stem_mismatch_is_refused():
    net, params, x = _resnet("small", 7)

    def short_stem(p):  # forgets the stem's own pre-activation in rest's count: apply has one more
        st = net.stem(p)
        return st._replace(rest=lambda z1: (st.rest(z1)[0], st.rest(z1)[1][1:]))

    bad = dataclasses.replace(net, stem=short_stem)
    with pytest.raises(ValueError, match="stem does not match"):
        roll_penalty_sampled(bad, params, x, jax.random.key(0), C=1.0, num_samples=3, stratify=True)


def test_normalized_inputs_is_the_network_on_standardized_inputs():
    net, params, x = _resnet("small", 7)
    mean, std = np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.3, 0.25])
    raw = L.normalized_inputs(net, mean, std)
    out, pre = raw.apply(params, x)
    out2, pre2 = net.apply(params, (x - mean) / std)
    np.testing.assert_allclose(out, out2, rtol=1e-12)
    # Margins are in raw units: a standardisation by std scales each neuron's gradient by 1/std per channel.
    z_raw, g_raw = L.neuron_gradients(raw, params, x)
    z_std, g_std = L.neuron_gradients(net, params, (x - mean) / std)
    np.testing.assert_allclose(z_raw, z_std, rtol=1e-12)
    np.testing.assert_allclose(g_raw, g_std / np.tile(std, x.size // 3), rtol=1e-10, atol=1e-14)


def test_normalized_inputs_refuses_integer_pixels():
    net, params, x = _resnet("small", 7)
    raw = L.normalized_inputs(net, (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(TypeError, match="floating-point"):
        raw.apply(params, (x * 255).astype(jnp.uint8))


@pytest.mark.parametrize(
    "mean,std,match",
    [
        ((0.5, 0.5), (0.2, 0.2, 0.2), "one number per channel"),
        ((0.5,) * 3, (0.2, 0.0, 0.2), "positive"),
        ((0.5,) * 2, (0.2,) * 2, "channel statistics"),
    ],
)
def test_normalized_inputs_refuses_bad_statistics(mean, std, match):
    net, _, _ = _resnet("small", 7)
    with pytest.raises(ValueError, match=match):
        L.normalized_inputs(net, mean, std)

"""The same weights as an NNX, Linen, Equinox and plain-function network give the same geometry and losses (float64)."""

import dataclasses

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from nets import randomize_biases

import lld_jax as L

# Exactness against float64 references (see conftest: the suite runs float32 unless a test opts in).
pytestmark = pytest.mark.float64

SIZES = (6, 12, 10, 3)  # input, two hidden layers, output
SLOPE = 0.1


def nnx_mlp():
    model = L.models.MLP(SIZES[0], list(SIZES[1:-1]), SIZES[-1], negative_slope=SLOPE, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    randomize_biases(model, jax.random.key(1))
    return model


def weights(model):
    return [(layer.kernel[...], layer.bias[...]) for layer in model.layers]  # kernels (in, out)


class LinenSown(nn.Module):
    """Sows its pre-activations under names whose alphabetical order is not the call order."""

    @nn.compact
    def __call__(self, x):
        z1 = nn.Dense(SIZES[1], param_dtype=jnp.float64, name="dense_b")(x)
        self.sow("intermediates", "z_late", z1)
        z2 = nn.Dense(SIZES[2], param_dtype=jnp.float64, name="dense_a")(nn.leaky_relu(z1, SLOPE))
        self.sow("intermediates", "a_early", z2)
        return nn.Dense(SIZES[3], param_dtype=jnp.float64, name="dense_c")(nn.leaky_relu(z2, SLOPE))


class EqxMLP(eqx.Module):
    layers: list

    def __init__(self, ws):
        key = jax.random.key(0)
        self.layers = []
        for k, b in ws:
            lin = eqx.nn.Linear(k.shape[0], k.shape[1], key=key, dtype=jnp.float64)
            lin = eqx.tree_at(lambda m: (m.weight, m.bias), lin, (k.T, b))
            self.layers.append(lin)

    def __call__(self, x):
        pre, h = [], x
        for layer in self.layers[:-1]:
            z = layer(h)
            pre.append(z)
            h = jax.nn.leaky_relu(z, SLOPE)
        return self.layers[-1](h), tuple(pre)


def all_frameworks():
    model = nnx_mlp()
    ws = weights(model)
    nets = {"nnx": L.from_nnx(model)}
    linen = LinenSown()
    variables = linen.init(jax.random.key(0), jnp.ones(SIZES[0], jnp.float64))
    names = ("dense_b", "dense_a", "dense_c")
    variables = {"params": {n: {"kernel": k, "bias": b} for n, (k, b) in zip(names, ws)}}
    nets["linen"] = L.from_linen(linen, variables, input_shape=(SIZES[0],))
    nets["equinox"] = L.from_equinox(EqxMLP(ws), input_shape=(SIZES[0],))

    def plain(p, x):
        pre, h = [], x
        for k, b in p[:-1]:
            z = h @ k + b
            pre.append(z)
            h = jax.nn.leaky_relu(z, SLOPE)
        return h @ p[-1][0] + p[-1][1], tuple(pre)

    nets["plain"] = (L.as_network(plain, input_shape=(SIZES[0],)), ws)
    return nets


def _assert_agree(name, got, ref):
    """Every result of framework ``name`` equals the first framework's: booleans exactly, floats to 1e-10."""
    for key, value in got.items():
        if value.dtype == bool:
            np.testing.assert_array_equal(value, ref[key], err_msg=f"{name} {key}")
        else:
            np.testing.assert_allclose(value, ref[key], rtol=1e-10, err_msg=f"{name} {key}")


def test_same_weights_same_margins_patterns_and_losses_in_every_framework():
    nets = all_frameworks()
    # The dense stack and its slope are recognised where the structure allows (not for the plain function).
    for name in ("nnx", "linen", "equinox"):
        assert nets[name][0].dense_layers is not None and nets[name][0].negative_slope == pytest.approx(SLOPE), name
    assert nets["plain"][0].dense_layers is None
    x = jax.random.normal(jax.random.key(5), (16, SIZES[0]), jnp.float64)
    ref = {}
    for name, (net, params) in nets.items():
        got = {f"margin_l{p}": np.asarray(L.batched.margin(net, params, x, p=p)) for p in (1, 2, "inf")}
        got["margin_gram_or_auto"] = np.asarray(L.batched.margin(net, params, x, p=2, method="auto"))
        got["pattern"] = np.asarray(L.batched.activation_pattern(net, params, x))
        # Under jit, as training runs them (and faster than op-by-op).
        got["roll"] = np.asarray(jax.jit(jax.vmap(lambda u, n=net, q=params: L.roll_penalty(n, q, u, C=1.0)))(x))
        got["roll_sampled"] = np.asarray(
            jax.jit(jax.vmap(lambda u, n=net, q=params: L.roll_penalty_sampled(n, q, u, jax.random.key(2), C=1.0, num_samples=3)))(x)
        )
        if not ref:
            ref = got
            assert ref["pattern"].any() and not ref["pattern"].all()
            continue
        _assert_agree(name, got, ref)


def test_linen_sown_order_is_call_order_and_statistics_stay_constant():
    nets = all_frameworks()
    net, params = nets["linen"]
    x = jnp.ones(SIZES[0], jnp.float64)
    pre = net.apply(params, x)[1]
    assert [p.shape for p in pre] == [(SIZES[1],), (SIZES[2],)]  # z_late (sown first) before a_early

    class WithBatchNorm(nn.Module):
        train: bool = False

        @nn.compact
        def __call__(self, x):
            z = nn.BatchNorm(use_running_average=not self.train)(nn.Dense(5)(x))
            return nn.Dense(2)(nn.relu(z)), (z,)

    v = WithBatchNorm().init(jax.random.key(0), jnp.ones(4))
    bn, bparams = L.from_linen(WithBatchNorm(), v, input_shape=(4,))
    grads = jax.grad(lambda q: L.roll_penalty(bn, q, jnp.ones(4), C=1.0))(bparams)
    assert not np.any(np.asarray(jax.tree.leaves(grads["batch_stats"])))  # held constant
    with pytest.raises(ValueError, match="BatchNorm in training mode"):
        L.batched.margin(*L.from_linen(WithBatchNorm(train=True), v, input_shape=(4,)), jnp.ones((2, 4)))


def test_adapters_refuse_what_they_cannot_read_naming_the_model():
    class OutputOnly(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(nn.relu(nn.Dense(3)(x)))

    v = OutputOnly().init(jax.random.key(0), jnp.ones(4))
    with pytest.raises(L.ProtocolError, match="OutputOnly returned a single output and sowed no pre-activations"):
        L.batched.margin(*L.from_linen(OutputOnly(), v), jnp.ones((2, 4)))
    mlp = eqx.nn.MLP(4, 2, 3, 1, key=jax.random.key(0))  # returns the output only
    with pytest.raises(L.ProtocolError, match="MLP returned a single output"):
        L.batched.margin(*L.from_equinox(mlp), jnp.ones((2, 4)))
    with pytest.raises(TypeError, match="from_linen takes a flax.linen.Module"):
        L.from_linen(nnx_mlp(), {})
    with pytest.raises(TypeError, match="from_equinox takes an equinox.Module"):
        L.from_equinox(lambda x: x)
    with pytest.raises(ValueError, match="no 'params' collection"):
        L.from_linen(OutputOnly(), {"batch_stats": {}})


def test_a_fresh_adapter_of_the_same_model_does_not_recompile():
    from lld_jax._src.kernel import _run as _margin  # the one compiled runner of every kernel

    nets = all_frameworks()
    x = jax.random.normal(jax.random.key(5), (4, SIZES[0]), jnp.float64)
    for name in ("linen", "equinox"):
        L.batched.margin(*nets[name], x)
        before = _margin._cache_size()
        again = all_frameworks()[name]
        assert again[0] == nets[name][0]
        L.batched.margin(*again, x)
        assert _margin._cache_size() == before, name


# A small CNN, the same weights in every framework: conv 3x3 (SAME) -> LeakyReLU -> conv 3x3 stride 2 (SAME) -> LeakyReLU -> dense.
CNN_IN, CNN_CH, CNN_OUT = (6, 6, 2), (4, 5), 3
PAD2 = ((0, 1), (0, 1))  # Flax's SAME padding of a stride-2 3x3 conv on 6x6


def cnn_weights():
    ks = jax.random.split(jax.random.key(11), 6)
    w1 = 0.4 * jax.random.normal(ks[0], (3, 3, CNN_IN[2], CNN_CH[0]), jnp.float64)
    w2 = 0.3 * jax.random.normal(ks[1], (3, 3, CNN_CH[0], CNN_CH[1]), jnp.float64)
    wd = 0.2 * jax.random.normal(ks[2], (3 * 3 * CNN_CH[1], CNN_OUT), jnp.float64)
    bs = [0.3 * jax.random.normal(k, (n,), jnp.float64) for k, n in zip(ks[3:], (*CNN_CH, CNN_OUT))]
    return (w1, bs[0]), (w2, bs[1]), (wd, bs[2])


def _conv(x, w, b, stride, pad):
    y = jax.lax.conv_general_dilated(x[None], w, (stride, stride), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]
    return y + b


def plain_cnn(p, x):
    (w1, b1), (w2, b2), (wd, bd) = p
    z1 = _conv(x, w1, b1, 1, ((1, 1), (1, 1)))
    z2 = _conv(jax.nn.leaky_relu(z1, SLOPE), w2, b2, 2, PAD2)
    return jax.nn.leaky_relu(z2, SLOPE).reshape(-1) @ wd + bd, (z1, z2)


class NnxCNN(nnx.Module):
    def __init__(self, ws):
        (w1, b1), (w2, b2), (wd, bd) = ws
        r = nnx.Rngs(0)
        self.c1 = nnx.Conv(CNN_IN[2], CNN_CH[0], (3, 3), padding="SAME", rngs=r, param_dtype=jnp.float64)
        self.c2 = nnx.Conv(CNN_CH[0], CNN_CH[1], (3, 3), strides=2, padding="SAME", rngs=r, param_dtype=jnp.float64)
        self.d = nnx.Linear(wd.shape[0], CNN_OUT, rngs=r, param_dtype=jnp.float64)
        for layer, (w, b) in zip((self.c1, self.c2, self.d), ws):
            layer.kernel[...], layer.bias[...] = w, b

    def __call__(self, x):
        z1 = self.c1(x)
        z2 = self.c2(nnx.leaky_relu(z1, SLOPE))
        return self.d(nnx.leaky_relu(z2, SLOPE).reshape(-1)), (z1, z2)


class LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        z1 = nn.Conv(CNN_CH[0], (3, 3), padding="SAME", param_dtype=jnp.float64, name="c1")(x)
        self.sow("intermediates", "z1", z1)
        z2 = nn.Conv(CNN_CH[1], (3, 3), strides=2, padding="SAME", param_dtype=jnp.float64, name="c2")(nn.leaky_relu(z1, SLOPE))
        self.sow("intermediates", "z2", z2)
        return nn.Dense(CNN_OUT, param_dtype=jnp.float64, name="d")(nn.leaky_relu(z2, SLOPE).reshape(-1))


class EqxCNN(eqx.Module):
    c1: eqx.nn.Conv2d
    c2: eqx.nn.Conv2d
    d: eqx.nn.Linear

    def __init__(self, ws):
        (w1, b1), (w2, b2), (wd, bd) = ws
        k = jax.random.key(0)
        c1 = eqx.nn.Conv2d(CNN_IN[2], CNN_CH[0], 3, padding=1, key=k, dtype=jnp.float64)
        c2 = eqx.nn.Conv2d(CNN_CH[0], CNN_CH[1], 3, stride=2, padding=PAD2, key=k, dtype=jnp.float64)
        d = eqx.nn.Linear(wd.shape[0], CNN_OUT, key=k, dtype=jnp.float64)
        # Equinox is channels-first: kernels (out, in, kh, kw), biases (out, 1, 1).
        self.c1 = eqx.tree_at(lambda m: (m.weight, m.bias), c1, (w1.transpose(3, 2, 0, 1), b1[:, None, None]))
        self.c2 = eqx.tree_at(lambda m: (m.weight, m.bias), c2, (w2.transpose(3, 2, 0, 1), b2[:, None, None]))
        self.d = eqx.tree_at(lambda m: (m.weight, m.bias), d, (wd.T, bd))

    def __call__(self, x):  # x: (H, W, C) like the others
        z1 = self.c1(x.transpose(2, 0, 1))
        z2 = self.c2(jax.nn.leaky_relu(z1, SLOPE))
        # Flatten in HWC order so that the dense weights are the same as the others'.
        return self.d(jax.nn.leaky_relu(z2, SLOPE).transpose(1, 2, 0).reshape(-1)), (z1, z2)


def test_same_cnn_weights_same_geometry_in_every_framework():
    ws = cnn_weights()
    nets = {"plain": (L.as_network(plain_cnn, input_shape=CNN_IN), ws), "nnx": L.from_nnx(NnxCNN(ws))}
    linen = LinenCNN()
    names = ("c1", "c2", "d")
    variables = {"params": {n: {"kernel": w, "bias": b} for n, (w, b) in zip(names, ws)}}
    nets["linen"] = L.from_linen(linen, variables, input_shape=CNN_IN)
    nets["equinox"] = L.from_equinox(EqxCNN(ws), input_shape=CNN_IN)
    x = jax.random.normal(jax.random.key(5), (6, *CNN_IN), jnp.float64)
    ref = None
    for name, (net, params) in nets.items():
        got = {f"margin_l{p}": np.asarray(L.batched.margin(net, params, x, p=p)) for p in (1, 2, "inf")}
        # The pattern in one canonical order: Equinox's pre-activations are channels-first.
        pre = jax.vmap(lambda u, n=net, q=params: n.apply(q, u)[1])(x)
        if name == "equinox":
            pre = tuple(a.transpose(0, 2, 3, 1) for a in pre)
        got["pattern"] = np.concatenate([np.asarray(a > 0).reshape(len(x), -1) for a in pre], axis=1)
        got["stability_upper"] = np.asarray(L.batched.stability_bounds(net, params, x).upper)
        got["roll"] = np.asarray(jax.vmap(lambda u, n=net, q=params: L.roll_penalty(n, q, u, C=1.0))(x))
        if ref is None:
            ref = got
            assert ref["pattern"].any() and not ref["pattern"].all()
            continue
        _assert_agree(name, got, ref)


class EqxCNNChannelsFirst(eqx.Module):
    """The same CNN written the Equinox way: channels-first input, no transposes inside."""

    c1: eqx.nn.Conv2d
    c2: eqx.nn.Conv2d
    d: eqx.nn.Linear

    def __init__(self, ws):
        base = EqxCNN(ws)
        self.c1, self.c2, self.d = base.c1, base.c2, base.d

    def __call__(self, x):  # x: (C, H, W)
        z1 = self.c1(x)
        z2 = self.c2(jax.nn.leaky_relu(z1, SLOPE))
        return self.d(jax.nn.leaky_relu(z2, SLOPE).transpose(1, 2, 0).reshape(-1)), (z1, z2)


def _sampled_loss_and_grad(net, params, x):
    loss = lambda p: L.roll_penalty_sampled(net, p, x, jax.random.key(2), C=8.0, num_samples=12)  # noqa: E731
    return jax.value_and_grad(loss)(params)


def test_linen_and_equinox_first_convs_reach_the_stem():
    """A first conv read from the input becomes the sampled loss's stem: placed kernels equal the conv's Jacobian, and the
    loss and its gradient equal the generic JVP path's (float64); a fresh adapter of the same model is the same network."""
    ws = cnn_weights()
    variables = {"params": {n: {"kernel": w, "bias": b} for n, (w, b) in zip(("c1", "c2", "d"), ws)}}
    x = jax.random.normal(jax.random.key(6), CNN_IN, jnp.float64)
    cases = {
        "linen": (lambda: L.from_linen(LinenCNN(), variables, input_shape=CNN_IN), x),
        "equinox": (lambda: L.from_equinox(EqxCNNChannelsFirst(ws), input_shape=(CNN_IN[2], *CNN_IN[:2])), x.transpose(2, 0, 1)),
    }
    for name, (make, u) in cases.items():
        net, params = make()
        assert net.stem is not None, name
        assert make()[0] == net and hash(make()[0]) == hash(net), name
        st = net.stem(params)
        pre = net.apply(params, u)[1]
        np.testing.assert_allclose(st.first(u), pre[0], rtol=1e-12, atol=1e-14)
        jac = jax.jacfwd(st.first)(u).reshape(*pre[0].shape, -1)
        cols = jax.vmap(lambda k, s=st, v=u: s.axis_tangent(k, v.shape))(jnp.arange(u.size))
        np.testing.assert_allclose(cols, jnp.moveaxis(jac, -1, 0), rtol=1e-12, atol=1e-14)
        a, ga = _sampled_loss_and_grad(net, params, u)
        b, gb = _sampled_loss_and_grad(dataclasses.replace(net, stem=None), params, u)
        np.testing.assert_allclose(a, b, rtol=1e-10)
        for g, h in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
            np.testing.assert_allclose(g, h, rtol=1e-10, atol=1e-12)
    # The channels-last Equinox model transposes x before its conv: the conv does not read the input, no stem.
    assert L.from_equinox(EqxCNN(ws), input_shape=CNN_IN)[0].stem is None


def test_a_first_conv_that_is_not_the_whole_first_layer_gets_no_stem():
    """Dilation, or the raw input used again after the conv (a residual from x): the generic path, never a wrong stem."""

    class Dilated(nn.Module):
        @nn.compact
        def __call__(self, x):
            z = nn.Conv(3, (3, 3), kernel_dilation=2, padding="SAME", param_dtype=jnp.float64)(x)
            self.sow("intermediates", "z", z)
            return nn.Dense(2, param_dtype=jnp.float64)(nn.relu(z).reshape(-1))

    class InputAgain(nn.Module):
        @nn.compact
        def __call__(self, x):
            z = nn.Conv(2, (3, 3), padding="SAME", param_dtype=jnp.float64)(x)
            self.sow("intermediates", "z", z)
            return nn.Dense(2, param_dtype=jnp.float64)((nn.relu(z) + x).reshape(-1))

    for module in (Dilated(), InputAgain()):
        variables = module.init(jax.random.key(0), jnp.ones(CNN_IN, jnp.float64))
        net, params = L.from_linen(module, variables, input_shape=CNN_IN)
        assert net.stem is None, type(module).__name__
        assert np.isfinite(float(L.margin(net, params, jnp.full(CNN_IN, 0.3))))

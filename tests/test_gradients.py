"""All gradient methods agree with each other and with jax.jacfwd (brute force)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nets import KINDS, make

import lld_jax as L


def brute_force(net, params, x):
    def one(xi):
        f = lambda u: jnp.concatenate([p.ravel() for p in net.apply(params, u.reshape(xi.shape))[1]])
        return f(xi), jax.jacfwd(f)(xi.reshape(-1))

    return jax.vmap(one)(x)


def methods_for(net):
    return ["forward", "reverse"] + (["template"] if net.apply_frozen is not None else [])


@pytest.mark.parametrize("kind", KINDS)
def test_jacobian_methods_agree_float64(kind):
    net, params, x = make(kind)
    z_ref, j_ref = brute_force(net, params, x)
    for method in methods_for(net):
        z, j = L.batched.neuron_gradients(net, params, x, method=method, chunk_size=5)
        np.testing.assert_allclose(z, z_ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(j, j_ref, rtol=1e-10, atol=1e-12 * np.abs(j_ref).max(), err_msg=method)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("ord", [1, 2, np.inf])
def test_norm_methods_agree_float64(kind, ord):
    net, params, x = make(kind)
    _, j_ref = brute_force(net, params, x)
    ref = np.linalg.norm(np.asarray(j_ref), ord=ord, axis=-1)
    methods = methods_for(net) + (["gram"] if ord == 2 and net.dense_layers is not None else [])
    for method in methods:
        _, n = L.batched.neuron_gradient_norms(net, params, x, ord=ord, method=method, chunk_size=7)
        np.testing.assert_allclose(n, ref, rtol=1e-10, atol=1e-12 * ref.max(), err_msg=method)


@pytest.mark.parametrize("kind", ["mlp", "cnn", "resnet", "rnn"])
def test_methods_agree_float32(kind):
    net, params, x = make(kind, dtype=jnp.float32)
    _, ref = L.batched.neuron_gradient_norms(net, params, x, method="reverse")
    for method in methods_for(net)[1:] + (["gram"] if net.dense_layers is not None else []):
        _, n = L.batched.neuron_gradient_norms(net, params, x, method=method)
        np.testing.assert_allclose(n, ref, rtol=1e-4, atol=1e-4 * float(ref.max()), err_msg=method)


def test_auto_picks_gram_for_mlp_l2_and_matches():
    net, params, x = make("mlp")
    a = L.batched.margin(net, params, x, p=2)
    b = L.batched.margin(net, params, x, p=2, method="reverse")
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_chunk_size_does_not_change_result():
    net, params, x = make("cnn")
    ref = L.batched.neuron_gradient_norms(net, params, x, ord=2, method="forward", chunk_size=72)[1]
    for c in (1, 5, 13, 1000):
        np.testing.assert_allclose(L.batched.neuron_gradient_norms(net, params, x, ord=2, method="forward", chunk_size=c)[1], ref, rtol=1e-12)


def test_squared_norm_is_square_of_norm():
    net, params, x = make("mlp")
    _, n = L.batched.neuron_gradient_norms(net, params, x, ord=2)
    _, s = L.batched.neuron_gradient_norms(net, params, x, ord=2, squared=True)
    np.testing.assert_allclose(s, n**2, rtol=1e-12)

"""All gradient methods agree with each other and with jax.jacfwd (brute force)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from nets import KINDS, POOLED, make

import lld_jax as L

# Exactness against float64 references (see conftest: the suite runs float32 unless a test opts in).
pytestmark = pytest.mark.float64


def brute_force(net, params, x):
    def one(xi):
        f = lambda u: jnp.concatenate([p.ravel() for p in net.apply(params, u.reshape(xi.shape))[1]])
        return f(xi), jax.jacfwd(f)(xi.reshape(-1))

    return jax.vmap(one)(x)


RECURRENT = ("rnn", "scornn")  # x_t enters at every step: not feed-forward through the first layer
# ScoRNN shares the RNN's recurrence: its gradients are covered by the rnn kind here and by tests/test_recurrent.py.
GRADIENT_KINDS = tuple(k for k in KINDS if k != "scornn")


def methods_for(net):
    return ["forward", "reverse"] + (["template"] if net.apply_frozen is not None else [])


@pytest.mark.parametrize("kind", GRADIENT_KINDS)
def test_jacobian_methods_agree_float64(kind):
    net, params, x = make(kind)
    z_ref, j_ref = brute_force(net, params, x)
    for method in methods_for(net):
        z, j = L.batched.neuron_gradients(net, params, x, method=method, chunk_size=5)
        np.testing.assert_allclose(z, z_ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(j, j_ref, rtol=1e-10, atol=1e-12 * np.abs(j_ref).max(), err_msg=method)


@pytest.mark.parametrize("kind", GRADIENT_KINDS)
@pytest.mark.parametrize("ord", [1, 2, np.inf])
def test_norm_methods_agree_float64(kind, ord):
    net, params, x = make(kind)
    _, j_ref = brute_force(net, params, x)
    ref = np.linalg.norm(np.asarray(j_ref), ord=ord, axis=-1)
    methods = methods_for(net) + (["gram"] if ord == 2 and net.dense_layers is not None else [])
    methods += ["rowspace"] if ord == 2 and kind not in RECURRENT + POOLED else []
    for method in methods:
        _, n = L.batched.neuron_gradient_norms(net, params, x, p=ord, method=method, chunk_size=7)
        np.testing.assert_allclose(n, ref, rtol=1e-10, atol=1e-12 * ref.max(), err_msg=method)


@pytest.mark.parametrize("kind", ["mlp", "cnn", "resnet", "rnn"])
def test_methods_agree_float32(kind):
    net, params, x = make(kind, dtype=jnp.float32)
    _, ref = L.batched.neuron_gradient_norms(net, params, x, method="reverse")
    for method in methods_for(net)[1:] + (["gram"] if net.dense_layers is not None else []):
        _, n = L.batched.neuron_gradient_norms(net, params, x, method=method)
        np.testing.assert_allclose(n, ref, rtol=1e-4, atol=1e-4 * float(ref.max()), err_msg=method)


def test_auto_picks_gram_for_mlp_l2_and_matches():
    from lld_jax._src.gradients import pick_method

    net, params, x = make("mlp")
    assert pick_method(net, "auto", 2, x.shape[1:], ((12,), (12,), (12,)), None)[0] == "gram"
    a = L.batched.margin(net, params, x, p=2)
    b = L.batched.margin(net, params, x, p=2, method="reverse")
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_chunk_size_does_not_change_result():
    net, params, x = make("cnn")
    ref = L.batched.neuron_gradient_norms(net, params, x, p=2, method="forward", chunk_size=72)[1]
    for c in (1, 5, 13, 1000):
        np.testing.assert_allclose(L.batched.neuron_gradient_norms(net, params, x, p=2, method="forward", chunk_size=c)[1], ref, rtol=1e-12)


def test_squared_norm_is_square_of_norm():
    net, params, x = make("mlp")
    _, n = L.batched.neuron_gradient_norms(net, params, x, p=2)
    _, s = L.batched.neuron_gradient_norms(net, params, x, p=2, squared=True)
    np.testing.assert_allclose(s, n**2, rtol=1e-12)


def _plain_mlp(d=24, widths=(7, 9, 5), seed=0, skip=False):
    """A user's MLP as a plain function (no dense_layers): N_1 <= D / 2, so auto takes the row-space path."""
    rng = np.random.default_rng(seed)
    sizes = [d, *widths, 3]
    params = [(jnp.asarray(rng.normal(size=(b, a)) / np.sqrt(a)), jnp.asarray(0.1 * rng.normal(size=b))) for a, b in zip(sizes[:-1], sizes[1:])]

    def apply(p, x):
        pre, h = [], x
        for i, (w, b) in enumerate(p[:-1]):
            z = w @ h + b + (0.3 * x[: w.shape[0]] if skip and i == 1 else 0)  # skip: x read again by layer 2
            pre.append(z)
            h = jax.nn.relu(z)
        return p[-1][0] @ h + p[-1][1], tuple(pre)

    return apply, params, jnp.asarray(rng.normal(size=(6, d)))


def test_rowspace_is_exact_for_plain_feedforward_functions_and_auto_uses_it():
    f, params, x = _plain_mlp()
    net = L.as_network(f)
    from lld_jax._src.gradients import pick_method

    assert pick_method(net, "auto", 2, (24,), ((7,), (9,), (5,)), None)[0] == "rowspace"
    _, j_ref = brute_force(net, params, x)
    ref = np.linalg.norm(np.asarray(j_ref), axis=-1)
    for method in ("auto", "rowspace"):
        _, n = L.batched.neuron_gradient_norms(f, params, x, p=2, method=method, chunk_size=3)
        np.testing.assert_allclose(n, ref, rtol=1e-10, err_msg=method)
    np.testing.assert_allclose(L.batched.margin(f, params, x, p=2), L.batched.margin(f, params, x, p=2, method="forward"), rtol=1e-10)
    roll = jax.jit(lambda p, u: L.roll_penalty(f, p, u, C=0.5))  # the training loss takes the same path
    roll_fwd = jax.jit(lambda p, u: L.roll_penalty(f, p, u, C=0.5, method="forward"))
    np.testing.assert_allclose(roll(params, x[0]), roll_fwd(params, x[0]), rtol=1e-10)


def test_rowspace_refuses_networks_that_read_x_beyond_the_first_layer():
    f, params, x = _plain_mlp(skip=True)
    for check in (True, False):  # the structure check is part of the method, never skipped
        with pytest.raises(ValueError, match="feed-forward"):
            L.batched.margin(f, params, x, p=2, method="rowspace", check=check)
    with pytest.raises(ValueError, match="only computes l2 norms"):
        L.batched.margin(f, params, x, p=1, method="rowspace")
    # A faint skip on one neuron whose gradient is nothing else (float32): small against the other
    # gradients, but all of that neuron's gradient, so its margin would be wrong; caught per neuron.
    k = jax.random.split(jax.random.key(0), 4)
    w1, w2 = jax.random.normal(k[0], (8, 20), jnp.float32) / 4, (jax.random.normal(k[1], (8, 8), jnp.float32) / 4).at[0].set(0.0)
    skip = jnp.zeros((8, 20), jnp.float32).at[0].set(1e-5 * jax.random.normal(k[2], (20,), jnp.float32))
    faint = lambda p, u: (p[2] @ jax.nn.relu(p[1] @ jax.nn.relu(p[0] @ u) + skip @ u), (p[0] @ u, p[1] @ jax.nn.relu(p[0] @ u) + skip @ u))
    fp, fx = (w1, w2, jax.random.normal(k[3], (3, 8), jnp.float32)), jax.random.normal(jax.random.key(1), (2, 20), jnp.float32)
    with pytest.raises(ValueError, match="feed-forward"):
        L.batched.margin(faint, fp, fx, p=2)  # auto takes the row-space path here
    # No false alarm where neurons cancel: two almost equal first-layer rows read with weights +s and -s give
    # a tiny gradient next to a larger rounding leak; the tolerance follows sigma_min of the first layer.
    a = w1.at[1].set(w1[0] + 1e-6 * jax.random.normal(k[2], (20,), jnp.float32))
    cancel = lambda p, u: (p[2] @ jax.nn.relu(p[1] @ jax.nn.relu(p[0] @ u + 5.0) + 1.0), (p[0] @ u + 5.0, p[1] @ jax.nn.relu(p[0] @ u + 5.0) + 1.0))
    cp = (a, w2.at[0, 0].set(1e4).at[0, 1].set(-1e4), fp[2])
    np.testing.assert_allclose(L.batched.margin(cancel, cp, fx, p=2), L.batched.margin(cancel, cp, fx, p=2, method="forward"), rtol=1e-5)
    # A recurrent net reports all its steps as ONE preact: its row space holds every gradient, so the
    # method is exact there (the check passes for the right reason).
    rnet, rparams = L.from_nnx(L.models.RNN(6, 2, 2, negative_slope=0.1, length=4, rngs=nnx.Rngs(0), param_dtype=jnp.float64))
    rx = jax.random.normal(jax.random.key(0), (3, 4, 6), jnp.float64)
    a = L.batched.neuron_gradient_norms(rnet, rparams, rx, p=2, method="rowspace")[1]
    np.testing.assert_allclose(a, L.batched.neuron_gradient_norms(rnet, rparams, rx, p=2, method="forward")[1], rtol=1e-10)

"""Fast paths verify what they trust: a declaration that is not the network poisons or refuses, never computes.

Reference: float64 margins from ``jax.jacfwd`` of the network's own ``apply`` (brute force).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from nets import make, randomize_biases

import lld_jax as L
from lld_jax._src.declarations import declaration_mismatch, dense_mismatch, frozen_mismatch, stem_mismatch

# Exactness against float64 references (see conftest: the suite runs float32 unless a test opts in).
pytestmark = pytest.mark.float64


class LeakyNoSlope(nnx.Module):
    """The issue's case: LeakyReLU(0.2) inside, a dense_layers() method, no negative_slope attribute."""

    def __init__(self, rngs):
        self.l1, self.l2, self.l3 = nnx.Linear(6, 16, rngs=rngs), nnx.Linear(16, 16, rngs=rngs), nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        z1 = self.l1(x)
        z2 = self.l2(nnx.leaky_relu(z1, 0.2))
        return self.l3(nnx.leaky_relu(z2, 0.2)), (z1, z2)

    def dense_layers(self):
        return [(layer.kernel[...].T, layer.bias[...]) for layer in (self.l1, self.l2, self.l3)]


def brute_margin(net, params, x, p=2):
    z = jnp.concatenate([jnp.ravel(a) for a in net.apply(params, x)[1]])
    jac = jax.jacfwd(lambda u: jnp.concatenate([jnp.ravel(a) for a in net.apply(params, u)[1]]))(x).reshape(z.size, -1)
    q = {1: np.inf, 2: 2, np.inf: 1}[p]
    return float(jnp.min(jnp.abs(z) / jnp.linalg.norm(jac, ord=q, axis=1)))


@pytest.fixture
def leaky():
    model = LeakyNoSlope(nnx.Rngs(0))
    randomize_biases(model, jax.random.key(1))
    net, params = L.from_nnx(model, input_shape=(6,))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = jax.random.normal(jax.random.key(2), (32, 6), jnp.float64)
    return net, params, x


def test_undeclared_leaky_slope_is_refused_eagerly_and_poisoned_inside_jit(leaky):
    net, params, x = leaky
    assert net.negative_slope == 0.0 and net.dense_layers is not None  # the wrong declaration from_nnx reads
    with pytest.raises(L.CheckError, match=r"declared structure \(dense_layers/negative_slope\)"):
        L.batched.margin(net, params, x, p=2)
    # Unchecked, and inside the user's jit: NaN, never the over-estimate the gram path would give.
    unchecked = L.batched.margin(net, params, x, p=2, check=False)
    assert np.all(np.isnan(np.asarray(unchecked)))
    assert np.isnan(float(L.roll_penalty(net, params, x[0], C=1.0)))  # the loss's gram path is poisoned too
    # Inside the user's jit: checked, the value checks poison x; unchecked, the gram path poisons its own result.
    for check in (True, False):
        traced = jax.jit(jax.vmap(lambda u, check=check: L.margin(net, params, u, p=2, check=check)))(x)
        assert np.all(np.isnan(np.asarray(traced))), check
    # Declared right, the same weights give the brute-force margins.
    fixed = dataclasses.replace(net, negative_slope=0.2)
    got = np.asarray(L.batched.margin(fixed, params, x, p=2))
    want = np.array([brute_margin(fixed, params, xi) for xi in x])
    np.testing.assert_allclose(got, want, rtol=1e-10)
    # Without any declaration (a plain function) the generic path is right too.
    plain = L.as_network(lambda p, u: net.apply(p, u), input_shape=(6,))
    np.testing.assert_allclose(np.asarray(L.batched.margin(plain, params, x, p=2)), want, rtol=1e-10)


def test_each_declaration_is_checked_against_the_network():
    net, params, x = make("mlp")
    assert not any(bool(f(net, params, x[0])) for f in (dense_mismatch, frozen_mismatch))
    # dense_layers with other biases than the module's.
    wrong_bias = dataclasses.replace(net, dense_layers=lambda p: [(w, b + 0.01) for w, b in net.dense_layers(p)])
    assert bool(dense_mismatch(wrong_bias, params, x[0]))
    # ... or other weights that agree on the value at x = 0 (only the derivative tells).
    wrong_w = dataclasses.replace(net, dense_layers=lambda p: [(1.5 * w, b) for w, b in net.dense_layers(p)])
    assert bool(dense_mismatch(wrong_w, params, jnp.zeros(6)))
    # A frozen-pattern apply that is not the network.
    bad_frozen = dataclasses.replace(net, apply_frozen=lambda p, u, s: net.apply_frozen(p, 1.01 * u, s))
    assert bool(frozen_mismatch(bad_frozen, params, x[0]))
    with pytest.raises(L.CheckError, match="apply_frozen"):
        L.batched.margin(bad_frozen, params, x, method="template")
    assert np.all(np.isnan(np.asarray(L.batched.margin(bad_frozen, params, x, method="template", check=False))))
    # The built-in models pass their own checks, batched or not, in float32 too.
    for kind in ("mlp", "leaky_mlp", "cnn", "resnet", "scornn"):
        for dtype in (jnp.float64, jnp.float32):
            net, params, x = make(kind, dtype=dtype)
            assert not np.any(jax.jit(jax.vmap(lambda u: declaration_mismatch(net, params, u)))(x)), (kind, dtype)


def test_a_stem_that_is_not_the_first_layer_poisons_the_sampled_loss():
    net, params, x = make("cnn")
    assert net.stem is not None and not bool(stem_mismatch(net, params, x[0]))

    def shifted(p):
        st = net.stem(p)
        return st._replace(axis_tangent=lambda k, shape: st.axis_tangent((k + 1) % 72, shape))

    bad = dataclasses.replace(net, stem=shifted)
    assert bool(stem_mismatch(bad, params, x[0]))
    key = jax.random.key(0)
    good = L.roll_penalty_sampled(net, params, x[0], key, C=1.0, num_samples=4)
    assert np.isfinite(float(good))
    assert np.isnan(float(L.roll_penalty_sampled(bad, params, x[0], key, C=1.0, num_samples=4)))
    with pytest.raises(L.CheckError, match="stem"):
        L.batched.margin(bad, params, x)


def test_training_verifies_declarations_once_per_batch_and_refuses_a_wrong_one_by_name(leaky, tmp_path):
    """The train step skips the per-example checks (they cost as much as a sampled loss) and checks x[0]:
    a wrong declaration still gives NaN, never a step on the wrong geometry; fit refuses it up front."""
    from lld_jax.training import TrainConfig, fit, make_loss_fn

    net, params, x = leaky
    y = jnp.zeros(len(x), jnp.int32)
    for cfg in (TrainConfig(lam=1.0, C=1.0, method="gram"), TrainConfig(lam=1.0, C=1.0, regularizer="sampled", num_samples=2)):
        loss = jax.jit(make_loss_fn(net, cfg))
        total, _ = loss(params, x[:8], y[:8], jnp.ones(8), jax.random.key(0))
        assert np.isnan(float(total)), cfg.regularizer
        # ... and so is its gradient: no optimiser gets a finite update from a step on the wrong geometry.
        grads, _ = jax.jit(jax.grad(make_loss_fn(net, cfg), has_aux=True))(params, x[:8], y[:8], jnp.ones(8), jax.random.key(0))
        assert all(np.all(np.isnan(np.asarray(a))) for a in jax.tree.leaves(grads)), cfg.regularizer
        fixed = dataclasses.replace(net, negative_slope=0.2)
        total, _ = jax.jit(make_loss_fn(fixed, cfg))(params, x[:8], y[:8], jnp.ones(8), jax.random.key(0))
        assert np.isfinite(float(total)), cfg.regularizer
        text = str(jax.make_jaxpr(make_loss_fn(fixed, cfg))(params, x[:8], y[:8], jnp.ones(8), jax.random.key(0)))
        assert "callback" not in text
    with pytest.raises(L.CheckError, match=r"declared structure \(dense_layers/negative_slope\)"):
        data = (np.asarray(x), np.asarray(y))
        fit(net, params, TrainConfig(lam=1.0, C=1.0, epochs=1, batch_size=8), data, data, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_a_neuron_at_its_kink_is_no_declaration_mismatch(dtype):
    """At inputs that put a neuron within rounding of z = 0 the declared stack and apply may round to
    different sides; the check follows apply's own pattern, so a correct declaration is never refused there."""
    net, params, x = make("leaky_mlp", dtype=dtype)
    (w1, b1) = net.dense_layers(params)[0]
    flagged = 0
    for i in range(x.shape[0]):
        for j in range(w1.shape[0]):
            xi = x[i] - (w1[j] @ x[i] + b1[j]) / (w1[j] @ w1[j]) * w1[j]  # z_j(xi) = 0 up to rounding
            for tiny in (0.0, 1e-7, -1e-7):
                flagged += int(dense_mismatch(net, params, xi + tiny * w1[j]))
    assert flagged == 0
    # ... while a wrong slope is still seen at such inputs.
    wrong = dataclasses.replace(net, negative_slope=0.3)
    assert bool(jnp.any(jax.vmap(lambda u: dense_mismatch(wrong, params, u))(x)))


def _two_layer(scale_box, swallow_nan=False):
    """A 4-8-3 ReLU net as a plain function whose dense_layers declaration scales the first layer by scale_box[0]."""

    def apply(p, x):
        x = jnp.nan_to_num(x) if swallow_nan else x  # input sanitising: NaN in, finite pre-activations out
        h = p["W1"] @ x + p["b1"]
        return p["W2"] @ jax.nn.relu(h) + p["b2"], (h,)

    dense = lambda p: [(scale_box[0] * p["W1"], scale_box[0] * p["b1"]), (p["W2"], p["b2"])]
    k = jax.random.split(jax.random.key(1), 4)
    params = {"W1": jax.random.normal(k[0], (8, 4)), "b1": jax.random.normal(k[1], (8,)), "W2": jax.random.normal(k[2], (3, 8)), "b2": jnp.zeros(3)}
    return L.Network(apply, input_shape=(4,), dense_layers=dense), params, jax.random.normal(k[3], (5, 4))


def test_an_eager_kernel_verifies_its_declaration_itself():
    # The eager value checks are compiled once per network and cached; a declaration reading mutable state can go
    # wrong after they were compiled. The kernel compiled later still checks its fast path's declaration: NaN.
    scale = [1.0]
    net, params, x = _two_layer(scale)
    assert np.asarray(L.batched.activation_pattern(net, params, x)).any()  # compiles (and passes) the value checks
    scale[0] = 0.5  # now the declared weights are not the network's
    assert np.all(np.isnan(np.asarray(L.batched.margin(net, params, x, p=2, method="gram"))))


def test_a_failed_check_poisons_neuron_gradients_even_through_a_network_that_swallows_nan():
    net, params, x = _two_layer([0.5], swallow_nan=True)  # a wrong declaration from the start
    z, norms = jax.jit(lambda q, u: L.batched.neuron_gradient_norms(net, q, u, p=2, method="gram"))(params, x)
    assert np.all(np.isnan(np.asarray(z))) and np.all(np.isnan(np.asarray(norms)))
    z, grads = jax.jit(jax.vmap(lambda u: L.neuron_gradients(net, params, u)))(x)
    assert np.all(np.isnan(np.asarray(z))) and np.all(np.isnan(np.asarray(grads)))


def test_a_network_without_output_is_checked_like_any_other():
    f = lambda w, x: (None, (w @ x,))  # preacts only: the value checks' probes must not need an output
    assert float(L.margin(f, jnp.eye(2), jnp.array([1.0, -1.0]))) == pytest.approx(1.0)

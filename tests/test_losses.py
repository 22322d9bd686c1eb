"""ROLL losses against hand-written NumPy references; estimator unbiasedness; parameter gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from nets import randomize_biases

import lld_jax as L
from lld_jax.losses import aggregate, distance_penalty, roll_penalty, roll_penalty_sampled

# Exactness against float64 references (see conftest: the suite runs float32 unless a test opts in).
pytestmark = pytest.mark.float64


def batch_roll(net, params, x, **kw):
    return jax.vmap(lambda xi: roll_penalty(net, params, xi, **kw))(x)


def batch_sampled(net, params, x, key, **kw):
    keys = jax.random.split(key, x.shape[0])
    return jax.vmap(lambda xi, k: roll_penalty_sampled(net, params, xi, k, **kw))(x, keys)


def tiny(d=4):
    model = L.models.MLP(d, [5, 3], 2, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    randomize_biases(model, jax.random.key(2))  # nonzero offsets: z = J x + b, not J x
    net, params = L.from_nnx(model)
    x = jax.random.normal(jax.random.key(1), (6, d), jnp.float64) * 2
    return net, params, x


def numpy_terms(params, x, C):
    """Hand-written: z and ||grad z||^2 of a 2-hidden-layer ReLU MLP, by explicit matrix products."""
    w1, b1 = np.asarray(params["layers"][0]["kernel"]).T, np.asarray(params["layers"][0]["bias"])
    w2, b2 = np.asarray(params["layers"][1]["kernel"]).T, np.asarray(params["layers"][1]["bias"])
    out = []
    for xi in np.asarray(x):
        z1 = w1 @ xi + b1
        z2 = w2 @ np.maximum(z1, 0) + b2
        j1 = w1
        j2 = w2 @ np.diag((z1 > 0).astype(float)) @ w1
        z = np.concatenate([z1, z2])
        sq = np.concatenate([(j1**2).sum(1), (j2**2).sum(1)])
        out.append((z, sq, sq + C * np.maximum(0, 1 - np.abs(z))))
    return out


@pytest.mark.parametrize("gamma", ["max", 25, 50, 75, 100])
@pytest.mark.parametrize("method", ["gram", "forward", "reverse", "template"])
@pytest.mark.parametrize("d", [4, 9])  # 9 > N_1 = 5: gram compresses W_1 by QR
def test_roll_penalty_matches_reference(gamma, method, d):
    net, params, x = tiny(d)
    C = 0.7
    got = np.asarray(batch_roll(net, params, x, C=C, gamma=gamma, method=method))
    for i, (_, _, terms) in enumerate(numpy_terms(params, x, C)):
        if gamma == "max":
            ref = terms.max()
        else:
            k = max(1, int(len(terms) * gamma / 100))
            ref = np.sort(terms)[::-1][:k].mean()
        np.testing.assert_allclose(got[i], ref, rtol=1e-12)


def test_distance_penalty_is_minus_margin():
    net, params, x = tiny()
    ref = []
    for z, sq, _ in numpy_terms(params, x, 0.0):
        # Conventions: z = 0 gives distance 0 (even with a zero gradient); zero gradient otherwise never bounds.
        d = np.where(z == 0, 0.0, np.where(sq > 0, np.abs(z) / np.sqrt(np.where(sq > 0, sq, 1)), np.inf))
        ref.append(-d.min())
    np.testing.assert_allclose(jax.vmap(lambda xi: distance_penalty(net, params, xi))(x), ref, rtol=1e-12)


def test_aggregate_topk_semantics():
    t = jnp.array([[5.0, 1.0, 4.0, 2.0, 3.0, 0.0, 9.0, 7.0]])
    assert float(aggregate(t, "max")[0]) == 9.0
    assert float(aggregate(t, 100)[0]) == pytest.approx(31 / 8)
    assert float(aggregate(t, 25)[0]) == pytest.approx((9 + 7) / 2)  # k = int(8 * .25) = 2
    assert float(aggregate(t, 50)[0]) == pytest.approx((9 + 7 + 5 + 4) / 4)
    assert float(aggregate(t, 10)[0]) == 9.0  # k floors to 0, at least one neuron kept


@pytest.mark.parametrize("gamma", [100, 50, 25, 37.5, 10, 1, "max"])
def test_masked_aggregate_equals_numpy_over_the_example_neurons(gamma):
    """With a mask (padded sequences, max-pool, maxout), N counts only the example's neurons:
    NumPy's top-k of t[mask] with k = max(1, floor(count * gamma / 100)), for counts across the floor steps."""
    rng = np.random.default_rng(0)
    for count in (1, 3, 4, 7, 8, 11, 16):
        mask = np.zeros(16, bool)
        mask[rng.choice(16, count, replace=False)] = True
        t = np.where(mask, rng.exponential(size=16), 0.0)  # masked terms are 0 (MASKED_PREACT)
        t[np.flatnonzero(mask)[:2]] = t[np.flatnonzero(mask)[0]]  # a tie among the example's terms
        real = np.sort(t[mask])[::-1]
        ref = real[0] if gamma == "max" else real[: max(1, int(np.floor(count * gamma / 100)))].mean()
        np.testing.assert_allclose(aggregate(jnp.asarray(t), gamma, jnp.asarray(mask)), ref, rtol=1e-12, err_msg=f"count={count}")


@pytest.mark.parametrize("estimator,stratify", [("axes", False), ("gaussian", False), ("axes", True)])
def test_sampled_estimator_is_unbiased(estimator, stratify):
    model = L.models.CNN((4, 4, 3), (2,), (6,), 2, rngs=nnx.Rngs(3), param_dtype=jnp.float64)
    net, params = L.from_nnx(model)
    x = jax.random.normal(jax.random.key(2), (2, 4, 4, 3), jnp.float64)
    C = 0.5
    exact = np.asarray(batch_roll(net, params, x, C=C, gamma=100, method="forward"))
    f = jax.jit(lambda k: batch_sampled(net, params, x, k, C=C, num_samples=3, estimator=estimator, stratify=stratify))
    draws = np.stack([np.asarray(f(k)) for k in jax.random.split(jax.random.key(0), 3000)])
    mean, se = draws.mean(0), draws.std(0) / np.sqrt(len(draws))
    assert np.all(np.abs(mean - exact) < 4 * se), (mean, exact, se)
    assert np.all(draws.std(0) > 0)  # really random


def test_sampled_with_all_axes_is_exact():
    net, params, x = tiny()
    exact = batch_roll(net, params, x, C=0.3)
    got = batch_sampled(net, params, x, jax.random.key(0), C=0.3, num_samples=4)
    np.testing.assert_allclose(got, exact, rtol=1e-12)


@pytest.mark.parametrize("method,d", [("forward", 4), ("gram", 4), ("gram", 9)])
def test_parameter_gradient_flows_through_gradient_term(method, d):
    net, params, x = tiny(d)
    C = 0.0  # only the ||grad_x z||^2 term: its parameter gradient must be right

    def loss(p):
        return jnp.mean(batch_roll(net, p, x, C=C, method=method))

    g = jax.grad(loss)(params)
    leaves, treedef = jax.tree.flatten(params)
    gleaves = jax.tree.leaves(g)
    rng = np.random.default_rng(0)
    h = 1e-6
    for li, (leaf, gl) in enumerate(zip(leaves, gleaves)):
        for _ in range(3):
            idx = tuple(rng.integers(0, s) for s in leaf.shape)
            bump = lambda d: jax.tree.unflatten(treedef, [l.at[idx].add(d) if j == li else l for j, l in enumerate(leaves)])
            fd = (loss(bump(h)) - loss(bump(-h))) / (2 * h)
            np.testing.assert_allclose(gl[idx], fd, rtol=1e-5, atol=1e-8)
    assert max(float(jnp.abs(a).max()) for a in gleaves) > 0


def test_invalid_hyper_parameters_refused():
    net, params, x = tiny()
    with pytest.raises(ValueError, match="C \\(hinge weight\\) must be >= 0"):
        roll_penalty(net, params, x[0], C=-1.0)
    with pytest.raises(ValueError, match="gamma must be"):
        roll_penalty(net, params, x[0], C=1.0, gamma=0)
    with pytest.raises(ValueError, match="gamma must be"):
        roll_penalty(net, params, x[0], C=1.0, gamma=150)
    with pytest.raises(ValueError, match="D' \\(num_samples\\) must be a positive integer"):
        roll_penalty_sampled(net, params, x[0], jax.random.key(0), C=1.0, num_samples=0)
    from lld_jax.training import TrainConfig

    with pytest.raises(ValueError, match="lambda"):
        TrainConfig(lam=-0.5).validate()
    with pytest.raises(ValueError, match="only for gamma=100"):
        TrainConfig(regularizer="sampled", gamma=50).validate()


@pytest.mark.parametrize("estimator,stratify", [("axes", True), ("gaussian", False)])
def test_sampled_loss_chunks_change_nothing_value_or_gradient(estimator, stratify):
    model = L.models.CNN((4, 4, 3), (3,), (5,), 3, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    net, params = L.from_nnx(model)
    x = jax.random.uniform(jax.random.key(2), (2, 4, 4, 3), jnp.float64)
    key = jax.random.key(4)

    def loss(p, chunk):
        return batch_sampled(net, p, x, key, C=0.5, num_samples=9, estimator=estimator, stratify=stratify, chunk_size=chunk).sum()

    value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)  # one compile per chunk size: faster than op-by-op
    ref, gref = value_and_grad(params, None)
    for chunk in (1, 2, 4, 9, 20):  # uneven, exact, larger than D'
        val, g = value_and_grad(params, chunk)
        np.testing.assert_allclose(val, ref, rtol=1e-12)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14), g, gref)
    for bad in (0, -2, True, 1.5):
        with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
            roll_penalty_sampled(net, params, x[0], key, C=0.5, num_samples=9, chunk_size=bad)

"""Patterns, membership (Prop. 5) and Lemma 7's counts against brute force."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from nets import make

import lld_jax as L

# Exactness against float64 references (see conftest: the suite runs float32 unless a test opts in).
pytestmark = pytest.mark.float64


def test_pattern_matches_preacts_and_same_region():
    net, params, x = make("resnet")
    pat = np.asarray(L.batched.activation_pattern(net, params, x))
    z = np.concatenate([np.asarray(p).reshape(x.shape[0], -1) for p in jax.vmap(lambda u: net.apply(params, u)[1])(x)], 1)
    assert (pat == (z > 0)).all()
    assert bool(L.batched.same_region(net, params, x, x).all())
    assert not bool(L.batched.same_region(net, params, x, x[::-1]).any())


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_l1_ball_membership_at_margin(kind):
    net, params, x = make(kind)
    eps = L.batched.margin(net, params, x, p=1)
    assert bool(L.batched.l1_ball_in_region(net, params, x, 0.999 * eps).all())
    # Just outside, the vertex towards the bounding neuron leaves the region.
    assert not bool(L.batched.l1_ball_in_region(net, params, x, 1.001 * eps).any())


def test_hull_in_region_all_or_nothing():
    net, params, x = make("mlp")
    eps = L.batched.margin(net, params, x, p=2)
    d = jax.random.normal(jax.random.key(0), (x.shape[0], 5, x.shape[1]), x.dtype)
    d = d / jnp.linalg.norm(d, axis=-1, keepdims=True)
    verts = x[:, None] + 0.9 * eps[:, None, None] * d
    assert bool(L.batched.hull_in_region(net, params, x, verts, chunk_size=2).all())
    for k in range(5):  # one vertex far out, in any position and chunk (of 2): the hull leaves the region
        far = verts.at[:, k].set(x + 100.0)
        assert not bool(L.batched.hull_in_region(net, params, x, far, chunk_size=2).any()), k


def _brute_counts(net, params, xs, decimals=4):
    f = lambda u: net.apply(params, u)
    pats = np.stack([np.concatenate([np.asarray(p).ravel() > 0 for p in f(u)[1]]) for u in xs])
    jacs = np.stack([np.round(np.asarray(jax.jacfwd(lambda v: f(v)[0])(u)), decimals).ravel() + 0.0 for u in xs])
    return len(np.unique(pats, axis=0)), len(np.unique(jacs, axis=0))


def test_counts_match_brute_force_with_shared_regions():
    # A tiny net on clustered points: many points share a region.
    model = L.models.MLP(2, [3, 3], 2, rngs=nnx.Rngs(1), param_dtype=jnp.float64)
    net, params = L.from_nnx(model)
    xs = np.random.default_rng(0).normal(size=(157, 2))
    counts = L.evaluation.count_regions(net, params, xs, batch_size=32)  # 157 = 4*32 + 29: ragged last batch
    ref = _brute_counts(net, params, xs)
    assert (counts.num_patterns, counts.num_jacobians) == ref
    assert 1 < counts.num_patterns < len(xs)
    assert counts.num_jacobians <= counts.num_patterns  # Lemma 7


def test_counts_distinguish_patterns_with_equal_jacobians():
    # Neuron 1 is dead downstream (zero outgoing weight): its sign changes the
    # pattern but not the Jacobian, so #Jacobians < #patterns.
    def fn(params, x):
        z = jnp.stack([x[0], x[1]])
        return jnp.array([1.0, 0.0]) @ jax.nn.relu(z)[None].T, (z,)

    xs = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    counts = L.evaluation.count_regions(fn, None, xs, batch_size=3)
    assert counts == (4, 2)

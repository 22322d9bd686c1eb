"""Every public per-example kernel as users run it: float32 with JAX's defaults (x64 off).

The rest of the suite enables float64 (conftest) for its exactness tests. Here
each kernel runs with ``jax_enable_x64`` off, eagerly, under ``jax.jit`` and
with and without the library's inner compilation (chex variants), and under
``jax.vmap``; every variant must return float32 and agree with a float64
reference computed from the same weights (the geometry is a property of the
network, not of the precision), and with the batched form.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from nets import make

import lld_jax as L

# Exactness against float64 references (see conftest: the suite runs float32 unless a test opts in).
pytestmark = pytest.mark.float64

KINDS = ("mlp", "cnn", "scornn", "maxout")  # dense, conv, recurrent (masked), pooled

# name -> (per-example call, batched call); every call takes (net, params, x) of ONE example or a batch.
CALLS = {
    "margin_l1": (lambda n, p, x: L.margin(n, p, x, p=1), lambda n, p, x: L.batched.margin(n, p, x, p=1)),
    "margin_l2": (lambda n, p, x: L.margin(n, p, x, p=2), lambda n, p, x: L.batched.margin(n, p, x, p=2)),
    "margin_linf": (lambda n, p, x: L.margin(n, p, x, p="inf"), lambda n, p, x: L.batched.margin(n, p, x, p="inf")),
    "margin_with_neuron": (lambda n, p, x: L.margin_with_neuron(n, p, x), lambda n, p, x: L.batched.margin_with_neuron(n, p, x)),
    "directional": (
        lambda n, p, x: L.directional_margin(n, p, x, -jnp.ones_like(x)),
        lambda n, p, x: L.batched.directional_margin(n, p, x, -jnp.ones(x.shape[1:], x.dtype)),
    ),
    "norms_l2": (lambda n, p, x: L.neuron_gradient_norms(n, p, x, p=2), lambda n, p, x: L.batched.neuron_gradient_norms(n, p, x, p=2)),
    "gradients": (L.neuron_gradients, L.batched.neuron_gradients),
    "stability": (L.stability_bounds, L.batched.stability_bounds),
    "pattern": (L.activation_pattern, L.batched.activation_pattern),
    "l1_ball": (lambda n, p, x: L.l1_ball_in_region(n, p, x, 1e-4), lambda n, p, x: L.batched.l1_ball_in_region(n, p, x, 1e-4)),
    "certificate": (lambda n, p, x: L.check_certificate(n, p, x).radius, lambda n, p, x: L.batched.check_certificate(n, p, x).radius),
    "roll": (lambda n, p, x: L.roll_penalty(n, p, x, C=1.0), None),
    "same_region": (lambda n, p, x: L.same_region(n, p, x, x + 1e-6), lambda n, p, x: L.batched.same_region(n, p, x, x + 1e-6)),
    "bisect": (
        lambda n, p, x: L.directional_margin_bisect(n, p, x, -jnp.ones_like(x), t_max=50.0),
        lambda n, p, x: L.batched.directional_margin_bisect(n, p, x, -jnp.ones(x.shape[1:], x.dtype), t_max=50.0),
    ),
    # The certified radius's lower bound, against the float64 one (its attack's upper bound depends on the path taken).
    "certified_lower": (
        lambda n, p, x: L.certified_radius(n, p, x, jnp.argmax(n.apply(p, x)[0].reshape(-1))).lower,
        lambda n, p, x: L.batched.certified_radius(n, p, x, jnp.argmax(jax.vmap(lambda u: n.apply(p, u)[0].reshape(-1))(x), -1)).lower,
    ),
}


def _models(kind):
    """The same weights as a float64 and a float32 network, and 3 inputs (float32 values)."""
    net64, p64, x = make(kind)
    x = np.asarray(x[:3], np.float32)
    p32 = jax.tree.map(lambda a: np.asarray(a, np.float32) if np.issubdtype(np.asarray(a).dtype, np.floating) else np.asarray(a), p64)
    p64 = jax.tree.map(lambda a: np.asarray(a, np.float64) if np.issubdtype(np.asarray(a).dtype, np.floating) else np.asarray(a), p32)
    return net64, p32, p64, x


def _float_leaves(tree):
    return [np.asarray(a) for a in jax.tree.leaves(tree) if np.issubdtype(np.asarray(a).dtype, np.floating)]


def _agree(got, want, name):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        g, w = np.asarray(g), np.asarray(w)
        if g.dtype == bool or np.issubdtype(g.dtype, np.integer):
            np.testing.assert_array_equal(g, w, err_msg=name)
        else:
            # float32 rounding of a float64 geometry: relative 1e-3 (margins divide small |z| by norms),
            # infinities where the reference has them.
            scale = np.max(np.abs(w[np.isfinite(w)]), initial=1.0)
            np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-4 * scale, err_msg=name)


class Float32Variants(parameterized.TestCase):
    # Every variant on the dense net; the others under the user's jit only (the library's code paths
    # are the same with and without an outer jit, and each variant costs a compile per kernel).
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(name=sorted(CALLS))
    def test_dense_kernel_in_float32_matches_float64(self, name):
        self._check(KINDS[0], name)

    @chex.variants(with_jit=True)
    @parameterized.product(kind=KINDS[1:], name=sorted(CALLS))
    def test_kernel_in_float32_matches_float64(self, kind, name):
        self._check(kind, name)

    def _check(self, kind, name):
        net, p32, p64, x = _models(kind)
        one, batch = CALLS[name]
        want = [one(net, p64, np.asarray(xi, np.float64)) for xi in x]
        with jax.enable_x64(False):
            net32 = net  # the same Network: its dtype comes from the parameters
            p32j = jax.tree.map(jnp.asarray, p32)
            f = self.variant(lambda p, u: one(net32, p, u))
            got = [f(p32j, jnp.asarray(xi)) for xi in x]
            mapped = jax.vmap(lambda u: one(net32, p32j, u))(jnp.asarray(x))
            stacked = batch(net32, p32j, jnp.asarray(x)) if batch is not None else None
            for r in (got[0], mapped) + ((stacked,) if stacked is not None else ()):
                for leaf in _float_leaves(r):
                    assert leaf.dtype == np.float32, (name, leaf.dtype)
        for i, (g, w) in enumerate(zip(got, want)):
            _agree(g, w, f"{name} example {i}")
            _agree(jax.tree.map(lambda a, i=i: a[i], mapped), w, f"{name} vmap example {i}")
            if stacked is not None:
                _agree(jax.tree.map(lambda a, i=i: a[i], stacked), w, f"{name} batched example {i}")


@pytest.mark.parametrize("kind", ("mlp", "cnn"))
def test_poison_in_float32_under_jit_and_vmap(kind):
    """With x64 off, a NaN input poisons exactly its own margin inside the user's jit(vmap), and the eager batched call names it."""
    net, p32, _, x = _models(kind)
    x = x.copy()
    x[1].flat[0] = np.nan
    with jax.enable_x64(False):
        p = jax.tree.map(jnp.asarray, p32)
        r = np.asarray(jax.jit(jax.vmap(lambda u: L.margin(net, p, u)))(jnp.asarray(x)))
        assert r.dtype == np.float32
        assert np.isnan(r[1]) and np.all(np.isfinite(r[[0, 2]])), r
        with pytest.raises(L.CheckError, match=r"x contains NaN or Inf at example\(s\) 1 of the batch"):
            L.batched.margin(net, p, jnp.asarray(x))

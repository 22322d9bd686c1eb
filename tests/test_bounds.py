"""The benchmark's bound-propagation peers (benchmarks/bounds.py) are sound and exact at eps = 0 (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.bounds import crown_margins, ibp_margins, pgd_attack

pytestmark = pytest.mark.float64  # exact at eps = 0 to float64 rounding


def _net(seed, widths):
    rng = np.random.default_rng(seed)
    return [(jnp.asarray(rng.normal(size=(o, i)) / np.sqrt(i)), jnp.asarray(0.3 * rng.normal(size=o))) for i, o in zip(widths[:-1], widths[1:])]


def _logits(layers, slope, x):
    h = x
    for w, b in layers[:-1]:
        z = h @ w.T + b
        h = np.where(z > 0, z, slope * z)
    return h @ layers[-1][0].T + layers[-1][1]


@pytest.mark.parametrize("slope", [0.0, 0.1])
@pytest.mark.parametrize("p", [2, np.inf, 1])
def test_bounds_are_sound_by_sampling_and_exact_at_zero_radius(slope, p):
    layers = _net(1, [8, 16, 16, 4])
    rng = np.random.default_rng(2)
    for x in rng.normal(size=(3, 8)):
        f = _logits(layers, slope, x[None])[0]
        y = int(np.argmax(f))
        want = f[y] - f
        for fn in (crown_margins, ibp_margins):
            at0 = np.asarray(fn(layers, slope, jnp.asarray(x), y, 0.0, p))
            np.testing.assert_allclose(at0[np.arange(4) != y], want[np.arange(4) != y], rtol=1e-10, atol=1e-12)
        eps = 0.3
        u = rng.normal(size=(5000, 8)) if p != np.inf else rng.uniform(-1, 1, size=(5000, 8))
        u = u / np.linalg.norm(u, ord=p, axis=1, keepdims=True) * eps * rng.uniform(0, 1, size=(5000, 1)) ** (1 / 8)
        g = _logits(layers, slope, x[None] + u)
        seen = np.min(g[:, [y]] - g, axis=0)  # the smallest sampled margin against each class
        crown = np.asarray(crown_margins(layers, slope, jnp.asarray(x), y, eps, p))
        ibp = np.asarray(ibp_margins(layers, slope, jnp.asarray(x), y, eps, p))
        other = np.arange(4) != y
        assert np.all(crown[other] <= seen[other] + 1e-12), (crown, seen)
        assert np.all(ibp[other] <= seen[other] + 1e-12), (ibp, seen)
        # CROWN's linear relaxations are tighter than IBP's boxes on these nets (a property of the papers).
        assert np.mean(crown[other]) >= np.mean(ibp[other])
    jax.block_until_ready(crown_margins(layers, slope, jnp.zeros(8), 0, 0.1, p))


@pytest.mark.parametrize("p", [2, np.inf])
def test_pgd_breaks_a_linear_classifier_just_past_its_exact_radius_and_not_before(p):
    """On an affine 3-class map the minimal adversarial distance is closed form: min_k (f_y - f_k) / ||w_y - w_k||_q."""
    rng = np.random.default_rng(4)
    w, b = jnp.asarray(rng.normal(size=(3, 6))), jnp.asarray(rng.normal(size=3))
    q = 1 if p == np.inf else 2
    for x in rng.normal(size=(4, 6)):
        f = np.asarray(w @ x + b)
        y = int(np.argmax(f))
        radius = min((f[y] - f[k]) / np.linalg.norm(np.asarray(w[y] - w[k]), ord=q) for k in range(3) if k != y)
        hit = lambda e: bool(pgd_attack(lambda u: w @ u + b, jnp.asarray(x), y, e, p, jax.random.key(0)))  # noqa: B023, E731
        assert hit(1.05 * radius) and not hit(0.95 * radius)

"""Gradient distortion metrics against analytic values and independent brute force (paper Sec. 5.3, App. J, K)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from lld_jax.attribution import (
    expected_gradient_distortion,
    input_gradient,
    integrated_gradients,
    max_gradient_distortion,
    sample_linf_ball,
)

# Exactness against float64 references (see conftest: the suite runs float32 unless a test opts in).
pytestmark = pytest.mark.float64

KEY = jax.random.key(0)


def _corner_net(params, x):
    """Logits [3 relu(x1 - a) + relu(b - x2), c]: the class-0 gradient is [3 [x1 > a], -[x2 < b]]."""
    a, b, c = params
    z = jnp.stack([x[0] - a, b - x[1]])
    return jnp.stack([3 * jax.nn.relu(z[0]) + jax.nn.relu(z[1]), c + 0 * x[0]]), (z,)


def _mlp_params(seed, sizes=(2, 10, 10, 3)):
    rng = np.random.default_rng(seed)
    return [
        (rng.normal(size=(o, i)) * (3.0 if k == 0 else 1.0) / np.sqrt(i), rng.normal(size=o)) for k, (i, o) in enumerate(zip(sizes[:-1], sizes[1:]))
    ]


def _mlp(params, x):
    pre, h = [], x
    for w, b in params[:-1]:
        pre.append(w @ h + b)
        h = jax.nn.relu(pre[-1])
    return params[-1][0] @ h + params[-1][1], tuple(pre)


def _np_mlp_grad(params, pts, y):
    """Gradients (N, D) of logit y at pts (N, D), by explicit back-propagation through the masks (no JAX)."""
    masks, h = [], pts.T
    for w, b in params[:-1]:
        z = w @ h + b[:, None]
        masks.append(z > 0)
        h = np.maximum(z, 0)
    g = np.repeat(params[-1][0][y][:, None], pts.shape[0], axis=1)
    for (w, _), m in zip(params[-2::-1], masks[::-1]):
        g = w.T @ (g * m)
    return g.T


def test_sampler_is_uniform_on_the_clipped_ball():
    x = jnp.array([0.05, 0.5, 0.97])
    s = np.asarray(sample_linf_ball(KEY, x, 0.1, 20000))
    lo, hi = np.array([0.0, 0.4, 0.87]), np.array([0.15, 0.6, 1.0])  # the ball cut by [0, 1]
    assert s.shape == (20000, 3) and (s >= lo).all() and (s <= hi).all()
    w = hi - lo
    assert (np.abs(s.mean(0) - (lo + hi) / 2) < 4 * w / np.sqrt(12 * 20000)).all()
    np.testing.assert_allclose(s.var(0), w**2 / 12, rtol=0.03)
    for k in range(3):  # uniform, not clipped: no atom at the box faces
        assert stats.kstest((s[:, k] - lo[k]) / w[k], "uniform").pvalue > 1e-3
    # Per-coordinate box and no box.
    s = np.asarray(sample_linf_ball(KEY, x, 0.1, 20000, box=(jnp.array([0.0, 0.45, 0.9]), 1.0)))
    assert (s >= [0.0, 0.45, 0.9]).all() and (s <= [0.15, 0.6, 1.0]).all() and s[:, 1].min() < 0.451
    s = np.asarray(sample_linf_ball(KEY, x, 0.1, 20000, box=None))
    assert (np.abs(s - np.asarray(x)) <= 0.1).all() and s[:, 2].max() > 1.05
    assert (np.asarray(sample_linf_ball(KEY, x, 0.0, 20000)) == np.asarray(x)).all()
    # A coordinate outside the box by rounding (here float32's) is accepted; its samples stay in the box.
    s = np.asarray(sample_linf_ball(KEY, x.astype(jnp.float32).at[2].set(1 + 2**-20), 0.1, 20000))
    assert (s[:, 2] <= 1.0).all() and (s[:, 2] >= 0.9).all()
    with pytest.raises(ValueError, match="outside the box"):
        sample_linf_ball(KEY, x.at[2].set(1 + 2**-20), 0.1, 20000)  # not rounding in float64


def _affine(params, x):
    return params @ x + jnp.array([5.0, 0.0, -5.0]), ()


# Shared by the next two tests so that they share compiled kernels.
CORNER_X = jnp.array([[0.03, 0.5], [0.03, 0.5]])
CORNER_Y = jnp.array([0, 1])  # class 1 is a constant: never distorted


def _corner_metrics(params, n):
    r = max_gradient_distortion(_corner_net, params, CORNER_X, CORNER_Y, eps=0.1, key=KEY, population=600, generations=5)
    e = expected_gradient_distortion(_corner_net, params, CORNER_X, CORNER_Y, eps=0.1, num_samples=n, key=KEY)
    return r, np.asarray(e)


def test_network_linear_on_the_whole_ball_has_zero_distortion():
    # Kinks at x1 = -10 and x2 = -10, far outside the ball: one linear region, the same prediction.
    r, e = _corner_metrics((-10.0, -10.0, 0.025), 20000)
    assert (e == 0).all() and (np.asarray(r.distortion) == 0).all()
    np.testing.assert_array_equal(r.grad_worst, r.grad)
    assert not np.asarray(r.prediction_changed).any()
    assert (np.abs(np.asarray(r.x_worst - CORNER_X)) <= 0.1).all() and (np.asarray(r.x_worst) >= 0).all()


def test_worst_point_and_expectation_of_a_hand_built_net_at_the_box_edge():
    # x = (0.03, 0.5), eps = 0.1, box [0, 1]: B(x) = [0, 0.13] x [0.4, 0.6].
    # Class 0: Delta = 3 [x1' < 0.02] + [x2' < 0.42], largest (4) in the corner [0, 0.02) x [0.4, 0.42).
    n = 20000
    r, e = _corner_metrics((0.02, 0.42, 0.025), n)
    np.testing.assert_array_equal(r.distortion, [4.0, 0.0])
    xw = np.asarray(r.x_worst[0])
    assert 0 <= xw[0] < 0.02 and 0.4 <= xw[1] < 0.42, xw
    np.testing.assert_array_equal(r.grad_worst[0], [0.0, -1.0])
    np.testing.assert_array_equal(r.grad[0], [3.0, 0.0])
    # Logit 0 drops from 0.03 to <= 0.02 < c = 0.025 at the corner.
    assert bool(r.prediction_changed[0])
    # Exact expectation from the areas: 3 * 0.02 / 0.13 + 0.02 / 0.2 (clipping samples of the
    # whole ball instead would give 3 * 0.45 + 0.1).
    p1, p2 = 0.02 / 0.13, 0.1
    mean = 3 * p1 + p2
    sd = np.sqrt(9 * p1 * (1 - p1) + p2 * (1 - p2))  # the two coordinates are independent
    assert abs(e[0] - mean) < 4 * sd / np.sqrt(n), (e[0], mean)
    assert e[1] == 0


def test_expected_and_max_distortion_match_a_brute_force_grid():
    """Random 2-D ReLU nets: grid integration over B(x) (numpy, no JAX gradients) vs. Monte Carlo and the GA.

    The batch repeats one point 16 times: every copy gets its own key, so one call makes 16
    independent estimates (and 16 independent runs of the genetic algorithm).
    """
    x0, eps, y, m, reps, n = np.array([0.4, 0.7]), 0.25, 1, 700, 16, 2000
    lo, hi = np.maximum(x0 - eps, 0), np.minimum(x0 + eps, 1)
    u = [lo[k] + (np.arange(m) + 0.5) / m * (hi[k] - lo[k]) for k in range(2)]
    grid = np.stack(np.meshgrid(*u, indexing="ij"), -1).reshape(-1, 2)
    x, ys = jnp.asarray(np.repeat(x0[None], reps, 0)), jnp.full(reps, y)
    hits_ga = hits_rs = 0
    for seed in range(4):  # the largest distortion covers from 10% down to 0.2% of B(x)
        params = _mlp_params(seed)
        g0 = _np_mlp_grad(params, x0[None], y)[0]
        d = np.abs(_np_mlp_grad(params, grid, y) - g0).sum(1)
        args = (_mlp, jax.tree.map(jnp.asarray, params), x, ys)
        key = jax.random.key(seed)
        e = np.asarray(expected_gradient_distortion(*args, eps=eps, num_samples=n, key=key))
        assert abs(e.mean() - d.mean()) < 4.5 * d.std() / np.sqrt(n * reps) + 2e-3 * d.mean(), (seed, e.mean(), d.mean())
        assert e.std() > 0  # independent keys
        r = max_gradient_distortion(*args, eps=eps, key=key, population=500, generations=10)
        r0 = max_gradient_distortion(*args, eps=eps, key=key, population=500, generations=0)
        best, rs = np.asarray(r.distortion), np.asarray(r0.distortion)
        xw = np.asarray(r.x_worst)
        assert (xw >= lo).all() and (xw <= hi).all()
        np.testing.assert_allclose(np.abs(_np_mlp_grad(params, xw, y) - g0).sum(1), best, rtol=1e-12)
        assert (best <= d.max() * (1 + 1e-12)).all()  # never above the true maximum
        found = np.isclose(best, d.max(), rtol=1e-9, atol=0)
        assert found.sum() >= reps - 3, (seed, best, d.max())
        # Same key, same initial population; selection is elitist, so crossover can only help.
        assert (best >= rs).all()
        hits_ga += found.sum()
        hits_rs += np.isclose(rs, d.max(), rtol=1e-9, atol=0).sum()
    assert hits_ga > hits_rs  # crossover found maxima that random search of the same population missed


def _matrix_input_net(params, x):
    """An MLP on inputs of shape (2, 3): checks that every function keeps the example shape."""
    return _mlp(params, x.reshape(-1))


def _np_mlp_logits(params, pts):
    h = pts.T
    for w, b in params[:-1]:
        h = np.maximum(w @ h + b[:, None], 0)
    return (params[-1][0] @ h + params[-1][1][:, None]).T


def test_chunk_size_key_contract_and_consistency():
    np_params = _mlp_params(5, (6, 16, 16, 4))
    params = jax.tree.map(jnp.asarray, np_params)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 2, 3)))
    y = jnp.array([0, 1, 3, 1])
    net = _matrix_input_net
    ref_grad = lambda pts, c: _np_mlp_grad(np_params, np.asarray(pts).reshape(-1, 6), c).reshape(-1, 2, 3)
    kw = dict(eps=0.3, num_samples=24, key=KEY, box=None)
    e = np.asarray(expected_gradient_distortion(net, params, x, y, **kw))
    np.testing.assert_allclose(expected_gradient_distortion(net, params, x, y, **kw, chunk_size=7), e, rtol=1e-12)
    np.testing.assert_array_equal(expected_gradient_distortion(net, params, x, y, **kw), e)  # deterministic
    assert (np.asarray(expected_gradient_distortion(net, params, x, y, **{**kw, "key": jax.random.key(1)})) != e).all()
    assert (e > 0).all()
    # The documented contract: example i uses split(key, B)[i] and the samples of sample_linf_ball.
    g0 = np.asarray(input_gradient(net, params, x, y))
    for i, k in enumerate(jax.random.split(KEY, 4)):
        np.testing.assert_allclose(g0[i], ref_grad(x[i], int(y[i]))[0], rtol=1e-12)
        s = sample_linf_ball(k, x[i], 0.3, 24, box=None)
        np.testing.assert_allclose(e[i], np.mean(np.abs(ref_grad(s, int(y[i])) - g0[i]).sum(axis=(1, 2))), rtol=1e-12)

    kw = dict(eps=0.3, key=KEY, population=40, generations=2, box=None)
    r = max_gradient_distortion(net, params, x, y, **kw)
    rc = max_gradient_distortion(net, params, x, y, **kw, chunk_size=7)
    np.testing.assert_allclose(rc.distortion, r.distortion, rtol=1e-12)
    assert r.x_worst.shape == r.grad_worst.shape == r.grad.shape == x.shape
    assert (np.abs(np.asarray(r.x_worst - x)) <= 0.3 * (1 + 1e-12)).all()
    for i in range(4):
        np.testing.assert_allclose(r.grad_worst[i], ref_grad(r.x_worst[i], int(y[i]))[0], rtol=1e-12)
    np.testing.assert_allclose(r.grad, g0, rtol=1e-12)
    np.testing.assert_allclose(r.distortion, np.abs(np.asarray(r.grad_worst - r.grad)).sum(axis=(1, 2)), rtol=1e-12)
    pred = lambda u: np.argmax(_np_mlp_logits(np_params, np.asarray(u).reshape(-1, 6)), axis=1)
    np.testing.assert_array_equal(r.prediction_changed, pred(r.x_worst) != pred(x))
    assert (np.asarray(r.distortion) >= e).all()  # the maximum found exceeds the mean here


def test_integrated_gradients_completeness():
    np_params = _mlp_params(5, (6, 16, 16, 4))
    params = jax.tree.map(jnp.asarray, np_params)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 2, 3)))
    y = jnp.array([0, 1, 3, 1])
    logit = lambda u: _np_mlp_logits(np_params, np.asarray(u).reshape(-1, 6))[np.arange(4), y]
    ig = np.asarray(integrated_gradients(_matrix_input_net, params, x, y, steps=4000))
    assert ig.shape == x.shape
    gap = logit(x) - logit(jnp.zeros_like(x))
    np.testing.assert_allclose(ig.sum(axis=(1, 2)), gap, rtol=1e-3, atol=1e-3 * np.abs(gap).max())
    # Chunked path with a ragged last block, and a shared baseline.
    ig_c = integrated_gradients(_matrix_input_net, params, x, y, baseline=jnp.zeros(x.shape[1:]), steps=4000, chunk_size=7)
    np.testing.assert_allclose(ig_c, ig, rtol=1e-9, atol=1e-12)
    # Exact for a network linear on the path: IG = (x - b) * grad.
    w = jnp.array([[1.0, -2.0], [0.5, 0.3], [-1.0, 1.0]])
    xs, ys, base = jnp.array([[0.2, 0.9], [0.5, -0.5]]), jnp.array([0, 2]), jnp.array([[0.1, 0.2], [-1.0, 3.0]])
    np.testing.assert_allclose(integrated_gradients(_affine, w, xs, ys, baseline=base, steps=3), (xs - base) * w[ys], rtol=1e-14)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(eps=-0.1), "eps must be finite and >= 0"),
        (dict(eps=jnp.array([0.1, jnp.nan])), "eps must be finite"),
        (dict(population=1), "population must be an integer >= 2"),
        (dict(generations=-1), "generations must be an integer >= 0"),
        (dict(keep=0.0), "keep must be a fraction in"),
        (dict(keep=1.5), "keep must be a fraction in"),
        (dict(box=(1.0, 0.0)), "lo < hi"),
        (dict(box=(0.0, 0.5)), "outside the box"),
        (dict(y=jnp.array([0, 3])), r"label outside \[0, 2\) at example\(s\) 1"),
        (dict(y=jnp.array([-1, 0])), "label outside"),
        (dict(y=jnp.array([0])), "y must have shape"),
        (dict(chunk_size=0), "chunk_size must be a positive integer"),
        (dict(x=jnp.array([[0.1, jnp.nan], [0.5, 0.5]])), "x contains NaN or Inf"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(kw, match):
    args = dict(x=jnp.array([[0.03, 0.5], [0.5, 0.7]]), y=jnp.array([0, 1]), eps=0.1, population=8, generations=1, keep=0.25, box=(0.0, 1.0))
    args.update(kw)
    x, y = args.pop("x"), args.pop("y")
    with pytest.raises(ValueError, match=match):
        max_gradient_distortion(_corner_net, (0.02, 0.42, 0.03), x, y, key=KEY, **args)


def test_bad_input_of_the_other_functions():
    x, y, p = jnp.array([[1.5, 0.5]]), jnp.array([0]), (0.02, 0.42, 0.03)
    with pytest.raises(ValueError, match="box=None for unbounded inputs"):
        expected_gradient_distortion(_corner_net, p, x, y, eps=0.1, num_samples=4, key=KEY)
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        expected_gradient_distortion(_corner_net, p, x, y, eps=0.1, num_samples=0, key=KEY, box=None)
    with pytest.raises(TypeError, match="integer class labels"):
        input_gradient(_corner_net, p, x, jnp.array([0.0]))
    with pytest.raises(ValueError, match="steps must be"):
        integrated_gradients(_corner_net, p, x, y, steps=0)
    with pytest.raises(ValueError, match="baseline must have the shape"):
        integrated_gradients(_corner_net, p, x, y, baseline=jnp.zeros(3))
    with pytest.raises(TypeError, match="PRNG key"):
        expected_gradient_distortion(_corner_net, p, x, y, eps=0.1, num_samples=4, key="seed", box=None)

"""Margins are sound (no sampled point in the ball changes pattern), tight, and match an LP."""

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from nets import GEOMETRY_KINDS, KINDS, make
from scipy.optimize import linprog

import lld_jax as L

# Exactness against float64 references (see conftest: the suite runs float32 unless a test opts in).
pytestmark = pytest.mark.float64

N_SAMPLES = 2000


def _pattern(net, params, x):
    return np.asarray(L.batched.activation_pattern(net, params, x))


def _ball_samples(rng, p, d, n):
    """Points on the surface of the unit l_p ball (the hardest points), plus some inside."""
    if p == 2:
        u = rng.normal(size=(n, d))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
    elif p == np.inf:
        u = rng.uniform(-1, 1, size=(n, d))
        u[: n // 2] = np.sign(u[: n // 2])  # cube vertices
    else:
        u = rng.exponential(size=(n, d)) * rng.choice([-1, 1], size=(n, d))
        u /= np.abs(u).sum(1, keepdims=True)
        u[: 2 * d] = np.concatenate([np.eye(d), -np.eye(d)])  # l1 vertices
    scale = np.ones((n, 1))
    scale[n // 2 :] = rng.uniform(0, 1, size=(n - n // 2, 1))
    return u * scale


@pytest.mark.parametrize("kind", GEOMETRY_KINDS)
@pytest.mark.parametrize("p", [1, 2, np.inf])
def test_soundness_no_sample_inside_ball_flips(kind, p):
    net, params, x = make(kind)
    eps = np.asarray(L.batched.margin(net, params, x, p=p))
    rng = np.random.default_rng(0)
    shape = x.shape[1:]
    d = int(np.prod(shape))
    for i in range(x.shape[0]):
        pts = x[i].reshape(1, -1) + 0.999 * eps[i] * _ball_samples(rng, p, d, N_SAMPLES)
        pts = jnp.asarray(pts.reshape((N_SAMPLES, *shape)))
        same = L.batched.same_region(net, params, jnp.broadcast_to(x[i], pts.shape), pts)
        assert bool(jnp.all(same)), f"{int((~same).sum())} points inside the l{p} ball of example {i} flip"


@pytest.mark.parametrize("kind", GEOMETRY_KINDS)
@pytest.mark.parametrize("p", [1, 2, np.inf])
def test_tightness_bounding_neuron_flips_just_outside(kind, p):
    net, params, x = make(kind)
    res = L.batched.margin_with_neuron(net, params, x, p=p)
    z, grads = L.batched.neuron_gradients(net, params, x)
    sizes = [int(np.prod(s.shape[1:])) for s in jax.eval_shape(lambda u: jax.vmap(lambda v: net.apply(params, v)[1])(u), x)]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    for i in range(x.shape[0]):
        j = starts[int(res.layer[i])] + int(res.neuron[i])
        g, zj = np.asarray(grads[i, j]), float(z[i, j])
        # The point of the l_p ball closest to neuron j's hyperplane.
        if p == 2:
            step = -np.sign(zj) * g / np.linalg.norm(g)
        elif p == np.inf:
            step = -np.sign(zj) * np.sign(g)
        else:
            k = np.argmax(np.abs(g))
            step = np.zeros_like(g)
            step[k] = -np.sign(zj) * np.sign(g[k])
        eps = float(res.radius[i])
        np.testing.assert_allclose(abs(zj) - eps * abs(g @ step), 0, atol=1e-9 * max(1, abs(zj)))
        inside = x[i] + (0.999 * eps * step).reshape(x.shape[1:])
        outside = x[i] + (1.001 * eps * step).reshape(x.shape[1:])
        p0 = _pattern(net, params, x[i : i + 1])[0]
        assert (_pattern(net, params, inside[None])[0] == p0).all()
        assert (_pattern(net, params, outside[None])[0] != p0).any()


def _polytope(net, params, x):
    """Half-spaces A x' + c >= 0 of x's region, from brute-force jacfwd (independent of lld_jax)."""
    f = lambda u: jnp.concatenate([p.ravel() for p in net.apply(params, u)[1]])
    z = np.asarray(f(x))
    jac = np.asarray(jax.jacfwd(f)(x)).reshape(len(z), -1)
    sign = np.where(z > 0, 1.0, -1.0)
    a = sign[:, None] * jac
    c = sign * (z - jac @ np.asarray(x).ravel())
    assert np.abs(c).max() > 1e-3, "the test network's region is a cone at 0 (zero biases): offsets go untested"
    return a, c


@pytest.mark.parametrize("p", [1, np.inf])
def test_l1_linf_margins_equal_linear_program(p):
    net, params, x = make("mlp")
    eps = np.asarray(L.batched.margin(net, params, x, p=p))
    d = x.shape[1]
    # Vertices of the unit ball: l1 -> +-e_k; l_inf -> all sign vectors.
    if p == 1:
        verts = np.concatenate([np.eye(d), -np.eye(d)])
    else:
        verts = np.array(np.meshgrid(*[[-1.0, 1.0]] * d)).reshape(d, -1).T
    for i in range(x.shape[0]):
        a, c = _polytope(net, params, x[i])
        xi = np.asarray(x[i])
        # max eps s.t. a_j . (x + eps v) + c_j >= 0 for every vertex v and neuron j.
        rows = -(verts @ a.T).reshape(-1, 1)
        rhs = np.tile(a @ xi + c, len(verts))
        lp = linprog(c=[-1.0], A_ub=rows, b_ub=rhs, bounds=[(0, None)], method="highs")
        assert lp.status == 0
        np.testing.assert_allclose(eps[i], lp.x[0], rtol=1e-7)


@pytest.mark.parametrize("kind", GEOMETRY_KINDS)
@pytest.mark.parametrize("p", [1, 2, np.inf])
def test_margin_equals_dual_norm_distance_on_brute_force_polytope(kind, p):
    """Every kind and p: the distance from x to the nearest face of its jacfwd polytope, in the dual norm (Prop. 6)."""
    net, params, x = make(kind)
    eps = np.asarray(L.batched.margin(net, params, x, p=p))
    q = {1: np.inf, 2: 2, np.inf: 1}[p]
    for i in range(x.shape[0]):
        a, c = _polytope(net, params, x[i])
        norm = np.linalg.norm(a, ord=q, axis=1)
        live = norm > 0  # a neuron constant in x never bounds the region
        dist = (a[live] @ np.asarray(x[i]).ravel() + c[live]) / norm[live]
        np.testing.assert_allclose(eps[i], dist.min(), rtol=1e-9)


def test_per_example_margin_matches_batched_under_vmap_and_jit():
    net, params, x = make("cnn")
    batch = L.batched.margin(net, params, x, p=2)
    assert batch.shape == (x.shape[0],)
    np.testing.assert_allclose(L.margin(net, params, x[2]), batch[2], rtol=1e-12)
    one = lambda xi: L.margin(net, params, xi, p=2)
    np.testing.assert_allclose(jax.vmap(one)(x), batch, rtol=1e-12)
    np.testing.assert_allclose(jax.jit(jax.vmap(one))(x), batch, rtol=1e-12)


@pytest.mark.parametrize("method", ["gram", "forward"])
def test_large_ragged_batch_equals_one_by_one(method):
    """Batches over the CPU example block (16), with a ragged remainder, give per-example results."""
    net, params, _ = make("narrow_mlp")
    x = jax.random.normal(jax.random.key(5), (37, 10), jnp.float64)
    res = L.batched.margin_with_neuron(net, params, x, p=2, method=method)
    for i in (0, 15, 16, 31, 32, 36):
        one = L.batched.margin_with_neuron(net, params, x[i : i + 1], p=2, method=method)
        np.testing.assert_allclose(res.radius[i], one.radius[0], rtol=1e-12)
        assert int(res.neuron[i]) == int(one.neuron[0]) and int(res.layer[i]) == int(one.layer[0])


def test_margin_of_plain_function_as_partial():
    w = jnp.array([[1.0, 2.0], [-1.0, 0.5]])
    fn = lambda params, x: (params @ jax.nn.relu(params @ x), (params @ x,))
    margin_l2 = functools.partial(L.margin, fn, p=2)
    x = jnp.array([1.0, 0.3])
    z = w @ x
    np.testing.assert_allclose(margin_l2(w, x), np.min(np.abs(z) / np.linalg.norm(w, axis=1)), rtol=1e-12)


def test_zero_gradient_neuron_never_bounds_and_zero_preact_gives_zero():
    def fn(params, x):
        z = params["w"] @ x + params["b"]
        return jax.nn.relu(z).sum(), (z,)

    params = {"w": jnp.array([[1.0, 0.0], [0.0, 0.0]]), "b": jnp.array([0.0, 0.5])}
    x = jnp.array([[2.0, 1.0]])
    # Neuron 1 has zero gradient and z = 0.5: never bounds; neuron 0 bounds at |2| / 1.
    res = L.batched.margin_with_neuron(fn, params, x)
    assert float(res.radius[0]) == 2.0 and int(res.neuron[0]) == 0
    params = {"w": jnp.array([[0.0, 0.0]]), "b": jnp.array([0.5])}
    res = L.batched.margin_with_neuron(fn, params, x)
    assert np.isinf(float(res.radius[0])) and int(res.layer[0]) == int(res.neuron[0]) == -1  # nothing bounds it
    assert res.layer.dtype == res.neuron.dtype == jnp.int32
    chk = L.batched.check_certificate(fn, params, x)  # the same bounding neuron, as its docstring says
    assert np.isinf(float(chk.radius[0])) and int(chk.layer[0]) == int(chk.neuron[0]) == -1
    params = {"w": jnp.array([[1.0, 0.0]]), "b": jnp.array([-2.0])}  # z = 0 exactly
    assert float(L.batched.margin(fn, params, x)[0]) == 0.0
    params = {"w": jnp.array([[0.0, 0.0]]), "b": jnp.array([0.0])}  # z = 0 and zero gradient
    assert float(L.batched.margin(fn, params, x)[0]) == 0.0


@pytest.mark.parametrize("method", ["forward", "reverse"])
@pytest.mark.parametrize("p", [1, 2, "inf"])
def test_parameter_gradient_with_a_zero_gradient_neuron_equals_finite_differences(method, p):
    """A neuron whose every upstream ReLU is off has a zero input gradient: it never bounds the region, and its
    zero norm must not make the margin's parameter gradient NaN (sqrt's derivative at 0; it did for l2)."""

    def fn(w, u):
        z1 = w["A"] @ u + w["b"]
        z2 = w["B"] @ jax.nn.relu(z1) + w["c"]
        return w["C"] @ jax.nn.relu(z2), (z1, z2)

    # z1[1] = -5.9 is off, and z2[1] reads only it: zero input gradient, value 0.3. z1[0] = 4.9 bounds the region
    # alone for every p (no tie with z1[1] or z2[0] = 5.0: the margin is differentiable in the parameters).
    w = {"A": jnp.array([[1.0, 0.5], [-1.0, -0.5]]), "b": jnp.array([5.0, -6.0]), "B": jnp.array([[1.0, 0.2], [0.0, 1.0]])}
    w |= {"c": jnp.array([0.1, 0.3]), "C": jnp.ones((2, 2))}
    u = jnp.array([0.1, -0.4])
    margin = lambda w: L.margin(fn, w, u, p=p, method=method)
    g = jax.jit(jax.grad(margin))(w)
    flat, unravel = jax.flatten_util.ravel_pytree(w)
    h = 1e-6
    fd = np.array([(float(margin(unravel(flat.at[i].add(h)))) - float(margin(unravel(flat.at[i].add(-h))))) / (2 * h) for i in range(flat.size)])
    np.testing.assert_allclose(np.asarray(jax.flatten_util.ravel_pytree(g)[0]), fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kind", KINDS)
def test_directional_margin_matches_dense_sampling_and_bisection(kind):
    net, params, x = make(kind)
    d = jax.random.normal(jax.random.key(3), x.shape, x.dtype)
    t = np.asarray(L.batched.directional_margin(net, params, x, d))
    tb = np.asarray(L.batched.directional_margin_bisect(net, params, x, d, t_max=100.0))
    np.testing.assert_allclose(tb, t, rtol=1e-9)
    p0 = _pattern(net, params, x)
    for i in range(x.shape[0]):
        grid = np.linspace(0, 2 * t[i], 801)[1:]
        pts = x[i][None] + grid.reshape((-1,) + (1,) * (x.ndim - 1)) * d[i][None]
        same = (_pattern(net, params, pts) == p0[i]).all(1)
        inside = grid < t[i] * (1 - 1e-9)
        assert same[inside].all(), "a point before the directional margin left the region"
        first_out = np.argmax(~same)
        assert not same[first_out] and grid[first_out] <= t[i] + 2 * grid[0] + 1e-12


def test_directional_margin_infinite_when_no_neuron_is_approached():
    fn = lambda params, x: (x.sum(), (x,))  # identity preacts: boundary at x_k = 0
    x = jnp.array([[1.0, 2.0]])
    assert np.isinf(float(L.batched.directional_margin(fn, None, x, jnp.array([1.0, 0.0]))[0]))
    assert float(L.batched.directional_margin(fn, None, x, jnp.array([-1.0, 0.0]))[0]) == 1.0
    assert np.isinf(float(L.batched.directional_margin_bisect(fn, None, x, jnp.array([1.0, 0.0]))[0]))

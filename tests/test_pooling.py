"""Max-pooling and maxout regions (paper App. E) against an independent reference, and the certificate self-check."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from nets import POOLED, make
from scipy.optimize import linprog

import lld_jax as L
from lld_jax._src.gradients import pick_method

# Exactness against float64 references (see conftest: the suite runs float32 unless a test opts in).
pytestmark = pytest.mark.float64

SEEDS = (0, 1, 2)


def _net(kind, seed):
    """A random pooled network with random biases (Flax's are 0), its params and a batch of 4 inputs."""
    net, params, x = make(kind, seed=seed)
    key = jax.random.key(seed + 50)
    leaves, tree = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(key, len(leaves))
    new = [a + 0.1 * jax.random.normal(k, a.shape, a.dtype) if str(path[-1]).endswith("'bias']") else a for (path, a), k in zip(leaves, keys)]
    return net, jax.tree_util.tree_unflatten(tree, new), x


# --------------------------------------------------------------------------
# An independent reference forward pass: arg-maxes and ReLU signs (the "codes" that fix a linear
# piece), and with the codes of x frozen, the constraints of x's region, oriented >= 0 on it.


def _windows(z):
    """(H, W, C) -> (H//2, W//2, C, 4): 2x2 windows, entries in row-major order."""
    h2, w2 = z.shape[0] // 2, z.shape[1] // 2
    return z[: 2 * h2, : 2 * w2].reshape(h2, 2, w2, 2, -1).transpose(0, 2, 4, 1, 3).reshape(h2, w2, z.shape[-1], 4)


def _reference(kind, params, x, codes=None):
    """``(output, codes, rows)``; ``rows`` (only with frozen ``codes``) are the region's constraints, >= 0 inside."""
    it = None if codes is None else iter(codes)
    out_codes, rows = [], []

    def maxunit(u):
        a = jnp.argmax(u, -1) if it is None else next(it)
        out_codes.append(a)
        top = jnp.take_along_axis(u, a[..., None], -1)
        rows.append((top - u).ravel())  # the arg-max's own row is 0 - 0: dropped by _polytope
        return top[..., 0]

    def relu(z):
        s = z > 0 if it is None else next(it)
        out_codes.append(s)
        rows.append(jnp.where(s, z, -z).ravel())
        return jnp.where(s, z, 0.0)

    if kind == "maxout":
        h = x.reshape(-1)
        for i in sorted(params["layers"]):
            lin = params["layers"][i]["linear"]
            h = maxunit((h @ lin["kernel"] + lin["bias"]).reshape(-1, 3))
        out = h @ params["head"]["kernel"] + params["head"]["bias"]
    else:
        h = x
        for i in sorted(params["convs"]):
            conv = params["convs"][i]
            z = jax.lax.conv_general_dilated(h[None], conv["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))[0] + conv["bias"]
            h = relu(maxunit(_windows(z)))
        h = h.reshape(-1)
        dense = [params["dense"][i] for i in sorted(params["dense"])]
        for layer in dense[:-1]:
            h = relu(h @ layer["kernel"] + layer["bias"])
        out = h @ dense[-1]["kernel"] + dense[-1]["bias"]
    return out, out_codes, (jnp.concatenate(rows) if it is not None else None)


@functools.partial(jax.jit, static_argnums=0)
def _codes_jit(kind, params, xs):
    one = lambda u: jnp.concatenate([jnp.ravel(c).astype(jnp.int32) for c in _reference(kind, params, u)[1]])
    return jax.vmap(one)(xs)


def _codes(kind, params, xs):
    """(n, K) integer codes (arg-maxes and ReLU signs) of each point of ``xs``."""
    return np.asarray(_codes_jit(kind, params, xs))


@functools.partial(jax.jit, static_argnums=0)
def _affine_error(net, params, x, pts):
    """Largest |out(x') - out(x) - J (x' - x)| over the points ``pts`` (J by jacfwd)."""
    f = lambda u: net.apply(params, u.reshape(x.shape))[0]
    jac = jax.jacfwd(f)(x.reshape(-1))
    outs = jax.vmap(lambda u: net.apply(params, u)[0])(pts)
    pred = f(x.reshape(-1)) + (pts - x).reshape(pts.shape[0], -1) @ jac.T
    return jnp.max(jnp.abs(outs - pred)) / jnp.max(jnp.abs(pred))


@functools.partial(jax.jit, static_argnums=0)
def _frozen_rows(kind, params, x):
    codes = _reference(kind, params, x)[1]
    f = lambda u: _reference(kind, params, u.reshape(x.shape), codes)[2]
    return f(x.reshape(-1)), jax.jacfwd(f)(x.reshape(-1))


def _polytope(kind, params, x):
    """``(A, c)``: x's region is {x' : A x'_flat + c >= 0}, from the reference with x's codes frozen."""
    val, a = (np.asarray(t) for t in _frozen_rows(kind, params, x))
    keep = np.abs(a).max(1) > 0  # the arg-max rows (u_a - u_a) are identically 0: not constraints
    assert (val[~keep] == 0).all() and (val[keep] > 0).all()
    a, val = a[keep], val[keep]
    return a, val - a @ np.asarray(x).reshape(-1)


def _unit_sphere(rng, p, n, d):
    """Points of the unit l_p sphere: half on it (vertices for l1 and l_inf), half scaled inside."""
    if p == 2:
        u = rng.normal(size=(n, d))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
    elif p == np.inf:
        u = rng.uniform(-1, 1, size=(n, d))
        u[: n // 2] = np.sign(u[: n // 2])
    else:
        u = rng.exponential(size=(n, d)) * rng.choice([-1, 1], size=(n, d))
        u /= np.abs(u).sum(1, keepdims=True)
        u[: 2 * d] = np.concatenate([np.eye(d), -np.eye(d)])
    scale = np.ones((n, 1))
    scale[n // 2 :] = rng.uniform(0, 1, size=(n - n // 2, 1))
    return u * scale


def _worst_step(g, p):
    """Unit-l_p step maximising g . step (the ball's point nearest to a hyperplane with normal g)."""
    if p == 2:
        return g / np.linalg.norm(g)
    if p == np.inf:
        return np.sign(g)
    step = np.zeros_like(g)
    k = np.argmax(np.abs(g))
    step[k] = np.sign(g[k])
    return step


# --------------------------------------------------------------------------
# The building blocks.


def test_max_pool_matches_flax_and_a_numpy_reference():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(7, 5, 3)))
    for window, strides in [((2, 2), None), ((3, 2), (1, 2)), (2, 1), ((1, 1), None)]:
        res = L.layers.max_pool(x, window, strides)
        w = (window, window) if isinstance(window, int) else window
        s = w if strides is None else ((strides, strides) if isinstance(strides, int) else strides)
        np.testing.assert_array_equal(res.output, nnx.max_pool(x, w, strides=s, padding="VALID"))
        ho, wo = res.output.shape[:2]
        xn = np.asarray(x)
        for i in range(ho):
            for j in range(wo):
                u = xn[i * s[0] : i * s[0] + w[0], j * s[1] : j * s[1] + w[1]].reshape(-1, 3).T  # (C, k), row-major window
                a = u.argmax(1)
                want = np.where(np.arange(u.shape[1]) == a[:, None], -1.0, u.max(1, keepdims=True) - u)
                np.testing.assert_array_equal(res.constraints[i, j], want)
                np.testing.assert_array_equal(res.mask[i, j], np.arange(u.shape[1]) != a[:, None])
    # Ties go to the first maximal index; the tie entry is a boundary (0, not positive: margin 0).
    tie = L.layers.max_constraints(jnp.array([1.0, 2.0, 2.0]))
    assert tie.constraints.tolist() == [1.0, -1.0, 0.0] and tie.mask.tolist() == [True, False, True]
    # The output's derivative flows through the arg-max only.
    np.testing.assert_array_equal(jax.grad(lambda u: L.layers.max_constraints(u).output)(jnp.array([1.0, 3.0, 2.0])), [0.0, 1.0, 0.0])


def test_bad_input_raises_clear_value_errors():
    x = jnp.zeros((2, 3, 1))
    with pytest.raises(ValueError, match="larger than the input"):
        L.layers.max_pool(x, (3, 3))
    with pytest.raises(ValueError, match="window must be a positive integer"):
        L.layers.max_pool(x, 0)
    with pytest.raises(ValueError, match="strides must be a positive integer"):
        L.layers.max_pool(x, 2, strides=(1, -1))
    with pytest.raises(ValueError, match=r"ONE example of shape \(H, W, C\)"):
        L.layers.max_pool(jnp.zeros((1, 4, 4, 1)), 2)
    with pytest.raises(ValueError, match=r"k \(affine pieces per maxout unit\) must be an integer >= 2"):
        L.layers.MaxoutMLP(4, [3], 2, k=1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="every entry of widths must be a positive integer"):
        L.layers.MaxoutMLP(4, [3, 0], 2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="too small for 2 2x2 max-pools"):
        L.models.CNN((3, 3, 1), (2, 2), (4,), 2, downsample="max", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="downsample must be one of"):
        L.models.CNN((4, 4, 1), (2,), (4,), 2, downsample="maxpool", rngs=nnx.Rngs(0))
    net, params, x = make("cnn_max")
    with pytest.raises(ValueError, match="frozen-pattern apply"):
        L.batched.margin(net, params, x, method="template")
    with pytest.raises(ValueError, match="no frozen-pattern apply"):
        nnx.merge(net.apply.graphdef, params)(x[0], slopes=(None,) * 5)
    with pytest.raises(ValueError, match="num_samples"):
        L.batched.check_certificate(net, params, x, num_samples=0)
    with pytest.raises(ValueError, match="rtol"):
        L.batched.check_certificate(net, params, x, rtol=-1.0)


def test_from_nnx_sets_masks_only_for_pooled_models():
    for downsample in ("avg", "stride"):  # no max-pooling: no mask (fast paths stay available), frozen apply kept
        net, _ = L.from_nnx(L.models.CNN((4, 4, 1), (1,), (2,), 2, downsample=downsample, rngs=nnx.Rngs(0)))
        assert net.neuron_mask is None and net.apply_frozen is not None
    for kind in POOLED:
        net, params, x = make(kind)
        assert net.neuron_mask is not None and net.apply_frozen is None
        assert pick_method(net, "auto", 2, x.shape[1:], tuple(p.shape for p in net.apply(params, x[0])[1]), None)[0] != "template"
        pre = net.apply(params, x[0])[1]
        masks = net.neuron_mask(params, x[0])
        # Exactly one arg-max (False) per max unit; max-unit entries are the 4-D conv constraints or the maxout layers.
        for p, m in zip(pre, masks):
            assert m.shape == p.shape
            if kind == "maxout" or p.ndim == 4:
                np.testing.assert_array_equal((~m).sum(-1), 1)
                np.testing.assert_array_equal(np.asarray(p)[~np.asarray(m)], -1.0)
                assert (np.asarray(p)[np.asarray(m)] > 0).all()  # no ties at a random point
            else:
                assert bool(m.all())
        # The pattern encodes the arg-max: True at the non-arg-max entries.
        pattern = np.asarray(L.activation_pattern(net, params, x[0]))
        flat = np.concatenate([np.ravel(p) for p in pre]) > 0
        np.testing.assert_array_equal(pattern, flat)


# --------------------------------------------------------------------------
# Margins: sound, tight and equal to a linear program, against the reference.


@pytest.mark.parametrize("kind", POOLED)
@pytest.mark.parametrize("p", [1, 2, np.inf])
def test_soundness_no_sample_inside_the_ball_changes_an_arg_max(kind, p):
    n = 400
    for seed in SEEDS:
        net, params, x = _net(kind, seed)
        eps = np.asarray(L.batched.margin(net, params, x, p=p))
        assert (eps > 0).all() and np.isfinite(eps).all()
        rng = np.random.default_rng(seed)
        shape, d = x.shape[1:], int(np.prod(x.shape[1:]))
        for i in range(x.shape[0]):
            pts = jnp.asarray((np.asarray(x[i]).reshape(1, -1) + 0.999 * eps[i] * _unit_sphere(rng, p, n, d)).reshape((n, *shape)))
            same = (np.asarray(L.batched.activation_pattern(net, params, pts)) == np.asarray(L.activation_pattern(net, params, x[i]))).all(1)
            assert same.all(), f"{int((~same).sum())} points of the l{p} ball of example {i} leave its region"
            # Independently: every arg-max and ReLU sign is x's, and the network is affine there.
            codes = _codes(kind, params, jnp.concatenate([x[i : i + 1], pts]))
            assert (codes[1:] == codes[0]).all(), f"an arg-max or ReLU changes inside the l{p} ball of example {i}"
            assert float(_affine_error(net, params, x[i], pts)) < 1e-12


@pytest.mark.parametrize("kind", POOLED)
@pytest.mark.parametrize("p", [1, 2, np.inf])
def test_margin_is_the_distance_to_the_nearest_constraint_and_tight(kind, p):
    q = {1: np.inf, 2: 2, np.inf: 1}[p]
    bounded_by_max = 0
    for seed in SEEDS:
        net, params, x = _net(kind, seed)
        res = L.batched.margin_with_neuron(net, params, x, p=p)
        for i in range(x.shape[0]):
            a, c = _polytope(kind, params, x[i])
            xi = np.asarray(x[i]).reshape(-1)
            dist = (a @ xi + c) / np.linalg.norm(a, ord=q, axis=1)
            np.testing.assert_allclose(float(res.radius[i]), dist.min(), rtol=1e-9)
            # 0.999x toward the nearest constraint keeps every code, 1.001x changes one: the margin is tight.
            k = int(np.argmin(dist))
            step = -_worst_step(a[k], p) * dist[k]
            codes = _codes(kind, params, jnp.asarray(np.stack([xi, xi + 0.999 * step, xi + 1.001 * step]).reshape((3, *x.shape[1:]))))
            assert (codes[1] == codes[0]).all() and (codes[2] != codes[0]).any()
            pats = np.asarray(
                L.batched.activation_pattern(net, params, jnp.asarray(np.stack([xi + 0.999 * step, xi + 1.001 * step]).reshape((2, *x.shape[1:]))))
            )
            p0 = np.asarray(L.activation_pattern(net, params, x[i]))
            assert (pats[0] == p0).all() and (pats[1] != p0).any()
            bounded_by_max += int(kind == "maxout" or int(res.layer[i]) in (0, 2))
    assert bounded_by_max > 0  # some margins are set by a max-pool / maxout switching constraint


@pytest.mark.parametrize("kind,p", [("maxout", np.inf), ("maxout", 1), ("cnn_max", 1)])
def test_margin_equals_linear_program(kind, p):
    net, params, x = _net(kind, 0)
    eps = np.asarray(L.batched.margin(net, params, x, p=p))
    d = int(np.prod(x.shape[1:]))
    verts = np.concatenate([np.eye(d), -np.eye(d)]) if p == 1 else np.array(np.meshgrid(*[[-1.0, 1.0]] * d)).reshape(d, -1).T
    for i in range(x.shape[0]):
        a, c = _polytope(kind, params, x[i])
        xi = np.asarray(x[i]).reshape(-1)
        # max eps s.t. a_j . (x + eps v) + c_j >= 0 for every vertex v of the unit ball and constraint j.
        lp = linprog(c=[-1.0], A_ub=-(verts @ a.T).reshape(-1, 1), b_ub=np.tile(a @ xi + c, len(verts)), bounds=[(0, None)], method="highs")
        assert lp.status == 0
        np.testing.assert_allclose(eps[i], lp.x[0], rtol=1e-7)


def test_roll_loss_and_region_counts_include_the_constraints():
    net, params, x = _net("maxout", 0)
    z, g = L.batched.neuron_gradients(net, params, x)
    mask = np.concatenate([np.ravel(m) for m in net.neuron_mask(params, x[0])])
    terms = np.sum(np.asarray(g[0]) ** 2, -1) + 0.5 * np.maximum(0, 1 - np.abs(np.asarray(z[0])))
    want = terms[mask].mean()  # the arg-max entries are not neurons: they count nowhere
    np.testing.assert_allclose(L.roll_penalty(net, params, x[0], C=0.5), want, rtol=1e-10)
    np.testing.assert_allclose(L.roll_penalty_sampled(net, params, x[0], jax.random.key(0), C=0.5, num_samples=6), want, rtol=1e-10)
    # Points of one region count once; a point with another arg-max counts apart.
    eps = float(L.margin(net, params, x[0]))
    xs = jnp.stack([x[0], x[0] + 0.5 * eps / np.sqrt(6), x[1]])
    assert L.evaluation.count_regions(net, params, xs) == (2, 2)


# --------------------------------------------------------------------------
# The certificate self-check.


class HiddenMaxPoolCNN(nnx.Module):
    """A CNN whose nnx.max_pool switches are NOT reported: its margins are wrong."""

    def __init__(self, rngs):
        kw = {"rngs": rngs, "param_dtype": jnp.float64}
        self.c1, self.c2 = nnx.Conv(2, 3, (3, 3), **kw), nnx.Conv(3, 4, (3, 3), **kw)
        self.d1, self.d2 = nnx.Linear(4, 8, **kw), nnx.Linear(8, 3, **kw)

    def __call__(self, x):
        z1 = self.c1(x)
        z2 = self.c2(nnx.max_pool(jax.nn.relu(z1), (2, 2), strides=(2, 2)))
        z3 = self.d1(nnx.max_pool(jax.nn.relu(z2), (2, 2), strides=(2, 2)).reshape(-1))
        return self.d2(jax.nn.relu(z3)), (z1, z2, z3)


class ReportedMaxPoolCNN(HiddenMaxPoolCNN):
    """The same function with its switching constraints reported (pooling before the ReLU, see lld_jax.layers.NeuronRecorder)."""

    def forward(self, x):
        rec = L.layers.NeuronRecorder()
        h = rec.relu(rec.max_pool(self.c1(x), 2))
        h = rec.relu(rec.max_pool(self.c2(h), 2))
        return self.d2(rec.relu(self.d1(h.reshape(-1)))), rec

    def __call__(self, x):
        out, rec = self.forward(x)
        return out, rec.preacts

    def neuron_mask(self, x):
        return self.forward(x)[1].masks


@pytest.mark.parametrize("form", ["batched", "vmap_jit"])
def test_self_check_catches_a_hidden_max_pool(form):
    x = jax.random.normal(jax.random.key(100), (3, 6, 6, 2), jnp.float64)
    hidden, params = L.from_nnx(HiddenMaxPoolCNN(nnx.Rngs(0)), input_shape=(6, 6, 2))
    message = (
        r"self-check failed at example\(s\) 0, 1, 2 of the batch: the network is not linear.*a max-pool whose switching constraints are not reported"
    )
    if form == "batched":
        with pytest.raises(L.CheckError, match=message):
            L.batched.check_certificate(hidden, params, x, p=1, check=False)
    else:  # traced: pure by default (the failed self-check poisons the radius); lld_jax.checked raises XLA's runtime error
        pure = jax.jit(jax.vmap(lambda xi: L.check_certificate(hidden, params, xi, p=2, check=False)))
        assert np.all(np.isnan(np.asarray(pure(x).radius)))
        one = jax.jit(jax.vmap(L.checked(lambda xi: L.check_certificate(hidden, params, xi, p=2, check=False))))
        with pytest.raises(Exception, match=message):
            jax.block_until_ready(one(x))


def test_self_check_passes_when_the_max_pool_is_reported():
    x = jax.random.normal(jax.random.key(100), (3, 6, 6, 2), jnp.float64)
    hidden, params = L.from_nnx(HiddenMaxPoolCNN(nnx.Rngs(0)), input_shape=(6, 6, 2))
    reported, params2 = L.from_nnx(ReportedMaxPoolCNN(nnx.Rngs(0)), input_shape=(6, 6, 2))
    np.testing.assert_allclose(hidden.apply(params, x[0])[0], reported.apply(params2, x[0])[0], rtol=1e-12)  # the same function
    res = L.batched.check_certificate(reported, params2, x, p=2, check=False)
    margins = L.batched.margin_with_neuron(reported, params2, x, p=2)
    np.testing.assert_allclose(res.radius, margins.radius, rtol=1e-12)  # the library's margins are what is checked
    np.testing.assert_array_equal(res.layer, margins.layer)
    np.testing.assert_array_equal(res.neuron, margins.neuron)
    assert float(jnp.max(jnp.maximum(res.ball_error, res.region_error))) < 1e-12 and int(res.num_changed.sum()) == 0


# Every built-in architecture (the MLP variants narrow_mlp and leaky_mlp differ from mlp in sizes and slope only),
# one norm each to keep compilation short; every norm is covered.
SILENT = {"mlp": 1, "cnn": 2, "cnn_stride": np.inf, "cnn_max": 1, "maxout": 2, "resnet": np.inf, "rnn": 1, "scornn": 2}


@pytest.mark.parametrize("kind", sorted(SILENT))
def test_self_check_is_silent_on_every_built_in_model(kind):
    p = SILENT[kind]
    net, params, x = make(kind)
    for xi in x[:2]:  # the per-example form compiles faster than the batched one
        res = L.check_certificate(net, params, xi, p=p, check=False)
        assert float(res.radius) > 0 and max(float(res.ball_error), float(res.region_error)) < 1e-12 and int(res.num_changed) == 0

"""No silent wrong answers: bad parameters, every example probed, extreme scales, mixed precision."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from nets import make

import lld_jax as L
from lld_jax._src.poison import poison_where


def _poison(params, value):
    leaves, treedef = jax.tree.flatten(params)
    leaves[1] = leaves[1].at[(0,) * leaves[1].ndim].set(value)  # a first-layer weight: every neuron downstream
    return jax.tree.unflatten(treedef, leaves)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_parameters_raise_eagerly_and_under_jit_and_poison_when_unchecked(value):
    net, params, x = make("mlp")
    bad = _poison(params, value)
    for call in (
        lambda: L.batched.margin(net, bad, x),
        lambda: L.margin(net, bad, x[0], p=1),
        lambda: L.batched.activation_pattern(net, bad, x),
        lambda: L.evaluation.count_regions(net, bad, np.asarray(x)),
        lambda: L.batched.directional_margin(net, bad, x, x[0]),
        lambda: jax.vmap(L.checked(lambda u: L.margin(net, bad, u)))(x),
    ):
        with pytest.raises(ValueError, match="parameters contain NaN or Inf"):
            call()
    # Inside the user's transformations the functions are pure: the checked result is NaN ...
    assert bool(jnp.all(jnp.isnan(jax.jit(jax.vmap(lambda u: L.margin(net, bad, u)))(x))))
    assert bool(jnp.isnan(jax.jit(lambda prm, u: L.margin(net, prm, u))(bad, x[0])))
    # ... and lld_jax.checked raises the named error from inside the user's jit (as a runtime error).
    with pytest.raises(Exception, match="parameters contain NaN or Inf"):
        jax.block_until_ready(jax.jit(L.checked(lambda prm, u: L.margin(net, prm, u)))(bad, x[0]))
    # Unchecked: never a finite, plausible certificate.
    for p in (1, 2, "inf"):
        assert bool(jnp.all(jnp.isnan(L.batched.margin(net, bad, x, p=p, check=False))))
    assert bool(jnp.all(jnp.isnan(L.batched.directional_margin(net, bad, x, x[0], check=False))))
    assert bool(jnp.all(jnp.isnan(L.batched.directional_margin_bisect(net, bad, x, x[0], check=False))))


def test_non_finite_inputs_name_the_example():
    net, params, x = make("cnn")
    with pytest.raises(ValueError, match="x contains NaN or Inf at example\\(s\\) 2 of the batch"):
        L.batched.margin(net, params, x.at[2, 1, 1, 0].set(jnp.inf))
    with pytest.raises(ValueError, match="direction contains NaN"):
        L.batched.directional_margin_bisect(net, params, x, jnp.full(x.shape[1:], jnp.nan))
    assert bool(jnp.all(jnp.isnan(L.batched.directional_margin_bisect(net, params, x, jnp.full(x.shape[1:], jnp.nan), check=False))))


def test_piecewise_linearity_probe_looks_at_every_example():
    # GELU is almost linear far from 0: the first example saturates every unit, the third does not.
    w = jnp.eye(3)

    def fn(params, x):
        z1 = params @ x
        z2 = params @ jax.nn.gelu(z1)
        return z2.sum(), (z1, z2)

    x = jnp.array([[40.0, 50.0, 60.0], [30.0, 45.0, 70.0], [0.3, -0.2, 0.5]])
    assert float(L.margin(fn, w, x[0])) > 0  # the first example alone passes (numerically linear there)
    with pytest.raises(ValueError, match="not piecewise linear.*example\\(s\\) 2 of the batch"):
        L.batched.margin(fn, w, x)
    with pytest.raises(ValueError, match="not piecewise linear"):
        L.evaluation.count_regions(fn, w, np.asarray(x))


def test_a_poisoned_margin_has_a_nan_gradient_and_its_neighbours_keep_theirs():
    """jax.grad of a poisoned margin is NaN (never 0, a plausible step an attack or a training loop would use),
    with respect to x and to the parameters, for a NaN input and for a failed value check; clean rows of the
    same vmapped batch keep their exact gradients."""
    net, params, x = make("mlp")
    x = x[:3]
    bad = x.at[1, 0].set(jnp.nan)
    for check in (True, False):
        margin = lambda prm, u, check=check: L.margin(net, prm, u, p=2, check=check)
        gx = jax.jit(jax.vmap(jax.grad(margin, argnums=1), in_axes=(None, 0)))(params, bad)
        clean = jax.jit(jax.vmap(jax.grad(margin, argnums=1), in_axes=(None, 0)))(params, x)
        assert np.all(np.isnan(np.asarray(gx[1]))), check
        np.testing.assert_array_equal(np.asarray(gx)[[0, 2]], np.asarray(clean)[[0, 2]])
        assert np.all(np.isfinite(np.asarray(clean)))
        # With respect to the parameters: NaN in the first layer, which every neuron reads, so that an optimiser
        # step on it turns the model NaN (visible) instead of applying a finite, plausible update.
        gp = jax.jit(jax.grad(margin))(params, bad[1])
        assert all(np.all(np.isnan(np.asarray(a))) for a in jax.tree.leaves(gp["layers"][0])), check

    # A failed check (not piecewise linear) inside the user's jit: NaN margin, NaN gradient.
    def smooth(w, u):
        z1 = w @ u
        return jnp.sum(jnp.tanh(z1)), (z1,)

    w, u = jnp.eye(3) + 0.1, jnp.array([0.3, -0.2, 0.5])
    assert np.isnan(float(jax.jit(lambda w, u: L.margin(smooth, w, u))(w, u)))
    with pytest.raises(TypeError, match="only a floating-point result"):  # NaN cannot poison an integer
        poison_where(jnp.arange(3), jnp.array(True))
    for argnums in (0, 1):
        g = jax.jit(jax.grad(lambda w, u: L.margin(smooth, w, u), argnums=argnums))(w, u)
        assert np.all(np.isnan(np.asarray(g))), argnums


def _rescale(params, kind, scales):
    """Multiplies layer i's weights by c_i and its bias by c_1...c_i: same regions, margins and patterns."""
    layers = [*params["convs"].values(), *params["dense"].values()] if kind == "cnn" else list(params["layers"].values())
    out = jax.tree.map(lambda a: a, params)
    targets = [*out["convs"].values(), *out["dense"].values()] if kind == "cnn" else list(out["layers"].values())
    cum = 1.0
    for layer, target, c in zip(layers, targets, scales):
        cum *= c
        target["kernel"] = layer["kernel"] * np.float32(c)
        target["bias"] = layer["bias"] * np.float32(cum)
    return out


@pytest.mark.parametrize("kind,seed", [("mlp", 0), ("mlp", 1), ("narrow_mlp", 2), ("cnn", 3)])
def test_margins_are_invariant_to_rescaling_across_the_float32_range(kind, seed):
    net, params, x = make(kind, dtype=jnp.float32, seed=seed)
    rng = np.random.default_rng(seed)
    n_layers = len(jax.tree.leaves(params)) // 2
    ref = {(p, m): np.asarray(L.batched.margin(net, params, x, p=p, method=m)) for p in (1, 2, "inf") for m in ("forward", "reverse")}
    ref[(2, "gram")] = ref[(2, "forward")]
    pattern = np.asarray(L.batched.activation_pattern(net, params, x))
    for total in (1e-30, 1e30):  # gradients far beyond where squares overflow or flush to zero
        logs = rng.dirichlet(np.ones(n_layers)) * np.log(total)
        scaled = _rescale(params, "cnn" if kind == "cnn" else "mlp", np.exp(logs))
        assert (np.asarray(L.batched.activation_pattern(net, scaled, x)) == pattern).all()
        for (p, m), r in ref.items():
            if m == "gram" and net.dense_layers is None:
                continue
            got = np.asarray(L.batched.margin(net, scaled, x, p=p, method=m))
            np.testing.assert_allclose(got, r, rtol=2e-3, err_msg=f"p={p} method={m} total scale {total:g}")
        d = jnp.ones(x.shape[1:], x.dtype)
        np.testing.assert_allclose(L.batched.directional_margin(net, scaled, x, d), L.batched.directional_margin(net, params, x, d), rtol=2e-3)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_half_precision_inputs_are_promoted(dtype, kind):
    net, params, x = make(kind, dtype=jnp.float32)
    ref = {p: L.batched.margin(net, params, x.astype(dtype).astype(jnp.float32), p=p) for p in (1, 2, "inf")}
    for p, r in ref.items():
        got = L.batched.margin(net, params, x.astype(dtype), p=p)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, r, rtol=1e-5)


@pytest.mark.float64
@pytest.mark.parametrize("method", ["forward", "template", "reverse", "gram"])
def test_float64_network_with_float32_inputs(method):
    net, params, x = make("mlp", dtype=jnp.float64)
    ps = (2,) if method == "gram" else (1, 2, "inf")
    for p in ps:
        a = L.batched.margin(net, params, x.astype(jnp.float32), p=p, method=method)
        b = L.batched.margin(net, params, x.astype(jnp.float32).astype(jnp.float64), p=p, method=method)
        assert a.dtype == jnp.float64
        np.testing.assert_allclose(a, b, rtol=1e-12)
    z, g = L.batched.neuron_gradients(net, params, x.astype(jnp.float32), method="reverse" if method == "gram" else method)
    assert g.dtype == jnp.float64


def test_integer_inputs_are_promoted_and_non_float_refused():
    net, params, _ = make("mlp", dtype=jnp.float32)
    xi = jnp.arange(12).reshape(2, 6)
    np.testing.assert_allclose(L.batched.margin(net, params, xi), L.batched.margin(net, params, xi.astype(jnp.float32)), rtol=1e-6)
    with pytest.raises(TypeError, match="real floating point"):
        L.batched.margin(net, params, xi.astype(jnp.complex64))


def test_models_refuse_empty_layers():
    with pytest.raises(ValueError, match="every entry of widths must be a positive integer"):
        L.models.MLP(4, [0], 2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="every entry of channels must be a positive integer"):
        L.models.CNN((4, 4, 1), (0,), (3,), 2, rngs=nnx.Rngs(0))


def test_torch_initialisation_matches_pytorch_defaults_and_shares_compiled_code():
    flax_model = L.models.MLP(784, [300, 300], 10, rngs=nnx.Rngs(0))
    torch_model = L.models.MLP(784, [300, 300], 10, init="torch", rngs=nnx.Rngs(0))
    net_f, _ = L.from_nnx(flax_model)
    net_t, params = L.from_nnx(torch_model)
    assert net_f == net_t  # the init lives in the values only
    for layer in params["layers"].values():
        fan_in = layer["kernel"].shape[0]
        bound = 1 / np.sqrt(fan_in)
        for w in (np.asarray(layer["kernel"]), np.asarray(layer["bias"])):
            assert np.abs(w).max() <= bound
            if w.size >= 300:
                assert np.abs(w).max() > 0.98 * bound
                np.testing.assert_allclose(w.std(), bound / np.sqrt(3), rtol=0.1)  # uniform, not normal
    untouched = L.from_nnx(L.models.MLP(784, [300, 300], 10, init="flax", rngs=nnx.Rngs(0)))[1]
    jax.tree.map(np.testing.assert_array_equal, untouched, L.from_nnx(flax_model)[1])
    with pytest.raises(ValueError, match="init must be one of"):
        L.models.MLP(4, [3], 2, init="he", rngs=nnx.Rngs(0))


@pytest.mark.float64
def test_a_tiny_gradient_row_gives_a_sound_margin_in_float32():
    # Neuron 0 of layer 2 has incoming weights ~1e-25 (its squared gradient norm underflows in
    # float32) and a pre-activation near 0: it bounds the region; dropping it would over-estimate.
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(4, 3)).astype(np.float32)
    w2 = rng.normal(size=(5, 4)).astype(np.float32)
    w2[0] *= 1e-25
    b2 = np.zeros(5, np.float32)
    x = np.ones(3, np.float32)
    b2[0] = -float(w2[0] @ np.maximum(w1 @ x, 0)) + 1e-31  # z = 1e-31: within reach of the tiny gradient
    params = {"w1": w1, "w2": w2, "b2": b2}

    def fn(p, u):
        z1 = p["w1"] @ u
        z2 = p["w2"] @ jax.nn.relu(z1) + p["b2"]
        return z2.sum(), (z1, z2)

    net = L.Network(fn, input_shape=(3,))
    exact = float(L.margin(net, jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params), jnp.asarray(x, jnp.float64), method="reverse"))
    for method in ("forward", "reverse"):
        got = float(L.margin(net, params, jnp.asarray(x), method=method))
        assert 0 < got <= exact * (1 + 1e-4), (method, got, exact)
    # The same network as a built-in MLP: the gram path (l1 bound for the underflowing row).
    mlp_net, mlp_params = L.from_nnx(L.models.MLP(3, [4, 5], 2, rngs=nnx.Rngs(0)))
    mlp_params["layers"][0] = {"kernel": jnp.asarray(w1.T), "bias": jnp.zeros(4, jnp.float32)}
    mlp_params["layers"][1] = {"kernel": jnp.asarray(w2.T), "bias": jnp.asarray(b2)}
    got = float(L.margin(mlp_net, mlp_params, jnp.asarray(x), method="gram"))
    assert 0 < got <= exact * (1 + 1e-4), ("gram", got, exact)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_every_non_finite_parameter_poisons_unchecked_margins(value):
    net, params, x = make("mlp")
    leaves, treedef = jax.tree.flatten(params)
    for i in range(len(leaves)):  # hidden weights and biases, and the output layer
        bad = jax.tree.unflatten(treedef, [a.at[(0,) * a.ndim].set(value) if j == i else a for j, a in enumerate(leaves)])
        for p in (1, 2, "inf"):
            assert bool(jnp.all(jnp.isnan(L.batched.margin(net, bad, x, p=p, check=False)))), (i, p)
        assert bool(jnp.all(jnp.isnan(L.batched.directional_margin(net, bad, x, x[0], check=False)))), i
        assert bool(jnp.all(jnp.isnan(L.batched.directional_margin_bisect(net, bad, x, x[0], check=False)))), i


def test_probe_is_scale_free():
    # tanh with tiny weights is nearly linear; its curvature is tiny but not zero.
    w = 1e-3 * jax.random.normal(jax.random.key(0), (4, 4))

    def fn(params, x):
        z1 = params @ x
        z2 = params @ jnp.tanh(z1)
        return z2.sum(), (z1, z2)

    with pytest.raises(ValueError, match="not piecewise linear"):
        L.margin(fn, w, jnp.ones(4))


def test_l1_ball_is_built_in_the_margins_precision():
    f = lambda w, x: (jnp.sum(w @ x), (w @ x - 0.5,))  # boundaries at x_k = 0.5
    assert not bool(L.l1_ball_in_region(f, jnp.eye(2), jnp.array([1, 1]), 0.9))  # integer x: the ball reaches 0.1
    assert not bool(L.batched.l1_ball_in_region(f, jnp.eye(2), jnp.array([[1, 1]]), 0.9)[0])
    assert bool(L.l1_ball_in_region(f, jnp.eye(2), jnp.array([1, 1]), 0.4))

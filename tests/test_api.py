"""The public surface: per-example functions under jit/vmap/grad, batched wrappers, compile caching."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from nets import KINDS, make

import lld_jax as L
from lld_jax.training import TrainConfig, fit

PER_EXAMPLE = {
    "margin_l1": (lambda net, p, x: L.margin(net, p, x, p=1), lambda net, p, x: L.batched.margin(net, p, x, p=1)),
    "margin_l2": (lambda net, p, x: L.margin(net, p, x, p=2), lambda net, p, x: L.batched.margin(net, p, x, p=2)),
    "margin_linf": (lambda net, p, x: L.margin(net, p, x, p="inf"), lambda net, p, x: L.batched.margin(net, p, x, p="inf")),
    "margin_with_neuron": (L.margin_with_neuron, L.batched.margin_with_neuron),
    "norms_l1": (lambda net, p, x: L.neuron_gradient_norms(net, p, x, p=1), lambda net, p, x: L.batched.neuron_gradient_norms(net, p, x, p=1)),
    "gradients": (L.neuron_gradients, L.batched.neuron_gradients),
    "pattern": (L.activation_pattern, L.batched.activation_pattern),
    "directional": (
        lambda net, p, x: L.directional_margin(net, p, x, jnp.ones_like(x)),
        lambda net, p, x: L.batched.directional_margin(net, p, x, jnp.ones(x.shape[1:], x.dtype)),
    ),
    "bisect": (
        lambda net, p, x: L.directional_margin_bisect(net, p, x, -jnp.ones_like(x), t_max=50.0),
        lambda net, p, x: L.batched.directional_margin_bisect(net, p, x, -jnp.ones(x.shape[1:], x.dtype), t_max=50.0),
    ),
    "same_region": (lambda net, p, x: L.same_region(net, p, x, 1.0001 * x), lambda net, p, x: L.batched.same_region(net, p, x, 1.0001 * x)),
    "l1_ball": (lambda net, p, x: L.l1_ball_in_region(net, p, x, 1e-3), lambda net, p, x: L.batched.l1_ball_in_region(net, p, x, 1e-3)),
}


CASES = [(name, "mlp", jnp.float64) for name in sorted(PER_EXAMPLE)] + [
    (name, "cnn", jnp.float32) for name in ("margin_l2", "margin_linf", "pattern", "directional", "gradients")
]


@pytest.mark.float64
@pytest.mark.parametrize("name,kind,dtype", CASES)
def test_per_example_functions_compose_with_jit_and_vmap(name, kind, dtype):
    one, batched = PER_EXAMPLE[name]
    net, params, x = make(kind, dtype=dtype)
    ref = batched(net, params, x)
    rtol = 1e-10 if dtype == jnp.float64 else 2e-5

    def close(a, b):
        # float32: entries that are sums with cancellation (gradients) are compared on the array's scale.
        scale = float(np.abs(np.asarray(b, float)[np.isfinite(b)]).max(initial=0))
        atol = (1e-14 if dtype == jnp.float64 else 1e-7) * scale
        np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=rtol, atol=atol)

    # Both variants chex.all_variants would run: without and with jit.
    for wrap in (lambda f: f, jax.jit):
        got = jax.vmap(wrap(lambda xi: one(net, params, xi)))(x)
        jax.tree.map(close, got, ref)
        single = wrap(lambda xi: one(net, params, xi))(x[1])
        jax.tree.map(lambda a, b: close(a, np.asarray(b)[1]), single, ref)


@pytest.mark.float64
@pytest.mark.parametrize("p", [1, 2, "inf"])
def test_grad_of_margin_matches_finite_differences(p):
    net, params, x = make("mlp")
    x0 = x[0]
    f = lambda prm: L.margin(net, prm, x0, p=p)
    g = jax.jit(jax.grad(f))(params)
    leaves, treedef = jax.tree.flatten(params)
    gleaves = jax.tree.leaves(g)
    rng = np.random.default_rng(0)
    h = 1e-7
    for li, (leaf, gl) in enumerate(zip(leaves, gleaves)):
        idx = tuple(rng.integers(0, s) for s in leaf.shape)
        bump = lambda d: jax.tree.unflatten(treedef, [a.at[idx].add(d) if j == li else a for j, a in enumerate(leaves)])
        fd = (f(bump(h)) - f(bump(-h))) / (2 * h)
        np.testing.assert_allclose(gl[idx], fd, rtol=1e-4, atol=1e-9)
    # And with respect to the input, through the user's vmap.
    gx = jax.vmap(jax.grad(lambda u: L.margin(net, params, u, p=p)))(x)
    assert gx.shape == x.shape
    e = jnp.zeros_like(x0).at[2].set(h)
    fd = (L.margin(net, params, x0 + e, p=p) - L.margin(net, params, x0 - e, p=p)) / (2 * h)
    np.testing.assert_allclose(gx[0, 2], fd, rtol=1e-4, atol=1e-9)


def test_return_types_do_not_change_with_arguments():
    net, params, x = make("mlp")
    for p, method in [(1, "forward"), (2, "auto"), (2, "gram"), (2, "reverse"), ("inf", "template"), (np.inf, "reverse")]:
        kw = {"p": p, "method": method}
        assert L.margin(net, params, x[0], **kw).shape == () and L.margin(net, params, x[0], **kw).dtype == x.dtype
        res = L.margin_with_neuron(net, params, x[0], **kw)
        assert isinstance(res, L.Margin) and res.radius.shape == res.layer.shape == res.neuron.shape == ()
        assert res.radius.dtype == x.dtype and res.layer.dtype == res.neuron.dtype == jnp.int32
        res = L.batched.margin_with_neuron(net, params, x, **kw)
        assert isinstance(res, L.Margin) and res.radius.shape == res.layer.shape == (x.shape[0],) and res.layer.dtype == jnp.int32
        assert L.batched.margin(net, params, x, **kw).shape == (x.shape[0],)


def test_a_new_from_nnx_wrapper_of_the_same_model_does_not_recompile():
    from lld_jax._src.kernel import _run as _margin  # the one compiled runner of every kernel

    model = L.models.MLP(5, [7, 6], 2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (3, 5))
    net, params = L.from_nnx(model)
    L.batched.margin(net, params, x)
    L.margin(net, params, x[0])
    before = _margin._cache_size()
    for seed in range(5):  # fresh wrappers, and fresh models of the same structure
        net2, params2 = L.from_nnx(model if seed == 0 else L.models.MLP(5, [7, 6], 2, rngs=nnx.Rngs(seed)))
        assert net2 == net and hash(net2) == hash(net)
        L.batched.margin(net2, params2, x)
        L.margin(net2, params2, x[0])
    assert _margin._cache_size() == before
    net3, params3 = L.from_nnx(L.models.MLP(5, [7, 7], 2, rngs=nnx.Rngs(0)))  # another structure compiles anew
    assert net3 != net
    L.batched.margin(net3, params3, x)
    assert _margin._cache_size() == before + 1


def test_margin_partial_is_the_margin_l2_users_ask_for():
    net, params, x = make("mlp")
    margin_l2 = functools.partial(L.margin, net, p=2)
    np.testing.assert_allclose(jax.jit(jax.vmap(margin_l2, in_axes=(None, 0)))(params, x), L.batched.margin(net, params, x), rtol=1e-12)


def test_public_surface_is_curated_and_documented():
    import inspect

    for mod in (L, L.batched, L.losses, L.training, L.evaluation, L.slices, L.data):
        for name in mod.__all__:
            obj = getattr(mod, name)
            assert inspect.ismodule(obj) or (obj.__doc__ and obj.__doc__.strip()), f"{mod.__name__}.{name} has no docstring"
    assert "roll_penalty" in L.__all__ and "roll_penalty_sampled" in L.__all__
    for mod in (L, L.batched, L.losses, L.training, L.evaluation, L.slices, L.data):
        stray = [n for n in dir(mod) if not n.startswith("_") and n != "annotations" and n not in mod.__all__]
        assert stray == [], f"{mod.__name__}: public attributes outside __all__: {stray}"


def test_geometry_is_traced_at_full_matmul_precision():
    # GPUs (TF32) and TPUs (bf16 passes) lower float32 products at reduced precision unless asked:
    # every certificate kernel must ask for HIGHEST, also inside a user's jit.
    net, params = L.from_nnx(L.models.MLP(4, [5, 5], 2, rngs=nnx.Rngs(0)))
    x = jnp.ones((3, 4), jnp.float32)
    calls = {
        "margin": lambda p, u: L.batched.margin(net, p, u, p=2, method="forward", check=False),
        "gram": lambda p, u: L.batched.margin(net, p, u, p=2, method="gram", check=False),
        "directional": lambda p, u: L.batched.directional_margin(net, p, u, u, check=False),
        "stability": lambda p, u: L.batched.stability_bounds(net, p, u, check=False)[0],
        "per_example": lambda p, u: jax.vmap(lambda v: L.margin(net, p, v, p=1, check=False))(u),
    }
    for name, f in calls.items():
        text = jax.jit(f).lower(params, x).as_text()
        dots = [line for line in text.splitlines() if "dot_general" in line]
        assert dots, name
        assert all("HIGHEST" in line for line in dots), f"{name}: a matmul below full precision"


class _BatchNormDropout(nnx.Module):
    def __init__(self, rngs):
        self.a, self.bn = nnx.Linear(6, 8, rngs=rngs), nnx.BatchNorm(8, rngs=rngs)
        self.drop, self.c = nnx.Dropout(0.5, rngs=rngs), nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        z = self.bn(self.a(x))
        return self.c(self.drop(nnx.relu(z))), (z,)


def test_from_nnx_refuses_training_mode_and_holds_batchnorm_statistics(tmp_path):
    model = _BatchNormDropout(nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"_BatchNormDropout.bn is a BatchNorm in training mode.*module.eval\(\)"):
        L.from_nnx(model)
    model.bn.use_running_average = True
    with pytest.raises(ValueError, match=r"_BatchNormDropout.drop is a Dropout in training mode"):
        L.from_nnx(model)
    model.eval()
    model.bn.mean[...] = jnp.linspace(-0.5, 0.5, 8, dtype=jnp.float32)
    model.bn.var[...] = jnp.linspace(0.5, 2.0, 8, dtype=jnp.float32)
    net, params = L.from_nnx(model)
    assert "drop" not in params  # the RNG stream stays in the network: params are all floats
    # The same network written by hand (eval-mode BatchNorm), an independent margin.
    p = params

    def plain(q, x):
        bn = p["bn"]
        z = (x @ q["a"]["kernel"] + q["a"]["bias"] - bn["mean"]) / jnp.sqrt(bn["var"] + model.bn.epsilon) * bn["scale"] + bn["bias"]
        return jax.nn.relu(z) @ q["c"]["kernel"] + q["c"]["bias"], (z,)

    xs = jax.random.normal(jax.random.key(1), (5, 6))
    np.testing.assert_allclose(L.batched.margin(net, params, xs), L.batched.margin(plain, params, xs), rtol=1e-5)
    # Training moves the parameters, never the statistics.
    g = jax.grad(lambda q: L.roll_penalty(net, q, xs[0], C=1.0) + jnp.sum(net(q, xs[0])[0]))(params)
    assert not np.any(g["bn"]["mean"]) and not np.any(g["bn"]["var"]) and np.any(g["bn"]["scale"])
    y = np.arange(16) % 3
    x = np.asarray(jax.random.normal(jax.random.key(2), (16, 6)))
    best, _ = fit(net, params, TrainConfig(epochs=1, batch_size=8, lr=0.1, lam=1.0, C=1.0), (x, y), (x, y), str(tmp_path), progress=False)
    np.testing.assert_array_equal(best["bn"]["mean"], params["bn"]["mean"])
    np.testing.assert_array_equal(best["bn"]["var"], params["bn"]["var"])
    assert not np.allclose(best["a"]["kernel"], params["a"]["kernel"])


class _Sows(nnx.Module):
    def __init__(self, rngs):
        self.a, self.b = nnx.Linear(3, 4, rngs=rngs), nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        z = self.a(x)
        self.sow(nnx.Intermediate, "z1", z)
        return self.b(nnx.relu(z))


@pytest.mark.filterwarnings("ignore:Using 'Module.sow\\(\\)' outside:DeprecationWarning")  # the earlier call is the point
def test_values_sown_by_an_earlier_call_are_not_parameters():
    model = _Sows(nnx.Rngs(0))
    model(jnp.ones(3, jnp.float32))  # leaves z1 in the module
    net, params = L.from_nnx(model, input_shape=(3,))
    assert sorted(params) == ["a", "b"]
    _, pre = net(params, jnp.ones(3, jnp.float32))
    assert [p.shape for p in pre] == [(4,)]


@pytest.mark.float64
@pytest.mark.parametrize("kind", KINDS)
def test_float64_models_are_float64_throughout(kind):
    """Every leaf of a float64 built-in model is float64 (Flax keeps BatchNorm statistics in float32),
    so eager and jitted calls agree to float64 rounding, not float32's."""
    net, params, x = make(kind)
    assert {str(leaf.dtype) for leaf in jax.tree.leaves(params)} == {"float64"}
    eager = net.apply(params, x[0])[1]
    jitted = jax.jit(net.apply)(params, x[0])[1]
    for a, b in zip(eager, jitted):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


def test_fresh_lambdas_partials_and_methods_reuse_compiled_code_and_captured_values_are_keys():
    from lld_jax._src.checks import _value_flags
    from lld_jax._src.kernel import _run

    model = L.models.MLP(5, [7, 6], 2, rngs=nnx.Rngs(0))
    net, params = L.from_nnx(model)
    x = jax.random.normal(jax.random.key(0), (3, 5))
    want = np.asarray(L.batched.margin(net, params, x))
    sizes = None
    for _ in range(3):  # a new function object each time, as users write them in loops
        for f in (lambda p, u: net.apply(p, u), functools.partial(net.apply), L.as_network(lambda p, u: net.apply(p, u), input_shape=(5,))):
            np.testing.assert_allclose(np.asarray(L.batched.margin(f, params, x)), want, rtol=1e-6)
            float(L.margin(f, params, x[0]))
        now = (_run._cache_size(), _value_flags._cache_size())
        assert sizes is None or now == sizes, "a fresh wrapper of the same function compiled again"
        sizes = now
    # What a function captures is part of its identity: another scale is another computation.
    for scale in (1.0, 2.0, 4.0):
        scaled = lambda p, u: net.apply(p, scale * u)
        np.testing.assert_allclose(np.asarray(L.batched.margin(scaled, params, x / scale)), want / scale, rtol=1e-6)
    w = jnp.ones((4, 5))
    linear = lambda a: lambda p, u: (jnp.sum(a @ u + 1), (a @ u + 1,))
    lam1, lam2 = linear(w), linear(2 * w)  # captured arrays: by identity
    assert L.as_network(lam1) != L.as_network(lam2)
    for a, lam in ((w, lam1), (2 * w, lam2)):  # z_j = a_j . x + 1: margin min_j |z_j| / ||a_j||
        z = np.asarray(a) @ np.asarray(x[0]) + 1
        assert float(L.margin(lam, None, x[0])) == pytest.approx(np.min(np.abs(z) / np.linalg.norm(np.asarray(a), axis=1)), rel=1e-10)


def _callbacks(fn, *args) -> int:
    text = str(jax.make_jaxpr(fn)(*args))
    return text.count("pure_callback") + text.count("io_callback") + text.count("debug_callback")


def test_per_example_functions_are_pure_inside_the_users_jit():
    net, params, x = make("mlp", dtype=jnp.float32)
    plain = lambda p, u: net.apply(p, u)
    calls = {
        "margin": lambda p, u: L.margin(net, p, u),
        "margin_rowspace_unchecked": lambda p, u: L.margin(plain, p, u, method="rowspace", check=False),
        "margin_with_neuron": lambda p, u: L.margin_with_neuron(net, p, u, p=1).radius,
        "directional": lambda p, u: L.directional_margin(net, p, u, u),
        "stability": lambda p, u: L.stability_bounds(net, p, u)[0],
        "pattern": lambda p, u: L.activation_pattern(net, p, u),
        "roll_plain": lambda p, u: L.roll_penalty(plain, p, u, C=1.0),
        "certificate": lambda p, u: L.check_certificate(net, p, u).radius,
    }
    for name, f in calls.items():
        assert _callbacks(jax.vmap(f, in_axes=(None, 0)), params, x) == 0, name
    # Opt-in: lld_jax.checked raises from inside the trace, one callback per check.
    assert _callbacks(jax.vmap(L.checked(calls["margin"]), in_axes=(None, 0)), params, x) > 0

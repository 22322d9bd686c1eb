"""Every bad input is refused with an error that names the problem."""

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from nets import make

import lld_jax as L


@pytest.fixture(scope="module")
def mlp():
    return make("mlp")


def test_nan_and_inf_input(mlp):
    net, params, x = mlp
    with pytest.raises(ValueError, match="NaN or Inf"):
        L.batched.margin(net, params, x.at[1, 2].set(jnp.nan))
    with pytest.raises(ValueError, match="NaN or Inf"):
        L.batched.activation_pattern(net, params, x.at[0, 0].set(jnp.inf))
    with pytest.raises(ValueError, match="direction contains"):
        L.batched.directional_margin(net, params, x, jnp.full(x.shape[1:], jnp.nan))


def test_wrong_shape(mlp):
    net, params, x = mlp
    with pytest.raises(ValueError, match="input shape mismatch"):
        L.batched.margin(net, params, x[:, :4])
    one = rf"x has shape \({x.shape[1]},\), read as a batch \(batch axis first\); for one example pass x\[None\]"
    with pytest.raises(ValueError, match=one):
        L.evaluation.count_regions(net, params, x[0])  # names x's own shape, not that of its first row
    with pytest.raises(ValueError, match=one):
        L.attribution.expected_gradient_distortion(
            net, params, x[0], jnp.zeros((), jnp.int32), eps=0.1, num_samples=2, key=jax.random.key(0), box=None
        )
    plain = lambda p, u: net.apply(p, u)
    with pytest.raises(ValueError, match="could not be applied to one example"):
        L.batched.margin(plain, params, x[:, :4])
    with pytest.raises(ValueError, match="direction must have the shape"):
        L.batched.directional_margin(net, params, x, jnp.ones(3))


def test_empty_batch_and_scalar(mlp):
    net, params, x = mlp
    with pytest.raises(ValueError, match="empty batch"):
        L.batched.margin(net, params, x[:0])
    with pytest.raises(ValueError, match="leading batch axis"):
        L.batched.margin(net, params, np.float64(1.0))


@pytest.mark.parametrize("p", [0, 3, -1, "two", None, True])
def test_bad_p(mlp, p):
    net, params, x = mlp
    with pytest.raises(ValueError, match="norm order must be 1, 2 or inf"):
        L.batched.margin(net, params, x, p=p)
    with pytest.raises(ValueError, match="norm order must be 1, 2 or inf"):
        L.margin(net, params, x[0], p=p)


def test_no_hidden_neurons():
    fn = lambda params, x: (params @ x, ())
    with pytest.raises(ValueError, match="no hidden neurons"):
        L.batched.margin(fn, jnp.eye(2), jnp.ones((3, 2)))


@pytest.mark.parametrize("act", [jnp.tanh, jax.nn.gelu, jax.nn.softmax, jax.nn.sigmoid])
def test_not_piecewise_linear(act):
    w1 = jax.random.normal(jax.random.key(0), (8, 4))
    w2 = jax.random.normal(jax.random.key(1), (8, 8))

    def fn(params, x):
        z1 = params[0] @ x
        z2 = params[1] @ act(z1)
        return jax.nn.relu(z2).sum(), (z1, z2)

    with pytest.raises(ValueError, match="not piecewise linear"):
        L.batched.margin(fn, (w1, w2), jnp.ones((2, 4)))


def test_softmax_output_refused():
    fn = lambda params, x: (jax.nn.softmax(params @ jax.nn.relu(x)), (x,))
    with pytest.raises(ValueError, match="not piecewise linear: its output"):
        L.batched.margin(fn, jnp.eye(3) * 2.0, jnp.array([[1.0, 2.0, 3.0]]))


def test_bad_method_and_chunk(mlp):
    net, params, x = mlp
    with pytest.raises(ValueError, match="unknown method"):
        L.batched.margin(net, params, x, method="magic")
    with pytest.raises(ValueError, match="only computes l2"):
        L.batched.margin(net, params, x, p=1, method="gram")
    with pytest.raises(ValueError, match="norms only"):
        L.batched.neuron_gradients(net, params, x, method="gram")
    for bad in (0, True, 2.0):  # a bool or a float is a mistake, not a size
        with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
            L.batched.margin(net, params, x, chunk_size=bad)
    np.testing.assert_array_equal(L.batched.margin(net, params, x, chunk_size=np.int64(3)), L.batched.margin(net, params, x, chunk_size=3))
    with pytest.raises(ValueError, match="gamma must be"):
        L.roll_penalty(net, params, x[0], C=1.0, gamma=True)
    plain = lambda p, u: net.apply(p, u)
    with pytest.raises(ValueError, match="frozen-pattern apply"):
        L.batched.margin(plain, params, x, method="template")
    cnn, cparams, cx = make("cnn")
    with pytest.raises(ValueError, match="MLP-only"):
        L.batched.margin(cnn, cparams, cx, method="gram")


def test_not_a_network():
    with pytest.raises(TypeError, match="must be a callable"):
        L.batched.margin(42, None, jnp.ones((1, 2)))
    with pytest.raises(L.ProtocolError, match="pair"):
        L.batched.margin(lambda p, x: x, None, jnp.ones((1, 2)))
    with pytest.raises(L.ProtocolError, match="tuple of arrays"):
        L.batched.margin(lambda p, x: (x, x), None, jnp.ones((1, 2)))
    assert issubclass(L.ProtocolError, TypeError) and issubclass(L.ProtocolError, ValueError)


def test_nnx_module_that_sows_preacts():
    class Sower(nnx.Module):
        def __init__(self, rngs):
            self.layers = nnx.List([nnx.Linear(3, 5, rngs=rngs) for _ in range(1)] + [nnx.Linear(5, 5, rngs=rngs) for _ in range(10)])
            self.out = nnx.Linear(5, 2, rngs=rngs)

        def __call__(self, x):
            h = x
            for i, layer in enumerate(self.layers):
                z = layer(h)
                self.sow(nnx.Intermediate, f"z{i}", z)
                h = jax.nn.relu(z)
            return self.out(h)

    model = Sower(nnx.Rngs(0))
    net, params = L.from_nnx(model, input_shape=(3,))
    x = jnp.ones((2, 3), jnp.float32)
    _, pre = net.apply(params, x[0])
    # z10 must come after z9 (natural order), i.e. the last layer's preact.
    h = x[0]
    for layer in model.layers:
        z = layer(h)
        h = jax.nn.relu(z)
    np.testing.assert_allclose(pre[-1], z, rtol=1e-6)
    assert len(pre) == 11
    assert L.batched.margin(net, params, x).shape == (2,)

    class Silent(nnx.Module):
        def __init__(self, rngs):
            self.l = nnx.Linear(3, 2, rngs=rngs)

        def __call__(self, x):
            return self.l(x)

    net2, params2 = L.from_nnx(Silent(nnx.Rngs(0)), input_shape=(3,))
    with pytest.raises(ValueError, match="sowed no nnx.Intermediate") as err:
        L.batched.margin(net2, params2, x)
    assert "shape" not in str(err.value)  # the protocol is the problem, not the input's shape


def test_traced_hyper_parameters_are_not_checked_but_work(mlp):
    net, params, x = mlp
    swept = jax.jit(lambda c, lam: lam * L.roll_penalty(net, params, x[0], C=c))(0.5, 2.0)
    np.testing.assert_allclose(swept, 2.0 * L.roll_penalty(net, params, x[0], C=0.5), rtol=1e-6)  # float32
    with pytest.raises(ValueError, match="C \\(hinge weight\\) must be >= 0"):
        L.roll_penalty(net, params, x[0], C=-1.0)


def test_fit_refuses_bad_labels_and_sizes_before_writing_anything(mlp, tmp_path):
    from lld_jax.training import TrainConfig, fit

    net, params, x = mlp
    x = np.asarray(x)
    y = np.arange(len(x)) % 2
    run = tmp_path / "run"
    for bad_y in (y[:, None], np.eye(2, dtype=np.int64)[y]):  # a column, one-hot
        with pytest.raises(ValueError, match="labels must be a 1-D array of class indices"):
            fit(net, params, TrainConfig(epochs=1, batch_size=4), (x, bad_y), (x, y), str(run), progress=False)
    for field, bad in (("batch_size", 4.0), ("epochs", True), ("eval_batch_size", 0)):
        with pytest.raises(ValueError, match=f"{field} must be a positive integer"):
            fit(net, params, TrainConfig(**{"epochs": 1, "batch_size": 4, field: bad}), (x, y), (x, y), str(run), progress=False)
    plain = L.as_network(lambda p, u: net.apply(p, u), input_shape=x.shape[1:])  # no frozen-pattern apply
    with pytest.raises(ValueError, match="method='template' needs a network with a frozen-pattern apply"):
        fit(plain, params, TrainConfig(epochs=1, batch_size=4, lam=1.0, C=1.0, method="template"), (x, y), (x, y), str(run), progress=False)
    assert not run.exists()
    # lists are arrays too, and NumPy integers are integers
    _, hist = fit(net, params, TrainConfig(epochs=1, batch_size=np.int64(4)), (x.tolist(), y.tolist()), (x, y), str(run), progress=False)
    assert len(hist) == 1


def test_ball_radius_must_be_a_finite_non_negative_number(mlp):
    net, params, x = mlp
    for bad in (-0.1, jnp.nan, jnp.inf):
        with pytest.raises(ValueError, match="eps must be a finite radius >= 0"):
            L.l1_ball_in_region(net, params, x[0], bad)
    with pytest.raises(ValueError, match="eps must be a finite radius >= 0"):
        L.batched.l1_ball_in_region(net, params, x, jnp.array([0.1] * (len(x) - 1) + [-0.1]))
    assert bool(L.l1_ball_in_region(net, params, x[0], 0.0))


def test_odd_preacts_and_inputs_are_named_value_errors():
    x = jnp.ones(3)
    cases = {
        "nested": (lambda p, u: (u.sum(), ((u, u),)), r"preacts\[0\] is a tuple, not an array"),
        "integer": (lambda p, u: (u.sum(), (jnp.round(u).astype(jnp.int32),)), r"preacts\[0\] has dtype int32"),
        "zero_width": (lambda p, u: (u.sum(), (u, u[:0])), r"preacts\[1\] has shape \(0,\), no entries"),
    }
    for f, msg in cases.values():
        for check in (True, False):
            with pytest.raises(ValueError, match=msg):
                L.margin(f, None, x, check=check)
            with pytest.raises(ValueError, match=msg):
                L.batched.margin(f, None, x[None], check=check)
    with pytest.raises(ValueError, match="x must be a numeric array"):
        L.batched.margin(lambda p, u: (u.sum(), (u,)), None, np.array([["a", "b", "c"]]))


def test_command_line_os_and_format_errors_are_one_line(tmp_path, capsys):
    from fixtures import MNIST_DIR

    from experiments import _cli, mnist

    tiny = ["--data-dir", MNIST_DIR, "--train-size", "32", "--val-size", "16", "--test-size", "16", "--widths", "4", "--epochs", "1", "--no-progress"]
    (tmp_path / "file").write_text("x")

    def tree():  # every path under tmp_path with its contents: "nothing written" means this does not change
        return {str(q): (q.read_bytes() if q.is_file() else None) for q in sorted(tmp_path.rglob("*"))}

    before = tree()
    for out in (tmp_path / "file", tmp_path / "file" / "run"):
        with pytest.raises(SystemExit) as exit_:
            _cli.run(mnist.main, [*tiny, "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 2 and err.startswith("error: ") and "\n" not in err and str(tmp_path / "file") in err
        assert tree() == before, out
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{not json")
    before = tree()
    with pytest.raises(SystemExit) as exit_:
        _cli.run(mnist.main, [*tiny, "--out", str(run)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "config.json is not valid JSON" in err and "\n" not in err
    assert tree() == before
    # An unwritable folder: a read-only one, or /sys for root (who writes anywhere else).
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    locked = locked if os.geteuid() != 0 else pathlib.Path("/sys/lld_jax_test")
    before = tree()
    with pytest.raises(SystemExit) as exit_:
        _cli.run(mnist.main, [*tiny, "--out", str(locked / "run")])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("error: ") and str(locked) in err and "\n" not in err
    assert tree() == before and not os.path.exists(locked / "run")

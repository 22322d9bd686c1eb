"""Smoke tests of the experiment entry points on tiny subsets (real data where present)."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lld_jax as L
from lld_jax.data import MNIST, Split, load_mnist
from lld_jax.slices import enumerate_slice

MNIST_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist")


@pytest.mark.skipif(not os.path.isdir(MNIST_DIR), reason="shared MNIST data not present")
def test_mnist_run_writes_report(tmp_path):
    from experiments import mnist

    data = load_mnist(MNIST_DIR, train_size=128)
    small = MNIST(data.train, Split(data.val.x[:64], data.val.y[:64]), Split(data.test.x[:64], data.test.y[:64]))
    args = mnist.build_parser().parse_args(["--epochs", "1", "--widths", "32", "32", "--no-progress", "--regularizer", "sampled"])
    report = mnist.run_one(args, small, 2.0, 1.0, 100.0, str(tmp_path))
    saved = json.loads((tmp_path / "report.json").read_text())
    for key in ("accuracy", "margin_l1", "margin_l2", "num_patterns", "num_jacobians"):
        assert key in saved
    assert set(saved["margin_l2"]) == {"P25", "P50", "P75", "P100"}
    assert saved["margin_l2"]["P25"] <= saved["margin_l2"]["P50"] <= saved["margin_l2"]["P100"]
    assert saved["num_jacobians"] <= saved["num_patterns"] <= 64
    assert "| Vanilla" in (tmp_path / "report.md").read_text() or "| ROLL" in (tmp_path / "report.md").read_text()
    assert report["accuracy"] == saved["accuracy"]
    picks = mnist.select({"a": report}, report)
    assert picks["same_accuracy"] == "a"


@pytest.mark.skipif(not os.path.isdir(MNIST_DIR), reason="shared MNIST data not present")
def test_mnist_grid_selects_and_plots(tmp_path):
    from experiments import mnist

    data = load_mnist(MNIST_DIR, train_size=128)
    small = MNIST(data.train, Split(data.val.x[:64], data.val.y[:64]), Split(data.test.x[:64], data.test.y[:64]))
    args = mnist.build_parser().parse_args(
        ["--grid", "--epochs", "1", "--widths", "16", "16", "--no-progress", "--out", str(tmp_path),
         "--grid-lam", "0.5", "2", "--grid-C", "1", "--grid-gamma", "max", "100"]
    )
    reports, picks = mnist.run_grid(args, small)
    assert set(reports) == {"vanilla", "lam0.5_C1_gammamax", "lam0.5_C1_gamma100.0", "lam2_C1_gammamax", "lam2_C1_gamma100.0"}
    # The selection rule, re-derived from the reports: best validation median l2 margin per rounded accuracy.
    target = round(100 * reports["vanilla"]["val"]["accuracy"])
    for slot, acc in (("same_accuracy", target), ("one_point_lower", target - 1)):
        cands = {k: r["val"]["margin_l2"]["P50"] for k, r in reports.items() if k != "vanilla" and round(100 * r["val"]["accuracy"]) == acc}
        assert picks[slot] == (max(cands, key=cands.get) if cands else None)
    assert json.loads((tmp_path / "selection.json").read_text()) == picks
    cross = mnist.build_parser().parse_args(["--grid", "--grid-cross", "--grid-lam", "0.5", "2", "4", "--grid-C", "0.5", "1", "--grid-gamma", "100"])
    assert sorted(mnist.grid_points(cross)) == [(0.5, 0.5, 100.0), (0.5, 1.0, 100.0), (2.0, 1.0, 100.0), (4.0, 1.0, 100.0)]
    assert (tmp_path / "figure2.png").stat().st_size > 0 and "| Vanilla" in (tmp_path / "table1.md").read_text()


def test_mnist_cli_refuses_bad_hyper_parameters(tmp_path):
    from experiments import mnist

    with pytest.raises(ValueError, match="C \\(hinge weight\\)"):
        mnist.main(["--C", "-1", "--lam", "1", "--out", str(tmp_path), "--data-dir", MNIST_DIR, "--train-size", "10"])


def test_toy_data_and_region_plot(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from experiments.toy2d import two_moons
    from lld_jax.plotting import draw_points, draw_regions

    x, y = two_moons()
    assert x.shape == (100, 2) and set(np.unique(y)) == {0, 1}
    net, params = L.from_nnx(L.MLP(2, [8, 8], 1, rngs=nnx.Rngs(0), param_dtype=jnp.float64))
    regions = enumerate_slice(net, params, jnp.zeros(2), jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]), [(-2, -2), (2, -2), (2, 2), (-2, 2)])
    fig, ax = plt.subplots()
    draw_regions(ax, regions)
    draw_points(ax, x, y, margins=np.asarray(L.margin(net, params, jnp.asarray(x))), grads=np.ones_like(x))
    fig.savefig(tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000

"""The experiment entry points on tiny subsets of the real data: reports, reloading, CLI errors."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fixtures import MNIST_DIR
from flax import nnx

import lld_jax as L
from experiments import _cli, mnist, mnist_slice, toy2d
from lld_jax.slices import draw_points, draw_regions, enumerate_slice

TINY = mnist.Config(data_dir=MNIST_DIR, train_size=128, val_size=64, test_size=64, widths=(16, 16), epochs=1, progress=False)


def _png(path):
    import matplotlib.image

    img = matplotlib.image.imread(str(path))
    assert img.ndim == 3 and img[..., :3].std() > 0.05, "the figure is blank"
    return img.shape[:2]


def test_mnist_report_matches_an_independent_evaluation(tmp_path):
    cfg = dataclasses.replace(TINY, lam=2.0, C=1.0, regularizer="sampled", widths=(32, 32))
    report = mnist.train_and_evaluate(cfg, str(tmp_path))
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["accuracy"] == report["accuracy"] and saved["experiment"]["widths"] == [32, 32]
    assert "| ROLL (lam=2, gamma=100.0) | 1 |" in (tmp_path / "report.md").read_text()
    # Rebuild the model from the run directory alone and recompute the report's numbers.
    net, params, _ = mnist_slice.load_run(str(tmp_path))
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    test = L.data.load_mnist(MNIST_DIR, val_size=64, train_size=128, test_size=64).test
    logits = jax.vmap(lambda u: net.apply(params, u)[0])(jnp.asarray(test.x))
    assert saved["accuracy"] == pytest.approx(float(np.mean(np.argmax(logits, -1) == test.y)))
    m2 = np.asarray(jax.vmap(lambda u: L.margin(net, params, u, p=2, method="reverse"))(jnp.asarray(test.x))) * L.data.MNIST_STD
    np.testing.assert_allclose(saved["margin_l2"]["P50"], np.median(m2), rtol=1e-3)
    pats = np.asarray(jax.vmap(lambda u: L.activation_pattern(net, params, u))(jnp.asarray(test.x)))
    assert saved["num_patterns"] == len(np.unique(pats, axis=0))
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1] and saved["best_epoch"] == 1
    # --interim evaluates the best checkpoint so far (here the final one) without training, and refuses other settings.
    data = mnist.load(cfg)
    interim = mnist.interim_report(cfg, data, str(tmp_path))
    assert interim["interim"] == {"epochs_done": 1, "best_epoch": 1} and (tmp_path / "report_interim.json").exists()
    assert interim["accuracy"] == saved["accuracy"] and interim["margin_l2"] == saved["margin_l2"]
    with pytest.raises(ValueError, match="train.C: 1.0 -> 0.5"):
        mnist.interim_report(dataclasses.replace(cfg, C=0.5), data, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="holds no run"):
        mnist.interim_report(cfg, data, str(tmp_path / "nothing"))
    # --certify: the finished run's certified radii, in pixel units, agree with certified_radius per example.
    cert = mnist.certify_run(cfg, data, str(tmp_path))
    assert json.loads((tmp_path / "certify.json").read_text())["l2"]["accuracy"] == pytest.approx(saved["accuracy"])
    with np.load(tmp_path / "certify.npz") as z:
        lower2, correct = z["l2_lower"], z["l2_correct"]
    i = int(np.argmax(correct))
    want = L.certified_radius(net, params, jnp.asarray(test.x[i]), int(test.y[i]))
    assert lower2[i] == pytest.approx(float(want.lower) * L.data.MNIST_STD, rel=1e-4)
    assert np.all(lower2[correct] <= m2[correct] * (1 + 1e-4))  # never beyond the region margin
    assert cert["linf"]["curve"]["eps"][-1] == 0.1 and len(cert["linf"]["curve"]["certified"]) == 7


def test_mnist_grid_selects_and_plots(tmp_path):
    cfg = dataclasses.replace(TINY, grid=True, grid_lam=(0.5, 2.0), grid_C=(1.0,), grid_gamma=("max", 100.0))
    reports, picks = mnist.run_grid(cfg, str(tmp_path))
    assert set(reports) == {"vanilla", "lam0.5_C1_gammamax", "lam0.5_C1_gamma100.0", "lam2_C1_gammamax", "lam2_C1_gamma100.0"}
    # The selection rule, re-derived from the reports: best validation median l2 margin per rounded accuracy.
    target = round(100 * reports["vanilla"]["val"]["accuracy"])
    for slot, acc in (("same_accuracy", target), ("one_point_lower", target - 1)):
        cands = {k: r["val"]["margin_l2"]["P50"] for k, r in reports.items() if k != "vanilla" and round(100 * r["val"]["accuracy"]) == acc}
        assert picks[slot] == (max(cands, key=cands.get) if cands else None)
    record = json.loads((tmp_path / "selection.json").read_text())
    assert record["picks"] == picks and record["split"] == "val" and "largest median l2 margin" in record["rule"]
    for k, r in reports.items():  # every candidate's numbers, as in its report
        row = record["vanilla"] if k == "vanilla" else record["candidates"][k]
        assert row["accuracy"] == r["val"]["accuracy"] and row["margin_l2_P50"] == r["val"]["margin_l2"]["P50"]
    assert _png(tmp_path / "figure2.png") == (350, 1600)
    assert (tmp_path / "table1.md").read_text().count("\n| ") == 1 + sum(1 for k in picks.values() if k)
    cross = mnist.Config(grid=True, grid_cross=True, grid_lam=(0.5, 2.0, 4.0), grid_C=(0.5, 1.0), grid_gamma=(100.0,))
    assert sorted(cross.points()) == [(0.5, 0.5, 100.0), (0.5, 1.0, 100.0), (2.0, 1.0, 100.0), (4.0, 1.0, 100.0)]


def test_run_directory_refuses_other_data_or_architecture(tmp_path):
    mnist.train_and_evaluate(TINY, str(tmp_path))
    for change, field in [({"train_size": 100}, "experiment.train_size"), ({"widths": (8, 8)}, "experiment.widths"), ({"lr": 0.1}, "train.lr")]:
        with pytest.raises(ValueError, match=f"different config.*{field}"):
            mnist.train_and_evaluate(dataclasses.replace(TINY, **change), str(tmp_path))
    # More epochs extend the run; the report then covers both.
    report = mnist.train_and_evaluate(dataclasses.replace(TINY, epochs=2), str(tmp_path))
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert report["best_epoch"] == 1 + int(np.argmin([h["val_loss"] for h in history]))


@pytest.mark.float64
def test_mnist_slice_rebuilds_the_recorded_architecture(tmp_path):
    mnist.train_and_evaluate(dataclasses.replace(TINY, widths=(12, 10)), str(tmp_path / "run"))
    net, params, cfg = mnist_slice.load_run(str(tmp_path / "run"))
    assert cfg["experiment"]["widths"] == [12, 10]
    assert sum(np.prod(s.shape) for s in jax.eval_shape(net.apply, params, jax.ShapeDtypeStruct((28, 28), jnp.float64))[1]) == 22
    mnist_slice.main([str(tmp_path / "run"), "--data-dir", MNIST_DIR, "--out", str(tmp_path / "slice")])
    summary = json.loads((tmp_path / "slice" / "mnist_slice.json").read_text())
    assert summary[str(tmp_path / "run")]["regions"] >= 1
    _png(tmp_path / "slice" / "mnist_slice.png")
    with pytest.raises(FileNotFoundError, match="no MNIST run"):
        mnist_slice.load_run(str(tmp_path))


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--C", "-1", "--lam", "1"], "C (hinge weight)"),
        (["--widths", "0"], "widths must be"),
        (["--test-size", "0"], "test_size must be in"),
        (["--test-size", "-250"], "test_size must be in"),
        (["--train-size", "99999"], "train_size must be in"),
        (["--method", "bogus", "--lam", "1", "--C", "1"], "method must be one of"),
        (["--regularizer", "sampled", "--lam", "1", "--num-samples", "1000"], "exceeds the input dimension"),
    ],
)
def test_mnist_cli_errors_are_one_line_and_write_nothing(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        _cli.run(mnist.main, argv + ["--out", str(tmp_path / "run"), "--data-dir", MNIST_DIR])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_toy_cli_refuses_zero_steps(capsys):
    with pytest.raises(SystemExit):
        _cli.run(toy2d.main, ["--steps", "0"])
    assert "steps must be a positive integer" in capsys.readouterr().err


def test_toy_experiment_end_to_end(tmp_path):
    cfg = toy2d.Config(steps=20, num_points=24, widths=(8, 8), lambdas=(0.1, 1.0))
    summary = toy2d.train_and_evaluate(cfg, str(tmp_path))
    assert set(summary["models"]) == {"vanilla", "distance", "relaxed"}
    for row in summary["models"].values():
        assert row["num_regions"] >= 1 and 0 <= row["train_accuracy"] <= 1
        m = row["margin_l2"]
        assert 0 <= m["P25"] <= m["P50"] <= m["P75"] <= m["P100"]
    assert _png(tmp_path / "toy2d.png") == (352, 1200)
    written = json.loads((tmp_path / "toy2d.json").read_text())
    assert written["config"]["steps"] == 20 and written["selection"]["candidates"] == [0.1, 1.0]
    for name in ("distance", "relaxed"):  # the sweep behind each chosen lambda is recorded
        assert summary["models"][name]["lambda"] in [t["lambda"] for t in written["selection"]["sweep"][name]]


@pytest.mark.float64
def test_region_plot_draws_every_region(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = toy2d.two_moons()
    assert x.shape == (100, 2) and set(np.unique(y)) == {0, 1}
    net, params = L.from_nnx(L.models.MLP(2, [8, 8], 1, rngs=nnx.Rngs(0), param_dtype=jnp.float64))
    regions = enumerate_slice(net, params, jnp.zeros(2), jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]), [(-2, -2), (2, -2), (2, 2), (-2, 2)])
    for fill in ("random", "class", None):
        fig, ax = plt.subplots()
        draw_regions(ax, regions, fill=fill)
        draw_points(ax, x, y, margins=np.asarray(L.batched.margin(net, params, jnp.asarray(x))), grads=np.ones_like(x))
        assert len(ax.collections[0].get_paths()) == len(regions)
        plt.close(fig)
    with pytest.raises(ValueError, match="fill must be"):
        draw_regions(plt.subplots()[1], regions, fill="rainbow")


def test_selection_rule_on_hand_made_reports():
    from experiments import common

    rep = lambda acc, m, **kw: {"config": {"lam": 1.0, "C": 1.0}, "accuracy": acc, "margin_l2": {"P50": m}, **kw}
    vanilla = rep(0.9730, 1.0)  # rounds to 97
    runs = {"a": rep(0.9676, 2.0), "b": rep(0.9651, 5.0), "c": rep(0.9595, 9.0), "d": rep(0.9449, 50.0)}
    # a and b round to 97 (b: 96.51 -> 97), c to 96, d to 94 (too low for either slot).
    assert common.select(runs, vanilla) == {"same_accuracy": "b", "one_point_lower": "c"}
    assert common.select({"d": runs["d"]}, vanilla) == {"same_accuracy": None, "one_point_lower": None}
    record = common.selection_record(runs, vanilla)
    assert record["split"] == "test" and record["candidates"]["c"]["margin_l2_P50"] == 9.0
    with pytest.raises(ValueError, match="different splits"):
        common.select({"v": rep(0.97, 1.0, val={"accuracy": 0.97, "margin_l2": {"P50": 1.0}})}, vanilla)
    assert common.best_epoch([{"val_loss": 3.0}, {"val_loss": 1.0}, {"val_loss": 2.0}]) == 2
    with pytest.raises(ValueError, match="no epoch"):
        common.best_epoch([])


def test_lambda_rule_stops_at_the_first_significantly_worse_run():
    from scipy.stats import binomtest

    from experiments import common

    rng = np.random.default_rng(0)
    base = rng.random(200) < 0.8

    def flip(k_lost, k_won):  # a candidate that loses k_lost of base's right answers and wins k_won of its wrong ones
        c = base.copy()
        c[np.flatnonzero(base)[:k_lost]] = False
        c[np.flatnonzero(~base)[:k_won]] = True
        return c

    for lost, won in ((5, 0), (4, 0), (12, 3), (0, 0), (3, 9)):
        b, c, p = common.mcnemar_worse(base, flip(lost, won))
        assert (b, c) == (lost, won)
        want = binomtest(b, b + c, 0.5, alternative="greater").pvalue if b + c else 1.0
        assert p == pytest.approx(want, rel=1e-12)  # an independent implementation of the exact test
    runs = [(1e-4, flip(1, 1)), (1e-6, flip(0, 0)), (1e-3, flip(4, 0)), (1e-2, flip(12, 3)), (1e-1, flip(1, 0))]
    rec = common.raise_until_worse(base, runs)
    assert rec["chosen"] == 1e-3 and [r["lam"] for r in rec["candidates"]] == [1e-6, 1e-4, 1e-3, 1e-2]  # stops at 1e-2 (p = 0.018)
    assert rec["candidates"][-1]["worse"] and not any(r["worse"] for r in rec["candidates"][:-1])
    assert common.raise_until_worse(base, [(1.0, flip(5, 0))])["chosen"] is None  # p = 1/32 < 0.05
    diverged = common.raise_until_worse(base, [(1e-6, flip(0, 0)), (1e-5, None), (1e-4, flip(0, 0))])
    assert diverged["chosen"] == 1e-6 and diverged["candidates"][-1] == {"lam": 1e-5, "diverged": True, "worse": True}
    with pytest.raises(ValueError, match="distinct values of lam"):
        common.raise_until_worse(base, [(1.0, base), (1.0, base)])
    with pytest.raises(ValueError, match="one shape"):
        common.mcnemar_worse(base, base[:10])

"""The Table-1 report (lld_jax.evaluation) against per-example library calls, NumPy and SciPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nets import make
from scipy.stats import spearmanr

import lld_jax as L
from experiments.common import table1_markdown
from lld_jax.evaluation import evaluate_model, spearman

# Exactness against float64 references (see conftest: the suite runs float32 unless a test opts in).
pytestmark = pytest.mark.float64


def test_spearman_with_ties_equals_scipy():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 6, 200).astype(float)  # many ties
    b = a + rng.integers(0, 3, 200)
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, rel=1e-12)
    c = rng.normal(size=200)
    assert spearman(c, -(c**3)) == pytest.approx(-1.0)


def test_report_over_ragged_batches_equals_per_example_results():
    net, params, _ = make("mlp")
    x = jax.random.normal(jax.random.key(5), (17, 6), jnp.float64)
    logits = np.asarray(jax.vmap(lambda u: net.apply(params, u)[0])(x))
    y = logits.argmax(1)
    y[:5] = (y[:5] + 1) % 3  # 12 of 17 right
    r = evaluate_model(net, params, np.asarray(x), y, scale=0.5, batch_size=7)  # batches of 7, 7 and a padded 3
    m = {p: np.array([float(L.margin(net, params, xi, p=p)) for xi in x]) for p in (1, 2)}
    assert r["n"] == 17 and r["accuracy"] == pytest.approx(12 / 17)
    for p in (1, 2):
        for q in (25, 50, 75, 100):
            assert r[f"margin_l{p}"][f"P{q}"] == pytest.approx(0.5 * np.percentile(m[p], q), rel=1e-10)
        assert r[f"margin_l{p}_min"] == pytest.approx(0.5 * m[p].min(), rel=1e-10)
    counts = L.evaluation.count_regions(net, params, x)
    assert (r["num_patterns"], r["num_jacobians"]) == (counts.num_patterns, counts.num_jacobians)
    assert r["spearman_l1_l2"] == pytest.approx(spearmanr(m[1], m[2]).statistic, rel=1e-10)
    per = evaluate_model(net, params, np.asarray(x), y, scale=0.5, batch_size=7, per_example=True)["per_example"]
    np.testing.assert_array_equal(per["correct"], np.arange(17) >= 5)
    for p in (1, 2):
        np.testing.assert_allclose(per[f"margin_l{p}"], 0.5 * m[p], rtol=1e-10)
    only_l2 = evaluate_model(net, params, np.asarray(x), y, batch_size=7, ps=(2,))
    assert "margin_l1" not in only_l2 and "spearman_l1_l2" not in only_l2
    assert only_l2["margin_l2"]["P50"] == pytest.approx(np.percentile(m[2], 50), rel=1e-10)
    table = table1_markdown([("ROLL", "1", r)], unit=1e-4)
    row = table.splitlines()[2].split(" | ")
    assert row[2] == f"{100 * 12 / 17:.2f}%" and float(row[5]) == pytest.approx(0.5 * np.percentile(m[1], 25) / 1e-4, abs=0.5)


def test_report_refuses_bad_arguments():
    net, params, x = make("mlp")
    with pytest.raises(ValueError, match="ps must be"):
        evaluate_model(net, params, np.asarray(x), np.zeros(4, int), ps=(3,))
    with pytest.raises(ValueError, match="one label per example"):
        evaluate_model(net, params, np.asarray(x), np.zeros(3, int))

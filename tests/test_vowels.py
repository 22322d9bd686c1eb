"""The Japanese Vowels experiment on a tiny subset of the real data: grid, selection, Table 2, Figure 3, reloading."""

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest
from fixtures import VOWELS_DIR

import lld_jax as L
from experiments import vowels

TINY = vowels.Config(data_dir=VOWELS_DIR, hidden=8, epochs=1, train_size=36, test_size=24, progress=False)


def test_vowels_grid_selects_writes_table2_and_figure3(tmp_path):
    cfg = dataclasses.replace(TINY, grid=True, grid_lam=(0.5,), grid_C=(1.0, 4.0), val_size=2)
    reports, picks = vowels.run_grid(cfg, str(tmp_path))
    assert set(reports) == {"vanilla", "lam0.5_C1", "lam0.5_C4"}
    # Selection on the carved validation split, re-derived from the reports.
    target = round(100 * reports["vanilla"]["val"]["accuracy"])
    for slot, acc in (("same_accuracy", target), ("one_point_lower", target - 1)):
        cands = {k: r["val"]["margin_l2"]["P50"] for k, r in reports.items() if k != "vanilla" and round(100 * r["val"]["accuracy"]) == acc}
        assert picks[slot] == (max(cands, key=cands.get) if cands else None)
    table = (tmp_path / "table2.md").read_text()
    assert table.count("\n| ") == 1 + 2 and "units of 1e-06 (raw features)" in table  # few points: every run is a row
    for slot, k in picks.items():
        assert k is None or f"ROLL {k} ({slot})" in table
    # The report's numbers, recomputed from the reloaded best checkpoint.
    data = vowels.VowelsData(cfg)
    raw = L.data.load_japanese_vowels(VOWELS_DIR)
    assert data.length == max(len(s) for s in raw.train.x + raw.test.x) and data.train.x.shape == (36, data.length, 13)
    assert len(data.val.x) == 18 and not set(map(bytes, data.val.x)) & set(map(bytes, data.train.x))
    roll = "lam0.5_C4"
    net, params = vowels.load_params(cfg, str(tmp_path / roll), data.length)
    x, y = data.test
    logits = jax.vmap(lambda u: net.apply(params, u)[0])(x)
    assert reports[roll]["accuracy"] == pytest.approx(float(np.mean(np.argmax(logits, -1) == y)))
    m2 = np.asarray(L.batched.margin(net, params, x, p=2, method="reverse"))
    np.testing.assert_allclose(reports[roll]["margin_l2"]["P50"], np.median(m2), rtol=1e-3)
    # Figure 3: the sequences at the P50 / P75 of the plotted ROLL model's l2 margin.
    fig = json.loads((tmp_path / "figure3.json").read_text())
    shown = (
        picks["same_accuracy"]
        or picks["one_point_lower"]
        or max((k for k in reports if k != "vanilla"), key=lambda k: reports[k]["val"]["margin_l2"]["P50"])
    )
    net, params = vowels.load_params(cfg, str(tmp_path / shown), data.length)
    r = np.asarray(L.batched.margin(net, params, x, p=2))
    for q in (50, 75):
        assert abs(r[fig["sequences"][f"P{q}"]] - np.percentile(r, q)) == pytest.approx(np.min(np.abs(r - np.percentile(r, q))))
    # --collect rebuilds the same table from the finished runs without training.
    table_before = table
    (tmp_path / "table2.md").unlink()
    # Over a wider grid too (the queue's widening collects the paper's whole grid): points not run are left out.
    again, picks_again = vowels.run_grid(dataclasses.replace(cfg, collect=True, grid_C=(1.0, 4.0, 16.0)), str(tmp_path))
    assert picks_again == picks and (tmp_path / "table2.md").read_text() == table_before
    with pytest.raises(ValueError, match="grid_C"):  # training needs the recorded grid
        vowels.run_grid(dataclasses.replace(cfg, grid_C=(1.0, 4.0, 16.0)), str(tmp_path))
    # A run without a report (still training) is evaluated at its best checkpoint and marked.
    (tmp_path / "lam0.5_C1" / "report.json").rename(tmp_path / "lam0.5_C1" / "report.bak")
    interim, _ = vowels.run_grid(dataclasses.replace(cfg, collect=True), str(tmp_path))
    assert interim["lam0.5_C1"]["interim"]["epochs_done"] == 1
    assert interim["lam0.5_C1"]["accuracy"] == reports["lam0.5_C1"]["accuracy"]
    assert "ROLL lam0.5_C1" in (tmp_path / "table2.md").read_text() and "unfinished" in (tmp_path / "table2.md").read_text()
    import matplotlib.image

    img = matplotlib.image.imread(str(tmp_path / "figure3.png"))
    assert img.shape[:2] == (680, 1260) and img[..., :3].std() > 0.05
    # Figure 3's data is in each run's eval.npz: the stability bounds of every test sequence (channel 9),
    # equal to the reloaded checkpoint's, so the figure is redrawn from files after the checkpoints are gone.
    saved = np.load(tmp_path / shown / "eval.npz")
    b = L.batched.stability_bounds(net, params, x)
    np.testing.assert_array_equal(saved["stability_lower"], np.asarray(b.lower)[..., vowels.CHANNEL])
    np.testing.assert_array_equal(saved["stability_upper"], np.asarray(b.upper)[..., vowels.CHANNEL])
    assert np.isinf(saved["stability_upper"][np.arange(x.shape[1])[None, :] >= L.data.sequence_lengths(x)[:, None]]).all()  # padding
    (tmp_path / "lam0.5_C1" / "report.bak").rename(tmp_path / "lam0.5_C1" / "report.json")  # finished again
    for k in ("vanilla", shown):
        shutil.rmtree(tmp_path / k / "checkpoints")
    (tmp_path / "figure3.json").unlink()
    vowels.run_grid(dataclasses.replace(cfg, collect=True), str(tmp_path))
    assert json.loads((tmp_path / "figure3.json").read_text())["intervals"] == fig["intervals"]
    # An old run's eval.npz without the bounds and no checkpoint: the error names the fix.
    np.savez(tmp_path / "vanilla" / "eval.npz", **{k: v for k, v in np.load(tmp_path / "vanilla" / "eval.npz").items() if "stab" not in k})
    with pytest.raises(FileNotFoundError, match="no Figure 3 data.*retrain that run"):
        vowels.run_grid(dataclasses.replace(cfg, collect=True), str(tmp_path))


def test_widening_runs_the_points_beyond_a_picks_edge():
    from experiments.vowels_widen import widen

    def record(points, picks):
        cands = {f"lam{lam:g}_C{C:g}": {"lam": lam, "C": C, "accuracy": 0.9, "margin_l2_P50": 1.0} for lam, C in points}
        return {"candidates": cands, "picks": picks}

    square = [(lam, C) for lam in (0.25, 0.5, 1.0) for C in (2.0, 4.0, 8.0)]
    # Inside the grid that ran: nothing to widen.
    assert widen(record(square, {"same_accuracy": "lam0.5_C4", "one_point_lower": None})) == []
    # On the high-C edge: C 16 at the pick's lambda first, then at lambda / 2 and x 2.
    assert widen(record(square, {"same_accuracy": None, "one_point_lower": "lam0.5_C8"})) == [(0.5, 16.0), (0.25, 16.0), (1.0, 16.0)]
    # A corner, both edges: beyond the C edge (2^-6, 1) is new, (2^-5, 1) already ran and (2^-7, 1) lies outside the
    # paper's grid (lambda >= 2^-6), as does everything beyond the lambda edge.
    low = [(lam, C) for lam in (2.0**-6, 2.0**-5) for C in (2.0, 4.0)] + [(2.0**-5, 1.0)]
    got = widen(record(low, {"same_accuracy": "lam0.015625_C2", "one_point_lower": None}))
    assert got == [(2.0**-6, 1.0)]
    # Two picks on a 2 x 2 grid, each on a C edge and the high-lambda edge: C edges first, each pick's own line
    # first, and a point both picks reach is run once.
    two = [(lam, C) for lam in (0.25, 0.5) for C in (4.0, 8.0)]
    got = widen(record(two, {"same_accuracy": "lam0.5_C4", "one_point_lower": "lam0.5_C8"}))
    assert got == [(0.5, 2.0), (0.25, 2.0), (1.0, 2.0), (1.0, 4.0), (1.0, 8.0), (0.5, 16.0), (0.25, 16.0), (1.0, 16.0)]


def test_vowels_config_errors(tmp_path):
    with pytest.raises(ValueError, match="val_size"):
        vowels.Config(val_size=30).validate()
    with pytest.raises(ValueError, match="use it with --grid"):
        vowels.Config(collect=True).validate()
    with pytest.raises(ValueError, match="train_size=999 exceeds"):
        vowels.train_and_evaluate(dataclasses.replace(TINY, train_size=999), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="ae.train"):
        vowels.train_and_evaluate(dataclasses.replace(TINY, data_dir=str(tmp_path)), str(tmp_path / "run"))

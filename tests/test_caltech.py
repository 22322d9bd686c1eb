"""The image experiment end to end on a few real Caltech classes at tiny size (paper Sec. 5.3, Table 3, Figures 4-6)."""

import json
import os

import numpy as np
import pytest
from fixtures import CALTECH_DIR as DATA

from experiments import caltech

TINY = [
    "--data-dir", DATA, "--classes", "3", "--train-per-class", "4", "--num-val", "2", "--num-test", "4", "--size", "16", "--widths", "4", "8", "--blocks", "1", "1", "--epochs", "1",
    "--batch-size", "8", "--num-samples", "6", "--eval-images", "4", "--uniform-samples", "8", "--population", "8",
    "--generations", "1", "--ig-steps", "4", "--no-progress",
]  # fmt: skip


def test_tiny_run_writes_table_figures_and_resumes(tmp_path):
    out = str(tmp_path / "run")
    reports = caltech.train_and_evaluate(caltech.parse([*TINY, "--out", out]))
    for name in ("vanilla", "roll"):
        r = reports[name]
        assert 0 <= r["precision_at_1"] <= r["precision_at_5"] <= 1
        assert r["num_test"] == 3 * 4 and r["num_evaluated"] == 4 and r["experiment"]["train_size"] == 3 * 4
        for key in ("expected_distortion", "max_distortion"):
            vals = [r[key][p] for p in ("P25", "P50", "P75", "P100")]
            assert vals == sorted(vals) and vals[0] >= 0
        assert 0 <= r["num_prediction_changed"] <= 4
        ev = np.load(os.path.join(out, name, "eval.npz"))
        # The GA's worst point lies in the eps-ball and the box, and its distortion is what the gradients say.
        assert (ev["x_worst"] >= 0).all() and (ev["x_worst"] <= 1).all()
        np.testing.assert_allclose(np.abs(ev["grad_worst"] - ev["grad"]).reshape(4, -1).sum(1), ev["distortion"], rtol=1e-4)
        # Every test image's hits are kept (paired comparisons), and they are the reported precisions.
        assert len(ev["top1"]) == len(ev["test_idx"]) == 12 and ev["top1"].mean() == r["precision_at_1"] and ev["top5"].mean() == r["precision_at_5"]
    assert reports["roll"]["config"]["lam"] == 0.1 and reports["vanilla"]["config"]["lam"] == 0.0
    table = open(os.path.join(out, "table3.md")).read()
    assert "vanilla (ours)" in table and "roll (paper)" in table
    for fig in ("figure4.png", "figure5_6.png"):
        assert os.path.getsize(os.path.join(out, fig)) > 1000
    assert set(json.load(open(os.path.join(out, "figures.json")))) == {"P25", "P50", "P75", "P100"}
    # A finished run is neither retrained nor re-evaluated.
    stamp = os.path.getmtime(os.path.join(out, "roll", "report.json"))
    again = caltech.train_and_evaluate(caltech.parse([*TINY, "--out", out]))
    assert again["roll"] == json.loads(json.dumps(reports["roll"])) and os.path.getmtime(os.path.join(out, "roll", "report.json")) == stamp


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        caltech.train_and_evaluate(caltech.parse([*TINY, "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path)]))
    with pytest.raises(ValueError, match="multiple of the 3 channels"):
        caltech.parse(["--num-samples", "4"]).resolved()
    with pytest.raises(ValueError, match="--preset"):
        caltech.parse(["--preset", "huge"]).resolved()
    with pytest.raises(ValueError, match="one entry per stage"):
        caltech.parse(["--widths", "4", "8", "--blocks", "1"]).resolved()
    cfg = caltech.parse([]).resolved()
    assert (cfg.size, cfg.classes, cfg.epochs) == (32, 10, 20)  # the reduced preset fills what was not given
    cfg = caltech.parse(["--preset", "paper", "--epochs", "3"]).resolved()
    assert (cfg.size, cfg.num_samples, cfg.population, cfg.epochs) == (299, 360, 4800, 3)


def test_saliency_is_the_papers_recipe():
    g = np.zeros((4, 4, 3))
    g[0, 0] = [1.0, -3.0, 0.0]  # channel sum -2: absolute value 2
    g[1, 1] = [0.5, 0.5, 0.0]
    s = caltech.saliency(g)
    assert s.shape == (4, 4) and s.max() == 1.0 and s.min() == 0.0
    p99 = np.percentile(np.abs(g.sum(-1)), 99)
    np.testing.assert_allclose(s[1, 1], min(1.0, 1.0 / p99))


def test_exclude_defaults_to_what_exists_and_can_be_emptied(tmp_path):
    import shutil

    # A folder without Caltech-101's clutter class (as Caltech-256): the default exclusion does not apply.
    for cls in ("Motorbikes", "airplanes", "wrench"):
        shutil.copytree(os.path.join(DATA, cls), tmp_path / "images" / cls)
    data = caltech.ImageData.load(caltech.parse([*TINY, "--data-dir", str(tmp_path / "images")]).resolved())
    assert data.class_names == ["Motorbikes", "airplanes", "wrench"]
    # An empty --exclude keeps every class, the clutter class included.
    data = caltech.ImageData.load(caltech.parse([*TINY, "--classes", "4", "--num-val", "1", "--num-test", "2", "--exclude"]).resolved())
    assert data.class_names[0] == "BACKGROUND_Google" and len(data.class_names) == 4


def test_lambda_rule_on_validation_picks_the_roll_model(tmp_path):
    from experiments import common

    out = str(tmp_path / "sel")
    reports = caltech.train_and_evaluate(caltech.parse([*TINY, "--out", out, "--select-lambdas", "0.001", "10", "1000"]))
    rec = json.load(open(os.path.join(out, "lambda_selection.json")))
    base = np.load(os.path.join(out, "vanilla", "val_hits.npy"))
    assert rec["split"] == "val" and len(base) == rec["val_size"] == 3 * 2 and rec["base_accuracy"] == base.mean()
    runs = [(c["lam"], None if c.get("diverged") else np.load(os.path.join(out, f"roll_lam{c['lam']:g}", "val_hits.npy"))) for c in rec["candidates"]]
    assert rec == json.loads(json.dumps(common.raise_lambda(base, runs) | {k: rec[k] for k in ("split", "val_size", "values")}))
    assert [c["lam"] for c in rec["candidates"]] == [0.001, 10, 1000][: len(rec["candidates"])]
    assert rec["candidates"][-1]["worse"] or len(rec["candidates"]) == 3  # stopped at the first worse one, or ran all
    if rec["chosen"] is not None:  # the ROLL model is the chosen run, not a retrained copy
        assert reports["roll"]["config"]["lam"] == rec["chosen"] and reports["roll"]["name"] == f"roll_lam{rec['chosen']:g}"
    with pytest.raises(ValueError, match="increasing order"):
        caltech.parse(["--select-lambdas", "1", "0.1"]).resolved()

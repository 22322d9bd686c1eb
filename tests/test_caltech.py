"""The image experiment end to end on a few real Caltech classes at tiny size (paper Sec. 5.3, Table 3, Figures 4-6)."""

import json
import os

import numpy as np
import pytest
from fixtures import CALTECH_CLASSES as CLASSES
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


def test_lambda_then_c_rule_on_validation_picks_the_roll_model(tmp_path):
    from experiments import common

    out = str(tmp_path / "sel")
    flags = [*TINY, "--out", out, "--select-lr", "0.001", "0.05", "--select-lambdas", "10", "1000", "--select-C", "16"]
    reports = caltech.train_and_evaluate(caltech.parse(flags))
    rec = json.load(open(os.path.join(out, "selection.json")))
    # The learning rate first: each vanilla candidate's saved validation hits, the best kept (ties: the smaller).
    acc = {lr: np.load(os.path.join(out, f"vanilla_lr{lr:g}", "val_hits.npy")).mean() for lr in (0.001, 0.05)}
    assert rec["lr"]["candidates"] == [{"lr": lr, "accuracy": acc[lr]} for lr in (0.001, 0.05)]
    assert rec["lr"]["chosen"] == (0.05 if acc[0.05] > acc[0.001] else 0.001)
    lr = rec["lr"]["chosen"]
    assert reports["vanilla"]["config"]["lr"] == reports["roll"]["config"]["lr"] == lr == rec["chosen"]["lr"]
    base = np.load(os.path.join(out, "vanilla", "val_hits.npy"))
    assert rec["split"] == "val" and len(base) == rec["val_size"] == 3 * 2
    lam = rec["lam"]
    assert lam["base_accuracy"] == base.mean() and lam["values"] == [10, 1000]
    runs = [(c["lam"], None if c.get("diverged") else np.load(os.path.join(out, f"roll_lam{c['lam']:g}", "val_hits.npy"))) for c in lam["candidates"]]
    assert lam == json.loads(json.dumps(common.raise_until_worse(base, runs) | {"values": lam["values"]}))
    assert [c["lam"] for c in lam["candidates"]] == [10, 1000][: len(lam["candidates"])]
    assert lam["candidates"][-1]["worse"] or len(lam["candidates"]) == 2  # stopped at the first worse one (1000 diverges), or ran all
    # Six validation images cannot make 10 significantly worse (p < 0.05 needs five lost, none won); 1000 diverges.
    assert lam["chosen"] is not None
    # C is raised at the chosen lambda, tested against the same vanilla; its candidate has its own run directory.
    hits = np.load(os.path.join(out, f"roll_lam{lam['chosen']:g}_C16", "val_hits.npy"))
    assert rec["C"] == json.loads(json.dumps(common.raise_until_worse(base, [(16.0, hits)], name="C") | {"values": [16.0]}))
    C = rec["C"]["chosen"] or 8.0
    assert rec["chosen"] == {"lam": lam["chosen"], "C": C, "lr": lr, "run": f"roll_lam{lam['chosen']:g}" + ("_C16" if C == 16 else "")}
    # The ROLL model is the chosen run, not a retrained copy.
    r = reports["roll"]
    assert (r["config"]["lam"], r["config"]["C"], r["name"]) == (lam["chosen"], C, rec["chosen"]["run"])


def test_selection_flags_are_checked():
    with pytest.raises(ValueError, match="increasing order"):
        caltech.parse(["--select-lambdas", "1", "0.1"]).resolved()
    with pytest.raises(ValueError, match="above --C"):
        caltech.parse(["--select-lambdas", "1", "--select-C", "8", "80"]).resolved()
    with pytest.raises(ValueError, match="--select-lambdas too"):
        caltech.parse(["--select-C", "80"]).resolved()
    with pytest.raises(ValueError, match="--select-lambdas too"):
        caltech.parse(["--select-lr", "0.01"]).resolved()
    with pytest.raises(ValueError, match="--select-lr must be distinct positive"):
        caltech.parse(["--select-lambdas", "1", "--select-lr", "0.05", "0.01"]).resolved()
    with pytest.raises(ValueError, match="has no lambda"):
        caltech.parse(["--preset", "validated"]).resolved()
    cfg = caltech.parse(["--preset", "validated", "--seed", "2", "--lam", "0.01"]).resolved()
    assert (cfg.class_choice, cfg.num_val, cfg.num_test, cfg.eval_images, cfg.data_seed) == ("random", 15, 15, 0, 2)
    assert caltech.parse(["--preset", "validated", "--seed", "2", "--data-seed", "0", "--model", "vanilla"]).resolved().data_seed == 0
    with pytest.raises(ValueError, match="--num-val must be at least 1"):
        caltech.parse(["--num-val", "0"]).resolved()
    with pytest.raises(ValueError, match="--class-choice"):
        caltech.parse(["--class-choice", "best"]).resolved()


def test_random_class_choice_is_seeded_and_leaves_out_small_and_near_duplicate_classes(tmp_path):
    import shutil

    root = tmp_path / "images"
    for cls in CLASSES:
        shutil.copytree(os.path.join(DATA, cls), root / cls)
    shutil.copytree(os.path.join(DATA, "airplanes"), root / "Faces")  # ten images each: Faces_easy is Faces' near-duplicate
    shutil.copytree(os.path.join(DATA, "airplanes"), root / "Faces_easy")
    small = root / "small"
    small.mkdir()
    for f in sorted(os.listdir(root / "wrench"))[:5]:  # five images: fewer than 2 + 4 + 4
        shutil.copy(root / "wrench" / f, small / f)
    flags = [*TINY, "--data-dir", str(root), "--class-choice", "random", "--classes", "4"]
    for seed in range(3):
        data = caltech.ImageData.load(caltech.parse([*flags, "--data-seed", str(seed)]).resolved())
        assert len(data.class_names) == 4 and data.class_names == sorted(data.class_names)  # ids kept in name order
        assert set(data.class_names) == {"Faces", *CLASSES}  # the only eligible ones: no 'small', no 'Faces_easy'
        assert sorted(set(data.labels.tolist())) == [0, 1, 2, 3]
        again = caltech.ImageData.load(caltech.parse([*flags, "--data-seed", str(seed)]).resolved())
        assert np.array_equal(again.paths, data.paths) and np.array_equal(again.test, data.test)  # deterministic per seed
    data = caltech.ImageData.load(caltech.parse([*flags, "--classes", "2", "--data-seed", "0"]).resolved())
    picks = {tuple(caltech.ImageData.load(caltech.parse([*flags, "--classes", "2", "--data-seed", str(s)]).resolved()).class_names) for s in range(8)}
    assert len(picks) > 1 and all(set(p) <= {"Faces", *CLASSES} for p in picks)  # the seed draws among the eligible classes
    for cls, k in zip(data.class_names, range(2)):  # each image keeps its class
        assert all(os.path.basename(os.path.dirname(p)) == cls for p in data.paths[data.labels == k])
    with pytest.raises(ValueError, match="only 4 classes"):
        caltech.ImageData.load(caltech.parse([*flags, "--classes", "5"]).resolved())
    with pytest.raises(ValueError, match="pass --classes too"):
        caltech.parse(["--preset", "paper", "--class-choice", "random"]).resolved()  # the paper preset: every class
    # Lower-case names (as TFDS gives them) are near-duplicates too.
    for a, b in (("Faces", "faces"), ("Faces_easy", "faces_easy")):
        (root / a).rename(root / b)
    data = caltech.ImageData.load(caltech.parse([*flags, "--data-seed", "0"]).resolved())
    assert set(data.class_names) == {"faces", *CLASSES}


def test_model_seed_keeps_the_data_and_eval_images_zero_takes_every_test_image():
    a = caltech.ImageData.load(caltech.parse(TINY).resolved())
    b = caltech.ImageData.load(caltech.parse([*TINY, "--seed", "1", "--data-seed", "0"]).resolved())
    c = caltech.ImageData.load(caltech.parse([*TINY, "--seed", "1"]).resolved())
    assert all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("train", "val", "test")) and a.mean == b.mean
    assert not all(np.array_equal(getattr(a, k), getattr(c, k)) for k in ("train", "val", "test"))  # --data-seed defaults to --seed
    cfg = caltech.parse([*TINY, "--eval-images", "0"]).resolved()
    assert np.array_equal(a.eval_subset(cfg), a.test)
    assert len(a.eval_subset(caltech.parse(TINY).resolved())) == 4


def _fake_run(run_dir, lam, C, per, n_test=40):
    os.makedirs(run_dir)
    pct = lambda v: {f"P{p}": float(np.percentile(v, p)) for p in (25, 50, 75, 100)}
    report = {
        "config": {"lam": lam, "C": C},
        "precision_at_1": float(per["top1"].mean()),
        "precision_at_5": float(per["top5"].mean()),
        "num_prediction_changed": int(per["prediction_changed"].sum()),
        "num_evaluated": len(per["idx"]),
        "expected_distortion": pct(per["expected"]),
        "max_distortion": pct(per["distortion"]),
    }
    json.dump(report, open(os.path.join(run_dir, "report.json"), "w"))
    np.savez(os.path.join(run_dir, "eval.npz"), test_idx=np.arange(n_test), **per)


def test_three_seed_summary_pairs_images_and_checks_the_runs(tmp_path):
    from experiments import caltech_summary

    rng = np.random.default_rng(5)
    folder = tmp_path / "q"
    truth = {}
    for s in (0, 1, 2):
        base = {
            "idx": np.arange(40),
            "top1": rng.random(40) < 0.6,
            "top5": np.ones(40, bool),
            "expected": rng.gamma(2.0, 3.0, 40),
            "distortion": rng.gamma(2.0, 4.0, 40),
            "prediction_changed": rng.random(40) < 0.1,
        }
        factor = 0.5 if s < 2 else rng.uniform(0.3, 1.6, 40)  # seed 2: a noisy ratio, so the interval has width
        roll = base | {"expected": base["expected"] * factor, "distortion": base["distortion"] * factor, "top1": rng.random(40) < 0.6}
        _fake_run(str(folder / f"seed{s}" / "vanilla"), 0.0, 0.0, base)
        _fake_run(str(folder / f"seed{s}" / ("roll_lam0.01_C80" if s == 0 else "roll")), 0.01, 80.0, roll)
        truth[s] = (base, roll)
    json.dump({"chosen": {"lam": 0.01, "C": 80.0, "run": "roll_lam0.01_C80"}}, open(folder / "seed0" / "selection.json", "w"))
    caltech_summary.main([str(folder), "--to", str(tmp_path / "out")])
    summary = json.load(open(tmp_path / "out" / "summary.json"))
    assert summary["seeds"] == [0, 1, 2] and summary["selection"]["chosen"]["C"] == 80.0
    for s, (base, roll) in truth.items():
        pr = summary["paired"][str(s)]
        for key in ("expected", "distortion"):
            for p in (25, 50, 75, 100):
                r = pr[f"{key}_P{p}_ratio"]
                want = np.percentile(roll[key], p) / np.percentile(base[key], p)
                assert r["estimate"] == pytest.approx(want, rel=1e-12) and r["ci95"][0] <= want + 1e-12 and want <= r["ci95"][1] + 1e-12
                if s < 2:  # every image halved: every resample's ratio is exactly 1/2
                    assert r["ci95"] == pytest.approx([0.5, 0.5], rel=1e-12)
        d = pr["precision_at_1_difference"]
        assert d["estimate"] == pytest.approx(roll["top1"].mean() - base["top1"].mean())
    assert summary["percentiles_significantly_lower"]["0"] == 8
    p1 = summary["models"]["roll"]["precision_at_1"]
    assert p1["per_seed"] == [pytest.approx(truth[s][1]["top1"].mean()) for s in (0, 1, 2)] and p1["sd"] == pytest.approx(
        np.std(p1["per_seed"], ddof=1)
    )
    per = np.load(tmp_path / "out" / "per_image.npz")
    assert np.array_equal(per["roll_seed1_distortion"], truth[1][1]["distortion"]) and len(per.files) == 3 * 2 * 7
    md = open(tmp_path / "out" / "summary.md").read()
    assert "ROLL lambda 0.01, C 80" in md and md.count("| seed ") == 3
    # A seed whose ROLL run is not the chosen setting, or an unfinished run, is refused by name.
    _fake_run(str(tmp_path / "bad" / "seed0" / "vanilla"), 0.0, 0.0, truth[0][0])
    _fake_run(str(tmp_path / "bad" / "seed0" / "roll_lam0.01_C80"), 0.01, 80.0, truth[0][1])
    json.dump({"chosen": {"lam": 0.01, "C": 80.0, "run": "roll_lam0.01_C80"}}, open(tmp_path / "bad" / "seed0" / "selection.json", "w"))
    _fake_run(str(tmp_path / "bad" / "seed1" / "vanilla"), 0.0, 0.0, truth[1][0])
    with pytest.raises(FileNotFoundError, match="not finished"):
        caltech_summary.summarize(str(tmp_path / "bad"))
    _fake_run(str(tmp_path / "bad" / "seed1" / "roll"), 0.1, 80.0, truth[1][1])
    with pytest.raises(ValueError, match="not the chosen"):
        caltech_summary.summarize(str(tmp_path / "bad"))
    # Distortions measured on other images than vanilla's of the same seed cannot be paired.
    with pytest.raises(ValueError, match="different test images"):
        caltech_summary.paired(truth[0][0], truth[0][1] | {"idx": np.arange(1, 41)}, np.random.default_rng(0))

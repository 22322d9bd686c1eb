"""The README's result tables are the committed runs': numbers recomputed from the per-run files, and checked independently."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

from experiments import mnist_summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS_DIR = os.path.join(ROOT, "docs", "results", "mnist_seeds")


def _readme_block(name: str) -> str:
    text = open(os.path.join(ROOT, "README.md")).read()
    start, end = f"<!-- {name}:start -->\n", f"<!-- {name}:end -->"
    assert start in text and end in text, f"README lacks the {name} block"
    return text[text.index(start) + len(start) : text.index(end)]


def test_mnist_seeds_summary_is_the_committed_runs_and_the_readme_shows_it():
    committed = json.load(open(os.path.join(SEEDS_DIR, "summary.json")))
    again = mnist_summary.summarize(SEEDS_DIR)
    assert json.dumps(again, sort_keys=True) == json.dumps(committed, sort_keys=True)  # deterministic (bootstrap seed 0)
    assert _readme_block("mnist_seeds").strip() == mnist_summary.markdown(committed).strip()
    # Independent checks of what the tables claim, from the raw per-run files.
    for model in mnist_summary.MODELS:
        accs = [json.load(open(os.path.join(SEEDS_DIR, f"{model}_seed{s}.json")))["accuracy"] for s in (1, 2, 3)]
        assert committed["models"][model]["accuracy"]["mean"] == pytest.approx(np.mean(accs))
        for s in (1, 2, 3):
            with np.load(os.path.join(SEEDS_DIR, f"{model}_seed{s}.eval.npz")) as z:
                assert z["correct"].mean() == pytest.approx(accs[s - 1])  # the per-example file is the report's run
                if model != "vanilla":
                    with np.load(os.path.join(SEEDS_DIR, f"vanilla_seed{s}.eval.npz")) as v:
                        ratio = np.median(z["margin_l2"]) / np.median(v["margin_l2"])
                    paired = committed["models"][model]["paired"][str(s)]["median_l2_ratio"]
                    assert paired["estimate"] == pytest.approx(ratio)
                    assert paired["ci95"][0] < ratio < paired["ci95"][1]


def test_mnist_certified_tables_are_the_per_example_radii():
    """Certified and attack-bound accuracy recomputed from each run's per-example radii (pixel units)."""
    committed = json.load(open(os.path.join(SEEDS_DIR, "summary.json")))
    for model in mnist_summary.MODELS:
        for norm in ("l2", "linf"):
            table = committed["models"][model]["certified"][norm]
            per_seed = []
            for s in (1, 2, 3):
                with np.load(os.path.join(SEEDS_DIR, f"{model}_seed{s}.certify.npz")) as z:
                    lower, upper, correct = z[f"{norm}_lower"], z[f"{norm}_upper"], z[f"{norm}_correct"]
                with np.load(os.path.join(SEEDS_DIR, f"{model}_seed{s}.eval.npz")) as e:
                    assert np.array_equal(correct, e["correct"])  # the certified run is the evaluated model
                assert np.all(lower <= upper) and np.all(lower >= 0)
                assert np.array_equal(upper > 0, correct)  # radius 0 exactly for the misclassified
                per_seed.append([[np.mean(lower > eps), np.mean(upper > eps)] for eps in table["eps"]])
            mean = np.mean(per_seed, axis=0)
            np.testing.assert_allclose(table["certified_mean"], mean[:, 0], rtol=1e-12)
            np.testing.assert_allclose(table["attack_bound_mean"], mean[:, 1], rtol=1e-12)


def test_certify_compare_table_is_the_committed_benchmark():
    """The README's CROWN/IBP/PGD comparison is ``benchmarks/results_certify.json``; the region bounds bracket the peers."""
    from benchmarks import certify_compare

    results = json.load(open(os.path.join(ROOT, "benchmarks", "results_certify.json")))
    assert _readme_block("certify_compare").strip() == certify_compare.markdown(results).strip()
    for res in results["results"].values():
        for r in res.values():
            assert r["unsound_examples"] == 0
            # Every sound certificate is at most every attack's bound, radius by radius.
            for sound in ("ours_certified", "crown_certified", "ibp_certified"):
                for upper in ("ours_attack_bound", "pgd_bound"):
                    assert np.all(np.asarray(r[sound]) <= np.asarray(r[upper]))


def test_toy2d_table_is_the_committed_run_and_follows_the_selection_rule():
    """Figure 1's table is ``docs/results/toy2d/toy2d.json``; each lambda is the one the rule picks from the sweep."""
    from experiments import toy2d

    summary = json.load(open(os.path.join(ROOT, "docs", "results", "toy2d", "toy2d.json")))
    assert _readme_block("toy2d").strip() == toy2d.markdown(summary).strip()
    candidates = summary["selection"]["candidates"]
    assert candidates == sorted(candidates)
    for name, tried in summary["selection"]["sweep"].items():
        lams = [t["lambda"] for t in tried]
        accs = [t["train_accuracy"] for t in tried]
        assert lams == candidates[: len(lams)]  # tried in increasing order, none skipped
        failures = [i for i, a in enumerate(accs) if a < 1.0]
        # The sweep stops at the first lambda that misclassifies a training point.
        assert failures == [] and len(lams) == len(candidates) or failures == [len(lams) - 1]
        perfect = [lam for lam, a in zip(lams, accs) if a == 1.0]
        chosen = summary["models"][name]
        assert chosen["lambda"] == (perfect[-1] if perfect else candidates[0])
        assert chosen["train_accuracy"] == accs[lams.index(chosen["lambda"])]


def test_regioncam_table_is_the_committed_benchmark():
    """The README's Regioncam table is ``benchmarks/results_regioncam.json``, whose counts agree."""
    from benchmarks import regioncam_compare

    results = json.load(open(os.path.join(ROOT, "benchmarks", "results_regioncam.json")))
    assert _readme_block("regioncam").strip() == regioncam_compare.markdown(results).strip()
    for r in results["results"]:
        # Equal, or off by rounding slivers only: < 0.01% of the regions, and keeping the slivers gets closer.
        assert r["count_rel_diff"] < 1e-4
        if r["regions_lld_jax"] != r["regions_regioncam"]:
            assert abs(r["regions_lld_jax_min_area_0"] - r["regions_regioncam"]) < abs(r["regions_lld_jax"] - r["regions_regioncam"])


def test_vowels_queue_table_is_its_reports():
    """Every row of docs/results/vowels_queue/README.md is its committed report and metrics (accuracy, epochs, medians, Spearman)."""
    from experiments import vowels_curves

    folder = os.path.join(ROOT, "docs", "results", "vowels_queue")
    readme = open(os.path.join(folder, "README.md")).read()
    rows = [line.split("|")[1:-1] for line in readme.splitlines() if line.startswith("| ") and "(1e-6)" not in line]
    assert len(rows) == len(glob.glob(os.path.join(folder, "*.metrics.jsonl"))) >= 8
    for cells in rows:
        name, seed, _, _, acc, best, last, l2, l1, rho, _ = (c.strip() for c in cells)
        r = json.load(open(os.path.join(folder, name.split()[0] + ".json")))
        hist = [json.loads(line) for line in open(os.path.join(folder, name.split()[0] + ".metrics.jsonl"))]
        assert r["config"]["seed"] == int(seed)
        assert acc == f"{100 * r['accuracy']:.2f}%" and int(best) == r["best_epoch"]
        assert last == f"{100 * hist[-1]['val_accuracy']:.2f}% (ep. {len(hist)})" and len(hist) == r["config"]["epochs"]
        assert l2 == f"{1e6 * r['margin_l2']['P50']:.1f}" and l1 == f"{1e6 * r['margin_l1']['P50']:.1f}" and rho == f"{r['spearman_l1_l2']:.3f}"
        ex = np.load(os.path.join(folder, name.split()[0] + ".eval.npz"))
        assert np.mean(ex["correct"]) == r["accuracy"]
        assert np.median(ex["margin_l2"]) == pytest.approx(r["margin_l2"]["P50"], rel=1e-6)
    assert vowels_curves.run_table(folder) in readme  # the block is the generator's output


def test_vowels_curves_mark_each_reports_best_epoch(tmp_path):
    """The curve figure's dots are the epochs the reports kept (lowest total loss on the selection split)."""
    from experiments import vowels_curves

    folder = os.path.join(ROOT, "docs", "results", "vowels_queue")
    best = vowels_curves.plot(vowels_curves.read_curves(folder), str(tmp_path / "curves"))
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    for name, epoch in best.items():
        assert json.load(open(os.path.join(folder, name + ".json")))["best_epoch"] == epoch
    with pytest.raises(FileNotFoundError, match="no \\*.metrics.jsonl"):
        vowels_curves.read_curves(str(tmp_path))


def test_vowels_table2_selection_and_figure3_are_the_committed_runs():
    """README's Table 2 = table2.md = the paper's rule re-applied to the committed reports; Figure 3's widths = the eval.npz files."""
    from experiments import common, vowels

    folder = os.path.join(ROOT, "docs", "results", "vowels_queue")
    load = lambda name: json.load(open(os.path.join(folder, name + ".json")))
    reports = {os.path.basename(p)[:-5]: json.load(open(p)) for p in glob.glob(os.path.join(folder, "lam*.json"))}
    vanilla = load("vanilla")
    selection = load("selection")
    assert selection == json.loads(json.dumps(common.selection_record(reports, vanilla)))
    rows = [("Vanilla", vanilla)] + [(f"ROLL {k} ({slot})", reports[k]) for slot, k in selection["picks"].items() if k]
    table = open(os.path.join(folder, "table2.md")).read().strip()
    assert table == vowels.table2_markdown(rows)
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert readme.split("<!-- table2:start -->\n")[1].split("\n<!-- table2:end -->")[0] == table
    fig = load("figure3")
    roll = selection["picks"]["same_accuracy"]
    assert fig["run"] == roll
    for model, name in zip(fig["models"], ("vanilla", roll)):
        ex = np.load(os.path.join(folder, name + ".eval.npz"))
        for q, i in fig["sequences"].items():
            n = fig["intervals"][f"{model}/{q}"]["frames"]
            width = ex["stability_lower"][i, :n] + ex["stability_upper"][i, :n]
            assert np.isfinite(width).all() and np.isinf(ex["stability_upper"][i, n:]).all()
            assert fig["intervals"][f"{model}/{q}"]["width_median"] == pytest.approx(float(np.median(width)), rel=1e-6)
    r = np.load(os.path.join(folder, roll + ".eval.npz"))["margin_l2"]
    for q, i in fig["sequences"].items():  # the sequences nearest the ROLL model's percentiles
        assert abs(r[i] - np.percentile(r, int(q[1:]))) == np.min(np.abs(r - np.percentile(r, int(q[1:]))))


def test_image_pipeline_figures_in_the_readme_are_the_committed_benchmark():
    """The README's Grain-versus-thread-pool figures are ``benchmarks/results_image_pipeline.json``'s (paired ratios, CPU per image)."""
    results = json.load(open(os.path.join(ROOT, "benchmarks", "results_image_pipeline.json")))
    rows = results["results"]
    assert {(r["size"], r["dtype"][:5]) for r in rows} == {(64, "uint8"), (64, "float"), (299, "uint8"), (299, "float")}
    assert all(r["images"] == 512 for r in rows) and results["workers"] == 2
    ratios = [r["grain_over_thread_pool_paired"] for r in rows]
    cpu = max(abs(r["grain"]["median_cpu_ms_per_image"] / r["thread_pool"]["median_cpu_ms_per_image"] - 1) for r in rows)
    readme = " ".join(open(os.path.join(ROOT, "README.md")).read().split())
    assert f"{min(ratios):.2f}-{max(ratios):.2f}x the thread pool's images/s" in readme
    assert f"same CPU time per image within {int(np.ceil(100 * cpu))}%" in readme

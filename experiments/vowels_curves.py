"""Training curves of the Japanese Vowels queue: are the runs still improving at their last epoch?

Reads every ``NAME.metrics.jsonl`` of a folder (``docs/results/vowels_queue``:
one line per epoch, ``val_*`` on the selection split, which is the test set in
the paper's protocol) and draws per-epoch accuracy and task loss of each run,
marking its best epoch (lowest ``val_loss``, the checkpoint kept).

    python -m experiments.vowels_curves docs/results/vowels_queue

also rewrites the run table between ``<!-- table:start -->`` and
``<!-- table:end -->`` in the folder's README.md (every ``NAME.json``: accuracy
at the kept epoch and at the last, margins, Spearman, time).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from collections.abc import Sequence

import numpy as np

from experiments import _figures


def read_curves(folder: str) -> dict[str, list[dict]]:
    """``{run name: [per-epoch metrics]}`` of every ``*.metrics.jsonl`` in ``folder`` (sorted by name)."""
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.metrics.jsonl"))):
        with open(path) as fh:
            out[os.path.basename(path)[: -len(".metrics.jsonl")]] = [json.loads(line) for line in fh if line.strip()]
    if not out:
        raise FileNotFoundError(f"no *.metrics.jsonl in {folder}: give the folder of the queue's committed runs.")
    return out


def plot(curves: dict[str, list[dict]], stem: str) -> dict[str, int]:
    """Writes ``stem.png`` / ``.pdf``; returns each run's best epoch (lowest selection-split loss)."""
    fig, (ax_acc, ax_loss) = _figures.pyplot().subplots(1, 2, figsize=(11, 4))
    best = {}
    for name, hist in curves.items():
        epochs = np.array([h["epoch"] for h in hist])
        acc = 100 * np.array([h["val_accuracy"] for h in hist])
        task = np.array([h["val_task_loss"] for h in hist])
        b = int(np.argmin([h["val_loss"] for h in hist]))
        best[name] = int(epochs[b])
        (line,) = ax_acc.plot(epochs, acc, lw=1, label=name)
        ax_acc.plot(epochs[b], acc[b], "o", color=line.get_color(), ms=4)
        ax_loss.plot(epochs, task, lw=1, color=line.get_color())
        ax_loss.plot(epochs[b], task[b], "o", color=line.get_color(), ms=4)
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", ylim=(85, 100), title="accuracy on the selection split (test)")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="task loss on the selection split (dot: best epoch)")
    ax_acc.legend(fontsize=7)
    _figures.save(fig, stem, small_png=True)
    return best


TABLE_START, TABLE_END = "<!-- table:start -->", "<!-- table:end -->"


def _power(v: float) -> str:
    k = np.log2(v) if v > 0 else np.nan
    return f"2^{int(k)}" if np.isfinite(k) and float(k).is_integer() else f"{v:g}"


def run_table(folder: str) -> str:
    """Markdown table of every run report ``NAME.json`` in ``folder`` with its ``NAME.metrics.jsonl``.

    Columns: test accuracy at the kept epoch (lowest total test loss, the paper's
    protocol) and at the last epoch (how much the kept epoch's choice on test
    adds), medians of the l1 / l2 margins (1e-6 raw units) and their Spearman
    correlation, wall time of training.
    """
    from experiments.configs.vowels import PAPER_POINTS

    curves = read_curves(folder)
    head = "| run | seed | lambda | C | test acc (kept epoch) | kept epoch | test acc (last epoch) | median l2 (1e-6) | median l1 (1e-6) | Spearman | train time (s) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    names = sorted(curves, key=lambda n: (n.split("_seed")[0] != "vanilla", "_seed" in n, n))
    for name in names:
        with open(os.path.join(folder, name + ".json")) as fh:
            r = json.load(fh)
        lam, C = r["config"]["lam"], r["config"]["C"]
        kind = "" if lam == 0 else " (paper point)" if (lam, C) in PAPER_POINTS else " (neighbour)"
        last = curves[name][-1]
        lines.append(
            f"| {name}{kind} | {r['config']['seed']} | {_power(lam) if lam else 0} | {_power(C) if lam else '-'} | "
            f"{100 * r['accuracy']:.2f}% | {r['best_epoch']} | {100 * last['val_accuracy']:.2f}% (ep. {last['epoch']}) | "
            f"{1e6 * r['margin_l2']['P50']:.1f} | {1e6 * r['margin_l1']['P50']:.1f} | {r['spearman_l1_l2']:.3f} | {r['train_time_s']:.0f} |"
        )
    return "\n".join(lines)


def write_table(folder: str) -> str:
    """Replaces the table block of ``folder``/README.md with :func:`run_table`; returns the table."""
    path = os.path.join(folder, "README.md")
    with open(path) as fh:
        text = fh.read()
    if TABLE_START not in text or TABLE_END not in text:
        raise ValueError(f"{path} has no {TABLE_START} ... {TABLE_END} block to write the table into.")
    table = run_table(folder)
    head, rest = text.split(TABLE_START, 1)
    with open(path, "w") as fh:
        fh.write(head + TABLE_START + "\n" + table + "\n" + TABLE_END + rest.split(TABLE_END, 1)[1])
    return table


def main(argv: Sequence[str] | None = None) -> dict[str, int]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="folder of NAME.metrics.jsonl files (docs/results/vowels_queue)")
    ap.add_argument("--out", default=None, help="figure stem (default: FOLDER/curves)")
    args = ap.parse_args(argv)
    best = plot(read_curves(args.folder), args.out or os.path.join(args.folder, "curves"))
    print(json.dumps(best))
    print(write_table(args.folder))
    return best


if __name__ == "__main__":
    main()

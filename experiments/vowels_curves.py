"""Training curves of the Japanese Vowels queue: are the runs still improving at their last epoch?

Reads every ``NAME.metrics.jsonl`` of a folder (``docs/results/vowels_queue``:
one line per epoch, ``val_*`` on the selection split, which is the test set in
the paper's protocol) and draws per-epoch accuracy and task loss of each run,
marking its best epoch (lowest ``val_loss``, the checkpoint kept).

    python -m experiments.vowels_curves docs/results/vowels_queue
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


def main(argv: Sequence[str] | None = None) -> dict[str, int]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="folder of NAME.metrics.jsonl files (docs/results/vowels_queue)")
    ap.add_argument("--out", default=None, help="figure stem (default: FOLDER/curves)")
    args = ap.parse_args(argv)
    best = plot(read_curves(args.folder), args.out or os.path.join(args.folder, "curves"))
    print(json.dumps(best))
    return best


if __name__ == "__main__":
    main()

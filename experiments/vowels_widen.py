"""Step 6 of the Japanese Vowels queue: widen the grid where a pick sits on its edge.

The rule, written before any of its runs (issue 26: "the neighbourhood of the
paper's two selected points, then widen"): a pick of the paper's selection
(``selection.json``, :func:`experiments.common.select`) whose C is the smallest
or largest C run at its lambda, or whose lambda is the smallest or largest
lambda run at its C, may have a better point beyond that edge. For each such
edge, the three points one factor of 2 beyond it are run: the pick's own line
first, then its two neighbours (lambda x 1/2, x 2 beyond a C edge; C x 1/2, x 2
beyond a lambda edge), inside the paper's grid (lambda 2^-6..2^3,
C 2^-5..2^7) and skipping points already run. The queue re-collects after each
round and stops when nothing is left to run (no pick on an edge, or only on an
edge of the paper's grid itself) or after its last round.

    python -m experiments.vowels_widen runs/vowels_queue/selection.json   # prints "lam,C" per point to run
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from experiments.configs.vowels import Config

BOUNDS = {"lam": (min(Config.grid_lam), max(Config.grid_lam)), "C": (min(Config.grid_C), max(Config.grid_C))}


def _inside(lam: float, C: float) -> bool:
    return BOUNDS["lam"][0] <= lam <= BOUNDS["lam"][1] and BOUNDS["C"][0] <= C <= BOUNDS["C"][1]


def widen(record: dict) -> list[tuple[float, float]]:
    """The next points by the rule above, from a selection record (``candidates``, ``picks``); [] when none."""
    ran = {(c["lam"], c["C"]) for c in record["candidates"].values()}
    out: list[tuple[float, float]] = []
    for key in record["picks"].values():
        if key is None:
            continue
        lam, C = record["candidates"][key]["lam"], record["candidates"][key]["C"]
        along_C = sorted(c for l, c in ran if l == lam)
        along_lam = sorted(l for l, c in ran if c == C)
        edges = []
        if C == along_C[0]:
            edges.append(("C", C / 2))
        if C == along_C[-1]:
            edges.append(("C", C * 2))
        if lam == along_lam[0]:
            edges.append(("lam", lam / 2))
        if lam == along_lam[-1]:
            edges.append(("lam", lam * 2))
        for axis, beyond in edges:
            for f in (1.0, 0.5, 2.0):  # the pick's own line first
                point = (lam * f, beyond) if axis == "C" else (beyond, C * f)
                if _inside(*point) and point not in ran and point not in out:
                    out.append(point)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("selection", help="selection.json of the collected grid")
    args = parser.parse_args(argv)
    with open(args.selection) as fh:
        for lam, C in widen(json.load(fh)):
            print(f"{lam:g},{C:g}")


if __name__ == "__main__":
    main()

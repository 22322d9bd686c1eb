"""Worker for test_training's crash test: trains a small problem into RUN_DIR, writes OUT.npz at the end.

Usage: python tests/killable_fit.py RUN_DIR OUT.npz. With KILL_AT=target:n:when
(target: append_metrics, keep_metrics, save or save_position (a mid-epoch
checkpoint); when: before, mid (save and save_position only: the write has
started) or after) the process SIGKILLs itself at the n-th call of that target,
to test that a crash at that instruction loses nothing committed.
"""

import json
import os
import signal
import sys

import jax
import numpy as np
from test_training import crash_config, small_problem  # noqa: E402

from lld_jax.training import Checkpoints, RunDir, fit  # noqa: E402


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install_kill(spec: str) -> None:
    target, n, when = spec.split(":")
    cls = Checkpoints if target.startswith("save") else RunDir
    original = getattr(cls, target)
    calls = [0]

    def wrapped(self, *args, **kw):
        calls[0] += 1
        if calls[0] == int(n):
            if when == "before":
                die()
            if when == "mid" and target == "save_position":  # the mid-epoch checkpoint write has begun
                step, tree, position = args
                args_ = self._ocp.args
                self.mid.save(
                    step, args=args_.Composite(tree=args_.StandardSave({"leaves": jax.tree.leaves(tree)}), position=args_.JsonSave(position))
                )
                die()
            if when == "mid":  # the checkpoint write has begun (asynchronously) when the process dies
                mgr, step, tree = args
                if step in mgr.all_steps():
                    mgr.delete(step)
                mgr.save(step, args=self._ocp.args.StandardSave({"leaves": jax.tree.leaves(tree)}))
                die()
        out = original(self, *args, **kw)
        if calls[0] == int(n) and when == "after":
            die()
        return out

    setattr(cls, target, wrapped)


if __name__ == "__main__":
    run_dir, out = sys.argv[1], sys.argv[2]
    if os.environ.get("KILL_AT"):
        install_kill(os.environ["KILL_AT"])
    net, params, x, y = small_problem(60)
    best, hist = fit(net, params, crash_config(), (x, y), (x[:20], y[:20]), run_dir, progress=False)
    np.savez(out, *[np.asarray(a) for a in jax.tree.leaves(jax.device_get(best))])
    with open(out + ".json", "w") as fh:
        json.dump(hist, fh)

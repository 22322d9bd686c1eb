"""Orbax checkpoints of a run: ``latest`` (full state at an epoch's end, for resuming), ``best`` (parameters)
and ``mid`` (full state plus the data position within an epoch, with ``TrainConfig.checkpoint_every_steps``)."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from lld_jax._src.network import PyTree


class Checkpoints:
    """Three Orbax managers (latest, best, mid) over flat leaf lists (robust to any pytree keys).

    Use as a context manager; saves are waited for (the next train step
    donates the saved buffers, and a process may be killed at any time).
    """

    def __init__(self, run_dir: str):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        root = os.path.abspath(os.path.join(run_dir, "checkpoints"))
        self.latest = ocp.CheckpointManager(os.path.join(root, "latest"), options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))
        # Two best checkpoints: a new best is saved before the epoch's latest, so a crash between
        # the two leaves the previous best in place when the new one is dropped on resume.
        self.best = ocp.CheckpointManager(os.path.join(root, "best"), options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
        # Mid-epoch checkpoints, numbered by optimiser step: the state and, as JSON, where the epoch stopped
        # (step, running metric sums, the data iterator's state). Only the newest one matters.
        self.mid = ocp.CheckpointManager(os.path.join(root, "mid"), options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))

    @staticmethod
    def latest_step(run_dir: str) -> int:
        """The newest finished ``latest`` checkpoint of ``run_dir`` (0 if none), read without creating anything."""
        path = os.path.join(run_dir, "checkpoints", "latest")
        steps = [int(d) for d in os.listdir(path) if d.isdigit()] if os.path.isdir(path) else []
        return max(steps, default=0)

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def save(self, mgr: Any, step: int, tree: PyTree) -> None:
        """Saves ``tree`` as ``step`` of ``mgr`` (``self.latest`` or ``self.best``) and waits for it."""
        if step in mgr.all_steps():
            mgr.delete(step)  # a replayed epoch rewrites its checkpoint
        mgr.save(step, args=self._ocp.args.StandardSave({"leaves": jax.tree.leaves(tree)}))
        mgr.wait_until_finished()

    def restore(self, mgr: Any, like: PyTree) -> tuple[int, PyTree] | None:
        """``(step, tree)`` of the newest checkpoint of ``mgr`` with the structure of ``like``, or None."""
        step = mgr.latest_step()
        if step is None:
            return None
        leaves, treedef = jax.tree.flatten(like)
        abstract = {"leaves": [jax.ShapeDtypeStruct(np.shape(a), a.dtype) for a in leaves]}
        got = mgr.restore(step, args=self._ocp.args.StandardRestore(abstract))
        return step, jax.tree.unflatten(treedef, got["leaves"])

    def save_position(self, step: int, tree: PyTree, position: dict[str, Any]) -> None:
        """Saves ``tree`` with ``position`` (JSON) as mid-epoch checkpoint ``step`` (the optimiser step) and waits for it."""
        if step in self.mid.all_steps():
            self.mid.delete(step)
        args = self._ocp.args
        self.mid.save(step, args=args.Composite(tree=args.StandardSave({"leaves": jax.tree.leaves(tree)}), position=args.JsonSave(position)))
        self.mid.wait_until_finished()

    def restore_position(self, like: PyTree) -> tuple[PyTree, dict[str, Any]] | None:
        """``(tree, position)`` of the newest mid-epoch checkpoint, ``tree`` with the structure of ``like``; None if there is none."""
        step = self.mid.latest_step()
        if step is None:
            return None
        leaves, treedef = jax.tree.flatten(like)
        abstract = {"leaves": [jax.ShapeDtypeStruct(np.shape(a), a.dtype) for a in leaves]}
        args = self._ocp.args
        got = self.mid.restore(step, args=args.Composite(tree=args.StandardRestore(abstract), position=args.JsonRestore()))
        return jax.tree.unflatten(treedef, got["tree"]["leaves"]), dict(got["position"])

    def drop_after(self, mgr: Any, step: int) -> None:
        """Deletes checkpoints of ``mgr`` newer than ``step`` (written by epochs that will be replayed)."""
        for s in mgr.all_steps():
            if s > step:
                mgr.delete(s)

    def close(self) -> None:
        self.latest.close()
        self.best.close()
        self.mid.close()


def load_best(run_dir: str, like: PyTree) -> PyTree:
    """Parameters of the best-validation checkpoint in ``run_dir``; ``like`` gives their structure.

    Raises:
      FileNotFoundError: the run has no best checkpoint yet.
    """
    with Checkpoints(run_dir) as ckpt:
        got = ckpt.restore(ckpt.best, like)
    if got is None:
        raise FileNotFoundError(f"no best checkpoint in {run_dir}/checkpoints/best; train that run first.")
    return got[1]

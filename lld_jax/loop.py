"""The resumable training loop: run directory, Orbax checkpoints, JSON-lines metrics.

Run directory layout::

    run_dir/config.json        the TrainConfig used
    run_dir/metrics.jsonl      one JSON object per epoch (train and validation)
    run_dir/checkpoints/latest full state after the last finished epoch (resume)
    run_dir/checkpoints/best   parameters with the best validation loss

Resuming from ``latest`` replays the remaining epochs exactly: shuffles and
sampled-axis keys are functions of (seed, epoch, step), not of history.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np

from lld_jax.network import Network, PyTree
from lld_jax.training import Trainer, TrainConfig, _round_up, epoch_order, write_json


class _Checkpoints:
    """Two Orbax managers (latest, best) over flat leaf lists (robust to any pytree keys)."""

    def __init__(self, run_dir: str):
        import orbax.checkpoint as ocp

        self.ocp = ocp
        opts = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
        root = os.path.abspath(os.path.join(run_dir, "checkpoints"))
        self.latest = ocp.CheckpointManager(os.path.join(root, "latest"), options=opts)
        self.best = ocp.CheckpointManager(os.path.join(root, "best"), options=opts)

    def save(self, mgr, step: int, tree: PyTree) -> None:
        mgr.save(step, args=self.ocp.args.StandardSave({"leaves": jax.tree.leaves(tree)}))
        mgr.wait_until_finished()  # the next step donates these buffers

    def restore(self, mgr, like: PyTree) -> tuple[int, PyTree] | None:
        step = mgr.latest_step()
        if step is None:
            return None
        leaves, treedef = jax.tree.flatten(like)
        abstract = {"leaves": [jax.ShapeDtypeStruct(np.shape(l), l.dtype) for l in leaves]}
        got = mgr.restore(step, args=self.ocp.args.StandardRestore(abstract))
        return step, jax.tree.unflatten(treedef, got["leaves"])

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def fit(
    net: Network,
    params: PyTree,
    cfg: TrainConfig,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    run_dir: str,
    *,
    progress: bool = True,
    stop_after_epochs: int | None = None,
) -> tuple[PyTree, list[dict[str, Any]]]:
    """Trains ``params`` and returns (best-validation-loss params, per-epoch metrics).

    Resumes from ``run_dir`` if it holds a checkpoint of the same config; only
    ``epochs`` may differ (the learning rate has no schedule), which extends a
    finished run.
    ``stop_after_epochs`` ends early (simulates an interruption; used by tests).
    A non-finite loss stops training with ``FloatingPointError``; the last good
    checkpoint stays on disk.
    """
    cfg.validate()
    main = jax.process_index() == 0
    os.makedirs(run_dir, exist_ok=True)
    config_path = os.path.join(run_dir, "config.json")
    new = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    old = None
    if os.path.exists(config_path):
        with open(config_path) as fh:
            old = json.load(fh)
        # The learning rate is constant (no schedule over epochs), so only ``epochs`` may change.
        if {**old, "epochs": None} != {**new, "epochs": None}:
            raise ValueError(f"{run_dir} holds a run with a different config; use a fresh --out directory.\nold: {old}\nnew: {new}")
    if main and old != new:
        write_json(config_path, dataclasses.asdict(cfg))

    trainer = Trainer(net, cfg)
    state = trainer.init_state(params)
    ckpt = _Checkpoints(run_dir)
    history: list[dict[str, Any]] = []
    start, best_val = 0, np.inf
    restored = ckpt.restore(ckpt.latest, {"state": state, "best_val": np.zeros((), np.float64)})
    if restored is not None:
        start, tree = restored
        state = jax.device_put(tree["state"], trainer.replicated)
        best_val = float(tree["best_val"])
        history = _read_metrics(run_dir)[:start]
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    if main:
        with open(metrics_path, "w") as fh:  # rewrite: drop lines of epochs that will be replayed
            fh.writelines(json.dumps(h) + "\n" for h in history)

    x_tr, y_tr = train
    nproc, pid = jax.process_count(), jax.process_index()
    per_proc = _round_up(cfg.batch_size, jax.device_count()) // nproc
    steps = -(-len(x_tr) // cfg.batch_size)
    last_epoch = cfg.epochs if stop_after_epochs is None else min(cfg.epochs, start + stop_after_epochs)
    try:
        for epoch in range(start, last_epoch):
            order = epoch_order(len(x_tr), cfg.seed, epoch)
            it = range(steps)
            if progress and main:
                from tqdm.auto import tqdm

                it = tqdm(it, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", leave=False)
            sums, seen = {}, 0
            for s in it:
                idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
                local = idx[pid * per_proc : (pid + 1) * per_proc] if nproc > 1 else idx
                state, m = trainer.train_step(state, *trainer.padded_batch(x_tr[local], y_tr[local], per_proc))
                m = jax.device_get(m)
                if not np.isfinite(m["loss"]):
                    raise FloatingPointError(
                        f"loss became {m['loss']} at epoch {epoch + 1}, step {s + 1}; training stopped. The last good "
                        f"checkpoint (epoch {start if not history else history[-1]['epoch']}) is kept in {run_dir}/checkpoints. "
                        "Lower the learning rate, lambda or C."
                    )
                for k, v in m.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * len(idx)
                seen += len(idx)
                if progress and main and s % 20 == 0:
                    it.set_postfix(loss=f"{m['loss']:.4f}", acc=f"{m['accuracy']:.3f}")
            val_m = trainer.evaluate(state["params"], *val)
            record = {"epoch": epoch + 1, **{f"train_{k}": v / seen for k, v in sums.items()}, **{f"val_{k}": v for k, v in val_m.items()}}
            history.append(record)
            if val_m["loss"] < best_val:
                best_val = val_m["loss"]
                ckpt.save(ckpt.best, epoch + 1, state["params"])
            ckpt.save(ckpt.latest, epoch + 1, {"state": state, "best_val": np.asarray(best_val, np.float64)})
            if main:
                with open(metrics_path, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                if progress:
                    print(f"epoch {epoch + 1}: " + ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"), flush=True)
        best = ckpt.restore(ckpt.best, state["params"])
        best_params = jax.device_put(best[1], trainer.replicated) if best is not None else state["params"]
    finally:
        ckpt.close()
    return best_params, history


def _read_metrics(run_dir: str) -> list[dict[str, Any]]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_best(run_dir: str, like: PyTree) -> PyTree:
    """Parameters of the best-validation checkpoint in ``run_dir``; ``like`` gives their structure."""
    ckpt = _Checkpoints(run_dir)
    try:
        got = ckpt.restore(ckpt.best, like)
    finally:
        ckpt.close()
    if got is None:
        raise FileNotFoundError(f"no best checkpoint in {run_dir}/checkpoints/best; train first (python -m experiments.mnist --out {run_dir}).")
    return got[1]

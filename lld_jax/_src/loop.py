"""The resumable training loop: one epoch at a time, checkpoints and metrics in a run directory.

Resuming from the ``latest`` checkpoint replays the remaining epochs exactly:
shuffles and sampled-axis keys are functions of (seed, epoch, step), not of
history. See :mod:`rundir` for the directory layout and crash safety.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lld_jax._src.checkpoints import Checkpoints
from lld_jax._src.checks import eager_value_checks, working_dtype
from lld_jax._src.declarations import declared_names
from lld_jax._src.gradients import check_method
from lld_jax._src.host import epoch_order, round_up
from lld_jax._src.network import Network, PyTree
from lld_jax._src.rundir import RunDir
from lld_jax._src.training import BatchSource, TrainConfig, Trainer, TrainState, is_source

Split = tuple[np.ndarray, np.ndarray] | BatchSource


def fingerprint(*arrays: np.ndarray) -> str:
    """SHA-1 of arrays' shapes, dtypes and bytes: a resumed run must see the same data and start."""
    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _split_sha1(split: Split) -> str:
    return split.fingerprint() if is_source(split) else fingerprint(*split)


def describe_run(params: PyTree, train: Split, val: Split) -> dict[str, Any]:
    """What ``fit`` records of any run: parameter shapes and dtypes, and fingerprints of the
    initial parameters and of both splits (so a different architecture, initialisation or data
    is refused with a clear message instead of an Orbax shape error or a silent resume)."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return {
        "params": {jax.tree_util.keystr(k): f"{np.dtype(v.dtype).name}{list(np.shape(v))}" for k, v in leaves},
        "init_sha1": fingerprint(*(np.asarray(v) for _, v in leaves)),
        "train_sha1": _split_sha1(train),
        "val_sha1": _split_sha1(val),
    }


def check_processes_agree(record: dict[str, Any], *, refused: bool = False) -> None:
    """Refuses a multi-process run whose processes passed ``fit`` different data, parameters or settings.

    Each process takes its slice of every global batch from the whole split
    (or its source's shard), so a process with other data (another shuffle,
    another subset) would train on a mix without any error. Every process
    compares the SHA-1 of each part of its ``record`` (see
    :func:`describe_run`) with every other's, and whether any process
    ``refused`` its arguments (its own checks failed; it raises its own error
    next), so all stop together: none is left waiting in a collective.
    """
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    parts = {
        "training config": record["train"],
        "experiment": record["experiment"],
        "parameter shapes": record["run"]["params"],
        **{
            name: record["run"][key]
            for name, key in (("initial parameters", "init_sha1"), ("training data", "train_sha1"), ("validation data", "val_sha1"))
        },
    }
    digests = [np.frombuffer(hashlib.sha1(json.dumps(v, sort_keys=True, default=str).encode()).digest(), np.uint8) for v in parts.values()]
    mine = np.stack([*digests, np.full(20, refused, np.uint8)])
    seen = np.asarray(multihost_utils.process_allgather(mine))  # (processes, parts + 1, 20)
    failed = [p for p in range(len(seen)) if seen[p, -1, 0]]
    if failed and not refused:
        raise ValueError(f"process(es) {failed} of this run refused their arguments to fit (their own error says why); every process stops.")
    if refused:
        return  # the caller raises this process's own error
    differ = {name: [p for p in range(len(seen)) if not np.array_equal(seen[p, i], seen[0, i])] for i, name in enumerate(parts)}
    differ = {name: procs for name, procs in differ.items() if procs}
    if differ:
        raise ValueError(
            "the processes of this run passed fit different arguments: "
            + "; ".join(f"{name} differs from process 0's on process(es) {procs}" for name, procs in differ.items())
            + ". Every process must pass the same parameters and config, and the same splits: whole host arrays (fit takes each "
            "process's slice itself) or a BatchSource over the same data for the process's own shard."
        )


def check_data(net: Network, params: PyTree, cfg: TrainConfig, name: str, x: np.ndarray, y: np.ndarray) -> None:
    """Refuses a split the network cannot train on, before anything is written or computed."""
    x, y = np.asarray(x), np.asarray(y)
    if y.ndim != 1:
        raise ValueError(
            f"the {name} labels must be a 1-D array of class indices, shape ({len(x)},); got shape {y.shape} "
            "(one-hot labels: y.argmax(-1); a column of labels: y.ravel())."
        )
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"the {name} split must hold as many labels as examples, and at least one; got {len(x)} examples, {len(y)} labels.")
    shape = tuple(x.shape[1:])
    if net.input_shape is not None and shape != tuple(net.input_shape):
        raise ValueError(f"the {name} split holds examples of shape {shape}, the network takes {tuple(net.input_shape)}.")
    if not np.isfinite(x).all():
        raise ValueError(f"the {name} split holds NaN or Inf inputs (first at example {int(np.argmax(~np.isfinite(x.reshape(len(x), -1)).any(1)))}).")
    _check_labels(net, params, cfg, name, np.asarray(y), jax.ShapeDtypeStruct(shape, x.dtype))
    if name == "training" and cfg.lam != 0 and declared_names(net):
        # The train step verifies the declarations on one example per batch (NaN loss if wrong);
        # check them here first, so that a wrong one is refused by name before any step runs.
        eager_value_checks(net, params, jnp.asarray(x[:1], working_dtype(params, x)), batched=True)


def _check_labels(net: Network, params: PyTree, cfg: TrainConfig, name: str, y: np.ndarray, example: jax.ShapeDtypeStruct) -> None:
    out = jax.eval_shape(net.apply, params, example)[0]
    classes = 2 if cfg.task_loss == "sigmoid" else int(np.prod(out.shape))
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= classes:
        raise ValueError(
            f"the {name} labels must be integers in [0, {classes}) for a network with {int(np.prod(out.shape))} output(s) "
            f"and task_loss={cfg.task_loss!r}; got dtype {y.dtype}, range [{y.min()}, {y.max()}]."
        )


def _check_split(net: Network, params: PyTree, cfg: TrainConfig, name: str, split: Split) -> tuple[int, ...]:
    """:func:`check_data` of a split (a source: its first batch and all its labels); returns the example shape."""
    if not is_source(split):
        check_data(net, params, cfg, name, *split)
        return tuple(split[0].shape[1:])
    if split.num_examples < 1:
        raise ValueError(f"the {name} source holds no examples.")
    if name == "training" and split.batch_size != cfg.batch_size:
        raise ValueError(
            f"the training source yields batches of {split.batch_size} rows but cfg.batch_size is {cfg.batch_size}; build it with batch_size=cfg.batch_size."
        )
    xb, yb, mb = next(iter(split.epoch(0)))
    mb = np.asarray(mb, bool)
    check_data(net, params, cfg, name, xb[mb], yb[mb])
    labels = getattr(split, "labels", None)
    if labels is not None:
        _check_labels(net, params, cfg, name, np.asarray(labels), jax.ShapeDtypeStruct(xb.shape[1:], xb.dtype))
    return tuple(xb.shape[1:])


def _pair(split: Split) -> tuple[Any, Any]:
    """The ``(x, y)`` arguments of train_epoch and evaluate: a source travels as ``(source, None)``."""
    return (split, None) if is_source(split) else split


@jax.jit
def _accumulate(acc: dict, m: dict, n: jax.Array, step: jax.Array):
    sums, bad = acc
    sums = jax.tree.map(lambda s, v: s + v * n.astype(v.dtype), sums, m)
    bad = jnp.where((bad == 0) & ~jnp.isfinite(m["loss"]), step, bad)
    return sums, bad


def train_epoch(
    trainer: Trainer, state: TrainState, x: np.ndarray | BatchSource, y: np.ndarray | None, epoch: int, *, progress: bool = False
) -> tuple[TrainState, dict[str, float]]:
    """One pass over ``(x, y)`` in the epoch's deterministic order; returns the state and mean train metrics.

    ``x`` may instead be a :class:`~lld_jax.training.BatchSource` (``y``
    None) whose ``epoch(epoch)`` gives the batches. Metrics stay on the device
    and are read once, at the end of the epoch (and every 50 steps for the
    progress bar when ``progress``). Every example is used: the last, ragged
    batch is padded and masked.

    Raises:
      FloatingPointError: the loss was NaN or Inf at some step (named).
    """
    cfg = trainer.cfg
    nproc, pid = jax.process_count(), jax.process_index()
    per_proc = round_up(cfg.batch_size, jax.device_count()) // nproc
    if is_source(x):
        steps, total = len(x), x.num_examples
        batches = ((xb, yb, mb) for xb, yb, mb in x.epoch(epoch))
    else:
        order = epoch_order(len(x), cfg.seed, epoch)
        steps, total = -(-len(x) // cfg.batch_size), len(x)

        def host_batches():
            for s in range(steps):
                idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
                local = idx[pid * per_proc : (pid + 1) * per_proc] if nproc > 1 else idx
                yield x[local], y[local], None

        batches = host_batches()
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", leave=False)
    acc = None
    for s, (xb, yb, mb) in enumerate(batches):
        batch = trainer.padded_batch(xb, yb, per_proc, mb)
        state, m = trainer.train_step(state, *batch)
        if acc is None:
            acc = (jax.tree.map(jnp.zeros_like, m), jnp.zeros((), jnp.int32))
        acc = _accumulate(acc, m, jnp.sum(batch[2]), jnp.int32(s + 1))  # weighted by the global batch's real rows
        if progress and s % 50 == 0:
            batches.set_postfix(loss=f"{float(m['loss']):.4f}", acc=f"{float(m['accuracy']):.3f}")
    sums, bad = jax.device_get(acc)
    if bad:
        raise FloatingPointError(f"the loss became NaN or Inf at epoch {epoch + 1}, step {int(bad)}")
    return state, {k: float(v) / total for k, v in sums.items()}


def fit(
    net: Network,
    params: PyTree,
    cfg: TrainConfig,
    train: Split,
    val: Split,
    run_dir: str,
    *,
    experiment: dict[str, Any] | None = None,
    progress: bool = True,
) -> tuple[PyTree, list[dict[str, Any]]]:
    """Trains ``params`` for ``cfg.epochs`` epochs; returns (best-validation-loss params, per-epoch metrics).

    Resumes from ``run_dir`` if it holds a run of the same config; only
    ``epochs`` may differ, which extends a finished run (a learning-rate
    schedule is a function of the step, so extending it continues the last
    rate). Everything is validated before anything is written.

    Args:
      net, params: the network and its initial parameters.
      cfg: the training hyper-parameters.
      train, val: ``(x, y)`` host arrays, or :class:`~lld_jax.training.BatchSource`
        objects that stream them (e.g. :class:`lld_jax.data.ImageBatches`; the
        training one built with ``batch_size=cfg.batch_size`` and shuffling
        seeded by ``cfg.seed``), checked on their first batch and labels.
      run_dir: the run directory (created if needed).
      experiment: what else identifies the run (data selection, architecture,
        initialisation), recorded in ``config.json`` beside ``cfg`` and
        compared on resume.
      progress: show a progress bar and print one line per epoch.

    Raises:
      ValueError: invalid config or data, ``run_dir`` holds another run, or
        the processes of a multi-process run passed different arguments.
      FloatingPointError: a non-finite loss; the last good checkpoint is kept.
    """
    train, val = (split if is_source(split) else tuple(np.asarray(a) for a in split) for split in (train, val))
    try:
        cfg.validate()
        shape = _check_split(net, params, cfg, "training", train)
        _check_split(net, params, cfg, "validation", val)
        dim = int(np.prod(shape))
        if cfg.lam > 0 and cfg.regularizer == "sampled" and cfg.estimator == "axes" and cfg.num_samples > dim:
            raise ValueError(f"num_samples={cfg.num_samples} exceeds the input dimension {dim}.")
        if cfg.lam > 0 and cfg.regularizer != "sampled":
            check_method(net, cfg.method, 2)  # the exact losses differentiate l2 norms; refused here, not at the first step
        refusal = None
    except (TypeError, ValueError) as err:
        if jax.process_count() == 1:
            raise
        refusal = err
    record = {"train": dataclasses.asdict(cfg), "experiment": experiment or {}, "run": describe_run(params, train, val)}
    check_processes_agree(record, refused=refusal is not None)  # multi-process: every process stops if one does
    if refusal is not None:
        raise refusal
    main = jax.process_index() == 0
    rd = RunDir(run_dir, write=main)
    done = Checkpoints.latest_step(run_dir)
    claim = {"mutable": ("train.epochs",), "defaults": TrainConfig.record_defaults()}
    diffs = rd.differences(record, **claim)
    if any(d.startswith(("run.train_sha1", "run.val_sha1")) for d in diffs):
        raise ValueError(
            f"{run_dir} holds a run with a different config ({'; '.join(diffs)}): other training or validation data. The fingerprints cover each split's "
            "values, shapes and dtypes (int64 and int32 labels differ): pass the same arrays to resume, or use a fresh run directory."
        )
    if cfg.epochs < done and not diffs:
        raise ValueError(f"{run_dir} has trained {done} epochs already; epochs={cfg.epochs} cannot shorten it (use a fresh run directory).")
    rd.claim(record, **claim)  # raises on another config, before anything is written

    steps = len(train) if is_source(train) else -(-len(train[0]) // cfg.batch_size)
    trainer = Trainer(net, cfg, steps_per_epoch=steps)
    state = trainer.init_state(params)
    history: list[dict[str, Any]] = []
    start, best_val = 0, np.inf
    with Checkpoints(run_dir) as ckpt:
        restored = ckpt.restore(ckpt.latest, {"state": state, "best_val": np.zeros((), np.float64)})
        if restored is not None:
            start, tree = restored
            state = jax.device_put(tree["state"], trainer.replicated)
            best_val = float(tree["best_val"])
        history = rd.keep_metrics(start)  # epochs after the checkpoint are replayed
        ckpt.drop_after(ckpt.best, start)
        if len(history) != start:
            raise ValueError(
                f"{rd.file('metrics.jsonl')} holds {len(history)} epochs but the checkpoint is at epoch {start}; the run directory was edited by hand."
            )
        for epoch in range(start, cfg.epochs):
            try:
                state, train_m = train_epoch(trainer, state, *_pair(train), epoch, progress=progress and main)
            except FloatingPointError as err:
                kept = f"the last good checkpoint (epoch {epoch}) is kept in {run_dir}/checkpoints" if epoch else "no checkpoint was written yet"
                raise FloatingPointError(f"{err}; training stopped and {kept}. Lower the learning rate, lambda or C.") from err
            val_m = trainer.evaluate(state.params, *_pair(val))
            if not np.isfinite(val_m["loss"]):  # e.g. the epoch's last update made the parameters non-finite
                kept = f"the last good checkpoint (epoch {epoch}) is kept in {run_dir}/checkpoints" if epoch else "no checkpoint was written yet"
                raise FloatingPointError(
                    f"the validation loss became {val_m['loss']} after epoch {epoch + 1}; training stopped and {kept}. Lower the learning rate, lambda or C."
                )
            record = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in train_m.items()}, **{f"val_{k}": v for k, v in val_m.items()}}
            rd.append_metrics(record)
            history.append(record)
            if val_m["loss"] < best_val:
                best_val = val_m["loss"]
                ckpt.save(ckpt.best, epoch + 1, state.params)
            ckpt.save(ckpt.latest, epoch + 1, {"state": state, "best_val": np.asarray(best_val, np.float64)})
            if progress and main:
                print(f"epoch {epoch + 1}: " + ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"), flush=True)
        best = ckpt.restore(ckpt.best, state.params)
    if best is None:
        raise FileNotFoundError(
            f"{run_dir}/checkpoints/best holds no checkpoint although {len(history)} epochs are recorded; the run directory was edited."
        )
    return jax.device_put(best[1], trainer.replicated), history

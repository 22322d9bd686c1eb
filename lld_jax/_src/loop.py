"""The resumable training loop: one epoch at a time, checkpoints and metrics in a run directory.

Resuming from the ``latest`` checkpoint replays the remaining epochs exactly:
shuffles and sampled-axis keys are functions of (seed, epoch, step), not of
history. With ``TrainConfig.checkpoint_every_steps``, a ``mid`` checkpoint
within an epoch also stores where the epoch stopped (:class:`EpochPosition`),
so a run stopped mid-epoch resumes with the batches it would have seen. See
:mod:`rundir` for the directory layout and crash safety.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Callable
from typing import Any, NamedTuple

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


class EpochPosition(NamedTuple):
    """Where an epoch stopped at a mid-epoch checkpoint: what :func:`train_epoch` needs to continue it exactly."""

    epoch: int  # the epoch (from 0)
    step: int  # batches of it done
    sums: dict[str, float]  # its running metric sums (each batch's mean times its real rows), exact float32 values
    bad: int  # the first step (from 1) whose loss was not finite, 0 if none
    data: Any  # the training source's iterator state after ``step`` batches (JSON-able); None for host arrays

    def to_json(self) -> dict[str, Any]:
        return self._asdict()

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EpochPosition:
        return cls(int(d["epoch"]), int(d["step"]), {k: float(v) for k, v in d["sums"].items()}, int(d["bad"]), d.get("data"))


def _source_batches(x: BatchSource, epoch: int, first: int, data: Any) -> tuple[Any, Any]:
    """Source ``x``'s iterator over epoch ``epoch`` from batch ``first`` on, and that iterator again if it has a state (else None)."""
    it = x.epoch(epoch)
    if not (hasattr(it, "get_state") and hasattr(it, "set_state")) or (first and data is None):
        for _ in itertools.islice(it, first):  # no iterator state: the same batches come again (order = f(seed, epoch)), dropped
            pass
        return it, None
    if first:
        it.set_state(data)  # e.g. Grain's own position: the skipped images are not read
    return it, it


def train_epoch(
    trainer: Trainer,
    state: TrainState,
    x: np.ndarray | BatchSource,
    y: np.ndarray | None,
    epoch: int,
    *,
    progress: bool = False,
    start: EpochPosition | None = None,
    every: int | None = None,
    on_checkpoint: Callable[[TrainState, EpochPosition], None] | None = None,
) -> tuple[TrainState, dict[str, float]]:
    """One pass over ``(x, y)`` in the epoch's deterministic order; returns the state and mean train metrics.

    ``x`` may instead be a :class:`~lld_jax.training.BatchSource` (``y``
    None) whose ``epoch(epoch)`` gives the batches. Metrics stay on the device
    and are read once, at the end of the epoch (and every 50 steps for the
    progress bar when ``progress``). Every example is used: the last, ragged
    batch is padded and masked.

    Args:
      start: continue the epoch from this position (a mid-epoch checkpoint's)
        instead of its beginning: its batches before ``start.step`` are
        skipped (a source's iterator is moved there with ``set_state`` when it
        has one, else they are read and dropped) and its metric sums carried on.
      every, on_checkpoint: after each optimiser step whose count (from the
        run's start) is a multiple of ``every``, except the epoch's last,
        ``on_checkpoint(state, position)`` is called with the epoch's
        :class:`EpochPosition` (e.g. to save a mid-epoch checkpoint).

    Raises:
      FloatingPointError: the loss was NaN or Inf at some step (named).
    """
    cfg = trainer.cfg
    nproc, pid = jax.process_count(), jax.process_index()
    per_proc = round_up(cfg.batch_size, jax.device_count()) // nproc
    first = 0 if start is None else start.step
    stateful = None
    if is_source(x):
        steps, total = len(x), x.num_examples
        it, stateful = _source_batches(x, epoch, first, None if start is None else start.data)
        batches = ((xb, yb, mb) for xb, yb, mb in it)
    else:
        order = epoch_order(len(x), cfg.seed, epoch)
        steps, total = -(-len(x) // cfg.batch_size), len(x)

        def host_batches():
            for s in range(first, steps):
                idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
                local = idx[pid * per_proc : (pid + 1) * per_proc] if nproc > 1 else idx
                yield x[local], y[local], None

        batches = host_batches()
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=steps, initial=first, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", leave=False)
    acc = None
    for s, (xb, yb, mb) in enumerate(batches, start=first):
        batch = trainer.padded_batch(xb, yb, per_proc, mb)
        state, m = trainer.train_step(state, *batch)
        if acc is None:
            sums = jax.tree.map(jnp.zeros_like, m) if not first else {k: jnp.asarray(start.sums[k], v.dtype) for k, v in m.items()}
            acc = (sums, jnp.zeros((), jnp.int32) if not first else jnp.int32(start.bad))
        acc = _accumulate(acc, m, jnp.sum(batch[2]), jnp.int32(s + 1))  # weighted by the global batch's real rows
        if progress and s % 50 == 0:
            batches.set_postfix(loss=f"{float(m['loss']):.4f}", acc=f"{float(m['accuracy']):.3f}")
        if every is not None and on_checkpoint is not None and s + 1 < steps and (epoch * steps + s + 1) % every == 0:
            sums, bad = jax.device_get(acc)
            if bad:  # never checkpoint a state past a non-finite loss
                raise FloatingPointError(f"the loss became NaN or Inf at epoch {epoch + 1}, step {int(bad)}")
            data = stateful.get_state() if stateful is not None else None
            on_checkpoint(state, EpochPosition(epoch, s + 1, {k: float(v) for k, v in sums.items()}, 0, data))
    if acc is None:
        raise ValueError(f"epoch {epoch + 1} yielded no batch after step {first}; the training source changed since its checkpoint.")
    sums, bad = jax.device_get(acc)
    if bad:
        raise FloatingPointError(f"the loss became NaN or Inf at epoch {epoch + 1}, step {int(bad)}")
    return state, {k: float(v) / total for k, v in sums.items()}


def _checked_record(net: Network, params: PyTree, cfg: TrainConfig, train: Split, val: Split, experiment: dict[str, Any] | None) -> dict[str, Any]:
    """Validates fit's arguments (every process agreeing in a multi-process run) and returns the run's record for ``config.json``."""
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
    return record


def _claim_run_dir(run_dir: str, record: dict[str, Any], cfg: TrainConfig) -> RunDir:
    """The run directory, claimed for ``record``; refuses another run's directory or a shortened one before anything is written."""
    rd = RunDir(run_dir, write=jax.process_index() == 0)
    done = Checkpoints.latest_step(run_dir)
    # epochs extends a run; checkpoint_every_steps changes when it is saved, not what it computes.
    claim = {"mutable": ("train.epochs", "train.checkpoint_every_steps"), "defaults": TrainConfig.record_defaults()}
    diffs = rd.differences(record, **claim)
    if any(d.startswith(("run.train_sha1", "run.val_sha1")) for d in diffs):
        raise ValueError(
            f"{run_dir} holds a run with a different config ({'; '.join(diffs)}): other training or validation data. The fingerprints cover each split's "
            "values, shapes and dtypes (int64 and int32 labels differ): pass the same arrays to resume, or use a fresh run directory."
        )
    if cfg.epochs < done and not diffs:
        raise ValueError(f"{run_dir} has trained {done} epochs already; epochs={cfg.epochs} cannot shorten it (use a fresh run directory).")
    rd.claim(record, **claim)  # raises on another config, before anything is written
    return rd


def _resume(
    ckpt: Checkpoints, rd: RunDir, trainer: Trainer, state: TrainState, run_dir: str
) -> tuple[int, TrainState, float, list[dict[str, Any]], EpochPosition | None]:
    """Restores the newest checkpoint: ``(epochs done, state, best validation loss, their metrics, position within the next epoch or None)``.

    A mid-epoch checkpoint counts only if it lies in the epoch after the
    ``latest`` one (an older one was overtaken by an epoch's end).
    """
    start, best_val, position = 0, np.inf, None
    like = {"state": state, "best_val": np.zeros((), np.float64)}
    restored = ckpt.restore(ckpt.latest, like)
    if restored is not None:
        start, tree = restored
        state, best_val = tree["state"], float(tree["best_val"])
    mid = ckpt.restore_position(like)
    if mid is not None:
        tree, pos = mid
        pos = EpochPosition.from_json(pos)
        if pos.epoch > start:
            raise ValueError(
                f"{run_dir}/checkpoints/mid holds a checkpoint of epoch {pos.epoch + 1} but the latest epoch checkpoint is of epoch {start}; "
                "the run directory was edited by hand: delete checkpoints/mid to resume from the latest epoch."
            )
        if pos.epoch == start:
            state, best_val, position = tree["state"], float(tree["best_val"]), pos
        else:
            ckpt.drop_after(ckpt.mid, -1)  # overtaken by the end of its epoch
    history = rd.keep_metrics(start)  # epochs after the checkpoint are replayed
    ckpt.drop_after(ckpt.best, start)
    if len(history) != start:
        raise ValueError(
            f"{rd.file('metrics.jsonl')} holds {len(history)} epochs but the checkpoint is at epoch {start}; the run directory was edited by hand."
        )
    return start, jax.device_put(state, trainer.replicated), best_val, history, position


def _train_epochs(
    trainer: Trainer,
    ckpt: Checkpoints,
    rd: RunDir,
    state: TrainState,
    train: Split,
    val: Split,
    *,
    start: int,
    best_val: float,
    history: list[dict[str, Any]],
    position: EpochPosition | None,
    run_dir: str,
    progress: bool,
) -> TrainState:
    """Epochs ``start`` to ``cfg.epochs``: train, validate, record metrics, save best and latest checkpoints (and mid-epoch ones)."""
    cfg = trainer.cfg
    main = jax.process_index() == 0

    def save_mid(st: TrainState, pos: EpochPosition) -> None:
        ckpt.save_position(int(st.step), {"state": st, "best_val": np.asarray(best_val, np.float64)}, pos.to_json())

    for epoch in range(start, cfg.epochs):
        kept = f"the last good checkpoint (epoch {epoch}) is kept in {run_dir}/checkpoints" if epoch else "no checkpoint was written yet"
        try:
            state, train_m = train_epoch(
                trainer,
                state,
                *_pair(train),
                epoch,
                progress=progress and main,
                start=position if position is not None and position.epoch == epoch else None,
                every=cfg.checkpoint_every_steps,
                on_checkpoint=save_mid,
            )
        except FloatingPointError as err:
            raise FloatingPointError(f"{err}; training stopped and {kept}. Lower the learning rate, lambda or C.") from err
        val_m = trainer.evaluate(state.params, *_pair(val))
        if not np.isfinite(val_m["loss"]):  # e.g. the epoch's last update made the parameters non-finite
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
        ckpt.drop_after(ckpt.mid, -1)  # overtaken by this epoch's end (a crash before this line: ignored on resume)
        if progress and main:
            print(f"epoch {epoch + 1}: " + ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"), flush=True)
    return state


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
    rate), and ``checkpoint_every_steps``. With ``cfg.checkpoint_every_steps``
    it also checkpoints within epochs, with the data position (a source's
    iterator state), and a run stopped mid-epoch resumes with exactly the
    batches it would have seen. Everything is validated before anything is
    written.

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
    record = _checked_record(net, params, cfg, train, val, experiment)
    rd = _claim_run_dir(run_dir, record, cfg)
    steps = len(train) if is_source(train) else -(-len(train[0]) // cfg.batch_size)
    trainer = Trainer(net, cfg, steps_per_epoch=steps)
    state = trainer.init_state(params)
    with Checkpoints(run_dir) as ckpt:
        start, state, best_val, history, position = _resume(ckpt, rd, trainer, state, run_dir)
        state = _train_epochs(
            trainer,
            ckpt,
            rd,
            state,
            train,
            val,
            start=start,
            best_val=best_val,
            history=history,
            position=position,
            run_dir=run_dir,
            progress=progress,
        )
        best = ckpt.restore(ckpt.best, state.params)
    if best is None:
        raise FileNotFoundError(
            f"{run_dir}/checkpoints/best holds no checkpoint although {len(history)} epochs are recorded; the run directory was edited."
        )
    return jax.device_put(best[1], trainer.replicated), history

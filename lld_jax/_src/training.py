"""ROLL training maths: config, loss, typed state and the jit-compiled data-parallel step.

Data parallelism uses ``jax.sharding``: a one-axis mesh ``("data",)`` over all
devices, the batch sharded along it, parameters replicated; XLA inserts the
gradient all-reduce. A batch that does not divide is padded and masked, never
dropped. Multi-host: call :func:`maybe_initialize_distributed` first; each
process feeds its own slice of every global batch and only process 0 logs and
writes files.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lld_jax._src.arguments import positive_int
from lld_jax._src.declarations import declaration_mismatch, declared_names, verified_per_batch
from lld_jax._src.gradients import METHODS
from lld_jax._src.host import pad_rows, round_up
from lld_jax._src.losses import check_gamma, check_hyper, distance_penalty, loss_method, roll_penalties_grouped, roll_penalty, roll_penalty_sampled
from lld_jax._src.network import Network, PyTree
from lld_jax._src.poison import poison_where

Array = jax.Array


@dataclasses.dataclass
class TrainConfig:
    """Hyper-parameters of one training run (paper App. G defaults)."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.01
    # Step schedule: lr is multiplied by lr_decay once each listed number of epochs is completed
    # (paper App. I: 0.005, then 0.0005 after epoch 10 -> lr_decay_epochs=(10,), lr_decay=0.1).
    lr_decay_epochs: tuple[int, ...] = ()
    lr_decay: float = 0.1
    optimizer: str = "sgd"  # "sgd" (Nesterov momentum), "adam" or "amsgrad"
    momentum: float = 0.5
    lam: float = 0.0  # regularisation weight lambda; 0 = vanilla
    C: float = 0.0  # hinge weight
    gamma: Any = 100  # "max", or percentage of neurons aggregated
    regularizer: str = "roll"  # "roll" (Eq. 9), "distance" (Eq. 4), "sampled" (Eq. 10)
    num_samples: int = 3  # D' for regularizer="sampled"
    estimator: str = "axes"  # "axes" or "gaussian" for regularizer="sampled"
    stratify: bool = False
    method: str = "auto"  # gradient method for the exact regularisers
    chunk_size: int | None = None  # memory bound of the regulariser (None: its default; see roll_penalty_sampled)
    task_loss: str = "softmax"  # "softmax" cross-entropy or "sigmoid" (one logit, labels 0/1)
    seed: int = 1
    eval_batch_size: int = 1000
    # Also checkpoint within epochs, every this many optimiser steps (counted from the run's start), with the
    # data position, so that a run stopped mid-epoch resumes with the batches it would have seen. None: at epoch ends only.
    checkpoint_every_steps: int | None = None

    @classmethod
    def record_defaults(cls, prefix: str = "train.") -> dict[str, Any]:
        """Each field's default (JSON form) under ``prefix + name``: what a run recorded before the field existed ran with
        (new fields keep the old behaviour at their default); the ``defaults`` of :meth:`RunDir.claim`."""
        return {f"{prefix}{f.name}": json.loads(json.dumps(f.default)) for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}

    def validate(self) -> TrainConfig:
        check_hyper(C=self.C, lam=self.lam, num_samples=self.num_samples if self.regularizer == "sampled" else None)
        self.gamma = check_gamma(self.gamma)
        if self.regularizer not in ("roll", "distance", "sampled"):
            raise ValueError(f"regularizer must be 'roll', 'distance' or 'sampled', got {self.regularizer!r}.")
        if self.regularizer == "sampled" and self.gamma != 100:
            raise ValueError("the sampled ROLL estimator (Eq. 10) exists only for gamma=100.")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            setattr(self, name, positive_int(getattr(self, name), name))
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}.")
        self.lr_decay_epochs = tuple(self.lr_decay_epochs)
        if any(isinstance(e, bool) or not isinstance(e, (int, np.integer)) or e < 1 for e in self.lr_decay_epochs) or list(
            self.lr_decay_epochs
        ) != sorted(set(self.lr_decay_epochs)):
            raise ValueError(f"lr_decay_epochs must be increasing positive integers (epochs after which lr decays), got {self.lr_decay_epochs}.")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay}.")
        if self.optimizer not in ("sgd", "adam", "amsgrad"):
            raise ValueError(f"optimizer must be 'sgd', 'adam' or 'amsgrad', got {self.optimizer!r}.")
        if self.task_loss not in ("softmax", "sigmoid"):
            raise ValueError(f"task_loss must be 'softmax' or 'sigmoid', got {self.task_loss!r}.")
        self.chunk_size = positive_int(self.chunk_size, "chunk_size", allow_none=True)
        self.checkpoint_every_steps = positive_int(self.checkpoint_every_steps, "checkpoint_every_steps", allow_none=True)
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}.")
        if self.estimator not in ("axes", "gaussian"):
            raise ValueError(f"estimator must be 'axes' or 'gaussian', got {self.estimator!r}.")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}.")
        return self


class TrainState(NamedTuple):
    """What one training step carries: parameters, optimiser state and the step count."""

    params: PyTree
    opt_state: optax.OptState
    step: jax.Array


def lr_schedule(cfg: TrainConfig, steps_per_epoch: int | None) -> float | optax.Schedule:
    """``cfg.lr``, or with ``cfg.lr_decay_epochs`` the step schedule over optimiser updates.

    Update ``s`` (counted from 0) belongs to epoch ``s // steps_per_epoch``; its
    rate is ``lr * lr_decay ** (number of decay epochs <= that epoch)``.

    Raises:
      ValueError: a schedule without ``steps_per_epoch``.
    """
    if not cfg.lr_decay_epochs:
        return cfg.lr
    if steps_per_epoch is None or steps_per_epoch < 1:
        raise ValueError("a learning-rate schedule (lr_decay_epochs) needs the number of steps per epoch: pass steps_per_epoch to the Trainer.")
    bounds = jnp.asarray([e * steps_per_epoch for e in cfg.lr_decay_epochs])

    def schedule(count):
        return cfg.lr * cfg.lr_decay ** jnp.sum(count >= bounds)

    return schedule


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int | None = None) -> optax.GradientTransformation:
    """The optimiser of ``cfg``: SGD with Nesterov momentum (paper App. G), Adam, or AMSGrad (App. H).

    ``steps_per_epoch`` is needed (only) for a learning-rate schedule, see :func:`lr_schedule`.
    """
    lr = lr_schedule(cfg, steps_per_epoch)
    if cfg.optimizer == "adam":
        return optax.adam(lr)
    if cfg.optimizer == "amsgrad":
        return optax.amsgrad(lr)
    return optax.sgd(lr, momentum=cfg.momentum, nesterov=True)


def task_losses(logits: Array, y: Array, kind: str) -> tuple[Array, Array]:
    """Per-example task loss and correctness."""
    if kind == "sigmoid":
        logit = logits.reshape(logits.shape[0], -1)[:, 0]
        return optax.sigmoid_binary_cross_entropy(logit, y.astype(logit.dtype)), (logit > 0) == (y > 0)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y), jnp.argmax(logits, -1) == y


def make_loss_fn(net: Network, cfg: TrainConfig) -> Callable:
    """``loss(params, x, y, mask, key) -> (mean loss, metrics)``; padded rows have mask 0."""

    def one(params, xi, key):
        if cfg.regularizer == "distance":
            return distance_penalty(net, params, xi, method=cfg.method, chunk_size=cfg.chunk_size)
        if cfg.regularizer == "sampled":
            return roll_penalty_sampled(
                net, params, xi, key, C=cfg.C, num_samples=cfg.num_samples, estimator=cfg.estimator, stratify=cfg.stratify, chunk_size=cfg.chunk_size
            )
        return roll_penalty(net, params, xi, C=cfg.C, gamma=cfg.gamma, method=cfg.method, chunk_size=cfg.chunk_size)

    def penalty(params, x, key):
        if cfg.lam == 0:
            return jnp.zeros(x.shape[0], x.dtype)
        if cfg.regularizer == "roll" and loss_method(net, x[0], cfg.method, cfg.chunk_size, params)[0] == "causal":
            return roll_penalties_grouped(net, params, x, C=cfg.C, gamma=cfg.gamma)  # same values, short groups stop early
        return jax.vmap(one, in_axes=(None, 0, 0))(params, x, jax.random.split(key, x.shape[0]))

    def loss_fn(params, x, y, mask, key):
        logits = jax.vmap(lambda xi: net.apply(params, xi)[0])(x)
        task, correct = task_losses(logits, y, cfg.task_loss)
        with verified_per_batch():  # the declarations are verified once below, not per example
            pen = penalty(params, x, key)
        w = mask / jnp.maximum(jnp.sum(mask), 1)
        total = jnp.sum(w * (task + cfg.lam * pen))
        if cfg.lam != 0 and declared_names(net):
            # A declaration that is not the network (a stale dense stack or stem) poisons the step: NaN loss.
            # A product (poison_where): the gradient is NaN too, so no optimiser applies a finite update from it.
            total = poison_where(total, declaration_mismatch(net, jax.lax.stop_gradient(params), x[0]))
        metrics = {"loss": total, "task_loss": jnp.sum(w * task), "penalty": jnp.sum(w * pen), "accuracy": jnp.sum(w * correct)}
        return total, metrics

    return loss_fn


def data_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """One-axis ``("data",)`` mesh over ``devices`` (default: every device of every host)."""
    devices = list(devices) if devices is not None else jax.devices()
    # Auto axes: XLA propagates the batch sharding through vmap/scan itself.
    return jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def maybe_initialize_distributed() -> None:
    """Calls ``jax.distributed.initialize()`` when launched as one of several processes.

    Detected through the usual cluster variables (SLURM, Open MPI, TPU pods, which
    JAX reads itself) or, by hand, ``JAX_COORDINATOR_ADDRESS`` (host:port of
    process 0) with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``. On CPU hosts the
    gradient all-reduce goes through gloo. A single process needs nothing.
    """
    markers = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")
    if not any(k in os.environ for k in markers) or jax.distributed.is_initialized():
        return
    kw = {}
    if "JAX_NUM_PROCESSES" in os.environ or "JAX_PROCESS_ID" in os.environ:
        try:
            kw = {"num_processes": int(os.environ["JAX_NUM_PROCESSES"]), "process_id": int(os.environ["JAX_PROCESS_ID"])}
        except (KeyError, ValueError) as e:
            raise ValueError("set both JAX_NUM_PROCESSES and JAX_PROCESS_ID to integers (with JAX_COORDINATOR_ADDRESS).") from e
    if jax.config.jax_platforms in (None, "", "cpu") and jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kw)


class Trainer:
    """Holds the compiled train and eval steps for one network and config."""

    def __init__(self, net: Network, cfg: TrainConfig, *, mesh: jax.sharding.Mesh | None = None, steps_per_epoch: int | None = None):
        self.net, self.cfg = net, cfg.validate()
        self.mesh = mesh or data_mesh()
        self.opt = make_optimizer(cfg, steps_per_epoch)
        self.replicated = NamedSharding(self.mesh, P())
        self.sharded = NamedSharding(self.mesh, P("data"))
        loss_fn = make_loss_fn(net, cfg)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

        def train_step(state: TrainState, x, y, mask):
            key = jax.random.fold_in(jax.random.key(cfg.seed), state.step)
            (_, metrics), grads = grad_fn(state.params, x, y, mask, key)
            updates, opt_state = self.opt.update(grads, state.opt_state, state.params)
            return TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1), metrics

        def eval_step(params, x, y, mask):
            return loss_fn(params, x, y, mask, jax.random.key(0))[1]

        self.train_step = jax.jit(train_step, donate_argnums=0, out_shardings=(self.replicated, self.replicated))
        self.eval_step = jax.jit(eval_step, out_shardings=self.replicated)

    def init_state(self, params: PyTree) -> TrainState:
        """A fresh :class:`TrainState`, replicated over the mesh (``params`` is copied, not donated)."""
        params = jax.tree.map(lambda a: jnp.array(a, copy=True), params)
        return jax.device_put(TrainState(params, self.opt.init(params), jnp.zeros((), jnp.int32)), self.replicated)

    def padded_batch(self, x: np.ndarray, y: np.ndarray, size: int, mask: np.ndarray | None = None) -> tuple[Array, Array, Array]:
        """Pads a host batch to ``size`` (a multiple of the device count) and shards it.

        In a multi-process run each process passes its own slice of the global
        batch; ``size`` is the per-process size. ``mask`` (rows that are real,
        default all) is extended with zeros over the padding.
        """
        m = np.zeros(size, np.float32)
        m[: len(x)] = 1.0 if mask is None else np.asarray(mask, np.float32)
        put = lambda a: jax.make_array_from_process_local_data(self.sharded, a)
        return put(pad_rows(x, size)), put(pad_rows(y, size)), put(m)

    def evaluate(self, params: PyTree, x: np.ndarray | BatchSource, y: np.ndarray | None = None) -> dict[str, float]:
        """Mean metrics over a whole split (nothing dropped: the last batch is masked).

        ``(x, y)`` host arrays, or ``x`` a :class:`BatchSource` (``y`` None),
        read once in order (its ``epoch(0)``).
        """
        if is_source(x):
            per_proc = round_up(x.local_batch_size, max(1, jax.local_device_count()))
            batches = ((xb, yb, self.padded_batch(xb, yb, per_proc, mb)) for xb, yb, mb in x.epoch(0))
        else:
            if len(x) == 0:
                raise ValueError("cannot evaluate on an empty split.")
            bs = round_up(min(self.cfg.eval_batch_size, len(x)), jax.device_count())  # a small split: no padding to 1000
            batches = ((xb, yb, self.padded_batch(xb, yb, bs)) for xb, yb in ((x[lo : lo + bs], y[lo : lo + bs]) for lo in range(0, len(x), bs)))
        totals, count = None, None
        for _, _, batch in batches:
            n = jnp.sum(batch[2])  # real rows of the global batch
            m = jax.tree.map(lambda v: v * n, self.eval_step(params, *batch))  # stays on device: one transfer per split
            totals, count = (m, n) if totals is None else (jax.tree.map(jnp.add, totals, m), count + n)
        if totals is None:
            raise ValueError("cannot evaluate on an empty split.")
        totals, count = jax.device_get((totals, count))
        return {k: float(v) / float(count) for k, v in totals.items()}


class BatchSource(Protocol):
    """A split streamed in batches instead of held as host arrays (e.g. :class:`lld_jax.data.ImageBatches`).

    ``epoch(e)`` yields ``(x, y, mask)`` host batches of ``local_batch_size``
    rows (this process's slice of a global batch of ``batch_size`` rows; rows
    where ``mask`` is False are padding), every example once; a training
    source must shuffle as a function of ``(seed, e)`` only, so that a resumed
    run replays the same batches. If the iterator ``epoch(e)`` returns has
    ``get_state()`` (JSON-able) and ``set_state(state)`` (as
    :class:`lld_jax.data.ImageBatches`' Grain iterators do), a mid-epoch
    checkpoint stores its state and a resumed run continues from it; otherwise
    the batches before the checkpoint are read again and dropped. ``len()`` is the number of batches per epoch,
    ``num_examples`` the split's size and ``fingerprint()`` a string that
    changes with its content (recorded by :func:`lld_jax.training.fit`); it
    identifies the whole split, not the shard, so it is the same on every
    process of a multi-process run (``fit`` compares them).
    """

    batch_size: int
    local_batch_size: int

    def epoch(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]: ...

    def __len__(self) -> int: ...

    @property
    def num_examples(self) -> int: ...

    def fingerprint(self) -> str: ...


def is_source(split: Any) -> bool:
    """Whether ``split`` is a :class:`BatchSource` rather than an ``(x, y)`` pair of arrays."""
    return hasattr(split, "epoch") and hasattr(split, "fingerprint")

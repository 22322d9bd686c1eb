"""Training with ROLL: config, typed state, a jit-compiled data-parallel step and a resumable loop.

Data parallelism uses ``jax.sharding``: a one-axis mesh ``("data",)`` over all
devices (:func:`data_mesh`), the batch sharded along it, parameters
replicated. A batch that does not divide is padded and masked, never dropped.
Multi-host: call :func:`maybe_initialize_distributed` first; each process
feeds its own slice of every global batch and only process 0 writes files.
"""

from lld_jax._src.checkpoints import Checkpoints, load_best
from lld_jax._src.host import write_json
from lld_jax._src.loop import check_data, fit, train_epoch
from lld_jax._src.rundir import RunDir
from lld_jax._src.training import (
    BatchSource,
    TrainConfig,
    Trainer,
    TrainState,
    data_mesh,
    lr_schedule,
    make_loss_fn,
    make_optimizer,
    maybe_initialize_distributed,
    task_losses,
)

__all__ = [
    "BatchSource",
    "Checkpoints",
    "RunDir",
    "TrainConfig",
    "TrainState",
    "Trainer",
    "check_data",
    "data_mesh",
    "fit",
    "load_best",
    "lr_schedule",
    "make_loss_fn",
    "make_optimizer",
    "maybe_initialize_distributed",
    "task_losses",
    "train_epoch",
    "write_json",
]

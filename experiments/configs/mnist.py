"""The settings of :mod:`experiments.mnist`: one frozen dataclass, every field a command-line flag."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import lld_jax
from lld_jax.training import TrainConfig

MNIST_TRAIN, MNIST_TEST = 60000, 10000


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of an MNIST run or grid (paper App. G defaults)."""

    out: str = dataclasses.field(default="runs/mnist", metadata={"help": "run directory (resumed if it exists)"})
    data_dir: str | None = dataclasses.field(
        default=None, metadata={"help": "folder with the four MNIST IDX files (None: $LLD_JAX_DATA/mnist, the cache, or a verified download)"}
    )
    download: bool = dataclasses.field(default=True, metadata={"help": "fetch MNIST (checksummed) when it is not found"})
    train_size: int | None = dataclasses.field(default=None, metadata={"help": "use only the first N training examples"})
    val_size: int = 5000
    test_size: int | None = dataclasses.field(default=None, metadata={"help": "evaluate on the first N test examples"})
    widths: tuple[int, ...] = (300, 300, 300, 300)
    init: str = dataclasses.field(default="torch", metadata={"help": "weight initialisation: torch (the paper's code) or flax"})
    seed: int = 1
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.5
    lam: float = dataclasses.field(default=0.0, metadata={"help": "lambda; 0 = vanilla"})
    C: float = 0.0
    gamma: str | float = dataclasses.field(default=100.0, metadata={"help": "'max', 25, 50, 75 or 100"})
    regularizer: str = dataclasses.field(default="roll", metadata={"help": "roll (Eq. 9), sampled (Eq. 10) or distance (Eq. 4)"})
    num_samples: int = dataclasses.field(default=3, metadata={"help": "D' for --regularizer sampled"})
    method: str = dataclasses.field(default="auto", metadata={"help": "gradient method of the exact ROLL loss"})
    grid: bool = dataclasses.field(default=False, metadata={"help": "run the lambda x C x gamma grid, select, plot Figure 2"})
    grid_lam: tuple[float, ...] = tuple(2.0**k for k in range(-3, 3))
    grid_C: tuple[float, ...] = tuple(2.0**k for k in range(-2, 4))
    grid_gamma: tuple[str | float, ...] = ("max", 25.0, 50.0, 75.0, 100.0)
    grid_cross: bool = dataclasses.field(default=False, metadata={"help": "only the two slices Figure 2 plots"})
    certify: bool = dataclasses.field(
        default=False,
        metadata={"help": "certified radii and accuracy (l2, l-inf) of the finished run in --out (certify.json, certify.npz); trains nothing"},
    )
    interim: bool = dataclasses.field(
        default=False,
        metadata={"help": "evaluate the run in --out at its best checkpoint so far, without training (report_interim.json)"},
    )
    progress: bool = True

    def train_config(self, lam: float, C: float, gamma: Any) -> TrainConfig:
        """The :class:`~lld_jax.training.TrainConfig` of one run; raises on invalid values."""
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=self.momentum,
            lam=lam,
            C=C,
            gamma=gamma,
            regularizer=self.regularizer,
            num_samples=self.num_samples,
            method=self.method,
            seed=self.seed,
        ).validate()

    def points(self) -> list[tuple[float, float, Any]]:
        """(lambda, C, gamma) of every run: one, or the grid (with ``grid_cross`` the two Figure 2 slices)."""
        if not self.grid:
            return [(self.lam, self.C, self.gamma)]
        pts = list(itertools.product(self.grid_lam, self.grid_C, self.grid_gamma))
        if self.grid_cross:
            lam_fixed, C_fixed = self.figure2_slices()
            pts = [(lam, C, g) for lam, C, g in pts if lam == lam_fixed or C == C_fixed]
        return pts

    def figure2_slices(self) -> tuple[float, float]:
        """(lambda, C) held fixed in Figure 2: the paper's 0.5 and 1, or the grid's middle values when absent."""
        lam_fixed = 0.5 if 0.5 in self.grid_lam else sorted(self.grid_lam)[len(self.grid_lam) // 2]
        C_fixed = 1.0 if 1.0 in self.grid_C else sorted(self.grid_C)[len(self.grid_C) // 2]
        return lam_fixed, C_fixed

    def validate(self) -> Config:
        """Checks every setting (and every grid point) before anything is read or written."""
        if not (isinstance(self.val_size, int) and 1 <= self.val_size < MNIST_TRAIN):
            raise ValueError(f"val_size must be in [1, {MNIST_TRAIN - 1}], got {self.val_size}.")
        if self.train_size is not None and not 1 <= self.train_size <= MNIST_TRAIN - self.val_size:
            raise ValueError(f"train_size must be in [1, {MNIST_TRAIN - self.val_size}] (the training split), got {self.train_size}.")
        if self.test_size is not None and not 1 <= self.test_size <= MNIST_TEST:
            raise ValueError(f"test_size must be in [1, {MNIST_TEST}], got {self.test_size}.")
        if self.init not in lld_jax.models.INITS:
            raise ValueError(f"init must be one of {lld_jax.models.INITS}, got {self.init!r}.")
        if not self.widths or any(w < 1 for w in self.widths):
            raise ValueError(f"widths must be one or more positive layer widths, got {list(self.widths)}.")
        if self.grid and (self.interim or self.certify):
            raise ValueError("--interim and --certify evaluate one run: drop --grid.")
        if self.interim and self.certify:
            raise ValueError("--interim and --certify are two separate evaluations: give one.")
        if self.grid and not (self.grid_lam and self.grid_C and self.grid_gamma):
            raise ValueError("the grid needs at least one value of each of --grid-lam, --grid-C and --grid-gamma.")
        for lam, C, gamma in self.points():
            self.train_config(lam, C, gamma)
        if self.regularizer == "sampled" and self.num_samples > 784:
            raise ValueError(f"num_samples={self.num_samples} exceeds the input dimension 784.")
        return self

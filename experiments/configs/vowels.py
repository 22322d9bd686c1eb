"""The settings of :mod:`experiments.vowels`: one frozen dataclass, every field a command-line flag."""

from __future__ import annotations

import dataclasses
import itertools

from lld_jax.training import TrainConfig

PAPER_POINTS = ((2.0**-5, 2.0**4), (2.0**-1, 2.0**2))  # Table 2's selected ROLL models


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a Japanese Vowels run or grid (paper App. H where stated)."""

    out: str = dataclasses.field(default="runs/vowels", metadata={"help": "run directory (resumed if it exists)"})
    data_dir: str | None = dataclasses.field(
        default=None,
        metadata={"help": "folder with the UCI files ae.train and ae.test (None: $LLD_JAX_DATA/japanese-vowels, the cache, or a verified download)"},
    )
    download: bool = dataclasses.field(default=True, metadata={"help": "fetch the UCI files (checksummed) when they are not found"})
    val_size: int = dataclasses.field(
        default=0, metadata={"help": "validation sequences per speaker from the training set; 0 = select on test (paper)"}
    )
    train_size: int | None = dataclasses.field(default=None, metadata={"help": "use a seeded random subset of N training sequences"})
    test_size: int | None = dataclasses.field(default=None, metadata={"help": "evaluate on a seeded random subset of N test sequences"})
    hidden: int = 512
    num_negative: int = dataclasses.field(default=0, metadata={"help": "number of -1 entries of scoRNN's diagonal D"})
    negative_slope: float = dataclasses.field(default=0.01, metadata={"help": "LeakyReLU slope (paper: not stated)"})
    seed: int = 1
    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-3
    lam: float = dataclasses.field(default=0.0, metadata={"help": "lambda; 0 = vanilla"})
    C: float = 0.0
    gamma: str | float = dataclasses.field(default=100.0, metadata={"help": "'max', 25, 50, 75 or 100"})
    method: str = dataclasses.field(default="auto", metadata={"help": "gradient method of the exact ROLL loss"})
    grid: bool = dataclasses.field(default=False, metadata={"help": "run vanilla and the lambda x C grid, select, write Table 2 and Figure 3"})
    grid_lam: tuple[float, ...] = tuple(2.0**k for k in range(-6, 4))
    grid_C: tuple[float, ...] = tuple(2.0**k for k in range(-5, 8))
    paper_points: bool = dataclasses.field(
        default=False, metadata={"help": "grid of only the paper's two selected settings (lambda, C) = (2^-5, 2^4), (2^-1, 2^2)"}
    )
    collect: bool = dataclasses.field(
        default=False, metadata={"help": "with --grid: write Table 2 and Figure 3 from the grid's finished runs, training nothing"}
    )
    progress: bool = True

    def train_config(self, lam: float, C: float) -> TrainConfig:
        """The :class:`~lld_jax.training.TrainConfig` of one run; raises on invalid values."""
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            optimizer="amsgrad",
            lam=lam,
            C=C,
            gamma=self.gamma,
            method=self.method,
            seed=self.seed,
            eval_batch_size=256,
        ).validate()

    def points(self) -> list[tuple[float, float]]:
        """(lambda, C) of every ROLL run: one, or the grid."""
        if not self.grid:
            return [(self.lam, self.C)]
        if self.paper_points:
            return list(PAPER_POINTS)
        return list(itertools.product(self.grid_lam, self.grid_C))

    def validate(self) -> Config:
        """Checks every setting (and every grid point) before anything is read or written."""
        if not (isinstance(self.val_size, int) and 0 <= self.val_size < 30):
            raise ValueError(f"val_size (per speaker) must be in [0, 29]: each speaker has 30 training sequences; got {self.val_size}.")
        for name, n in (("train_size", self.train_size), ("test_size", self.test_size)):
            if n is not None and n < 1:
                raise ValueError(f"{name} must be a positive number of sequences, got {n}.")
        if self.hidden < 1 or not 0 <= self.num_negative <= self.hidden:
            raise ValueError(f"need hidden >= 1 and 0 <= num_negative <= hidden; got hidden={self.hidden}, num_negative={self.num_negative}.")
        if not 0 <= self.negative_slope < 1:
            raise ValueError(f"negative_slope must be in [0, 1), got {self.negative_slope}.")
        if self.collect and not self.grid:
            raise ValueError("--collect gathers a grid's finished runs: use it with --grid (and the grid's other flags).")
        if self.grid and not (self.grid_lam and self.grid_C):
            raise ValueError("the grid needs at least one value of each of --grid-lam and --grid-C.")
        for lam, C in self.points():
            self.train_config(lam, C)
        return self

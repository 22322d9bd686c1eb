"""The settings of :mod:`experiments.toy2d`: one frozen dataclass, every field a command-line flag."""

from __future__ import annotations

import dataclasses

from lld_jax.training import TrainConfig


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the toy experiment."""

    out: str = "runs/toy2d"
    steps: int = dataclasses.field(default=5000, metadata={"help": "full-batch Adam steps per model (paper: 5000)"})
    num_points: int = 100
    noise: float = 0.1
    data_seed: int = 0
    widths: tuple[int, ...] = (100, 100, 100, 100)
    lr: float = 1e-3
    C: float = 5.0
    lambdas: tuple[float, ...] = dataclasses.field(default=(1.0,), metadata={"help": "candidate lambdas (paper: 1)"})
    seed: int = 0

    def validate(self) -> Config:
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise ValueError(f"steps must be a positive integer (an untrained model has no regions to compare), got {self.steps}.")
        if self.num_points < 4:
            raise ValueError(f"num_points must be >= 4, got {self.num_points}.")
        if not self.lambdas or any(lam <= 0 for lam in self.lambdas):
            raise ValueError(f"lambdas must be positive, got {list(self.lambdas)}.")
        if not self.widths or any(w < 1 for w in self.widths):
            raise ValueError(f"widths must be positive, got {list(self.widths)}.")
        TrainConfig(lr=self.lr, C=self.C).validate()
        return self

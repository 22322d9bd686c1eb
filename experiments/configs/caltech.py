"""The settings of :mod:`experiments.caltech`: the presets and one dataclass, every field a command-line flag."""

from __future__ import annotations

import dataclasses
from typing import Any

from lld_jax.training import TrainConfig

BACKGROUND = "BACKGROUND_Google"  # Caltech-101's clutter class, left out by default
MODELS = ("vanilla", "roll")
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "size": 299,
        "classes": None,
        "train_per_class": None,
        "epochs": 20,
        "lr_decay_epoch": 10,
        "lam": 1e-3,
        "num_samples": 360,
        "chunk_size": 8,
        "eval_images": 1024,
        "uniform_samples": 8000,
        "population": 4800,
        "generations": 30,
    },
    "reduced": {
        "size": 32,
        "classes": 10,
        "train_per_class": 30,
        "epochs": 20,
        "lr_decay_epoch": 10,
        "lam": 0.1,
        "num_samples": 18,
        "eval_images": 32,
        "uniform_samples": 160,
        "population": 160,
        "generations": 6,
    },
}


@dataclasses.dataclass
class Config:
    """Settings of the image experiment; ``None`` fields take the preset's value."""

    out: str = dataclasses.field(default="runs/caltech", metadata={"help": "output directory: one run directory per model, table3.md, figures"})
    data_dir: str | None = dataclasses.field(
        default=None,
        metadata={"help": "image folder with one sub-folder per class (None: $LLD_JAX_DATA/caltech101 or the cache, see lld_jax.data.locate)"},
    )
    tfds: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "read this TensorFlow Datasets data set (e.g. caltech101, prepared under $TFDS_DATA_DIR; needs lld-jax[tfds]) instead of --data-dir"
        },
    )
    preset: str = dataclasses.field(default="reduced", metadata={"help": "'reduced' (2-core CPU) or 'paper' (accelerator)"})
    model: str = dataclasses.field(default="both", metadata={"help": "'vanilla', 'roll' or 'both'"})
    size: int | None = dataclasses.field(default=None, metadata={"help": "side of the square inputs in pixels (paper: 299)"})
    classes: int | None = dataclasses.field(default=None, metadata={"help": "use the first K classes (sorted by name); None: all"})
    train_per_class: int | None = dataclasses.field(default=None, metadata={"help": "cap on training images per class (seeded); None: all"})
    exclude: tuple[str, ...] = dataclasses.field(
        default=(BACKGROUND,),
        metadata={"help": "classes left out; none with an empty --exclude (the default may match none; with --tfds: case-insensitive)"},
    )
    num_val: int = 5
    num_test: int = 15
    widths: tuple[int, ...] = dataclasses.field(default=(64, 128, 256, 512), metadata={"help": "ResNet stage channels (ResNet-18: 64 128 256 512)"})
    blocks: tuple[int, ...] = dataclasses.field(default=(2, 2, 2, 2), metadata={"help": "basic blocks per stage (ResNet-18: 2 2 2 2)"})
    torch_weights: str | None = dataclasses.field(default=None, metadata={"help": "torchvision ResNet-18 state_dict file to start from"})
    seed: int = 0
    epochs: int | None = None
    batch_size: int = 32
    lr: float = 0.005
    lr_decay_epoch: int | None = dataclasses.field(default=None, metadata={"help": "lr x 0.1 after this many epochs (0: never)"})
    momentum: float = 0.5
    lam: float | None = dataclasses.field(default=None, metadata={"help": "lambda of the ROLL model (paper preset: 1e-3, reduced: 0.1)"})
    C: float = 8.0
    select_lambdas: tuple[float, ...] = dataclasses.field(
        default=(),
        metadata={
            "help": "the paper's lambda rule (App. I): raise lambda through these values until validation accuracy is significantly "
            "worse than vanilla's, keep the last one before (replaces --lam; e.g. 1e-6 1e-5 1e-4 1e-3 1e-2 1e-1 1)"
        },
    )
    alpha: float = dataclasses.field(default=0.05, metadata={"help": "level of the lambda rule's one-sided exact McNemar test"})
    num_samples: int | None = dataclasses.field(default=None, metadata={"help": "D': sampled input axes per example, a multiple of 3"})
    chunk_size: int | None = dataclasses.field(default=None, metadata={"help": "sampled axes differentiated at once per example (memory bound)"})
    eval_images: int | None = dataclasses.field(default=None, metadata={"help": "test images whose gradient distortion is measured"})
    eps: float = dataclasses.field(default=8 / 256, metadata={"help": "l_inf radius of the distortion ball, [0, 1] pixel units"})
    uniform_samples: int | None = dataclasses.field(default=None, metadata={"help": "samples of the expected distortion"})
    population: int | None = None
    generations: int | None = None
    keep: float = 0.25
    ig_steps: int = dataclasses.field(default=50, metadata={"help": "integrated-gradient steps for Figures 5-6"})
    workers: int | None = dataclasses.field(default=None, metadata={"help": "image decoding threads"})
    progress: bool = True

    def resolved(self) -> Config:
        """A copy with the preset's values in the ``None`` fields, validated."""
        if self.preset not in PRESETS:
            raise ValueError(f"--preset must be one of {sorted(PRESETS)}, got {self.preset!r}.")
        preset = PRESETS[self.preset]
        return dataclasses.replace(self, **{k: v for k, v in preset.items() if getattr(self, k) is None}).validate()

    def validate(self) -> Config:
        if self.model not in (*MODELS, "both"):
            raise ValueError(f"--model must be 'vanilla', 'roll' or 'both', got {self.model!r}.")
        if len(self.widths) != len(self.blocks) or not self.widths:
            raise ValueError(f"--widths and --blocks need one entry per stage, got {self.widths} and {self.blocks}.")
        if self.num_samples is not None and (self.num_samples < 3 or self.num_samples % 3):
            raise ValueError(f"--num-samples must be a positive multiple of the 3 channels (stratified sampling), got {self.num_samples}.")
        if self.size is not None and self.size < 8:
            raise ValueError(f"--size must be at least 8 pixels, got {self.size}.")
        if self.train_per_class is not None and self.train_per_class < 1:
            raise ValueError(f"--train-per-class must be positive (or None for all), got {self.train_per_class}.")
        if self.classes is not None and self.classes < 2:
            raise ValueError(f"--classes must be at least 2 (or None for all), got {self.classes}.")
        if self.select_lambdas and (sorted(set(self.select_lambdas)) != list(self.select_lambdas) or self.select_lambdas[0] <= 0):
            raise ValueError(f"--select-lambdas must be distinct positive values in increasing order, got {list(self.select_lambdas)}.")
        if not 0 < self.alpha < 1:
            raise ValueError(f"--alpha must be in (0, 1), got {self.alpha}.")
        if not 0 < self.eps:
            raise ValueError(f"--eps must be positive, got {self.eps}.")
        return self

    def train_config(self, lam: float) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            lr_decay_epochs=(self.lr_decay_epoch,) if self.lr_decay_epoch else (),
            lr_decay=0.1,
            optimizer="sgd",
            momentum=self.momentum,
            lam=lam,
            C=self.C if lam else 0.0,
            regularizer="sampled",
            num_samples=self.num_samples,
            stratify=True,
            chunk_size=self.chunk_size,
            seed=self.seed + 1,
            eval_batch_size=self.batch_size,
        )

"""The settings of :mod:`experiments.caltech`: the presets and one dataclass, every field a command-line flag."""

from __future__ import annotations

import dataclasses
from typing import Any

from lld_jax.training import TrainConfig

BACKGROUND = "BACKGROUND_Google"  # Caltech-101's clutter class, left out by default
# Caltech-101: the same photographs cropped differently; a random class choice never takes the key while its value
# exists (compared case-insensitively: TFDS names classes in lower case).
NEAR_DUPLICATES = {"faces_easy": "faces"}
MODELS = ("vanilla", "roll")
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "size": 299,
        "classes": None,
        "class_choice": "first",
        "train_per_class": None,
        "num_val": 5,
        "num_test": 15,
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
        "class_choice": "first",
        "train_per_class": 30,
        "num_val": 5,
        "num_test": 15,
        "epochs": 20,
        "lr_decay_epoch": 10,
        "lam": 0.1,
        "num_samples": 18,
        "eval_images": 32,
        "uniform_samples": 160,
        "population": 160,
        "generations": 6,
    },
    # Issue 25: 'reduced' with hyper-parameters chosen on validation data. 10 classes drawn by a seeded rule,
    # 15 validation and 15 test images per class (150 each: McNemar's test has some power), every test image
    # evaluated; lambda (and C) come from --select-lambdas / --select-C, or --lam once chosen.
    "validated": {
        "size": 32,
        "classes": 10,
        "class_choice": "random",
        "train_per_class": 30,
        "num_val": 15,
        "num_test": 15,
        "epochs": 20,
        "lr_decay_epoch": 10,
        "num_samples": 18,
        "eval_images": 0,
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
    preset: str = dataclasses.field(
        default="reduced", metadata={"help": "'reduced' (2-core CPU), 'validated' (2-core CPU, every choice on validation) or 'paper' (accelerator)"}
    )
    model: str = dataclasses.field(default="both", metadata={"help": "'vanilla', 'roll' or 'both'"})
    size: int | None = dataclasses.field(default=None, metadata={"help": "side of the square inputs in pixels (paper: 299)"})
    classes: int | None = dataclasses.field(default=None, metadata={"help": "use K classes (see --class-choice); None: all"})
    class_choice: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "'first': the first K classes by name; 'random': K drawn with --data-seed among the classes with at least "
            "num_val + num_test + train_per_class images, near-duplicates (Faces_easy beside Faces) left out"
        },
    )
    train_per_class: int | None = dataclasses.field(default=None, metadata={"help": "cap on training images per class (seeded); None: all"})
    exclude: tuple[str, ...] = dataclasses.field(
        default=(BACKGROUND,),
        metadata={"help": "classes left out; none with an empty --exclude (the default may match none; with --tfds: case-insensitive)"},
    )
    num_val: int | None = dataclasses.field(default=None, metadata={"help": "validation images per class (paper: 5)"})
    num_test: int | None = dataclasses.field(default=None, metadata={"help": "test images per class (paper: 15)"})
    widths: tuple[int, ...] = dataclasses.field(default=(64, 128, 256, 512), metadata={"help": "ResNet stage channels (ResNet-18: 64 128 256 512)"})
    blocks: tuple[int, ...] = dataclasses.field(default=(2, 2, 2, 2), metadata={"help": "basic blocks per stage (ResNet-18: 2 2 2 2)"})
    torch_weights: str | None = dataclasses.field(default=None, metadata={"help": "torchvision ResNet-18 state_dict file to start from"})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of the model: initialisation, data order, sampled axes, evaluation"})
    data_seed: int | None = dataclasses.field(
        default=None, metadata={"help": "seed of the data: class choice, split, training-image cap, channel statistics (None: --seed)"}
    )
    epochs: int | None = None
    batch_size: int = 32
    lr: float = 0.005
    lr_decay_epoch: int | None = dataclasses.field(default=None, metadata={"help": "lr x 0.1 after this many epochs (0: never)"})
    momentum: float = 0.5
    lam: float | None = dataclasses.field(
        default=None, metadata={"help": "lambda of the ROLL model (paper preset: 1e-3, reduced: 0.1, validated: none, chosen by --select-lambdas)"}
    )
    C: float = 8.0
    select_lambdas: tuple[float, ...] = dataclasses.field(
        default=(),
        metadata={
            "help": "the paper's lambda rule (App. I): raise lambda through these values until validation accuracy is significantly "
            "worse than vanilla's, keep the last one before (replaces --lam; e.g. 1e-6 1e-5 1e-4 1e-3 1e-2 1e-1 1)"
        },
    )
    select_C: tuple[float, ...] = dataclasses.field(
        default=(),
        metadata={
            "help": "then the paper's C rule (App. I): at the chosen lambda, raise C through these values (each above --C) until "
            "validation accuracy is significantly worse than vanilla's, keep the last one before (e.g. 80 800; needs --select-lambdas)"
        },
    )
    select_lr: tuple[float, ...] = dataclasses.field(
        default=(),
        metadata={
            "help": "before the lambda rule, choose the learning rate: train vanilla at each of these values, keep the highest validation "
            "top-1 accuracy (ties: the smaller); the lambda and C rules then run at it (e.g. 0.005 0.02 0.05; needs --select-lambdas)"
        },
    )
    alpha: float = dataclasses.field(default=0.05, metadata={"help": "level of the selection rules' one-sided exact McNemar test"})
    num_samples: int | None = dataclasses.field(default=None, metadata={"help": "D': sampled input axes per example, a multiple of 3"})
    chunk_size: int | None = dataclasses.field(default=None, metadata={"help": "sampled axes differentiated at once per example (memory bound)"})
    eval_images: int | None = dataclasses.field(
        default=None, metadata={"help": "test images whose gradient distortion is measured (a seeded subset; 0: every test image)"}
    )
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
        filled = dataclasses.replace(self, **{k: v for k, v in preset.items() if getattr(self, k) is None})
        if filled.data_seed is None:
            filled = dataclasses.replace(filled, data_seed=filled.seed)
        return filled.validate()

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
        if self.select_C and (sorted(set(self.select_C)) != list(self.select_C) or self.select_C[0] <= self.C):
            raise ValueError(f"--select-C must be distinct values above --C ({self.C:g}) in increasing order, got {list(self.select_C)}.")
        if self.select_lr and (sorted(set(self.select_lr)) != list(self.select_lr) or self.select_lr[0] <= 0):
            raise ValueError(f"--select-lr must be distinct positive values in increasing order, got {list(self.select_lr)}.")
        if self.select_lr and not self.select_lambdas:
            raise ValueError("--select-lr chooses the learning rate the --select-lambdas rule then runs at: pass --select-lambdas too.")
        if self.select_C and not self.select_lambdas:
            raise ValueError("--select-C raises C at the lambda that --select-lambdas chooses: pass --select-lambdas too.")
        if self.lam is None and not self.select_lambdas and self.model != "vanilla":
            raise ValueError(f"preset {self.preset!r} has no lambda: pass --select-lambdas (the paper's rule on validation) or --lam.")
        if self.class_choice not in (None, "first", "random"):
            raise ValueError(f"--class-choice must be 'first' or 'random', got {self.class_choice!r}.")
        if self.class_choice == "random" and self.classes is None:
            raise ValueError("--class-choice random draws --classes K classes: pass --classes too (or --class-choice first to use all).")
        for flag, v, least in (("--num-val", self.num_val, 1), ("--num-test", self.num_test, 1), ("--eval-images", self.eval_images, 0)):
            if v is not None and v < least:
                raise ValueError(f"{flag} must be at least {least}{' (0: every test image)' if least == 0 else ''}, got {v}.")
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

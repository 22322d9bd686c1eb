"""MNIST-format IDX files (found or fetched by :func:`lld_jax.data.locate`).

The paper's MNIST protocol (App. G): normalise with mean 0.1307 and std 0.3081;
split the 60k training images into 55k train / 5k validation, the validation
set being the first 5,000 indices of a ``np.random.seed(1)`` permutation.
"""

from __future__ import annotations

import gzip
from typing import NamedTuple

import numpy as np

from lld_jax._src.download import find_file, locate

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class Split(NamedTuple):
    x: np.ndarray  # (n, 28, 28) float32, normalised
    y: np.ndarray  # (n,) int32


class MNIST(NamedTuple):
    train: Split
    val: Split
    test: Split


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (optionally gzipped); checks its header against its size."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{path} is not a readable IDX file ({err}); re-download or check it.") from err
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} has no uint8 IDX header (magic {raw[:4].hex() if raw else 'empty'}); the file is corrupt.")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise ValueError(f"{path}: header promises {dims} = {expected} values but the file holds {len(raw) - offset}; it is truncated or corrupt.")
    return np.frombuffer(raw, np.uint8, offset=offset).reshape(dims)


def _find(data_dir: str, stem: str) -> str:
    return find_file(
        data_dir,
        (stem + ".gz", stem, stem.replace("-idx", ".idx")),
        f"MNIST file {stem}(.gz) not found in {data_dir!r}. Pass --data-dir pointing at a folder with the four "
        "standard IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-...).",
    )


def load_mnist(
    data_dir: str | None = None,
    *,
    val_size: int = 5000,
    seed: int = 1,
    train_size: int | None = None,
    test_size: int | None = None,
    download: bool = True,
) -> MNIST:
    """Loads MNIST (or Fashion-MNIST) from IDX files with the paper's split and normalisation.

    Args:
      data_dir: folder holding the four IDX files (gzipped or not); None:
        :func:`lld_jax.data.locate` finds MNIST (``$LLD_JAX_DATA``, the cache)
        or downloads it, checksummed.
      val_size: validation examples taken from the training set.
      seed: seed of the permutation that picks the validation set (paper: 1).
      train_size: keep only the first N training examples (quick runs).
      test_size: keep only the first N test examples.
      download: with ``data_dir=None``, fetch MNIST when it is not found.

    Raises:
      FileNotFoundError: a file is missing.
      DownloadError: a download failed or did not match its checksum.
      ValueError: a file is corrupt, or a size is out of range (never clamped).
    """
    data_dir = locate("mnist", data_dir, download=download)
    arrays = {k: read_idx(_find(data_dir, v)) for k, v in _FILES.items()}
    for part in ("train", "test"):
        xs, ys = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if xs.ndim != 3 or ys.ndim != 1 or len(xs) != len(ys):
            raise ValueError(f"MNIST {part} images {xs.shape} and labels {ys.shape} do not match.")
    n_train, n_test = len(arrays["train_images"]), len(arrays["test_images"])
    _check_size("val_size", val_size, n_train - 1)
    if train_size is not None:
        _check_size("train_size", train_size, n_train - val_size)
    if test_size is not None:
        _check_size("test_size", test_size, n_test)
    norm = lambda a: ((a.astype(np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD).astype(np.float32)
    perm = np.random.RandomState(seed).permutation(len(arrays["train_images"]))
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    if train_size is not None:
        train_idx = train_idx[:train_size]
    test = slice(None) if test_size is None else slice(test_size)
    xt, yt = arrays["train_images"], arrays["train_labels"].astype(np.int32)
    return MNIST(
        train=Split(norm(xt[train_idx]), yt[train_idx]),
        val=Split(norm(xt[val_idx]), yt[val_idx]),
        test=Split(norm(arrays["test_images"][test]), arrays["test_labels"][test].astype(np.int32)),
    )


def _check_size(name: str, value: int, available: int) -> None:
    if not (isinstance(value, (int, np.integer)) and 1 <= value <= available):
        raise ValueError(f"{name} must be an integer in [1, {available}] for this data set, got {value!r}.")

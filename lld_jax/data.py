"""Local data loaders (no network needed)."""

from lld_jax._src.data import MNIST, MNIST_MEAN, MNIST_STD, Split, load_mnist, read_idx

__all__ = ["MNIST", "MNIST_MEAN", "MNIST_STD", "Split", "load_mnist", "read_idx"]

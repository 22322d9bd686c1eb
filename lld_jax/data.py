"""Data loaders: MNIST, Japanese Vowels, image folders (found or fetched by :func:`locate`); sequence padding; optional TFDS image sources."""

from lld_jax._src.data import MNIST, MNIST_MEAN, MNIST_STD, Split, load_mnist, read_idx
from lld_jax._src.download import DATA_ENV, DownloadError, cache_dir, locate
from lld_jax._src.image_batches import ImageBatch, ImageBatches, ImageSource, channel_stats
from lld_jax._src.image_folder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    load_image,
    normalize,
    pixel_margin_scale,
    scan_image_folder,
    split_per_class,
)
from lld_jax._src.image_records import ImageRecords, tfds_image_source
from lld_jax._src.sequences import Sequences, Vowels, load_japanese_vowels, pad_sequences, sequence_lengths

__all__ = [
    "DATA_ENV",
    "DownloadError",
    "cache_dir",
    "locate",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageBatch",
    "ImageBatches",
    "ImageRecords",
    "ImageSource",
    "MNIST",
    "MNIST_MEAN",
    "MNIST_STD",
    "Sequences",
    "Split",
    "Vowels",
    "channel_stats",
    "load_image",
    "load_japanese_vowels",
    "load_mnist",
    "normalize",
    "pad_sequences",
    "pixel_margin_scale",
    "read_idx",
    "scan_image_folder",
    "sequence_lengths",
    "split_per_class",
    "tfds_image_source",
]

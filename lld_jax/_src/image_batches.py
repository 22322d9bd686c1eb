"""Padded, masked batches of decoded images through a Grain pipeline, and per-channel statistics.

Images are decoded with Pillow, on demand, by a Grain pipeline
(:class:`ImageSource`, a random-access data source, read by Grain's threads
with a bounded prefetch buffer; Pillow releases the GIL while decoding and
resizing), a few batches ahead of the consumer: the data set never sits in
memory as a float array. Every batch has the same number of rows; the last,
ragged one is padded and masked, never dropped, as
:func:`lld_jax._src.loop.train_epoch` does with host arrays. Decoding is
:mod:`lld_jax._src.image_folder`'s (:func:`load_image`, :func:`normalize`).
"""

from __future__ import annotations

import hashlib
import os
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from lld_jax._src.arguments import positive_int
from lld_jax._src.host import epoch_order
from lld_jax._src.image_folder import ImageLike, Resize, array_bytes, as_items, check_stats, is_path, load_image, normalize
from lld_jax._src.image_records import ImageRecords


class ImageSource:
    """A Grain random-access data source over N images: item ``j`` is ``(image, label)``, decoded on request.

    Decoding is :func:`load_image` (then :func:`normalize` when ``stats`` is
    given), so a file, an array and an :class:`ImageRecords` item decode
    exactly as everywhere else in the library. Safe to read from several
    threads (Pillow releases the GIL while decoding and resizing).

    Args:
      items: the N images: file paths, uint8 arrays, or an :class:`ImageRecords`
        (read here, so a record's I/O runs in the reading thread too).
      labels: int32 array of shape (N,).
      size, resize: as in :func:`load_image`.
      stats: ``(mean, std)`` float32 arrays of shape (3,) to normalise, or None for uint8 pixels.
    """

    def __init__(
        self, items: ImageRecords | list[Any], labels: np.ndarray, *, size: int, resize: Resize, stats: tuple[np.ndarray, np.ndarray] | None
    ):
        self.items, self.labels, self.size, self.resize, self.stats = items, labels, size, resize, stats

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j: int) -> tuple[np.ndarray, np.int32]:
        """Image ``j`` as (size, size, 3) uint8 (or float32 when normalising) and its label; a decoding error names the file or record."""
        item = self.items[j]
        try:
            img = load_image(item, self.size, resize=self.resize)
        except ValueError as err:
            if is_path(item):
                raise  # the message names the file
            what = self.items.name_of(j) if isinstance(self.items, ImageRecords) else f"image array {j}"
            raise ValueError(f"{what}: {err}") from err
        return (img if self.stats is None else normalize(img, *self.stats)), self.labels[j]


class ImageBatch(NamedTuple):
    """One batch from :class:`ImageBatches`; rows where ``mask`` is False are padding."""

    x: np.ndarray  # (B, S, S, 3) uint8, or float32 when normalised
    y: np.ndarray  # (B,) int32
    mask: np.ndarray  # (B,) bool


class ImageBatches:
    """Streams padded, masked batches of decoded images through a Grain pipeline.

    ``epoch(e)`` visits every example exactly once, in the order
    ``host.epoch_order(N, seed, e)`` when shuffling (the order
    :func:`lld_jax._src.loop.train_epoch` uses for host arrays, so streamed
    and host-array runs see the same batches and a resumed run replays them),
    else in the given order. Each batch has ``batch_size`` rows
    (``batch_size // num_shards`` with sharding); the last, ragged one is
    padded with copies of its first row and masked, never dropped.

    The pipeline is Grain's: the epoch's rows of this shard (:meth:`rows`,
    ``-1`` marking padding), cut into a few reading tasks per batch, are a
    ``grain.MapDataset`` whose tasks decode through :class:`ImageSource`, read
    by ``workers`` threads with a bounded prefetch buffer, and batched. Each process reads only its own shard's images. The
    epoch iterator is Grain's: ``get_state()`` gives a small JSON-able
    position and ``set_state()`` on a fresh ``epoch(e)`` iterator continues
    from it without decoding the skipped images (what
    :func:`lld_jax.training.fit` stores with a mid-epoch checkpoint).

    Memory is bounded: at most ``prefetch + 1`` batches' images are read or
    being read ahead of the batch the consumer holds.

    Use it as a context manager (or call :meth:`close`) to stop the reading
    threads of unfinished epoch iterators; an epoch iterator can also be
    closed on its own (``it.close()``). A decoding error is raised, naming the
    file (or record), when the batch holding it is requested.

    Example::

        with ImageBatches(paths, labels, batch_size=32, size=299, seed=0, mean=IMAGENET_MEAN, std=IMAGENET_STD) as batches:
            for epoch in range(20):
                for x, y, mask in batches.epoch(epoch):
                    ...  # x: (32, 299, 299, 3) float32; y: (32,) int32; mask: (32,) bool

    Args:
      paths: the N images: file paths, decoded uint8 arrays (see
        :func:`load_image`), or an :class:`ImageRecords`, which is kept as it
        is and read lazily by the reading threads (any other iterable is
        copied into a list).
      labels: int array of shape (N,).
      batch_size: rows per (global) batch.
      size: side of the square images, in pixels (paper: 299).
      resize: ``"crop"`` or ``"stretch"``, see :func:`load_image`.
      shuffle: visit the examples in the seeded per-epoch order; else in order.
      seed: seed of the per-epoch shuffles.
      mean, std: if given (both), batches hold ``normalize(x, mean, std)`` as
        float32; if None (both), raw uint8 pixels.
      workers: reading threads of each epoch iterator (default: ``min(8, os.cpu_count())``).
      prefetch: batches read ahead of the one being consumed, besides the
        next one (>= 0).
      shard_index, num_shards: in a multi-process run, process ``shard_index``
        of ``num_shards`` gets rows ``[i * b, (i + 1) * b)`` of every global
        batch, ``b = batch_size // num_shards`` (the split ``train_epoch``
        makes); every shard yields the same number of batches, a shard past
        the ragged end getting a fully masked batch of zeros.

    Raises:
      ValueError: invalid arguments (checked at construction).
    """

    def __init__(
        self,
        paths: Sequence[ImageLike] | ImageRecords,
        labels: np.ndarray,
        *,
        batch_size: int,
        size: int = 299,
        resize: Resize = "crop",
        shuffle: bool = True,
        seed: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        workers: int | None = None,
        prefetch: int = 2,
        shard_index: int = 0,
        num_shards: int = 1,
    ) -> None:
        self.paths = as_items(paths)  # the N image sources: paths, arrays or a lazy ImageRecords
        self.labels = np.asarray(labels)
        n = len(self.paths)
        if n == 0 or self.labels.shape != (n,) or not np.issubdtype(self.labels.dtype, np.integer):
            raise ValueError(
                f"ImageBatches needs at least one image (path or array) and one integer label per image; got {n} images, labels {self.labels.dtype}{self.labels.shape}."
            )
        self.labels = self.labels.astype(np.int32)
        workers = min(8, os.cpu_count() or 1) if workers is None else workers
        for name, v, lo in (
            ("batch_size", batch_size, 1),
            ("size", size, 1),
            ("workers", workers, 1),
            ("prefetch", prefetch, 0),
            ("num_shards", num_shards, 1),
        ):
            positive_int(v, name, minimum=lo)
        if batch_size % num_shards:
            raise ValueError(f"batch_size={batch_size} must be a multiple of num_shards={num_shards}.")
        if not (isinstance(shard_index, (int, np.integer)) and 0 <= shard_index < num_shards):
            raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index!r}.")
        if resize not in ("crop", "stretch"):
            raise ValueError(f"resize must be 'crop' or 'stretch', got {resize!r}.")
        if (mean is None) != (std is None):
            raise ValueError("pass both mean and std (normalised float32 batches) or neither (uint8 batches).")
        self.stats = None if mean is None else check_stats(mean, std)
        self.batch_size, self.size, self.resize, self.shuffle, self.seed = int(batch_size), int(size), resize, shuffle, seed
        self.workers, self.prefetch, self.shard_index, self.num_shards = int(workers), int(prefetch), int(shard_index), int(num_shards)
        self.local_batch_size = self.batch_size // self.num_shards
        self.source = ImageSource(self.paths, self.labels, size=self.size, resize=self.resize, stats=self.stats)
        self._open: weakref.WeakSet[Any] | None = weakref.WeakSet()  # epoch iterators whose threads close() stops

    def __len__(self) -> int:
        """Batches per epoch: ``ceil(N / batch_size)``, the same on every shard."""
        return -(-len(self.paths) // self.batch_size)

    @property
    def num_examples(self) -> int:
        """N, the number of images (every one is visited once per epoch)."""
        return len(self.paths)

    def fingerprint(self) -> str:
        """SHA-1 of what decides the batches' content: images, labels, size, resize, normalisation, seed.

        Images count by file path (not content), by shape, dtype and pixels for
        arrays, and by :meth:`ImageRecords.fingerprint` (name and positions)
        for records. Recorded by :func:`lld_jax.training.fit` so that a resumed
        run must see the same data.
        """
        if isinstance(self.paths, ImageRecords):
            images: list[Any] = [b"ImageRecords", self.paths.fingerprint()]
        else:  # a path enters as its repr (NumPy 2's for np.str_ paths, e.g. from an array of paths)
            images = [array_bytes(p) if isinstance(p, np.ndarray) else p for p in self.paths]
        h = hashlib.sha1()
        for part in (
            *images,
            self.labels.tobytes(),
            self.size,
            self.resize,
            self.shuffle,
            self.seed,
            b"" if self.stats is None else np.asarray(self.stats, np.float64).tobytes(),
        ):
            h.update(repr(part).encode() if not isinstance(part, bytes) else part)
            h.update(b"\0")
        return h.hexdigest()

    @property
    def dtype(self) -> np.dtype:
        """float32 when normalising, else uint8."""
        return np.dtype(np.uint8 if self.stats is None else np.float32)

    def __enter__(self) -> ImageBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes every unfinished epoch iterator: cancels its queued reads and stops its threads (reads under way finish first); idempotent."""
        if self._open is not None:
            for it in list(self._open):
                it.close()
            self._open = None

    def __iter__(self) -> Iterator[ImageBatch]:
        """Same as ``epoch(0)``: one pass, e.g. for evaluation with ``shuffle=False``."""
        return self.epoch(0)

    def rows(self, epoch: int) -> np.ndarray:
        """This shard's rows of epoch ``epoch``: int64 of shape (len(self), local_batch_size), indices into the N images, -1 on padding.

        Row ``s`` is the slice ``[i * b, (i + 1) * b)`` of global batch ``s``
        (``i`` the shard index, ``b`` the local batch size); padding only
        follows real rows, and a shard past the ragged end gets a row of -1.
        """
        n, steps = len(self.paths), len(self)
        order = np.full(steps * self.batch_size, -1, np.int64)
        order[:n] = epoch_order(n, self.seed, epoch) if self.shuffle else np.arange(n)
        lo = self.shard_index * self.local_batch_size
        return order.reshape(steps, self.batch_size)[:, lo : lo + self.local_batch_size]

    def epoch(self, epoch: int) -> Iterator[ImageBatch]:
        """Iterates over epoch ``epoch``: ``len(self)`` batches of :class:`ImageBatch`.

        Args:
          epoch: the epoch index; with ``shuffle`` it seeds the order, which is
            the same for the same ``(seed, epoch)``.

        Returns:
          Grain's iterator of ``ImageBatch(x, y, mask)``: ``x`` of shape
          (b, size, size, 3), uint8 pixels or float32 normalised values; ``y``
          int32 (b,); ``mask`` bool (b,), False on padding rows; ``b`` the
          local batch size. Its ``get_state()``/``set_state()`` save and
          restore the position within the epoch; ``close()`` stops its threads.

        Raises:
          RuntimeError: the pipeline is closed.
          ValueError: an image cannot be decoded (when its batch is requested).
        """
        import grain  # imported here: it takes about a second, and only image pipelines need it

        if self._open is None:
            raise RuntimeError("this ImageBatches is closed; create a new one.")
        b = self.local_batch_size
        # Rows, not a Grain sampler, decide the order: the same batches as host arrays in train_epoch, equal
        # batch counts on every shard (a shard with fewer steps would leave the others waiting in a collective).
        # A batch is read as c tasks of a few consecutive rows: several per thread, so that a thread held up
        # (a large file, a busy machine) does not idle the others; not one image each, as Grain's per-task cost
        # (~60 us, mostly its prefetch-depth metric, which scans the buffer) would then cost ~10% on small images.
        c = min(4 * self.workers, b)
        tasks = [(s, int(part[0]), row[part]) for s, row in enumerate(self.rows(epoch)) for part in np.array_split(np.arange(b), c)]
        batch = _BatchAssembly(self.source, b, self.size, self.dtype)
        # Grain's buffer counts tasks submitted ahead of the last one returned: prefetch + 1 batches, as many as
        # the thread pool this replaced had in flight while the consumer waited (fewer measurably idled the threads).
        read = grain.ReadOptions(num_threads=self.workers, prefetch_buffer_size=(self.prefetch + 1) * c)
        it = iter(grain.MapDataset.source(tasks).map(batch.read).to_iter_dataset(read).batch(c, batch_fn=batch.collate))
        self._open.add(it)
        return it


class _BatchAssembly:
    """The reading tasks of one epoch iterator: each decodes some consecutive rows of a batch straight into that batch's array.

    Writing in place (the tasks of a batch fill disjoint rows of one array,
    created by the first of them) spares the consumer a copy of every batch;
    with normalised 299-pixel images that copy cost ~7% of the throughput.
    """

    def __init__(self, source: ImageSource, b: int, size: int, dtype: np.dtype):
        self.source, self.b, self.size, self.dtype = source, b, size, dtype
        self.arrays: dict[int, np.ndarray] = {}  # batch number -> its array, while being filled
        self.lock = threading.Lock()

    def read(self, task: tuple[int, int, np.ndarray]) -> tuple[int, np.ndarray, int]:
        """Task ``(batch number, first row, indices (-1: padding, which comes last))``: ``(batch number, labels, real rows)``."""
        s, lo, idx = task
        with self.lock:
            x = self.arrays.get(s)
            if x is None:
                x = self.arrays[s] = np.zeros((self.b, self.size, self.size, 3), self.dtype)
        k = int(np.sum(idx >= 0))
        y = np.zeros(len(idx), np.int32)
        for row, j in enumerate(idx[:k]):
            x[lo + row], y[row] = self.source[int(j)]
        return s, y, k

    def collate(self, parts: Sequence[tuple[int, np.ndarray, int]]) -> ImageBatch:
        """One batch from its tasks' results, in order: padding rows (after the real ones) copy the first row and are masked; no real row: zeros."""
        s = parts[0][0]
        with self.lock:
            x = self.arrays.pop(s)
            for stale in [t for t in self.arrays if t < s]:  # left by reads cancelled by set_state
                del self.arrays[stale]
        y = np.concatenate([p[1] for p in parts])
        k = sum(p[2] for p in parts)
        mask = np.zeros(self.b, bool)
        mask[:k] = True
        if k:
            x[k:], y[k:] = x[0], y[0]
        return ImageBatch(x, y, mask)


def channel_stats(
    paths: Sequence[ImageLike] | ImageRecords,
    *,
    size: int = 299,
    resize: Resize = "crop",
    max_images: int | None = 1000,
    seed: int = 0,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of decoded, resized images, in [0, 1] pixel units.

    Computed over every pixel of (a seeded random sample of) the images, with
    exact integer sums, streaming: pass the training split's paths.

    Args:
      paths: image files, arrays or an :class:`ImageRecords` (e.g. the training split).
      size, resize: as in :func:`load_image` (use the values of the pipeline).
      max_images: use a random sample of this many images (None: all of them).
      seed: seed of the sample.
      workers: decoding threads (default: ``min(8, os.cpu_count())``).

    Returns:
      ``(mean, std)``: float64 arrays of shape (3,), for :func:`normalize`.

    Raises:
      ValueError: no paths, an invalid ``max_images``, or an unreadable image.
    """
    paths = as_items(paths)
    if not len(paths):
        raise ValueError("channel_stats needs at least one image path.")
    max_images = positive_int(max_images, "max_images", allow_none=True)
    if max_images is not None and max_images < len(paths):
        pick = np.sort(np.random.default_rng(seed).choice(len(paths), max_images, replace=False))
        paths = paths.take(pick) if isinstance(paths, ImageRecords) else [paths[i] for i in pick]
    total = np.zeros(3, np.uint64)
    squares = np.zeros(3, np.uint64)
    count = 0
    with ImageBatches(paths, np.zeros(len(paths), np.int32), batch_size=16, size=size, resize=resize, shuffle=False, workers=workers) as batches:
        for x, _, mask in batches:
            v = x[mask].reshape(-1, 3).astype(np.uint64)
            total += v.sum(0)
            squares += (v * v).sum(0)
            count += len(v)
    mean = total / count / 255.0
    var = np.maximum(squares / count / 255.0**2 - mean**2, 0.0)
    return mean, np.sqrt(var)

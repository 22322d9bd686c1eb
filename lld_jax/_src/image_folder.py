"""A streaming input pipeline for folders of images (one sub-folder per class), e.g. Caltech-101/256.

The paper's Caltech-256 protocol (§5.3, App. I): per class, 5 random images for
validation, 15 for test and the rest for training; images resized to 299×299×3
and normalised per channel (ImageNet mean/std for ImageNet-pretrained weights).

Images are decoded with Pillow, on demand, by a Grain pipeline
(:class:`ImageSource`, a random-access data source, read by Grain's threads
with a bounded prefetch buffer; Pillow releases the GIL while decoding and
resizing), a few batches ahead of the consumer: the data set never sits in
memory as a float array. Every batch has the same number of rows; the last,
ragged one is padded and masked, never dropped, as
:func:`lld_jax._src.loop.train_epoch` does with host arrays.

Sources: the images are files on disk (:func:`scan_image_folder`) or uint8
arrays from a random-access source (:class:`ImageRecords`), e.g. a TensorFlow
Datasets data set read with :func:`tfds_image_source` (optional extra
``lld-jax[tfds]``; the image folder needs no network and no extra package).
Arrays go through the same RGB conversion and resizing as decoded files.

Units: :func:`load_image` returns uint8 pixels; :func:`normalize` maps them to
``(x / 255 - mean) / std`` per channel. Margins and distortions are reported in
[0, 1] pixel units; see :func:`normalize` and :func:`pixel_margin_scale` for
converting a margin computed on normalised inputs.
"""

from __future__ import annotations

import hashlib
import os
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

from lld_jax._src.arguments import positive_int
from lld_jax._src.host import epoch_order
from lld_jax._src.image_records import ImageRecords

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")

Resize = Literal["crop", "stretch"]
ImageLike = str | os.PathLike | np.ndarray  # a file path, or a decoded uint8 image (H, W) or (H, W, C)


def _pil():
    try:
        from PIL import Image
    except ImportError as err:  # pragma: no cover - Pillow is installed wherever the tests run
        raise ImportError("reading image folders needs Pillow: pip install pillow") from err
    return Image


def scan_image_folder(
    root: str, *, exclude: Sequence[str] = (), extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> tuple[list[str], np.ndarray, list[str]]:
    """Lists the images of a folder holding one sub-folder per class.

    Classes are the sub-folders of ``root``, sorted by name (Python string
    order, as torchvision's ``ImageFolder``); class ``k`` of that order gets
    label ``k``. Each class folder is walked recursively, in sorted order.
    Hidden files and folders (names starting with ``.``) and files whose
    extension is not in ``extensions`` (case-insensitive) are skipped, as are
    plain files directly in ``root``. Files are not opened here: a corrupt
    image is reported when it is decoded. Caltech-101's ``BACKGROUND_Google``
    class is kept unless excluded; its extension-less file ``tmp`` is skipped.
    Links are followed, but every file is identified by its real path: a file
    reached twice within a class (a link to a sibling, a folder linked into
    itself) is listed once, and a file reached from two classes is refused,
    so no image can land in two splits or under two labels.

    Args:
      root: the folder holding the class sub-folders.
      exclude: class names to leave out, e.g. ``("BACKGROUND_Google",)``; each
        must exist (a typo is an error, not a silent no-op).
      extensions: file-name endings that count as images.

    Returns:
      ``(paths, labels, class_names)``: ``paths`` a list of N file paths
      (joined onto ``root``), grouped by class and sorted within it; ``labels``
      an int32 array of shape (N,) with values in ``[0, len(class_names))``;
      ``class_names`` the sorted class names.

    Raises:
      FileNotFoundError: ``root`` does not exist or is not a folder.
      ValueError: ``root`` holds no class folder, ``exclude`` names a class
        that is not there, a class folder holds no image, or one file is
        reached from two classes (both paths named).
    """
    if not os.path.isdir(root):
        what = "is not a folder" if os.path.exists(root) else "does not exist"
        raise FileNotFoundError(f"image folder {root!r} {what}; pass the folder holding one sub-folder per class.")
    exts = tuple(e.lower() for e in extensions)
    classes = sorted(d for d in os.listdir(root) if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
    unknown = sorted(set(exclude) - set(classes))
    if unknown:
        raise ValueError(f"exclude names classes that {root!r} does not hold: {unknown}.")
    classes = [c for c in classes if c not in set(exclude)]
    if not classes:
        raise ValueError(f"image folder {root!r} holds no class sub-folder (one sub-folder of images per class is expected).")
    paths: list[str] = []
    labels: list[int] = []
    owner: dict[str, tuple[str, str]] = {}  # real path -> (class, path as listed)
    for k, name in enumerate(classes):
        found = []
        seen_dirs: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, name), followlinks=True):
            real_dir = os.path.realpath(dirpath)
            if real_dir in seen_dirs:  # a folder reached again through a link (e.g. linked into itself): walked once
                dirnames[:] = []
                continue
            seen_dirs.add(real_dir)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                if f.startswith(".") or not f.lower().endswith(exts):
                    continue
                path = os.path.join(dirpath, f)
                real = os.path.realpath(path)
                if real in owner:
                    other_class, other_path = owner[real]
                    if other_class != name:
                        raise ValueError(
                            f"{path!r} (class {name!r}) and {other_path!r} (class {other_class!r}) are the same file {real!r}: "
                            "one image would carry two labels. Remove the link, or exclude one of the classes."
                        )
                    continue  # the same file reached twice within its class: listed once
                owner[real] = (name, path)
                found.append(path)
        if not found:
            raise ValueError(
                f"class folder {os.path.join(root, name)!r} holds no image file (extensions {', '.join(exts)}); "
                f"remove it or pass exclude=({name!r},)."
            )
        paths += found
        labels += [k] * len(found)
    return paths, np.asarray(labels, np.int32), classes


def split_per_class(
    labels: np.ndarray, *, num_val: int = 5, num_test: int = 15, seed: int = 0, class_names: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The paper's per-class split: per class, ``num_val`` random examples for validation, ``num_test`` for test, the rest for training.

    Each class is shuffled by its own generator, seeded with ``(seed, label)``,
    so a class's split does not depend on the other classes.

    Args:
      labels: int array of shape (N,), the class of each example.
      num_val: validation examples per class (paper: 5).
      num_test: test examples per class (paper: 15).
      seed: seed of the per-class shuffles.
      class_names: names of the labels, used in error messages only.

    Returns:
      ``(train_idx, val_idx, test_idx)``: sorted int64 arrays of indices into
      ``labels``; disjoint, and together they cover ``range(N)``.

    Raises:
      ValueError: ``labels`` is not a non-empty 1-D array of non-negative
        integers, a count is negative, or a class has fewer than
        ``num_val + num_test + 1`` examples (named).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0 or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise ValueError(f"labels must be a non-empty 1-D array of non-negative integers; got dtype {labels.dtype}, shape {labels.shape}.")
    for name, v in (("num_val", num_val), ("num_test", num_test)):
        if not (isinstance(v, (int, np.integer)) and v >= 0):
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}.")
    parts: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < num_val + num_test + 1:
            name = f"{class_names[c]!r} (label {c})" if class_names is not None and c < len(class_names) else f"label {c}"
            raise ValueError(
                f"class {name} has {len(idx)} examples; the split needs at least num_val + num_test + 1 = {num_val + num_test + 1} "
                "(one left for training). Exclude the class or lower num_val/num_test."
            )
        idx = idx[np.random.default_rng([seed, int(c)]).permutation(len(idx))]
        parts[1].append(idx[:num_val])
        parts[2].append(idx[num_val : num_val + num_test])
        parts[0].append(idx[num_val + num_test :])
    train, val, test = (np.sort(np.concatenate(p)).astype(np.int64) for p in parts)
    return train, val, test


def load_image(path: ImageLike, size: int = 299, *, resize: Resize = "crop") -> np.ndarray:
    """Decodes one image file, or converts one decoded image array, to a square RGB uint8 array.

    Grayscale, bilevel, palette, CMYK and other 8-bit modes are converted to
    RGB (grayscale gives three equal channels); an alpha channel is dropped
    (the stored colours are kept, not composited); 16-bit grayscale is scaled
    to 8 bits. Only the first frame of an animated file is read, and EXIF
    orientation is not applied (as in torchvision's default pipeline).

    An array (e.g. an item of :class:`ImageRecords`) is taken as already
    decoded: uint8 of shape (H, W) or (H, W, 1) (grayscale), (H, W, 3) (RGB)
    or (H, W, 4) (RGBA). It goes through the same conversion and resizing as a
    decoded file, so a lossless file (PNG) and its pixel array give identical
    outputs.

    Resizing (bilinear, antialiased when shrinking):
      - ``"crop"`` (default): the central square of side ``min(width, height)``
        is resized to ``size × size``, i.e. a shorter-side resize to ``size``
        followed by a centre crop; the aspect ratio is kept.
      - ``"stretch"``: the whole image is resized to ``size × size``; the
        aspect ratio changes.

    Args:
      path: the image file (str or path-like), or a uint8 image array as above.
      size: the side of the output, in pixels (paper: 299).
      resize: ``"crop"`` or ``"stretch"``, as above.

    Returns:
      uint8 array of shape (size, size, 3), values in [0, 255], HWC.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the file is not a readable image, or has an unsupported
        mode (32-bit integer or float pixels); the message names the file.
        Or the array is not uint8 with one of the shapes above.
    """
    if resize not in ("crop", "stretch"):
        raise ValueError(f"resize must be 'crop' or 'stretch', got {resize!r}.")
    size = positive_int(size, "size")
    Image = _pil()
    if isinstance(path, np.ndarray):
        return _square_rgb(_array_image(path), size, resize)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode.startswith("I;16"):
                img = Image.fromarray((np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8))
            elif img.mode in ("I", "F"):
                raise ValueError(f"pixel mode {img.mode!r} (32-bit) is not supported; convert the file to 8-bit RGB or grayscale")
            out = _square_rgb(img, size, resize)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path} is not a readable image ({err}); re-download or remove it.") from err
    return out


def _array_image(image: np.ndarray):
    """A decoded uint8 array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) as a Pillow image (modes L, L, RGB, RGBA)."""
    a = np.asarray(image)
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3, 4))) or 0 in a.shape[:2]:
        raise ValueError(
            f"an image array must be uint8 of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) with H, W >= 1; got dtype {a.dtype}, shape {a.shape}."
        )
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    return _pil().fromarray(np.ascontiguousarray(a))


def _square_rgb(img: Any, size: int, resize: Resize) -> np.ndarray:
    """The part of :func:`load_image` after decoding, shared by files and arrays: RGB conversion, then the crop or stretch resize."""
    Image = _pil()
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    box = (0.0, 0.0, float(w), float(h))
    if resize == "crop":
        s = min(w, h)
        box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR, box=box), dtype=np.uint8)


def normalize(images: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """Per-channel normalisation of uint8 images: ``(x / 255 - mean) / std``.

    ``mean`` and ``std`` are in [0, 1] pixel units (ImageNet's by default, for
    ImageNet-pretrained weights; or :func:`channel_stats` of the training
    split). Margins and distortions are reported in [0, 1] pixel units: a
    perturbation ``d`` of pixel values becomes ``d / std`` (per channel) after
    normalisation. So a margin computed on normalised inputs converts back to
    pixel units channel by channel; as one number, ``min(std) * margin`` is a
    certified (conservative) pixel-unit margin and ``max(std) * margin`` an
    upper bound (see :func:`pixel_margin_scale`). For exact pixel-unit margins,
    feed the network [0, 1] pixels and normalise inside the model.

    Args:
      images: uint8 array of shape (..., 3), values in [0, 255].
      mean: per-channel mean, 3 floats in [0, 1] pixel units.
      std: per-channel standard deviation, 3 positive floats in [0, 1] pixel units.

    Returns:
      float32 array of the shape of ``images``.

    Raises:
      ValueError: ``images`` is not uint8 with 3 channels last, or ``mean``/``std``
        are not 3 finite values (``std`` positive).
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim < 1 or images.shape[-1] != 3:
        raise ValueError(f"normalize expects uint8 images with 3 channels last, got dtype {images.dtype}, shape {images.shape}.")
    m, s = _check_stats(mean, std)
    return ((images.astype(np.float32) * np.float32(1 / 255) - m) / s).astype(np.float32)


def pixel_margin_scale(std: Sequence[float] = IMAGENET_STD) -> float:
    """The factor turning a margin on normalised inputs into a certified margin in [0, 1] pixel units: ``min(std)``.

    Normalisation divides channel ``c`` by ``std[c]``, so a pixel perturbation
    ``d`` has normalised norm at most ``||d||_p / min(std)`` (any p). A region
    certified for normalised perturbations of norm ``margin`` therefore holds
    every pixel perturbation of norm ``min(std) * margin``. With a single std
    (MNIST's 0.3081) this is exact, as in the paper's App. G; with per-channel
    stds it is a lower bound.

    Args:
      std: per-channel standard deviation used by :func:`normalize`, in [0, 1] pixel units.

    Returns:
      ``min(std)`` as a float; pass it as ``scale`` to the evaluation helpers.
    """
    return float(_check_stats((0.0, 0.0, 0.0), std)[1].min())


def _check_stats(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    m, s = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    if m.shape != (3,) or s.shape != (3,) or not (np.isfinite(m).all() and np.isfinite(s).all() and (s > 0).all()):
        raise ValueError(f"mean and std must be 3 finite values each (std > 0), in [0, 1] pixel units; got {mean!r}, {std!r}.")
    return m, s


def _as_items(paths: Any) -> ImageRecords | list[Any]:
    """An :class:`ImageRecords` as it is (lazy); anything else as a list of paths or arrays."""
    return paths if isinstance(paths, ImageRecords) else list(paths)


def _array_bytes(a: np.ndarray) -> bytes:
    """Shape, dtype and contents of an array, for fingerprints."""
    return repr((a.shape, a.dtype.str)).encode() + np.ascontiguousarray(a).tobytes()


def _is_path(item: Any) -> bool:
    return isinstance(item, (str, os.PathLike))


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
            if _is_path(item):
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
        self.paths = _as_items(paths)  # the N image sources: paths, arrays or a lazy ImageRecords
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
        self.stats = None if mean is None else _check_stats(mean, std)
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
            images = [_array_bytes(p) if isinstance(p, np.ndarray) else p for p in self.paths]
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
    paths = _as_items(paths)
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

"""Folders of images (one sub-folder per class), e.g. Caltech-101/256.

The paper's Caltech-256 protocol (§5.3, App. I): per class, 5 random images for
validation, 15 for test and the rest for training; images resized to 299×299×3
and normalised per channel (ImageNet mean/std for ImageNet-pretrained weights).

This module scans, splits and decodes; the batches themselves come from
:mod:`lld_jax._src.image_batches` (a Grain pipeline over these decoders).

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

import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from lld_jax._src.arguments import positive_int
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
    m, s = check_stats(mean, std)
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
    return float(check_stats((0.0, 0.0, 0.0), std)[1].min())


def check_stats(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    m, s = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    if m.shape != (3,) or s.shape != (3,) or not (np.isfinite(m).all() and np.isfinite(s).all() and (s > 0).all()):
        raise ValueError(f"mean and std must be 3 finite values each (std > 0), in [0, 1] pixel units; got {mean!r}, {std!r}.")
    return m, s


def as_items(paths: Any) -> ImageRecords | list[Any]:
    """An :class:`ImageRecords` as it is (lazy); anything else as a list of paths or arrays."""
    return paths if isinstance(paths, ImageRecords) else list(paths)


def array_bytes(a: np.ndarray) -> bytes:
    """Shape, dtype and contents of an array, for fingerprints."""
    return repr((a.shape, a.dtype.str)).encode() + np.ascontiguousarray(a).tobytes()


def is_path(item: Any) -> bool:
    return isinstance(item, (str, os.PathLike))

"""Lazy random-access image sources: :class:`ImageRecords`, and TensorFlow Datasets through :func:`tfds_image_source`.

The optional alternative to an image folder on disk
(:func:`lld_jax.data.scan_image_folder`), for users with a network: TFDS
(``pip install "lld-jax[tfds]"``) prepares a data set once and
``tfds.data_source`` reads its records on demand; :class:`ImageBatches
<lld_jax.data.ImageBatches>` decodes them like files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


class ImageRecords(Sequence):
    """A lazy, random-access sequence of decoded images: item ``i`` is read from its source when asked for, never cached.

    Concatenates one or more record sources (e.g. the splits of a TFDS data
    set, see :func:`tfds_image_source`), each a sequence (``len`` and integer
    indexing) whose records hold a uint8 image under ``key`` (a mapping such as
    TFDS's feature dicts), or are the image arrays themselves (``key=None``).
    Pass it to :class:`ImageBatches` or :func:`channel_stats` in place of file
    paths: the images are read and resized by the decoding threads.

    Indexing with an int returns the stored image (uint8, (H, W) or (H, W, C),
    not resized); with a slice, an integer array or a boolean mask of length
    ``len(self)``, it returns a view (another :class:`ImageRecords` over the
    same sources), so a split such as ``records[train_idx]`` reads nothing.

    Args:
      sources: part name -> record source, in the order they are concatenated
        (e.g. ``{"train": ..., "test": ...}``).
      name: names the data in :meth:`fingerprint` and :meth:`name_of`; make it
        change when the data changes (TFDS: data set, config and version).
      key: the record field holding the image; None if records are arrays.
      indices: positions in the concatenation that this view holds, in order
        (default: all of them).

    Raises:
      ValueError: no source, an empty name, or ``indices`` not 1-D integers in
        ``[0, total)``.
    """

    def __init__(self, sources: Mapping[str, Sequence[Any]], *, name: str, key: str | None = "image", indices: np.ndarray | None = None) -> None:
        self.sources = dict(sources)
        if not self.sources or not name:
            raise ValueError(f"ImageRecords needs at least one source and a non-empty name; got {len(self.sources)} sources, name {name!r}.")
        self.name, self.key = name, key
        self._parts = list(self.sources)
        self._starts = np.concatenate([[0], np.cumsum([len(src) for src in self.sources.values()])]).astype(np.int64)
        total = int(self._starts[-1])
        idx = np.arange(total, dtype=np.int64) if indices is None else np.asarray(indices)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)) or (idx.size and (idx.min() < 0 or idx.max() >= total)):
            raise ValueError(f"indices must be a 1-D integer array with values in [0, {total}); got dtype {idx.dtype}, shape {idx.shape}.")
        self.indices = idx.astype(np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: Any) -> Any:
        """The image at position ``i`` (an int), or a view for a slice, integer array or boolean mask."""
        if isinstance(i, (int, np.integer)):
            n = len(self.indices)
            if not -n <= i < n:
                raise IndexError(f"index {i} out of range for {n} records.")
            part, local = self._locate(int(self.indices[i]))
            record = self.sources[part][local]
            return np.asarray(record if self.key is None else record[self.key])
        if isinstance(i, slice):
            return self.take(np.arange(len(self.indices))[i])
        i = np.asarray(i)
        if i.dtype == bool:
            if i.shape != (len(self.indices),):
                raise IndexError(f"a boolean mask must have shape ({len(self.indices)},), got {i.shape}.")
            i = np.flatnonzero(i)
        return self.take(i)

    def take(self, positions: np.ndarray | Sequence[int]) -> ImageRecords:
        """A view holding items ``positions`` of this one, in that order (nothing is read)."""
        pos = np.asarray(positions)
        if pos.ndim != 1 or (pos.size and not np.issubdtype(pos.dtype, np.integer)):
            raise IndexError(f"positions must be a 1-D integer array, got dtype {pos.dtype}, shape {pos.shape}.")
        return ImageRecords(self.sources, name=self.name, key=self.key, indices=self.indices[pos] if pos.size else pos.astype(np.int64))

    def _locate(self, g: int) -> tuple[str, int]:
        k = int(np.searchsorted(self._starts, g, side="right")) - 1
        return self._parts[k], g - int(self._starts[k])

    def name_of(self, i: int) -> str:
        """A readable id of item ``i``: ``"<name>:<part>[<index in part>]"``, e.g. ``"tfds:caltech101/3.0.2:train[12]"``."""
        part, local = self._locate(int(self.indices[i]))
        return f"{self.name}:{part}[{local}]"

    def names(self) -> list[str]:
        """:meth:`name_of` of every item, in order (e.g. in place of file paths in reports)."""
        return [self.name_of(i) for i in range(len(self.indices))]

    def fingerprint(self) -> str:
        """SHA-1 of the data's identity: name, key, part names and lengths, and the positions held.

        Pixels are not hashed (that would read every image); the ``name`` must
        therefore change whenever the data changes (for TFDS it holds the data
        set's config and version).
        """
        h = hashlib.sha1()
        for part in (self.name, repr(self.key), *(f"{p}:{len(src)}" for p, src in self.sources.items())):
            h.update(part.encode())
            h.update(b"\0")
        h.update(self.indices.tobytes())
        return h.hexdigest()

    def __repr__(self) -> str:
        return f"ImageRecords({self.name!r}, {len(self)} of {int(self._starts[-1])} records, parts {self._parts})"


TFDS_EXTRA = 'pip install "lld-jax[tfds]"'


def _import_tfds() -> Any:
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError(
            f"reading TensorFlow Datasets needs the optional package tensorflow-datasets: {TFDS_EXTRA}. "
            "Without it (or without a network), use an image folder: scan_image_folder(root), or --data-dir in the experiments."
        ) from err
    return tfds


def tfds_image_source(
    name: str,
    *,
    split: str | Sequence[str] = "all",
    data_dir: str | None = None,
    download: bool = False,
    image_key: str = "image",
    label_key: str = "label",
) -> tuple[ImageRecords, np.ndarray, list[str]]:
    """Images and labels of a TensorFlow Datasets (TFDS) image-classification data set, as a lazy random-access source.

    The optional alternative to an image folder (:func:`scan_image_folder`),
    for users with a network; it needs ``pip install "lld-jax[tfds]"``. The
    records are read with ``tfds.data_source`` (TFDS's random-access API over
    ArrayRecord files; TensorFlow is not needed): an image is read and decoded
    only when :class:`ImageBatches` asks for it. Several splits are pooled
    into one sequence, in the order given ("all": every split, sorted by
    name), so that the paper's per-class re-split (:func:`split_per_class`)
    applies as to a folder.

    Cost: the labels are read once, here, by one pass over every record with
    the image left undecoded (``tfds.decode.SkipDecoding``): the I/O of the
    whole data set (about its size on disk, ~130 MB for Caltech-101) but no
    image decoding. Nothing else is read until images are asked for.

    Args:
      name: the TFDS name, optionally with config and version
        (``"caltech101"``, ``"caltech101:3.0.2"``).
      split: a split name (TFDS slices such as ``"train[:50%]"`` pass
        through), a list of them, or ``"all"`` (every split). Only
        identical names are refused: overlapping slices of one split
        (``["train[:60%]", "train[50%:]"]``) hold the shared records twice.
      data_dir: TFDS's data folder (None: ``$TFDS_DATA_DIR``, else
        ``~/tensorflow_datasets``).
      download: download and prepare the data set if it is not prepared in
        ``data_dir`` (needs a network; written in ArrayRecord format). With
        False (default) nothing is downloaded and a missing data set is an error.
      image_key: the feature holding the image (uint8 (H, W, C)).
      label_key: the ``tfds.features.ClassLabel`` feature holding the class.

    Returns:
      ``(records, labels, class_names)``: ``records`` an :class:`ImageRecords`
      of N uint8 images named ``"tfds:<name>/<version>"`` (its fingerprint
      follows the data set's config and version); ``labels`` an int32 array of
      shape (N,) with values in ``[0, len(class_names))``; ``class_names`` the
      label feature's names, label ``k`` being ``class_names[k]``.

    Raises:
      ImportError: tensorflow-datasets is not installed (names the extra).
      FileNotFoundError: the data set is not prepared in ``data_dir`` and
        ``download`` is False.
      ValueError: an unknown or repeated split, a missing image or label
        feature, a label feature without class names, an empty selection, or
        a label outside the class names.
      Errors of TFDS itself pass through unchanged (an unknown data set name;
        a data set prepared only as TFRecord, which has no random access: TFDS
        says to prepare it as ArrayRecord).
    """
    tfds = _import_tfds()
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        if not download:
            raise FileNotFoundError(
                f"TFDS data set {name!r} is not prepared in {builder.data_dir} (data_dir={data_dir!r}; None means $TFDS_DATA_DIR or "
                f"~/tensorflow_datasets). Prepare it on a machine with a network: tfds_image_source({name!r}, download=True), or "
                f"`tfds build {name} --file_format=array_record`, then copy the data folder here and pass it as data_dir. "
                "Or use an image folder instead (scan_image_folder; --data-dir in the experiments)."
            )
        tfds.data_source(name, data_dir=data_dir, download=True)  # downloads and prepares in ArrayRecord, the random-access format
        builder = tfds.builder(name, data_dir=data_dir)  # the prepared data set's info lists its splits
    info = builder.info
    available = list(info.splits)
    splits = sorted(available) if split == "all" else [split] if isinstance(split, str) else list(split)
    unknown = [s for s in splits if s.split("[")[0] not in available]
    if not splits or unknown or len(set(splits)) < len(splits):
        raise ValueError(f"split must name distinct splits of {name!r}, which has {sorted(available)} (or be 'all'); got {split!r}.")
    features = list(info.features.keys())
    if image_key not in features or label_key not in features:
        raise ValueError(f"TFDS data set {name!r} has features {features}; pass image_key= and label_key= naming its image and its class label.")
    class_names = list(getattr(info.features[label_key], "names", None) or [])
    if not class_names:
        raise ValueError(
            f"feature {label_key!r} of {name!r} has no class names (not a tfds.features.ClassLabel); pass label_key= naming the class label."
        )

    sources = tfds.data_source(name, split=splits, data_dir=data_dir, download=False)
    # Labels: a second view of the same files whose image field stays encoded bytes, so the pass decodes no image.
    label_sources = tfds.data_source(name, split=splits, data_dir=data_dir, download=False, decoders={image_key: tfds.decode.SkipDecoding()})
    labels = np.concatenate([_read_labels(src, label_key) for src in label_sources])
    if len(labels) == 0:
        raise ValueError(f"splits {splits} of {name!r} hold no example.")
    if labels.min() < 0 or labels.max() >= len(class_names):
        raise ValueError(
            f"labels of {name!r} fall outside [0, {len(class_names)}) (its {len(class_names)} class names): min {labels.min()}, max {labels.max()}."
        )
    records = ImageRecords(dict(zip(splits, sources)), name=f"tfds:{info.full_name}", key=image_key)
    return records, labels.astype(np.int32), class_names


def _read_labels(source: Sequence[Any], key: str, chunk: int = 1024) -> np.ndarray:
    """``source[i][key]`` for every record, as int64 (N,); read in chunks with ``__getitems__`` where the source has it (batched I/O)."""
    n = len(source)
    out = np.empty(n, np.int64)
    many = getattr(source, "__getitems__", None)
    for s in range(0, n, chunk):
        keys = list(range(s, min(n, s + chunk)))
        recs = many(keys) if many is not None else [source[i] for i in keys]
        out[s : s + len(keys)] = [int(r[key]) for r in recs]
    return out

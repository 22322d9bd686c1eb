"""Variable-length sequences: padding with a frame flag, and the UCI Japanese Vowels loader (paper Sec. 5.2, App. H).

Japanese Vowels (Kudo et al. 1999): 9 speakers, 12 LPC cepstrum coefficients
per frame, 7-29 frames per utterance; 270 training and 370 test utterances in
speaker order. The paper uses the raw, unnormalised features and the official
split.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from lld_jax._src.download import find_file, locate

VOWELS_CLASSES = 9
VOWELS_FEATURES = 12
VOWELS_TRAIN_COUNTS = (30,) * 9
VOWELS_TEST_COUNTS = (31, 35, 88, 44, 29, 24, 40, 50, 29)


def pad_sequences(seqs: Sequence[np.ndarray], length: int | None = None, dtype=np.float32) -> np.ndarray:
    """Stacks sequences of shapes ``(T_i, F)`` into ``(B, T, F + 1)``: zero padding at the end, a frame flag last.

    The flag channel is 1 on real frames and 0 on padding; models built with
    ``variable_length=True`` (:class:`lld_jax.models.RNN`, :class:`lld_jax.models.ScoRNN`)
    read it, and their results on a padded sequence equal those on the
    sequence alone.

    Args:
      seqs: B arrays of shape ``(T_i, F)`` with T_i >= 1.
      length: T (default: the longest sequence); must be >= every T_i.
      dtype: output dtype.

    Returns:
      The padded batch ``(B, T, F + 1)``.

    Example:
      >>> import numpy as np
      >>> from lld_jax.data import pad_sequences
      >>> pad_sequences([np.ones((1, 2)), 2 * np.ones((2, 2))]).tolist()
      [[[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], [[2.0, 2.0, 1.0], [2.0, 2.0, 1.0]]]
    """
    if len(seqs) == 0:
        raise ValueError("pad_sequences needs at least one sequence.")
    seqs = [np.asarray(s) for s in seqs]
    feats = {s.shape[1] if s.ndim == 2 else None for s in seqs}
    if None in feats or len(feats) != 1:
        raise ValueError(f"every sequence must have shape (T_i, F) with one F; got shapes {sorted({s.shape for s in seqs})[:5]}.")
    lengths = [len(s) for s in seqs]
    if min(lengths) < 1:
        raise ValueError("every sequence needs at least one frame.")
    t = max(lengths) if length is None else int(length)
    if t < max(lengths):
        raise ValueError(f"length={t} is shorter than the longest sequence ({max(lengths)} frames); sequences are never truncated.")
    (f,) = feats
    out = np.zeros((len(seqs), t, f + 1), dtype)
    for i, s in enumerate(seqs):
        out[i, : len(s), :f] = s
        out[i, : len(s), f] = 1
    return out


def sequence_lengths(x: np.ndarray) -> np.ndarray:
    """Number of real frames of each padded sequence ``(B, T, F + 1)`` (see :func:`pad_sequences`)."""
    return np.sum(np.asarray(x)[..., -1] > 0.5, axis=-1)


class Sequences(NamedTuple):
    """A split of variable-length sequences: ``x`` a list of ``(T_i, F)`` float arrays, ``y`` (B,) int32 labels."""

    x: list[np.ndarray]
    y: np.ndarray


class Vowels(NamedTuple):
    """Japanese Vowels, official split."""

    train: Sequences
    test: Sequences


def _read_lines(path: str) -> list[str]:
    """The lines of a text file, gzipped or not (by its name); unreadable files raise one ``ValueError`` naming the path."""
    try:
        with gzip.open(path, "rt") if path.endswith(".gz") else open(path) as fh:
            return fh.read().splitlines()
    except IsADirectoryError as err:
        raise ValueError(f"{path} is a folder, not a Japanese Vowels file: pass the folder holding the files as data_dir.") from err
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a readable text file ({type(err).__name__}: {err}); re-download it.") from err


def _read_raw(path: str) -> list[np.ndarray]:
    """Parses a raw UCI file: utterances end with a row of twelve 1.0 values (no real frame is all ones)."""
    rows = []
    for lineno, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        try:
            vals = [float(v) for v in line.split()]
        except ValueError as err:
            raise ValueError(f"{path}, line {lineno}: not a row of numbers ({err}); the file is corrupt.") from err
        if len(vals) != VOWELS_FEATURES:
            raise ValueError(f"{path}, line {lineno}: {len(vals)} values, expected {VOWELS_FEATURES}; the file is corrupt.")
        rows.append(vals)
    a = np.asarray(rows, np.float64).reshape(-1, VOWELS_FEATURES)
    ends = np.flatnonzero(np.all(a == 1.0, axis=1))
    if len(ends) == 0 or ends[-1] != len(a) - 1:
        raise ValueError(f"{path}: the last utterance is not closed by a row of ones; the file is truncated or corrupt.")
    starts = np.r_[0, ends[:-1] + 1]
    seqs = [a[s:e] for s, e in zip(starts, ends)]
    if any(len(s) == 0 for s in seqs):
        raise ValueError(f"{path}: an utterance has no frames; the file is corrupt.")
    return seqs


def _read_ts(path: str) -> tuple[list[np.ndarray], np.ndarray]:
    """Parses a sktime/aeon ``.ts`` file: one line per series, channels joined by ':', the label (1-9) last."""
    seqs, labels = [], []
    in_data = False
    for lineno, line in enumerate(_read_lines(path), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.lower().startswith("@data"):
            in_data = True
            continue
        if line.startswith("@") or not in_data:
            continue
        *chans, label = line.split(":")
        if len(chans) != VOWELS_FEATURES:
            raise ValueError(f"{path}, line {lineno}: {len(chans)} channels, expected {VOWELS_FEATURES}; the file is corrupt or not Japanese Vowels.")
        try:
            rows = [[float(v) for v in c.split(",")] for c in chans]
            k = int(label)
        except ValueError as err:
            raise ValueError(f"{path}, line {lineno}: malformed series ({err}).") from err
        if len({len(r) for r in rows}) != 1:
            raise ValueError(f"{path}, line {lineno}: the channels have different lengths {sorted({len(r) for r in rows})}.")
        if not 1 <= k <= VOWELS_CLASSES:
            raise ValueError(f"{path}, line {lineno}: label {k} is not a speaker 1-{VOWELS_CLASSES}.")
        seqs.append(np.array(rows).T)
        labels.append(k - 1)
    return seqs, np.asarray(labels, np.int32)


def _labels(counts: Sequence[int]) -> np.ndarray:
    return np.repeat(np.arange(len(counts), dtype=np.int32), counts)


def _find_file(data_dir: str, name: str) -> str:
    """``name`` or ``name.gz`` in ``data_dir``; the message says what to pass."""
    return find_file(
        data_dir,
        (name, name + ".gz"),
        f"Japanese Vowels file {name}(.gz) not found in {data_dir!r}. Pass --data-dir pointing at a folder with the UCI files "
        "ae.train and ae.test (https://archive.ics.uci.edu/ml/datasets/Japanese+Vowels), or let lld_jax.data.locate fetch them.",
    )


def _speaker_counts(data_dir: str, split: str, default: Sequence[int]) -> tuple[int, ...]:
    """Utterances per speaker: the UCI release's ``size_ae.<split>`` file when present (e.g. an excerpt), else ``default``."""
    path = os.path.join(data_dir, f"size_ae.{split}")
    if not os.path.exists(path):
        return tuple(default)
    with open(path) as fh:
        text = fh.read()
    try:
        counts = tuple(int(v) for v in text.split())
    except ValueError as err:
        raise ValueError(f"{path} must hold {VOWELS_CLASSES} whitespace-separated utterance counts ({err}).") from err
    if len(counts) != VOWELS_CLASSES or min(counts) < 1:
        raise ValueError(f"{path} must hold {VOWELS_CLASSES} positive utterance counts, one per speaker; got {list(counts)}.")
    return counts


def load_japanese_vowels(data_dir: str | None = None, *, source: str = "raw", download: bool = True) -> Vowels:
    """Loads UCI Japanese Vowels (official split, raw features, labels 0-8).

    Args:
      data_dir: folder with ``ae.train`` and ``ae.test`` (``source="raw"``,
        the UCI files) or ``JapaneseVowels_TRAIN.ts`` / ``_TEST.ts``
        (``source="ts"``, the sktime/aeon copies), each optionally gzipped
        (``.gz``). The UCI release's ``size_ae.train`` / ``size_ae.test``
        (utterances per speaker), when present, replace the release's counts,
        so an excerpt in speaker order also loads. None:
        :func:`lld_jax.data.locate` finds the raw files (``$LLD_JAX_DATA``, the
        cache) or downloads them from UCI, checksummed.
      source: ``"raw"`` or ``"ts"``.
      download: with ``data_dir=None``, fetch the raw files when not found.

    Returns:
      :class:`Vowels` with 270 training and 370 test utterances (or the
      ``size_ae`` counts), each ``(T_i, 12)`` float32 with 7 <= T_i <= 29.

    Raises:
      FileNotFoundError: a file is missing (the message says what to pass).
      ValueError: a file is malformed or does not hold the expected utterances.
    """
    names = {"raw": ("ae.train", "ae.test"), "ts": ("JapaneseVowels_TRAIN.ts", "JapaneseVowels_TEST.ts")}
    if source not in names:
        raise ValueError(f"source must be 'raw' or 'ts', got {source!r}.")
    if data_dir is None and source == "ts":
        raise ValueError("source='ts' reads a folder you name: pass data_dir (only the raw UCI files are downloaded).")
    data_dir = locate("japanese-vowels", data_dir, download=download)
    splits = []
    for name, split, default in zip(names[source], ("train", "test"), (VOWELS_TRAIN_COUNTS, VOWELS_TEST_COUNTS)):
        path = _find_file(data_dir, name)
        counts = _speaker_counts(data_dir, split, default)
        if source == "raw":
            seqs, y = _read_raw(path), _labels(counts)
        else:
            seqs, y = _read_ts(path)
        if len(seqs) != sum(counts):
            raise ValueError(f"{path} holds {len(seqs)} utterances, expected {sum(counts)}; the file is truncated or not Japanese Vowels.")
        if source == "ts" and not np.array_equal(np.bincount(y, minlength=len(counts)), counts):
            raise ValueError(f"{path}: per-speaker counts {np.bincount(y).tolist()} differ from the expected {list(counts)}.")
        splits.append(Sequences([s.astype(np.float32) for s in seqs], y))
    return Vowels(*splits)

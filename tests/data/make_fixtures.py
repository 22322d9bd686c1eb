"""Cuts the test fixtures in this folder from the full data sets (run once; the output is committed).

    python tests/data/make_fixtures.py [SOURCE]   # SOURCE: a folder laid out like shared/data (default ../shared/data)

Writes, beside this script:

* ``mnist/``: the first 500 training and the first 200 test images and labels
  of MNIST, as gzipped IDX files (same header layout as the release);
* ``japanese-vowels/``: the first 6 training and the first 4 test utterances of
  each of the 9 speakers, as gzipped raw UCI files (``ae.train.gz``,
  ``ae.test.gz``, lines copied byte for byte), ``size_ae.train`` /
  ``size_ae.test`` (utterances per speaker, the UCI release's own format) and
  the same series from the sktime/aeon ``.ts`` copies, gzipped (header kept,
  series lines copied byte for byte);
* ``caltech101/101_ObjectCategories/``: the 10 smallest files of three classes
  (``airplanes``, ``Motorbikes``, ``wrench``) and the 4 smallest of the
  clutter class ``BACKGROUND_Google`` (which experiments exclude by default),
  copied unchanged;

then ``SHA256SUMS`` over every fixture file. ``README.md`` beside this script
records provenance and licences. Deterministic: rerunning it gives the same bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MNIST_TRAIN, MNIST_TEST = 500, 200
VOWELS_TRAIN, VOWELS_TEST = 6, 4  # utterances per speaker
VOWELS_COUNTS = {"train": (30,) * 9, "test": (31, 35, 88, 44, 29, 24, 40, 50, 29)}
CALTECH_CLASSES = {"airplanes": 10, "Motorbikes": 10, "wrench": 10, "BACKGROUND_Google": 4}  # files kept per class


def _write_gz(path: str, data: bytes) -> None:
    # mtime=0 and no file name in the header: the same bytes on every run.
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as fh:
        fh.write(data)


def cut_mnist(src: str, dst: str) -> None:
    os.makedirs(dst, exist_ok=True)
    for part, n in (("train", MNIST_TRAIN), ("t10k", MNIST_TEST)):
        for kind, header, item in (("images-idx3-ubyte", 16, 784), ("labels-idx1-ubyte", 8, 1)):
            name = f"{part}-{kind}.gz"
            raw = gzip.open(os.path.join(src, name)).read()
            head = bytearray(raw[:header])
            head[4:8] = n.to_bytes(4, "big")  # the count field; the other dimensions stay
            _write_gz(os.path.join(dst, name), bytes(head) + raw[header : header + n * item])


def _utterances(lines: list[bytes]) -> list[list[bytes]]:
    """Raw UCI lines grouped by utterance (each closed by its all-ones row)."""
    out, cur = [], []
    for line in lines:
        if not line.strip():
            continue
        cur.append(line)
        if all(float(v) == 1.0 for v in line.split()):
            out.append(cur)
            cur = []
    return out


def cut_vowels(src: str, dst: str) -> None:
    os.makedirs(dst, exist_ok=True)
    for split, keep, ts_name in (("train", VOWELS_TRAIN, "TRAIN"), ("test", VOWELS_TEST, "TEST")):
        counts = VOWELS_COUNTS[split]
        starts = np.r_[0, np.cumsum(counts)[:-1]]
        chosen = [int(s) + i for s in starts for i in range(keep)]
        with open(os.path.join(src, f"ae.{split}"), "rb") as fh:
            utts = _utterances(fh.read().splitlines(keepends=True))
        assert len(utts) == sum(counts), (split, len(utts))
        _write_gz(os.path.join(dst, f"ae.{split}.gz"), b"".join(line for i in chosen for line in utts[i]))
        with open(os.path.join(dst, f"size_ae.{split}"), "w") as fh:
            fh.write(" ".join([str(keep)] * len(counts)) + "\n")
        with open(os.path.join(src, f"JapaneseVowels_{ts_name}.ts"), "rb") as fh:
            lines = fh.read().splitlines(keepends=True)
        data_at = next(i for i, line in enumerate(lines) if line.strip().lower().startswith(b"@data")) + 1
        series = [line for line in lines[data_at:] if line.strip()]
        assert len(series) == sum(counts)
        _write_gz(os.path.join(dst, f"JapaneseVowels_{ts_name}.ts.gz"), b"".join(lines[:data_at]) + b"".join(series[i] for i in chosen))


def cut_caltech(src: str, dst: str) -> None:
    for cls, keep in CALTECH_CLASSES.items():
        folder = os.path.join(src, cls)
        images = [f for f in os.listdir(folder) if f.endswith(".jpg")]
        files = sorted(images, key=lambda f: (os.path.getsize(os.path.join(folder, f)), f))[:keep]
        os.makedirs(os.path.join(dst, cls), exist_ok=True)
        for f in sorted(files):
            shutil.copyfile(os.path.join(folder, f), os.path.join(dst, cls, f))


def write_sums(root: str) -> None:
    rows = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in sorted(filenames):
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, root)
            if rel in ("SHA256SUMS", "README.md", "make_fixtures.py") or "__pycache__" in rel:
                continue
            rows.append(f"{hashlib.sha256(open(path, 'rb').read()).hexdigest()}  {rel}\n")
    with open(os.path.join(root, "SHA256SUMS"), "w") as fh:
        fh.writelines(rows)


def main(argv: list[str]) -> None:
    src = argv[0] if argv else os.path.join(HERE, "..", "..", "..", "shared", "data")
    for sub in ("mnist", "japanese-vowels", "caltech101"):
        shutil.rmtree(os.path.join(HERE, sub), ignore_errors=True)
    if not os.path.isdir(src):
        raise SystemExit(f"error: {src} not found; pass a folder laid out like shared/data (mnist/, japanese-vowels/, caltech101/).")
    cut_mnist(os.path.join(src, "mnist"), os.path.join(HERE, "mnist"))
    cut_vowels(os.path.join(src, "japanese-vowels"), os.path.join(HERE, "japanese-vowels"))
    cut_caltech(os.path.join(src, "caltech101", "101_ObjectCategories"), os.path.join(HERE, "caltech101", "101_ObjectCategories"))
    write_sums(HERE)


if __name__ == "__main__":
    main(sys.argv[1:])

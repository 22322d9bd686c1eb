"""Where the data sets live: an explicit folder, ``$LLD_JAX_DATA``, the user cache, or a verified download.

:func:`locate` is the one place every loader and experiment asks for a data
set's folder. The order is fixed and documented:

1. ``data_dir`` when given (``--data-dir``): used as is; the loader names
   whatever is missing there.
2. ``$LLD_JAX_DATA/<name>`` when that folder exists (e.g. a shared read-only
   copy of all data sets).
3. The user cache ``$XDG_CACHE_HOME/lld_jax/<name>`` (default
   ``~/.cache/lld_jax/<name>``) when it holds every file.
4. A download into that cache from the data set's canonical source (mirrors
   tried in order), each file checked against its SHA-256 (of the decompressed
   bytes for gzipped files, so any faithful re-compression is accepted),
   written under a temporary name and renamed only once verified. A file that
   fails its checksum is removed and the error names the URL and both sums.

Downloading is on by default (``download=False`` or ``--no-download`` turns
it off). Caltech-101 has no published archive checksum, so it is never
downloaded: :func:`locate` names where to get it and where to put it.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import tempfile
import urllib.request
from typing import NamedTuple

DATA_ENV = "LLD_JAX_DATA"
_CHUNK = 1 << 16


class DownloadError(OSError):
    """A data file could not be fetched or failed its checksum (the message names the URL and the fix)."""


class RemoteFile(NamedTuple):
    """One file of a data set: its name in the data set's folder, its mirrors and its SHA-256.

    ``gunzip``: the checksum is of the decompressed content (the file itself is
    stored gzipped, as downloaded).
    """

    name: str
    urls: tuple[str, ...]
    sha256: str
    gunzip: bool = False


class DataSet(NamedTuple):
    """A data set :func:`locate` knows: its files (empty: not downloadable), a sub-folder to return, and where to get it by hand."""

    files: tuple[RemoteFile, ...]
    subdir: str = ""
    manual: str = ""


_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
_UCI_VOWELS = "https://archive.ics.uci.edu/ml/machine-learning-databases/JapaneseVowels-mld/"

DATASETS: dict[str, DataSet] = {
    # SHA-256 of the decompressed IDX files (= the official release's bytes).
    "mnist": DataSet(
        tuple(
            RemoteFile(name, tuple(m + name for m in _MNIST_MIRRORS), sha, gunzip=True)
            for name, sha in (
                ("train-images-idx3-ubyte.gz", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
                ("train-labels-idx1-ubyte.gz", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
                ("t10k-images-idx3-ubyte.gz", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
                ("t10k-labels-idx1-ubyte.gz", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
            )
        ),
        manual="http://yann.lecun.com/exdb/mnist/ (the four *-ubyte.gz files)",
    ),
    "japanese-vowels": DataSet(
        (
            RemoteFile("ae.train", (_UCI_VOWELS + "ae.train",), "7ae33b2b678b6c0df7a4137e5b82e127e95d63b2e2d7764e7e4ea3fe1b659935"),
            RemoteFile("ae.test", (_UCI_VOWELS + "ae.test",), "7894594714a3186f8961c75535654cdc6bd232d3dd97d7c04c99bfa3013f57a9"),
        ),
        manual="https://archive.ics.uci.edu/ml/datasets/Japanese+Vowels (ae.train, ae.test)",
    ),
    "caltech101": DataSet(
        (),
        subdir="101_ObjectCategories",
        manual="https://data.caltech.edu/records/mzrjq-6wc02 (unpack 101_ObjectCategories/)",
    ),
}


def cache_dir() -> str:
    """The user cache folder of downloaded data sets: ``$XDG_CACHE_HOME/lld_jax`` (default ``~/.cache/lld_jax``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lld_jax")


def find_file(data_dir: str, candidates: tuple[str, ...], missing: str) -> str:
    """The first of ``candidates`` (file names) present in ``data_dir``; else ``FileNotFoundError(missing)``."""
    for name in candidates:
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(missing)


def _complete(folder: str, ds: DataSet) -> bool:
    if ds.subdir:
        return os.path.isdir(os.path.join(folder, ds.subdir))
    return os.path.isdir(folder) and all(os.path.exists(os.path.join(folder, f.name)) for f in ds.files)


def locate(name: str, data_dir: str | None = None, *, download: bool = True, progress: bool = True) -> str:
    """The folder holding data set ``name`` (see the module docstring for the search order).

    Args:
      name: one of ``"mnist"``, ``"japanese-vowels"``, ``"caltech101"``.
      data_dir: an explicit folder (``--data-dir``), returned unchanged.
      download: fetch missing files into the cache (checksummed); False: only
        look.
      progress: a progress bar per downloaded file.

    Returns:
      The folder to read (for ``caltech101`` its ``101_ObjectCategories``).

    Raises:
      ValueError: an unknown ``name``.
      FileNotFoundError: nothing found and downloading is off or impossible
        (the message lists the places tried and the source).
      DownloadError: a download failed or a file failed its checksum.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {sorted(DATASETS)}.")
    if data_dir is not None:
        return os.fspath(data_dir)
    ds = DATASETS[name]
    tried = []
    env = os.environ.get(DATA_ENV)
    if env:
        folder = os.path.join(env, name)
        if _complete(folder, ds):
            return os.path.join(folder, ds.subdir) if ds.subdir else folder
        tried.append(f"${DATA_ENV}/{name} ({folder})")
    cached = os.path.join(cache_dir(), name)
    if _complete(cached, ds):
        return os.path.join(cached, ds.subdir) if ds.subdir else cached
    tried.append(f"the cache ({cached})")
    if not download or not ds.files:
        why = "downloading is off (--no-download)" if ds.files else "it is not downloadable (no published checksum)"
        raise FileNotFoundError(
            f"data set {name!r} not found in {' or '.join(tried)}, and {why}. Get it from {ds.manual} and pass --data-dir, "
            f"or set {DATA_ENV} to a folder holding {name}/."
        )
    os.makedirs(cached, exist_ok=True)
    for f in ds.files:
        dest = os.path.join(cached, f.name)
        if not os.path.exists(dest):
            fetch(f, dest, progress=progress)
    return cached


def _sha256(path: str, gunzip: bool) -> str:
    h = hashlib.sha256()
    try:
        with gzip.open(path, "rb") if gunzip else open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
    except (OSError, EOFError) as err:  # not gzip, or a truncated gzip stream
        return f"unreadable ({type(err).__name__}: {err})"
    return h.hexdigest()


def fetch(remote: RemoteFile, dest: str, *, timeout: float = 60.0, progress: bool = True) -> str:
    """Downloads ``remote`` to ``dest`` from its first working mirror, verified and renamed atomically.

    Returns:
      ``dest``.

    Raises:
      DownloadError: every mirror failed (unreachable, truncated transfer, or
        a checksum mismatch); the message has one line per URL tried and the
        expected SHA-256 (one line). No partial or unverified file is left at ``dest``.
    """
    errors = []
    for url in remote.urls:
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(dest) + ".", suffix=".part", dir=os.path.dirname(dest) or ".")
        try:
            with os.fdopen(fd, "wb") as out:
                _stream(url, out, timeout=timeout, progress=progress, label=remote.name)
            got = _sha256(tmp, remote.gunzip)
            if got != remote.sha256:
                raise DownloadError(f"checksum mismatch: SHA-256 {got}{' (decompressed)' if remote.gunzip else ''}")
            os.replace(tmp, dest)
            return dest
        except (OSError, http.client.HTTPException, ValueError) as err:  # unreachable, HTTP error, truncation, bad sum
            errors.append(f"{url}: {err}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise DownloadError(
        f"could not fetch {remote.name} (expected SHA-256 {remote.sha256}{' of the decompressed file' if remote.gunzip else ''}): "
        + "; ".join(errors)
        + f". Download it by hand into {os.path.dirname(dest)!r} (or pass --data-dir to a folder holding it)."
    )


def _stream(url: str, out, *, timeout: float, progress: bool, label: str) -> None:
    """Copies ``url`` into the open file ``out``; a body shorter than its Content-Length raises."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        total = resp.headers.get("Content-Length")
        total = int(total) if total is not None else None
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"download {label}", leave=False)
        n = 0
        try:
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                n += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
    if total is not None and n != total:
        raise DownloadError(f"truncated transfer: {n} of {total} bytes")

"""Image pipeline throughput: the Grain pipeline of ``ImageBatches`` against the thread pool it replaced, in one run.

Both stream the same images (a seeded sample of ``--images`` Caltech-101 files,
all classes) in the same shuffled order, with the same decoding
(``load_image``, then ``normalize`` when normalising), ``--workers`` reading
threads, ``prefetch=2`` and batches of ``--batch-size``. Each configuration
(side ``--sizes`` x uint8 / normalised float32) times one whole epoch per
implementation, alternating old and new ``--repeats`` times, after one untimed
pass that puts the files in the page cache; images/s is N / epoch time, the
best and the median of the repeats are reported, and the median of the
per-repeat ratios (each repeat times both back to back), with the CPU time of all
the process's threads per image (less sensitive than wall time to other
jobs on the machine). The baseline,
:class:`ThreadPoolImageBatches`, is the pre-Grain streaming code kept only here
(it is no part of the library).

    python -m benchmarks.image_pipeline [--root /path/to/101_ObjectCategories] [--out benchmarks/results_image_pipeline.json]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import importlib.metadata
import os
import platform
import statistics
import time
import weakref
from collections import deque
from collections.abc import Iterator

import numpy as np

import lld_jax
from lld_jax._src.host import pad_rows
from lld_jax.data import IMAGENET_MEAN, IMAGENET_STD, ImageBatch, ImageBatches, scan_image_folder
from lld_jax.training import write_json

DEFAULT_ROOT = "/work/shared/data/caltech101/101_ObjectCategories"


# ------------------------------------------------------------------ baseline: the thread pool before Grain
class ThreadPoolImageBatches(ImageBatches):
    """BASELINE ONLY: ``ImageBatches``' streaming as it was before Grain (a ``concurrent.futures`` pool, ``prefetch + 1`` batches in flight).

    Same arguments, order, sharding, padding and decoding as :class:`ImageBatches`;
    only ``epoch`` differs. Kept here to measure the Grain pipeline against it.
    """

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self._pool: cf.ThreadPoolExecutor | None = cf.ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="lld-image")
        self._finalizer = weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)

    def close(self) -> None:
        super().close()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._finalizer.detach()

    def epoch(self, epoch: int) -> Iterator[ImageBatch]:
        return self._stream([r[r >= 0] for r in self.rows(epoch)])

    def _stream(self, batches: list[np.ndarray]) -> Iterator[ImageBatch]:
        pending: deque[tuple[np.ndarray, np.ndarray, list[cf.Future]]] = deque()
        nxt = 0
        try:
            for _ in range(len(batches)):
                while nxt < len(batches) and len(pending) <= self.prefetch:
                    pending.append(self._submit(batches[nxt]))
                    nxt += 1
                idx, out, futures = pending[0]
                for f in futures:
                    f.result()
                pending.popleft()
                yield self._finish(idx, out)
        finally:
            for _, _, futures in pending:
                for f in futures:
                    f.cancel()

    def _submit(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[cf.Future]]:
        if self._pool is None:
            raise RuntimeError("this ImageBatches is closed; create a new one.")
        b, s = self.local_batch_size, self.size
        out = np.zeros((b, s, s, 3), self.dtype)
        return idx, out, [self._pool.submit(self._decode_into, out, i, j) for i, j in enumerate(idx)]

    def _decode_into(self, out: np.ndarray, row: int, j: int) -> None:
        out[row] = self.source[int(j)][0]  # the same decoding as the Grain source

    def _finish(self, idx: np.ndarray, out: np.ndarray) -> ImageBatch:
        k, b = len(idx), self.local_batch_size
        mask = np.zeros(b, bool)
        mask[:k] = True
        if k == 0:
            return ImageBatch(out, np.zeros(b, np.int32), mask)
        out[k:] = out[0]
        return ImageBatch(out, pad_rows(self.labels[idx], b), mask)


# ------------------------------------------------------------------ measurement
def epoch_seconds(batches: ImageBatches, epoch: int) -> tuple[float, float, np.ndarray]:
    """Wall time and CPU time (all threads of this process) of one whole epoch, and per-batch checksums (the two implementations must agree).

    The checksums are taken after the clocks stop, so the consumer does nothing but receive batches while timed.
    """
    t, c = time.perf_counter(), time.process_time()
    got = list(batches.epoch(epoch))
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return wall, cpu, np.asarray([float(b.x[b.mask].astype(np.float64).sum()) + float(b.y[b.mask].sum()) for b in got])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=DEFAULT_ROOT, help="a folder of class sub-folders (Caltech-101's 101_ObjectCategories)")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 299])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results_image_pipeline.json")
    args = ap.parse_args()
    paths, labels, _ = scan_image_folder(args.root)
    pick = np.sort(np.random.default_rng(0).choice(len(paths), args.images, replace=False))
    paths, labels = [paths[i] for i in pick], labels[pick]
    for p in paths:  # the page cache holds every file before any timing
        with open(p, "rb") as fh:
            fh.read()
    rows = []
    load_before = list(os.getloadavg())
    for size in args.sizes:
        for normalised in (False, True):
            stats = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD} if normalised else {}
            kw = {"batch_size": args.batch_size, "size": size, "seed": 0, "workers": args.workers, "prefetch": 2, **stats}
            times: dict[str, list[float]] = {"thread_pool": [], "grain": []}
            cpu: dict[str, list[float]] = {"thread_pool": [], "grain": []}
            with ThreadPoolImageBatches(paths, labels, **kw) as old, ImageBatches(paths, labels, **kw) as new:
                _, _, ref = epoch_seconds(new, 0)  # warm-up pass (imports, first allocations)
                for r in range(args.repeats):
                    for name, batches in (("thread_pool", old), ("grain", new)):
                        dt, ct, check = epoch_seconds(batches, r)
                        if r == 0 and not np.array_equal(check, ref):
                            raise AssertionError(f"{name} produced other batches than the Grain pipeline at size {size}")
                        times[name].append(dt)
                        cpu[name].append(ct)
            row = {"size": size, "dtype": "float32 (normalised)" if normalised else "uint8", "images": len(paths)}
            for name, ts in times.items():
                row[name] = {
                    "best_images_per_s": round(len(paths) / min(ts), 1),
                    "median_images_per_s": round(len(paths) / statistics.median(ts), 1),
                    "seconds": [round(t, 3) for t in ts],
                    "median_cpu_ms_per_image": round(1000 * statistics.median(cpu[name]) / len(paths), 3),
                }
            row["grain_over_thread_pool_median"] = round(row["grain"]["median_images_per_s"] / row["thread_pool"]["median_images_per_s"], 3)
            # Each repeat times both back to back: the median of the per-repeat ratios cancels slow drifts of the machine's load.
            row["grain_over_thread_pool_paired"] = round(statistics.median(o / g for o, g in zip(times["thread_pool"], times["grain"])), 3)
            print(
                f"size {size:4d} {row['dtype']:22s} thread pool {row['thread_pool']['median_images_per_s']:7.1f} img/s, "
                f"grain {row['grain']['median_images_per_s']:7.1f} img/s (x{row['grain_over_thread_pool_median']}, paired x{row['grain_over_thread_pool_paired']}); CPU ms/image "
                f"{row['thread_pool']['median_cpu_ms_per_image']} vs {row['grain']['median_cpu_ms_per_image']}",
                flush=True,
            )
            rows.append(row)
    write_json(
        args.out,
        {
            "what": "images/s of one epoch of ImageBatches (Grain) and of the thread pool it replaced, same images, order and decoding, one process",
            "command": "python -m benchmarks.image_pipeline "
            + " ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items() if k != "out"),
            "load_average_before_after": [load_before, list(os.getloadavg())],  # other jobs on the machine (wall times are sensitive to them)
            "root": args.root,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "prefetch": 2,
            "repeats": args.repeats,
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "lld_jax": lld_jax.__version__,
            "grain": importlib.metadata.version("grain"),
            "results": rows,
        },
    )


if __name__ == "__main__":
    main()

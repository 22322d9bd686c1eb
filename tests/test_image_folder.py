"""The streaming image pipeline: scanning, the per-class split, decoding, normalisation, padded batches; TFDS records (faked)."""

import hashlib
import json
import os
import re
import sys
import threading
import time
import types
from types import SimpleNamespace

import numpy as np
import pytest
from fixtures import CALTECH_CLASSES as SMALL
from fixtures import CALTECH_DIR as CALTECH
from PIL import Image

from lld_jax._src import image_batches
from lld_jax._src import image_folder as imf
from lld_jax._src.host import epoch_order
from lld_jax._src.image_batches import ImageBatches, ImageSource, channel_stats
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


def real_subset(k: int = 10) -> tuple[list[str], np.ndarray]:
    """The first ``k`` images of each class of the committed Caltech-101 excerpt (10 per class; 4 grayscale in all)."""
    paths, labels = [], []
    for c, name in enumerate(SMALL):
        files = sorted(os.listdir(os.path.join(CALTECH, name)))[:k]
        paths += [os.path.join(CALTECH, name, f) for f in files]
        labels += [c] * len(files)
    return paths, np.asarray(labels, np.int32)


def write_image(path, arr: np.ndarray, mode: str | None = None, **save) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = Image.fromarray(arr)
    if mode is not None:
        img = img.convert(mode)
    img.save(path, **save)
    return str(path)


def synthetic_folder(root, counts: dict[str, int], side: int = 12) -> None:
    """Class folders of small PNGs whose pixels encode (class, index)."""
    for c, (name, n) in enumerate(sorted(counts.items())):
        for i in range(n):
            write_image(os.path.join(root, name, f"img_{i:03d}.png"), np.full((side, side + 3, 3), (c * 40, i, 200), np.uint8))


# ---------------------------------------------------------------- scanning


def test_scan_real_caltech_counts_and_excluded_class():
    paths, labels, names = scan_image_folder(CALTECH)
    assert names == ["BACKGROUND_Google", *SMALL] and len(paths) == 34 and labels.dtype == np.int32 and labels.shape == (34,)
    assert np.array_equal(np.bincount(labels), [4, 10, 10, 10])
    assert all(os.path.basename(os.path.dirname(p)) == names[y] for p, y in zip(paths, labels))
    assert [os.path.basename(p) for p in paths[4:14]] == sorted(os.listdir(os.path.join(CALTECH, SMALL[0])))
    paths2, labels2, names2 = scan_image_folder(CALTECH, exclude=("BACKGROUND_Google", "airplanes"))
    assert names2 == ["Motorbikes", "wrench"] and len(paths2) == 20 and labels2.max() == 1


def test_scan_skips_hidden_and_non_images_and_walks_subfolders(tmp_path):
    synthetic_folder(tmp_path, {"b": 2, "a": 3})
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / ".hidden.png").write_bytes(b"x")
    (tmp_path / "a" / "tmp").write_bytes(b"x")
    (tmp_path / ".cache").mkdir()
    write_image(tmp_path / ".cache" / "x.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "README.txt").write_text("file in root")
    write_image(tmp_path / "b" / "sub" / "deep.JPG", np.zeros((4, 4, 3), np.uint8))
    paths, labels, names = scan_image_folder(str(tmp_path))
    assert names == ["a", "b"]
    rel = [os.path.relpath(p, tmp_path) for p in paths]
    assert rel == ["a/img_000.png", "a/img_001.png", "a/img_002.png", "b/img_000.png", "b/img_001.png", "b/sub/deep.JPG"]
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_scan_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_image_folder(str(tmp_path / "nope"))
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        scan_image_folder(str(tmp_path / "file.jpg"))
    with pytest.raises(ValueError, match="no class sub-folder"):
        scan_image_folder(str(tmp_path))
    synthetic_folder(tmp_path, {"cat": 2})
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "readme.txt").write_text("no images")
    with pytest.raises(ValueError, match="dog.*holds no image"):
        scan_image_folder(str(tmp_path))
    assert scan_image_folder(str(tmp_path), exclude=("dog",))[2] == ["cat"]
    with pytest.raises(ValueError, match="does not hold.*'dgo'"):
        scan_image_folder(str(tmp_path), exclude=("dgo",))


# ---------------------------------------------------------------- the per-class split


def check_split(labels, train, val, test, num_val=5, num_test=15):
    n = len(labels)
    assert np.array_equal(np.sort(np.concatenate([train, val, test])), np.arange(n))  # disjoint and covering
    for c in np.unique(labels):
        assert (labels[val] == c).sum() == num_val and (labels[test] == c).sum() == num_test
        assert (labels[train] == c).sum() == (labels == c).sum() - num_val - num_test


def test_split_real_caltech_per_class_deterministic():
    _, labels, names = scan_image_folder(CALTECH)
    a = split_per_class(labels, num_val=1, num_test=2, seed=0, class_names=names)
    check_split(labels, *a, num_val=1, num_test=2)
    assert len(a[1]) == 1 * 4 and len(a[2]) == 2 * 4
    b = split_per_class(labels, num_val=1, num_test=2, seed=0)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    c = split_per_class(labels, num_val=1, num_test=2, seed=1)
    check_split(labels, *c, num_val=1, num_test=2)
    assert not np.array_equal(a[1], c[1]) and not np.array_equal(a[2], c[2])


def test_split_custom_counts_and_errors():
    labels = np.repeat(np.arange(4), [7, 9, 3, 12])
    train, val, test = split_per_class(labels, num_val=1, num_test=1, seed=3)
    check_split(labels, train, val, test, 1, 1)
    assert train.dtype == np.int64 and np.all(np.diff(train) > 0)
    with pytest.raises(ValueError, match=r"class 'c' \(label 2\) has 3 examples.*at least .* = 4"):
        split_per_class(labels, num_val=2, num_test=1, class_names=["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="label 2 has 3"):
        split_per_class(labels, num_val=2, num_test=1)
    with pytest.raises(ValueError, match="non-negative integers"):
        split_per_class(labels.astype(float))
    with pytest.raises(ValueError, match="num_test"):
        split_per_class(labels, num_test=-1)


# ---------------------------------------------------------------- decoding


def test_load_real_images_shapes_grayscale_and_repeatability():
    paths, _ = real_subset()
    gray = [p for p in paths if Image.open(p).mode == "L"]
    assert len(gray) == 4  # two in Motorbikes, two in wrench
    for p in paths:
        x = load_image(p)
        assert x.shape == (299, 299, 3) and x.dtype == np.uint8
        assert np.array_equal(x, load_image(p))  # decoding is deterministic
        if p in gray:
            assert np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 1], x[..., 2])
        else:
            assert not np.array_equal(x[..., 0], x[..., 2])
    assert load_image(paths[0], 37, resize="stretch").shape == (37, 37, 3)
    assert load_image(paths[0], 37).shape == (37, 37, 3)


def test_crop_keeps_the_centre_and_stretch_keeps_everything(tmp_path):
    arr = np.zeros((20, 60, 3), np.uint8)  # red | green | blue thirds
    arr[:, :20, 0] = arr[:, 20:40, 1] = arr[:, 40:, 2] = 255
    path = write_image(tmp_path / "wide.png", arr)
    crop = load_image(path, 10, resize="crop")
    # the central 20x20 square, green; only the border columns blend a little with their neighbours (as resize-then-crop does)
    assert np.array_equal(crop[:, 1:-1], np.broadcast_to(np.array([0, 255, 0], np.uint8), (10, 8, 3)))
    assert crop[..., 1].min() >= 200 and crop[..., 0].max() <= 55 and crop[..., 2].max() <= 55
    stretch = load_image(path, 12, resize="stretch")
    assert stretch[:, 0].tolist() == [[255, 0, 0]] * 12 and stretch[:, -1].tolist() == [[0, 0, 255]] * 12
    tall = write_image(tmp_path / "tall.png", arr.transpose(1, 0, 2).copy())  # red / green / blue bands, top to bottom
    assert np.array_equal(load_image(tall, 10), crop.transpose(1, 0, 2))


def test_pixel_modes_become_rgb(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    cases = {
        "L": write_image(tmp_path / "l.png", rgb, "L"),
        "LA": write_image(tmp_path / "la.png", rgb, "LA"),
        "1": write_image(tmp_path / "one.png", rgb, "1"),
        "RGBA": write_image(tmp_path / "rgba.png", np.dstack([rgb, np.full((9, 7), 7, np.uint8)])),
        "P": write_image(tmp_path / "p.gif", rgb, "P", transparency=0),
        "CMYK": write_image(tmp_path / "cmyk.jpg", rgb, "CMYK"),
        "I;16": write_image(tmp_path / "g16.png", np.full((9, 7), 40000, np.uint16)),
    }
    for mode, path in cases.items():
        with Image.open(path) as img:
            assert img.mode == mode
        x = load_image(path, 5)
        assert x.shape == (5, 5, 3) and x.dtype == np.uint8, mode
        if mode in ("L", "LA", "1", "I;16"):
            assert np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 0], x[..., 2]), mode
    assert np.all(load_image(cases["I;16"], 5) == 40000 >> 8)
    assert np.array_equal(load_image(cases["RGBA"], 7, resize="stretch"), load_image(write_image(tmp_path / "rgb.png", rgb), 7, resize="stretch"))


def test_corrupt_truncated_and_missing_files_are_named(tmp_path):
    fake = tmp_path / "cls" / "image_0001.jpg"
    fake.parent.mkdir()
    fake.write_bytes(b"this is not a jpeg" * 10)
    real = real_subset(2)[0][:2]
    truncated = tmp_path / "cls" / "image_0002.jpg"
    truncated.write_bytes(open(real[0], "rb").read()[:3000])
    with pytest.raises(ValueError, match="image_0001.jpg is not a readable image"):
        load_image(str(fake))
    with pytest.raises(ValueError, match="image_0002.jpg is not a readable image"):
        load_image(str(truncated))
    with pytest.raises(FileNotFoundError, match="image_0003.jpg"):
        load_image(str(tmp_path / "cls" / "image_0003.jpg"))
    paths, labels, _ = scan_image_folder(str(tmp_path))  # scanning does not open files
    assert len(paths) == 2
    # the error comes out of the iterator, naming the file, after the good batches
    with ImageBatches(real + paths[:1], np.array([0, 0, 0]), batch_size=2, size=16, shuffle=False, workers=2) as batches:
        it = batches.epoch(0)
        assert next(it).mask.all()
        with pytest.raises(ValueError, match="image_0001.jpg"):
            next(it)


# ---------------------------------------------------------------- normalisation and statistics


def test_normalize_values_and_pixel_scale():
    x = np.array([[[0, 128, 255]], [[255, 0, 51]]], np.uint8)  # (2, 1, 3)
    z = normalize(x)
    expected = (x / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert z.dtype == np.float32 and z.shape == x.shape and np.allclose(z, expected, atol=1e-6)
    assert np.allclose(normalize(x, (0, 0, 0), (1, 1, 1)), x / 255.0, atol=1e-7)
    assert pixel_margin_scale() == pytest.approx(0.224) and pixel_margin_scale((0.3081,) * 3) == pytest.approx(0.3081)
    # a pixel perturbation of l2 norm pixel_margin_scale * r has normalised norm <= r
    d = np.random.default_rng(0).normal(size=(50, 3))
    d *= pixel_margin_scale() / np.linalg.norm(d, axis=1, keepdims=True)
    assert np.all(np.linalg.norm(d / np.array(IMAGENET_STD), axis=1) <= 1 + 1e-9)
    with pytest.raises(ValueError, match="uint8"):
        normalize(x.astype(np.float32))
    with pytest.raises(ValueError, match="std > 0"):
        normalize(x, IMAGENET_MEAN, (0.2, 0.0, 0.2))


def test_channel_stats_exact_on_solid_images(tmp_path):
    red = write_image(tmp_path / "r.png", np.full((6, 9, 3), (255, 0, 102), np.uint8))
    blue = write_image(tmp_path / "b.png", np.full((6, 9, 3), (0, 0, 204), np.uint8))
    mean, std = channel_stats([red, blue], size=4, workers=2)
    assert np.allclose(mean, [0.5, 0.0, 0.6]) and np.allclose(std, [0.5, 0.0, 0.2])
    one, _ = channel_stats([red, blue], size=4, max_images=1, seed=0)
    assert np.allclose(one, [1.0, 0.0, 0.4]) or np.allclose(one, [0.0, 0.0, 0.8])  # a sample of one image
    assert np.array_equal(one, channel_stats([red, blue], size=4, max_images=1, seed=0)[0])
    with pytest.raises(ValueError, match="max_images"):
        channel_stats([red], max_images=0)


# ---------------------------------------------------------------- streaming batches


def test_batches_visit_every_real_image_once_per_epoch_padded_and_masked():
    paths, classes = real_subset()
    n = len(paths)  # 30
    ids = np.arange(n, dtype=np.int32)  # labels = example ids, to check coverage and order
    decoded = np.stack([load_image(p, 32) for p in paths])
    with ImageBatches(paths, ids, batch_size=8, size=32, seed=5, workers=2, prefetch=2) as batches:
        assert len(batches) == 4
        for epoch in (0, 1):
            got = list(batches.epoch(epoch))
            assert [b.mask.sum() for b in got] == [8, 8, 8, 6]
            for b in got:
                assert b.x.shape == (8, 32, 32, 3) and b.x.dtype == np.uint8 and b.y.dtype == np.int32 and b.mask.dtype == bool
                assert np.array_equal(b.x[b.mask], decoded[b.y[b.mask]])  # each row is its own image
            last = got[-1]
            assert np.array_equal(last.x[6:], np.repeat(last.x[:1], 2, 0)) and np.all(last.y[6:] == last.y[0])  # padded, masked
            seen = np.concatenate([b.y[b.mask] for b in got])
            assert np.array_equal(seen, epoch_order(n, 5, epoch))  # every example once, in train_epoch's order
        again = [b.y for b in batches.epoch(1)]
        assert all(np.array_equal(u, v.y) for u, v in zip(again, got))  # deterministic for (seed, epoch)
        assert not np.array_equal(np.concatenate(again), np.concatenate([b.y for b in batches.epoch(0)]))
    with ImageBatches(paths, classes, batch_size=7, size=32, shuffle=False, mean=IMAGENET_MEAN, std=IMAGENET_STD, workers=2) as batches:
        got = list(batches)
        assert len(got) == 5 and got[-1].mask.tolist() == [True, True] + [False] * 5
        x = np.concatenate([b.x[b.mask] for b in got])
        assert x.dtype == np.float32 and np.allclose(x, normalize(decoded), atol=1e-6)
        assert np.array_equal(np.concatenate([b.y[b.mask] for b in got]), classes)


def test_shards_split_each_global_batch(tmp_path):
    synthetic_folder(tmp_path, {"a": 5, "b": 4})
    paths, _, _ = scan_image_folder(str(tmp_path))
    ids = np.arange(len(paths))  # 9 examples, global batch 8: the last global batch holds 1
    shards = []
    for k in range(2):
        with ImageBatches(paths, ids, batch_size=8, size=8, seed=1, shard_index=k, num_shards=2, workers=1) as batches:
            shards.append(list(batches.epoch(3)))
    assert [len(s) for s in shards] == [2, 2] and all(b.x.shape[0] == 4 for s in shards for b in s)
    order = epoch_order(9, 1, 3)
    assert np.array_equal(shards[0][0].y, order[:4]) and np.array_equal(shards[1][0].y, order[4:8])
    assert shards[0][1].mask.tolist() == [True, False, False, False] and shards[0][1].y[0] == order[8]
    assert not shards[1][1].mask.any() and not shards[1][1].x.any()  # past the ragged end: fully masked zeros


def test_prefetch_is_bounded_and_threads_stop(tmp_path, monkeypatch):
    calls = []

    def fake_load(path, size, *, resize):
        calls.append(path)
        return np.zeros((size, size, 3), np.uint8)

    monkeypatch.setattr(image_batches, "load_image", fake_load)
    paths = [f"img{i}.png" for i in range(40)]
    with ImageBatches(paths, np.zeros(40, int), batch_size=4, size=2, shuffle=False, workers=2, prefetch=1) as batches:
        it = batches.epoch(0)
        next(it)
        time.sleep(0.2)
        assert len(calls) <= 3 * 4  # the batch returned and prefetch + 1 = 2 ahead, no more
        next(it)
        time.sleep(0.2)
        assert len(calls) <= 4 * 4
        it.close()  # abandoning an epoch cancels its queued work
        assert len(list(batches.epoch(1))) == 10
        time.sleep(0.1)
        assert 8 + 40 <= len(calls) <= 16 + 40  # epoch 0 stopped after at most 4 batches; epoch 1 decoded all 40
        it = batches.epoch(2)
        next(it)
    # closing the pipeline closes the unfinished epoch iterator: Grain's reading threads stop
    for t in [t for t in threading.enumerate() if t.name.startswith("grain-prefetch")]:
        t.join(timeout=5)
    assert not [t for t in threading.enumerate() if t.name.startswith("grain-prefetch") and t.is_alive()]
    with pytest.raises(RuntimeError, match="closed"):
        next(batches.epoch(0))


def test_epoch_state_resumes_mid_epoch_without_reading_the_skipped_images(monkeypatch):
    """Grain's iterator state after k batches, through JSON (as fit stores it), continues a fresh iterator with the same batches."""
    calls = []

    def fake_load(path, size, *, resize):
        calls.append(path)
        return np.full((size, size, 3), int(path[3:-4]), np.uint8)  # pixel value = image number

    monkeypatch.setattr(image_batches, "load_image", fake_load)
    paths = [f"img{i}.png" for i in range(11)]
    kw = {"batch_size": 4, "size": 2, "seed": 3, "workers": 2, "prefetch": 1, "num_shards": 2}
    for shard in (0, 1):
        with ImageBatches(paths, np.arange(11), shard_index=shard, **kw) as batches:
            full = list(batches.epoch(2))
            rows = batches.rows(2)
            assert len(full) == 3 and np.array_equal(np.concatenate([b.y[b.mask] for b in full]), rows[rows >= 0])
            it = batches.epoch(2)
            next(it)
            state = json.loads(json.dumps(it.get_state()))
            it.close()
            calls.clear()
            it = batches.epoch(2)
            it.set_state(state)
            rest = list(it)
            assert len(rest) == 2 and all(
                np.array_equal(u.x, v.x) and np.array_equal(u.y, v.y) and np.array_equal(u.mask, v.mask) for u, v in zip(rest, full[1:])
            )
            skipped = {f"img{j}.png" for j in batches.rows(2)[0]}
            assert calls and not skipped & set(calls)  # the images of the batch before the state were not read again


def test_image_source_is_load_image_with_labels():
    paths, classes = real_subset(2)
    source = ImageSource(paths, classes, size=16, resize="stretch", stats=None)
    img, label = source[1]
    assert len(source) == len(paths) and label == classes[1] and np.array_equal(img, load_image(paths[1], 16, resize="stretch"))
    stats = imf.check_stats(IMAGENET_MEAN, IMAGENET_STD)
    z, _ = ImageSource(paths, classes, size=16, resize="stretch", stats=stats)[1]
    assert z.dtype == np.float32 and np.array_equal(z, normalize(img))


def test_batches_argument_errors():
    with pytest.raises(ValueError, match="one integer label per image"):
        ImageBatches(["a.png"], np.zeros(2, int), batch_size=1)
    with pytest.raises(ValueError, match="batch_size"):
        ImageBatches(["a.png"], np.zeros(1, int), batch_size=0)
    with pytest.raises(ValueError, match="multiple of num_shards"):
        ImageBatches(["a.png"], np.zeros(1, int), batch_size=3, num_shards=2)
    with pytest.raises(ValueError, match="both mean and std"):
        ImageBatches(["a.png"], np.zeros(1, int), batch_size=1, mean=IMAGENET_MEAN)
    with pytest.raises(ValueError, match="resize"):
        ImageBatches(["a.png"], np.zeros(1, int), batch_size=1, resize="pad")


def test_fingerprint_follows_what_decides_the_batches():
    kw = {"batch_size": 2, "size": 8, "seed": 1, "workers": 1}
    paths, labels = ["a.png", "b.png", "c.png"], np.array([0, 1, 1])
    with ImageBatches(paths, labels, **kw) as base:
        fp = base.fingerprint()
        assert base.num_examples == 3
    with ImageBatches(list(paths), labels.copy(), **kw) as same:
        assert same.fingerprint() == fp
    for change in ({"size": 16}, {"seed": 2}, {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}):
        with ImageBatches(paths, labels, **{**kw, **change}) as other:
            assert other.fingerprint() != fp, change
    with ImageBatches(paths, np.array([0, 1, 0]), **kw) as other:
        assert other.fingerprint() != fp
    with ImageBatches(paths[::-1], labels, **kw) as other:
        assert other.fingerprint() != fp


# ---------------------------------------------------------------- TensorFlow Datasets, through a fake module (no network, no package)

FAKE_NAME = "fake_images/1.0.0"


def fake_tfds(splits: dict, class_names: list[str], *, prepared: bool = True, full_name: str = FAKE_NAME, features: dict | None = None):
    """A stand-in ``tensorflow_datasets`` with what tfds_image_source calls: builder(), data_source(), decode.SkipDecoding.

    ``splits`` maps a split name to its examples ``[(uint8 image, label), ...]``. Records are dicts built when read;
    ``calls["decoded"]`` counts the records read with their image decoded (as TFDS decodes every feature of a record
    unless told to skip one).
    """
    calls: dict = {"builder": [], "data_source": [], "decoded": 0}
    state = {"prepared": prepared}

    class SkipDecoding:
        pass

    class Source:
        def __init__(self, examples, skip_image):
            self.examples, self.skip_image = examples, skip_image

        def __len__(self):
            return len(self.examples)

        def __getitem__(self, i):
            image, label = self.examples[i]
            if self.skip_image:
                return {"image": b"still encoded", "label": np.int64(label)}
            calls["decoded"] += 1
            return {"image": image.copy(), "label": np.int64(label)}

    def builder(name, *, data_dir=None):
        calls["builder"].append((name, data_dir))
        info = SimpleNamespace(
            splits={s: SimpleNamespace(num_examples=len(v)) for s, v in splits.items()} if state["prepared"] else {},
            features=features if features is not None else {"image": SimpleNamespace(), "label": SimpleNamespace(names=list(class_names))},
            full_name=full_name,
        )
        return SimpleNamespace(is_prepared=lambda: state["prepared"], info=info, data_dir=f"{data_dir}/{full_name}")

    def data_source(name, *, split=None, data_dir=None, download=True, decoders=None):
        calls["data_source"].append({"name": name, "split": split, "data_dir": data_dir, "download": download, "decoders": decoders})
        if download:
            state["prepared"] = True  # "downloaded and prepared"
        assert state["prepared"], "the real data_source fails on a data set that is not prepared"
        skip = decoders is not None and isinstance(decoders.get("image"), SkipDecoding)
        if split is None:
            return {s: Source(v, skip) for s, v in splits.items()}
        return [Source(splits[s], skip) for s in split]

    module = types.ModuleType("tensorflow_datasets")
    module.builder, module.data_source, module.decode = builder, data_source, SimpleNamespace(SkipDecoding=SkipDecoding)
    return module, calls


def random_examples(rng, labels: list[int]) -> list:
    """One image per label, of varied sizes and the channel layouts TFDS stores: RGB (H, W, 3), grayscale (H, W, 1), RGBA."""
    out = []
    for i, y in enumerate(labels):
        h, w = int(rng.integers(5, 14)), int(rng.integers(5, 14))
        channels = (3, 1, 4)[i % 3]
        out.append((rng.integers(0, 256, (h, w, channels), dtype=np.uint8), y))
    return out


def save_like_a_file(path, image: np.ndarray) -> str:
    """The lossless PNG a user's image folder would hold for this TFDS image (grayscale as mode L)."""
    return write_image(path, image[:, :, 0] if image.shape[2] == 1 else image)


CLASSES = ["cat", "dog", "emu"]


@pytest.fixture
def tfds_world(tmp_path, monkeypatch):
    """A fake TFDS data set (splits test: 7, train: 11) and the same images as a folder; ``paths[i]`` holds record ``i``."""
    rng = np.random.default_rng(0)
    splits = {"train": random_examples(rng, [0, 1, 2, 0, 1, 2, 0, 0, 1, 2, 2]), "test": random_examples(rng, [2, 1, 0, 0, 1, 2, 1])}
    module, calls = fake_tfds(splits, CLASSES)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", module)
    ordered = splits["test"] + splits["train"]  # "all" pools the splits sorted by name
    folder = tmp_path / "folder"
    paths = [save_like_a_file(folder / CLASSES[y] / f"{i:03d}.png", image) for i, (image, y) in enumerate(ordered)]
    return SimpleNamespace(splits=splits, ordered=ordered, paths=paths, folder=str(folder), calls=calls, data_dir=str(tmp_path / "tfds"))


def test_tfds_records_are_the_folder_images_with_their_labels(tfds_world):
    w = tfds_world
    records, labels, names = tfds_image_source("fake_images", data_dir=w.data_dir)
    assert names == CLASSES and labels.dtype == np.int32
    assert labels.tolist() == [2, 1, 0, 0, 1, 2, 1] + [0, 1, 2, 0, 1, 2, 0, 0, 1, 2, 2]
    assert w.calls["decoded"] == 0  # labels were read with the image left encoded; no image read yet
    assert len(records) == 18 and w.calls["decoded"] == 0
    # the folder holding the same files gives the same labels and class names
    fpaths, flabels, fnames = scan_image_folder(w.folder)
    ids = [int(os.path.basename(p)[:3]) for p in fpaths]
    assert fnames == names and sorted(ids) == list(range(18)) and np.array_equal(flabels, labels[ids])
    for i, (image, _) in enumerate(w.ordered):
        record = records[i]
        assert np.array_equal(record, image)  # the stored array, not resized
        for resize, size in (("crop", 8), ("stretch", 6), ("crop", 17)):
            assert np.array_equal(load_image(record, size, resize=resize), load_image(w.paths[i], size, resize=resize)), (i, resize)
    assert w.calls["decoded"] == 18  # one read per access: nothing is cached
    assert records.names()[:2] == [f"tfds:{FAKE_NAME}:test[0]", f"tfds:{FAKE_NAME}:test[1]"] and records.name_of(7) == f"tfds:{FAKE_NAME}:train[0]"
    view = records[np.array([16, 3])]
    assert len(view) == 2 and np.array_equal(view[0], w.ordered[16][0]) and np.array_equal(view[-1], w.ordered[3][0])
    assert view.names() == [f"tfds:{FAKE_NAME}:train[9]", f"tfds:{FAKE_NAME}:test[3]"]
    mask = labels == 1
    assert [r.shape for r in records[mask]] == [w.ordered[i][0].shape for i in np.flatnonzero(mask)]
    assert np.array_equal(records[5:7][1], w.ordered[6][0]) and len(list(records)) == 18
    with pytest.raises(IndexError):
        records[18]
    # every call read TFDS's data folder given, and none asked for a download
    assert all(d == w.data_dir for _, d in w.calls["builder"]) and all(c["data_dir"] == w.data_dir for c in w.calls["data_source"])
    assert not any(c["download"] for c in w.calls["data_source"])


def test_batches_over_tfds_records_equal_batches_over_the_folder(tfds_world):
    w = tfds_world
    records, labels, _ = tfds_image_source("fake_images", data_dir=w.data_dir)
    part = np.array([0, 2, 3, 5, 8, 9, 10, 13, 14, 17])
    kw = {"batch_size": 4, "size": 8, "seed": 3, "workers": 2, "prefetch": 1}
    for extra in ({}, {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}, {"resize": "stretch", "shuffle": False}):
        with (
            ImageBatches(records[part], labels[part], **kw, **extra) as from_records,
            ImageBatches(np.asarray(w.paths)[part], labels[part], **kw, **extra) as from_folder,
        ):
            assert len(from_records) == len(from_folder) == 3
            for epoch in (0, 1):
                got, want = list(from_records.epoch(epoch)), list(from_folder.epoch(epoch))
                for a, b in zip(got, want, strict=True):
                    assert a.x.dtype == b.x.dtype and np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y) and np.array_equal(a.mask, b.mask)
                assert got[-1].mask.tolist() == [True, True, False, False]
    for max_images in (None, 5):
        m1, s1 = channel_stats(records, size=8, max_images=max_images, seed=2, workers=2)
        m2, s2 = channel_stats(w.paths, size=8, max_images=max_images, seed=2, workers=2)
        assert np.array_equal(m1, m2) and np.array_equal(s1, s2)
    # arrays in a plain list go the same way
    arrays = [records[i] for i in part]
    with ImageBatches(arrays, labels[part], **kw) as from_arrays, ImageBatches(records[part], labels[part], **kw) as from_records:
        assert all(np.array_equal(a.x, b.x) for a, b in zip(from_arrays.epoch(1), from_records.epoch(1), strict=True))


def test_tfds_splits_are_pooled_in_the_order_asked(tfds_world):
    w = tfds_world
    train_labels = [y for _, y in w.splits["train"]]
    test_labels = [y for _, y in w.splits["test"]]
    records, labels, _ = tfds_image_source("fake_images", split="train", data_dir=w.data_dir)
    assert labels.tolist() == train_labels and len(records) == 11 and records.name_of(10) == f"tfds:{FAKE_NAME}:train[10]"
    records, labels, _ = tfds_image_source("fake_images", split=["train", "test"], data_dir=w.data_dir)
    assert labels.tolist() == train_labels + test_labels and len(records) == 18
    assert np.array_equal(records[11], w.splits["test"][0][0]) and np.array_equal(records[10], w.splits["train"][10][0])
    with pytest.raises(ValueError, match=r"has \['test', 'train'\]"):
        tfds_image_source("fake_images", split="validation", data_dir=w.data_dir)
    with pytest.raises(ValueError, match="distinct splits"):
        tfds_image_source("fake_images", split=["train", "train"], data_dir=w.data_dir)


def test_fingerprints_identify_records_arrays_and_paths(tfds_world):
    w = tfds_world
    records, labels, _ = tfds_image_source("fake_images", data_dir=w.data_dir)
    again, _, _ = tfds_image_source("fake_images", data_dir=w.data_dir)
    a, b = np.array([1, 4, 6]), np.array([1, 4, 7])
    assert records.fingerprint() == again.fingerprint() and records[a].fingerprint() == again[a].fingerprint()
    prints = {records.fingerprint(), records[a].fingerprint(), records[b].fingerprint(), records[a[::-1]].fingerprint()}
    module, _ = fake_tfds(w.splits, CLASSES, full_name="fake_images/1.0.1")  # a new version of the data set
    sys.modules["tensorflow_datasets"] = module
    prints.add(tfds_image_source("fake_images")[0].fingerprint())
    assert len(prints) == 5
    kw = {"batch_size": 2, "size": 8, "seed": 1, "workers": 1}
    with ImageBatches(records[a], labels[a], **kw) as x, ImageBatches(again[a], labels[a], **kw) as y, ImageBatches(records[b], labels[a], **kw) as z:
        assert x.fingerprint() == y.fingerprint() != z.fingerprint()
    # in-memory arrays: by content
    images = [records[i] for i in a]
    with ImageBatches(images, labels[a], **kw) as x, ImageBatches([im.copy() for im in images], labels[a], **kw) as y:
        fp = x.fingerprint()
        assert fp == y.fingerprint()
    images[1] = images[1].copy()
    images[1][0, 0, 0] ^= 1
    with ImageBatches(images, labels[a], **kw) as x:
        assert x.fingerprint() != fp

    # file paths: the documented recipe (repr of each part, then a NUL); recorded runs resume only while it
    # holds (an array of paths enters as NumPy 2's repr of np.str_, hence numpy>=2 in pyproject.toml)
    def recipe(*parts):
        h = hashlib.sha1()
        for part in parts:
            h.update(part if isinstance(part, bytes) else repr(part).encode())
            h.update(b"\0")
        return h.hexdigest()

    with ImageBatches(["a.png", "b/c.jpg", "d.png"], np.array([0, 1, 1]), **kw) as x:
        assert x.fingerprint() == recipe("a.png", "b/c.jpg", "d.png", np.array([0, 1, 1], np.int32).tobytes(), 8, "crop", True, 1, b"")
    stats = np.asarray([IMAGENET_MEAN, IMAGENET_STD], np.float32).astype(np.float64).tobytes()
    with ImageBatches(np.asarray(["a.png", "b/c.jpg"]), np.array([0, 1]), **kw, mean=IMAGENET_MEAN, std=IMAGENET_STD) as x:
        assert x.fingerprint() == recipe(np.str_("a.png"), np.str_("b/c.jpg"), np.array([0, 1], np.int32).tobytes(), 8, "crop", True, 1, stats)


def test_tfds_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail as if not installed
    with pytest.raises(ImportError, match=re.escape('pip install "lld-jax[tfds]"')) as err:
        tfds_image_source("caltech101")
    assert "image folder" in str(err.value)


def test_tfds_not_prepared_is_an_error_unless_downloading(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    module, calls = fake_tfds({"train": random_examples(rng, [0, 1, 1])}, ["a", "b"], prepared=False)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", module)
    with pytest.raises(FileNotFoundError, match="not prepared") as err:
        tfds_image_source("fake_images", data_dir=str(tmp_path))
    msg = str(err.value)
    assert "download=True" in msg and "--data-dir" in msg and str(tmp_path) in msg
    assert calls["data_source"] == []  # nothing was downloaded
    records, labels, names = tfds_image_source("fake_images", data_dir=str(tmp_path), download=True)
    assert [c["download"] for c in calls["data_source"]] == [True, False, False]  # prepared once, then read
    assert len(records) == 3 and labels.tolist() == [0, 1, 1] and names == ["a", "b"]


def test_tfds_feature_and_record_errors(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    splits = {"train": random_examples(rng, [0, 1]) + [(np.zeros((4, 4, 3), np.float32), 1)]}
    for features, match in (
        ({"picture": SimpleNamespace(), "label": SimpleNamespace(names=["a", "b"])}, "features .*'picture'.*image_key"),
        ({"image": SimpleNamespace(), "label": SimpleNamespace()}, "no class names"),
    ):
        monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake_tfds(splits, ["a", "b"], features=features)[0])
        with pytest.raises(ValueError, match=match):
            tfds_image_source("fake_images")
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake_tfds(splits, ["a"])[0])
    with pytest.raises(ValueError, match=r"outside \[0, 1\)"):
        tfds_image_source("fake_images")
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake_tfds(splits, ["a", "b"])[0])
    records, labels, _ = tfds_image_source("fake_images")
    with ImageBatches(records, labels, batch_size=3, size=4, workers=1) as batches:
        with pytest.raises(ValueError, match=re.escape(f"tfds:{FAKE_NAME}:train[2]") + ".*uint8"):
            list(batches)
    for bad in (np.zeros((4, 4, 2), np.uint8), np.zeros((0, 4, 3), np.uint8), np.zeros((4, 4), np.int16)):
        with pytest.raises(ValueError, match="image array must be uint8"):
            load_image(bad, 4)
    with pytest.raises(ValueError, match="indices"):
        ImageRecords({"x": [np.zeros((2, 2), np.uint8)]}, name="x", key=None, indices=np.array([1]))
    with pytest.raises(ValueError, match="non-empty name"):
        ImageRecords({"x": []}, name="")


def test_caltech_with_tfds_matches_the_same_images_in_a_folder(tmp_path, monkeypatch):
    from experiments import caltech

    rng = np.random.default_rng(3)
    counts = {"ant": 24, "bee": 23, "cow": 21}
    objects = []
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            image = random_examples(rng, [c])[0][0]
            save_like_a_file(tmp_path / "folder" / name / f"{i:03d}.png", image)
            objects.append((image, [0, 2, 3][c]))  # TFDS's lower-case names sort the clutter class second
    background = random_examples(rng, [1] * 4)
    for i, (image, _) in enumerate(background):
        save_like_a_file(tmp_path / "folder" / caltech.BACKGROUND / f"{i:03d}.png", image)
    splits = {"test": background, "train": objects}  # pooled: test (the clutter class, left out), then train in folder order
    module, calls = fake_tfds(splits, ["ant", "background_google", "bee", "cow"])
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", module)
    flags = ["--classes", "2", "--train-per-class", "3", "--size", "8", "--workers", "2", "--no-progress"]
    via_tfds = caltech.ImageData.load(caltech.parse(["--tfds", "fake_caltech", *flags]).resolved())
    cfg = caltech.parse(["--data-dir", str(tmp_path / "folder"), *flags]).resolved()
    via_folder = caltech.ImageData.load(cfg)
    assert via_tfds.class_names == via_folder.class_names == ["ant", "bee"]
    assert via_tfds.labels.tolist() == via_folder.labels.tolist() == [0] * 24 + [1] * 23
    for part in ("train", "val", "test"):
        assert np.array_equal(getattr(via_tfds, part), getattr(via_folder, part)), part
    assert len(via_tfds.train) == 2 * 3 and len(via_tfds.val) == 2 * 5 and len(via_tfds.test) == 2 * 15
    assert via_tfds.mean == via_folder.mean and via_tfds.std == via_folder.std
    assert via_tfds.paths[0] == f"tfds:{FAKE_NAME}:train[0]" and via_folder.records is None and via_tfds.records is not None
    assert np.array_equal(via_tfds.pixels(via_tfds.test[:4], cfg), via_folder.pixels(via_folder.test[:4], cfg))
    with via_tfds.batches(via_tfds.train, cfg, shuffle=True, seed=1) as a, via_folder.batches(via_folder.train, cfg, shuffle=True, seed=1) as b:
        for u, v in zip(a.epoch(0), b.epoch(0), strict=True):
            assert np.array_equal(u.x, v.x) and np.array_equal(u.y, v.y)
        assert a.fingerprint() != b.fingerprint()  # records are named, not hashed by pixels: another source
    assert not any(c["download"] for c in calls["data_source"]) and all(c["data_dir"] is None for c in calls["data_source"])
    with pytest.raises(ValueError, match=r"--exclude names classes that TFDS data set 'fake_caltech' does not hold: \['dgo'\]"):
        caltech.ImageData.load(caltech.parse(["--tfds", "fake_caltech", "--exclude", "dgo", *flags]).resolved())


def test_links_never_put_one_file_in_two_splits_or_under_two_labels(tmp_path):
    synthetic_folder(tmp_path, {"cat": 6, "dog": 6})
    # A folder linked into its own class and a file linked to a sibling: each file is listed once.
    os.symlink(tmp_path / "dog", tmp_path / "dog" / "again")
    os.symlink(tmp_path / "dog" / "img_000.png", tmp_path / "dog" / "copy.png")
    paths, labels, names = scan_image_folder(str(tmp_path))
    assert names == ["cat", "dog"] and len(paths) == 12 and np.array_equal(np.bincount(labels), [6, 6])
    real = [os.path.realpath(p) for p in paths]
    assert len(set(real)) == 12
    train, val, test = split_per_class(labels, num_val=1, num_test=2, seed=0)
    groups = [{real[i] for i in part} for part in (train, val, test)]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    # A folder of one class linked into another: one image, two labels, refused with both paths.
    os.symlink(tmp_path / "dog", tmp_path / "cat" / "more")
    with pytest.raises(ValueError, match=r"dog/\w+\.png' \(class 'dog'\) and '.*cat/more/\w+\.png' \(class 'cat'\) are the same file.*two labels"):
        scan_image_folder(str(tmp_path))
    os.remove(tmp_path / "cat" / "more")
    # A file of one class linked from another, too.
    os.symlink(tmp_path / "cat" / "img_001.png", tmp_path / "dog" / "stolen.png")
    with pytest.raises(ValueError, match="two labels"):
        scan_image_folder(str(tmp_path))

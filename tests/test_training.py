"""Train step, data parallelism, resume, NaN handling and the MNIST loader."""

import dataclasses
import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fixtures import MNIST_DIR
from flax import nnx

import lld_jax as L
from lld_jax.data import load_mnist, read_idx
from lld_jax.training import RunDir, TrainConfig, Trainer, data_mesh, fit, lr_schedule, make_optimizer


def crash_config():
    # 8 steps per epoch on small_problem(60); mid-epoch checkpoints at steps 5, 10, 15, ... (epoch 1 step 5, epoch 2 step 2, ...)
    return TrainConfig(epochs=6, batch_size=8, lam=0.5, C=1.0, regularizer="sampled", num_samples=2, lr=0.05, checkpoint_every_steps=5)


def multiprocess_config():
    return TrainConfig(epochs=2, batch_size=16, lam=0.5, C=1.0, lr=0.05)


def small_problem(n=50, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int32)
    model = L.models.MLP(6, [16, 16], 2, rngs=nnx.Rngs(seed))
    net, params = L.from_nnx(model)
    return net, params, x, y


def test_sharded_step_equals_single_device():
    assert jax.device_count() == 8
    net, params, x, y = small_problem()
    cfg = TrainConfig(lam=0.5, C=1.0, batch_size=13)  # 13 does not divide 8: padded and masked
    one = data_mesh(jax.devices()[:1])
    results = []
    for mesh in (one, None):
        tr = Trainer(net, cfg, mesh=mesh)
        state = tr.init_state(params)
        size = -(-13 // len(tr.mesh.devices.flat)) * len(tr.mesh.devices.flat)
        state, m = tr.train_step(state, *tr.padded_batch(x[:13], y[:13], size))
        results.append((jax.device_get(state.params), jax.device_get(m)))
    (p1, m1), (p8, m8) = results
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p1, p8)
    np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)


@pytest.mark.parametrize("task_loss", ["softmax", "sigmoid"])
def test_evaluate_equals_numpy_task_loss_over_ragged_batches(task_loss):
    """Mean loss and accuracy over 13 examples in batches of 8 (5 rounded up to the 8 test devices; the last
    batch padded and masked) against NumPy."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(13, 6)).astype(np.float32)
    outputs = 1 if task_loss == "sigmoid" else 3
    y = rng.integers(0, 2 if task_loss == "sigmoid" else 3, 13).astype(np.int32)
    net, params = L.from_nnx(L.models.MLP(6, [8], outputs, rngs=nnx.Rngs(0)))
    m = Trainer(net, TrainConfig(lam=0.0, task_loss=task_loss, eval_batch_size=5)).evaluate(params, x, y)
    s = np.asarray(jax.vmap(lambda u: net.apply(params, u)[0])(x), np.float64)
    if task_loss == "sigmoid":
        loss, correct = np.log1p(np.exp(-(2 * y - 1) * s[:, 0])), (s[:, 0] > 0) == (y == 1)
    else:
        top = s.max(1)
        loss, correct = top + np.log(np.exp(s - top[:, None]).sum(1)) - s[np.arange(13), y], s.argmax(1) == y
    np.testing.assert_allclose(m["loss"], loss.mean(), rtol=1e-5)
    np.testing.assert_allclose(m["accuracy"], correct.mean(), rtol=1e-6)


@pytest.mark.parametrize("regularizer", ["roll", "sampled"])
def test_resumed_and_extended_run_equals_uninterrupted(tmp_path, regularizer):
    net, params, x, y = small_problem(60)
    cfg = TrainConfig(epochs=3, batch_size=16, lam=0.5, C=1.0, regularizer=regularizer, num_samples=2, lr=0.05)
    a, hist_a = fit(net, params, cfg, (x, y), (x[:20], y[:20]), str(tmp_path / "a"), progress=False)
    fit(net, params, dataclasses.replace(cfg, epochs=1), (x, y), (x[:20], y[:20]), str(tmp_path / "b"), progress=False)
    b, hist_b = fit(net, params, cfg, (x, y), (x[:20], y[:20]), str(tmp_path / "b"), progress=False)
    chex.assert_trees_all_equal(jax.device_get(a), jax.device_get(b))
    assert hist_a == hist_b and len(hist_b) == 3
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    saved = json.loads((tmp_path / "b" / "config.json").read_text())
    assert saved["train"]["epochs"] == 3 and saved["train"]["lam"] == 0.5


def test_fit_returns_the_best_validation_epoch_not_the_last(tmp_path):
    """Validation labels are the training labels flipped, so validation loss rises as training fits:
    fit returns the parameters of the lowest-validation-loss epoch (those of a run stopped there)."""
    net, params, x, y = small_problem(60)
    val = (x[:30], 1 - y[:30])
    cfg = TrainConfig(epochs=5, batch_size=16, lam=0.5, C=1.0, lr=0.1)
    best, hist = fit(net, params, cfg, (x, y), val, str(tmp_path / "long"), progress=False)
    k = int(np.argmin([h["val_loss"] for h in hist])) + 1
    assert k < cfg.epochs, "the setup must make an earlier epoch the best"
    # Training is deterministic: a run of k epochs ends where the long run was at epoch k (not at its last).
    stopped, _ = fit(net, params, dataclasses.replace(cfg, epochs=k), (x, y), val, str(tmp_path / "short"), progress=False)
    chex.assert_trees_all_equal(jax.device_get(best), jax.device_get(stopped))
    loaded = L.training.load_best(str(tmp_path / "long"), params)
    chex.assert_trees_all_equal(jax.device_get(best), jax.device_get(loaded))


def test_nan_loss_stops_with_message_and_keeps_checkpoint(tmp_path, monkeypatch):
    net, params, x, y = small_problem(40)
    cfg = TrainConfig(epochs=2, batch_size=20, lr=0.01)
    fit(net, params, dataclasses.replace(cfg, epochs=1), (x, y), (x, y), str(tmp_path), progress=False)
    # Epoch 2's first step diverges: its loss comes back NaN (injected around the compiled step).
    init = Trainer.__init__

    def diverging_init(self, *args, **kw):
        init(self, *args, **kw)
        step = self.train_step
        self.train_step = lambda state, *b: (lambda out: (out[0], {**out[1], "loss": out[1]["loss"] * jnp.nan}))(step(state, *b))

    monkeypatch.setattr(Trainer, "__init__", diverging_init)
    with pytest.raises(FloatingPointError, match=r"NaN or Inf at epoch 2, step 1.*last good checkpoint \(epoch 1\)"):
        fit(net, params, cfg, (x, y), (x, y), str(tmp_path), progress=False)
    assert (tmp_path / "checkpoints" / "latest" / "1").exists()
    monkeypatch.undo()
    x_bad = x.copy()
    x_bad[5] = 3e38  # finite, but the first layer overflows
    with pytest.raises(FloatingPointError, match=r"at epoch 1, step \d+.*no checkpoint was written yet"):
        fit(net, params, cfg, (x_bad, y), (x, y), str(tmp_path / "fresh"), progress=False)


def test_shortening_a_run_is_refused(tmp_path):
    net, params, x, y = small_problem(20)
    fit(net, params, TrainConfig(epochs=2, batch_size=10), (x, y), (x, y), str(tmp_path), progress=False)
    config = (tmp_path / "config.json").read_text()
    with pytest.raises(ValueError, match="trained 2 epochs already"):
        fit(net, params, TrainConfig(epochs=1, batch_size=10), (x, y), (x, y), str(tmp_path), progress=False)
    assert (tmp_path / "config.json").read_text() == config


def test_other_data_or_initialisation_refused(tmp_path):
    net, params, x, y = small_problem(20)
    cfg = TrainConfig(epochs=1, batch_size=10)
    fit(net, params, cfg, (x, y), (x, y), str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="run.train_sha1"):
        fit(net, params, cfg, (x[::-1].copy(), y[::-1].copy()), (x, y), str(tmp_path), progress=False)
    other = jax.tree.map(lambda a: a * 2, params)
    with pytest.raises(ValueError, match="run.init_sha1"):
        fit(net, other, cfg, (x, y), (x, y), str(tmp_path), progress=False)
    wide_net, wide = L.from_nnx(L.models.MLP(6, [17, 16], 2, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="run.params"):
        fit(wide_net, wide, cfg, (x, y), (x, y), str(tmp_path), progress=False)


def test_bad_data_refused_before_anything_is_written(tmp_path):
    net, params, x, y = small_problem(20)
    cfg = TrainConfig(epochs=1, batch_size=10)
    for bad, match in [
        ((x, np.where(y == 1, 7, y).astype(np.int32)), r"labels must be integers in \[0, 2\)"),
        ((np.where(x > 1, np.nan, x), y), "NaN or Inf inputs"),
        ((x[:, :4], y), "shape"),
        ((x[:0], y[:0]), "at least one"),
    ]:
        with pytest.raises(ValueError, match=match):
            fit(net, params, cfg, bad, (x, y), str(tmp_path / "run"), progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="method must be one of"):
        fit(net, params, TrainConfig(method="bogus"), (x, y), (x, y), str(tmp_path / "run"), progress=False)
    assert not (tmp_path / "run").exists()


def _xla_flags(devices: int) -> str:
    """This process's XLA flags (conftest's compile settings) with ``devices`` fake CPU devices, for workers."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
    return f"{flags} --xla_force_host_platform_device_count={devices}".strip()


EIGHT_DEVICES = {"XLA_FLAGS": _xla_flags(8)}  # the same mesh as this process


def _worker(script, args, env_extra=None):
    here = os.path.dirname(os.path.abspath(__file__))
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": _xla_flags(1),
        "PYTHONPATH": os.pathsep.join([here, os.path.dirname(here), os.environ.get("PYTHONPATH", "")]),
        **(env_extra or {}),
    }
    return subprocess.Popen([sys.executable, os.path.join(here, script), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


KILL_POINTS = [  # a crash at each of these instructions, one after the other on the same run directory
    "save_position:1:mid",  # the first mid-epoch checkpoint write has started (epoch 1, step 5)
    "save_position:2:after",  # stopped mid-epoch (epoch 2, step 2), right after its checkpoint: resumed from there
    "append_metrics:2:after",  # epoch 2's metrics line is on disk, its checkpoints are not
    "save:2:mid",  # a checkpoint write has started
    "keep_metrics:1:before",  # before the metrics file is trimmed on resume
    "save:3:after",  # between a best and a latest checkpoint, or after a latest one
    "append_metrics:1:before",
]


def test_sigkill_at_each_commit_point_then_resume_loses_nothing(tmp_path):
    """SIGKILL a training process at chosen instructions (mid-checkpoint, between metrics and checkpoint, ...), resume: identical result."""
    net, params, x, y = small_problem(60)
    ref, ref_hist = fit(net, params, crash_config(), (x, y), (x[:20], y[:20]), str(tmp_path / "ref"), progress=False)
    run, out = str(tmp_path / "run"), str(tmp_path / "out.npz")
    # The workers compile the same programs: a shared persistent compilation cache halves each one's time.
    env = {
        **EIGHT_DEVICES,
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    for spec in KILL_POINTS:
        proc = _worker("killable_fit.py", [run, out], {**env, "KILL_AT": spec})
        log = proc.communicate(timeout=600)[0]
        assert proc.returncode == -signal.SIGKILL, f"{spec}: the worker was not killed where asked (rc {proc.returncode})\n{log[-3000:]}"
    proc = _worker("killable_fit.py", [run, out], env)
    log = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, log[-3000:]
    got = np.load(out)
    for i, leaf in enumerate(jax.tree.leaves(jax.device_get(ref))):
        np.testing.assert_array_equal(got[f"arr_{i}"], leaf)
    assert json.loads(open(out + ".json").read()) == ref_hist
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines == ref_hist


def test_crash_between_metrics_and_checkpoint_replays_the_epoch(tmp_path):
    net, params, x, y = small_problem(60)
    cfg = TrainConfig(epochs=3, batch_size=16, lam=0.5, C=1.0, lr=0.05)
    ref, ref_hist = fit(net, params, cfg, (x, y), (x[:20], y[:20]), str(tmp_path / "ref"), progress=False)
    run = tmp_path / "run"
    fit(net, params, dataclasses.replace(cfg, epochs=2), (x, y), (x[:20], y[:20]), str(run), progress=False)
    saved = tmp_path / "ckpt_after_2"
    shutil.copytree(run / "checkpoints", saved)
    fit(net, params, cfg, (x, y), (x[:20], y[:20]), str(run), progress=False)
    # Epoch 3's metrics line was written, then the process died before its checkpoints.
    shutil.rmtree(run / "checkpoints")
    shutil.copytree(saved, run / "checkpoints")
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 4, "train_lo')  # and a torn line of a later write
    got, hist = fit(net, params, cfg, (x, y), (x[:20], y[:20]), str(run), progress=False)
    assert hist == ref_hist
    assert [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] == ref_hist
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), jax.device_get(got), jax.device_get(ref))


def test_config_change_in_existing_run_dir_refused(tmp_path):
    net, params, x, y = small_problem(20)
    fit(net, params, TrainConfig(epochs=1, batch_size=10), (x, y), (x, y), str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="different config"):
        fit(net, params, TrainConfig(epochs=1, batch_size=10, lam=1.0, C=1.0), (x, y), (x, y), str(tmp_path), progress=False)
    other = y.astype(np.int64 if y.dtype == np.int32 else np.int32)  # same labels, another dtype
    with pytest.raises(ValueError, match="other training or validation data.*int64 and int32 labels differ"):
        fit(net, params, TrainConfig(epochs=1, batch_size=10), (x, other), (x, y), str(tmp_path), progress=False)
    fit(net, params, TrainConfig(epochs=2, batch_size=10), (x, y), (x, y), str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="other training or validation data"):  # not "cannot shorten": the data is the problem
        fit(net, params, TrainConfig(epochs=1, batch_size=10), (x[::-1], y), (x, y), str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="cannot shorten"):
        fit(net, params, TrainConfig(epochs=1, batch_size=10), (x, y), (x, y), str(tmp_path), progress=False)


def test_training_reduces_loss_and_roll_enlarges_margins(tmp_path):
    net, params, x, y = small_problem(200)
    base = dict(epochs=15, batch_size=32, lr=0.01, optimizer="adam")
    pv, hv = fit(net, params, TrainConfig(**base), (x, y), (x, y), str(tmp_path / "v"), progress=False)
    pr, _ = fit(net, params, TrainConfig(**base, lam=1.0, C=1.0), (x, y), (x, y), str(tmp_path / "r"), progress=False)
    assert hv[-1]["train_loss"] < hv[0]["train_loss"]
    mv = np.median(L.batched.margin(net, pv, jnp.asarray(x)))
    mr = np.median(L.batched.margin(net, pr, jnp.asarray(x)))
    assert mr > 2 * mv, (mr, mv)


def test_mnist_loader_reads_real_files():
    # The committed excerpt: the first 500 training and 200 test images of MNIST.
    raw = read_idx(os.path.join(MNIST_DIR, "train-labels-idx1-ubyte.gz"))
    np.testing.assert_array_equal(raw[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])  # MNIST's well-known first training labels
    np.testing.assert_array_equal(read_idx(os.path.join(MNIST_DIR, "t10k-labels-idx1-ubyte.gz"))[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
    data = load_mnist(MNIST_DIR, val_size=100)
    assert data.train.x.shape == (400, 28, 28) and data.val.x.shape == (100, 28, 28) and data.test.x.shape == (200, 28, 28)
    # The validation set is the first val_size indices of a RandomState(1) permutation (paper's code).
    perm = np.random.RandomState(1).permutation(500)
    np.testing.assert_array_equal(data.val.y, raw[perm[:100]])
    np.testing.assert_array_equal(data.train.y, raw[perm[100:]])
    # Normalised with the paper's constants: pixel 0 and 255 map to (0 - 0.1307) / 0.3081 and (1 - 0.1307) / 0.3081.
    images = read_idx(os.path.join(MNIST_DIR, "train-images-idx3-ubyte.gz"))
    np.testing.assert_allclose(data.val.x, (images[perm[:100]] / 255.0 - 0.1307) / 0.3081, rtol=1e-6, atol=1e-6)
    assert load_mnist(MNIST_DIR, val_size=100, train_size=100).train.x.shape[0] == 100


def test_mnist_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        load_mnist(str(tmp_path))
    bad = tmp_path / "x.gz"
    with gzip.open(bad, "wb") as fh:
        fh.write(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\x00" * 10)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(str(bad))
    junk = tmp_path / "y"
    junk.write_bytes(b"hello world")
    with pytest.raises(ValueError, match="no uint8 IDX header"):
        read_idx(str(junk))


def _two_processes(tmp_path, *args):
    """Runs tests/multiprocess_fit.py as processes 0 and 1 of one run; returns (return codes, logs)."""
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    here = os.path.dirname(os.path.abspath(__file__))
    procs = []
    for pid in range(2):
        env = {
            **os.environ,
            "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
            "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(pid),
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": _xla_flags(2),
            "PYTHONPATH": os.pathsep.join([here, os.path.dirname(here), os.environ.get("PYTHONPATH", "")]),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, os.path.join(here, "multiprocess_fit.py"), str(tmp_path / "run"), str(tmp_path / "multi.npz"), *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs = [p.communicate(timeout=600)[0] for p in procs]
    return [p.returncode for p in procs], logs


def test_multiprocess_fit_equals_single_process(tmp_path):
    """Two CPU processes (2 devices each, gloo all-reduce) train like one process on 8 devices."""
    codes, logs = _two_processes(tmp_path)
    assert codes == [0, 0], "\n\n".join(logs)[-5000:]
    out = str(tmp_path / "multi.npz")
    info = json.loads(open(out + ".json").read())
    assert info["process_count"] == 2 and info["device_count"] == 4

    net, params, x, y = small_problem(60)
    single, hist = fit(net, params, multiprocess_config(), (x, y), (x[:20], y[:20]), str(tmp_path / "single"), progress=False)
    multi = np.load(out)
    for i, leaf in enumerate(jax.tree.leaves(jax.device_get(single))):
        np.testing.assert_allclose(multi[f"arr_{i}"], leaf, rtol=1e-5, atol=1e-6)
    for a, b in zip(info["history"], hist):
        np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-5)
        np.testing.assert_allclose(a["val_loss"], b["val_loss"], rtol=1e-5)
    # Only process 0 wrote the run files; the checkpoint is there.
    assert (tmp_path / "run" / "checkpoints" / "best").exists()
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2


def test_multiprocess_fit_with_different_data_refused_on_every_process(tmp_path):
    """Process 1 passes its split in another order: both processes stop with the same message, nothing is written."""
    codes, logs = _two_processes(tmp_path, "other-data")
    for code, log in zip(codes, logs):
        assert code != 0 and "training data differs from process 0's on process(es) [1]" in log, log[-3000:]
        assert "validation data differs" not in log and "initial parameters differs" not in log
    assert not (tmp_path / "run" / "config.json").exists()


def test_multiprocess_fit_refused_on_one_process_stops_every_process(tmp_path):
    """Process 1's own checks refuse its labels: it raises its error, process 0 is told and stops (no hang)."""
    codes, logs = _two_processes(tmp_path, "bad-labels")
    assert codes[0] != 0 and "process(es) [1] of this run refused their arguments" in logs[0], logs[0][-3000:]
    assert codes[1] != 0 and "labels must be a 1-D array" in logs[1], logs[1][-3000:]
    assert not (tmp_path / "run" / "config.json").exists()


class ArraySource:
    """A BatchSource over host arrays with train_epoch's own shuffle: an independent path to the same batches."""

    def __init__(self, x, y, batch_size, seed, shuffle=True):
        self.x, self.y, self.labels = x, y, y
        self.batch_size = self.local_batch_size = batch_size
        self.seed, self.shuffle = seed, shuffle

    def epoch(self, epoch):
        from lld_jax._src.host import epoch_order, pad_rows

        order = epoch_order(len(self.x), self.seed, epoch) if self.shuffle else np.arange(len(self.x))
        for lo in range(0, len(order), self.batch_size):
            idx = order[lo : lo + self.batch_size]
            mask = np.arange(self.batch_size) < len(idx)
            yield pad_rows(self.x[idx], self.batch_size), pad_rows(self.y[idx], self.batch_size), mask

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    @property
    def num_examples(self):
        return len(self.x)

    def fingerprint(self):
        return hashlib.sha1(self.x.tobytes() + self.y.tobytes()).hexdigest()


def test_streamed_batches_train_exactly_like_host_arrays(tmp_path):
    net, params, x, y = small_problem(45)  # 45 = 2 * 16 + 13: a ragged, masked last batch
    # One validation batch on both paths: the sampled penalty's per-example keys depend on the batch composition.
    cfg = TrainConfig(
        epochs=2, batch_size=16, lam=0.5, C=1.0, regularizer="sampled", num_samples=2, lr=0.05, lr_decay_epochs=(1,), eval_batch_size=20
    )
    a, hist_a = fit(net, params, cfg, (x, y), (x[:20], y[:20]), str(tmp_path / "a"), progress=False)
    train, val = ArraySource(x, y, 16, cfg.seed), ArraySource(x[:20], y[:20], 20, 0, shuffle=False)
    b, hist_b = fit(net, params, cfg, train, val, str(tmp_path / "b"), progress=False)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7), jax.device_get(a), jax.device_get(b))
    for ha, hb in zip(hist_a, hist_b):
        assert ha.keys() == hb.keys() and all(np.isclose(ha[k], hb[k], rtol=1e-5) for k in ha)
    with pytest.raises(ValueError, match="batches of 8 rows but cfg.batch_size is 16"):
        fit(net, params, cfg, ArraySource(x, y, 8, cfg.seed), val, str(tmp_path / "c"), progress=False)
    bad = ArraySource(x, y + 5, 16, cfg.seed)
    with pytest.raises(ValueError, match=r"training labels must be integers in \[0, 2\)"):
        fit(net, params, cfg, bad, val, str(tmp_path / "d"), progress=False)
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


class Interrupted(Exception):
    """Stands for a process stopped between two steps (Ctrl-C, a pre-empted job)."""


@pytest.mark.parametrize("data", ["images", "arrays"])
def test_run_stopped_mid_epoch_resumes_with_the_batches_it_would_have_seen(tmp_path, monkeypatch, data):
    """Stopped right after the mid-epoch checkpoint of step 2 of epoch 2, resumed: parameters and metrics identical (tolerance 0) to an
    uninterrupted run without mid-epoch checkpoints; only the remaining steps run. Images go through ImageBatches (Grain's iterator
    state is saved with the checkpoint and restored), arrays through train_epoch's own batches."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (5, 7, 3), np.uint8) for _ in range(27)]  # 27 = 3 * 8 + 3: a ragged, masked last batch
    labels = (np.array([im[..., 0].mean() for im in images]) > 127).astype(np.int32)
    net, params = L.from_nnx(L.models.MLP((4, 4, 3), [8], 2, rngs=nnx.Rngs(0)))
    cfg = TrainConfig(epochs=3, batch_size=8, lam=0.5, C=1.0, regularizer="sampled", num_samples=2, lr=0.05, eval_batch_size=8)
    stats = {"mean": L.data.IMAGENET_MEAN, "std": L.data.IMAGENET_STD}
    if data == "images":
        train = L.data.ImageBatches(images, labels, batch_size=8, size=4, seed=cfg.seed, workers=2, prefetch=1, **stats)
        val = L.data.ImageBatches(images[:8], labels[:8], batch_size=8, size=4, shuffle=False, workers=1, **stats)
    else:
        x = np.stack([L.data.normalize(L.data.load_image(im, 4)) for im in images])
        train, val = (x, labels), (x[:8], labels[:8])
    ref, ref_hist = fit(net, params, cfg, train, val, str(tmp_path / "ref"), progress=False)
    steps = []
    init = Trainer.__init__

    def counting_init(self, *args, **kw):
        init(self, *args, **kw)
        step = self.train_step
        self.train_step = lambda *a: (steps.append(1), step(*a))[1]

    monkeypatch.setattr(Trainer, "__init__", counting_init)
    save = L.training.Checkpoints.save_position
    saved = []

    def save_then_stop(self, *args):
        save(self, *args)
        saved.append(args[2])
        if len(saved) == 2:
            raise Interrupted

    monkeypatch.setattr(L.training.Checkpoints, "save_position", save_then_stop)
    run, mid_cfg = str(tmp_path / "run"), dataclasses.replace(cfg, checkpoint_every_steps=3)  # 4 steps per epoch: steps 3, 6 (epoch 2, step 2), 9
    with pytest.raises(Interrupted):
        fit(net, params, mid_cfg, train, val, run, progress=False)
    assert (saved[1]["epoch"], saved[1]["step"]) == (1, 2) and (saved[1]["data"] is not None) == (data == "images")
    monkeypatch.setattr(L.training.Checkpoints, "save_position", save)
    steps.clear()
    got, hist = fit(net, params, mid_cfg, train, val, run, progress=False)
    assert len(steps) == 2 + 4  # epoch 2's last two steps and epoch 3: nothing replayed
    chex.assert_trees_all_equal(jax.device_get(got), jax.device_get(ref))
    assert hist == ref_hist
    assert [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))] == ref_hist
    assert os.listdir(os.path.join(run, "checkpoints", "mid")) == []  # overtaken by the epoch ends
    if data == "images":
        train.close()
        val.close()


def test_lr_step_schedule():
    cfg = TrainConfig(lr=0.5, lr_decay_epochs=(1, 3), lr_decay=0.1, momentum=0.0)
    sched = lr_schedule(cfg, steps_per_epoch=2)
    want = [0.5, 0.5, 0.05, 0.05, 0.05, 0.05, 0.005, 0.005]  # epochs 0, 1-2, 3+ (2 steps each)
    np.testing.assert_allclose([float(sched(s)) for s in range(8)], want, rtol=1e-6)
    # The optimiser applies it: SGD without momentum steps by -lr(step) * gradient.
    opt = make_optimizer(cfg, steps_per_epoch=2)
    state, steps = opt.init(jnp.zeros(())), []
    for _ in range(8):
        u, state = opt.update(jnp.ones(()), state)
        steps.append(-float(u))
    np.testing.assert_allclose(steps, want, rtol=1e-6)
    assert lr_schedule(TrainConfig(lr=0.5), None) == 0.5  # no schedule: the constant rate (unchanged optimiser state)
    with pytest.raises(ValueError, match="needs the number of steps per epoch"):
        make_optimizer(cfg)
    for bad in [(0,), (3, 1), (2, 2), (1.5,)]:
        with pytest.raises(ValueError, match="lr_decay_epochs must be increasing positive integers"):
            TrainConfig(lr_decay_epochs=bad).validate()
    with pytest.raises(ValueError, match="lr_decay must be in"):
        TrainConfig(lr_decay_epochs=(1,), lr_decay=0.0).validate()


def test_run_recorded_before_a_new_config_field_resumes(tmp_path):
    net, params, x, y = small_problem(20)
    cfg = TrainConfig(epochs=1, batch_size=10)
    fit(net, params, cfg, (x, y), (x, y), str(tmp_path), progress=False)
    record = json.loads((tmp_path / "config.json").read_text())
    del record["train"]["lr_decay_epochs"], record["train"]["lr_decay"]  # as written by an older version
    (tmp_path / "config.json").write_text(json.dumps(record))
    _, hist = fit(net, params, dataclasses.replace(cfg, epochs=2), (x, y), (x, y), str(tmp_path), progress=False)
    assert len(hist) == 2
    record["train"]["lr_decay_epochs"] = [1]  # a missing field only stands for its default
    (tmp_path / "config.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="lr_decay_epochs"):
        fit(net, params, dataclasses.replace(cfg, epochs=3), (x, y), (x, y), str(tmp_path), progress=False)


def test_rundir_differences_compares_the_parts_asked(tmp_path):
    rd = RunDir(str(tmp_path))
    assert rd.differences({"train": {"lr": 0.1}}) == []  # no run yet
    rd.claim({"train": {"lr": 0.1, "epochs": 2}, "run": {"data": "abc"}})
    assert rd.differences({"train": {"lr": 0.1, "epochs": 2}}, parts=True) == []  # "run" not compared
    assert rd.differences({"train": {"lr": 0.1, "epochs": 2}}) == ["run: {'data': 'abc'} -> '<missing>'"]
    assert rd.differences({"train": {"lr": 0.2, "epochs": 3}}, parts=True, mutable=("train.epochs",)) == ["train.lr: 0.1 -> 0.2"]
    # a key the record lacks stands for its default only
    asked = {"train": {"lr": 0.1, "epochs": 2, "lr_decay": 0.1}}
    assert rd.differences(asked, parts=True, defaults=TrainConfig.record_defaults()) == []
    assert rd.differences(asked | {"train": asked["train"] | {"lr_decay": 0.5}}, parts=True, defaults=TrainConfig.record_defaults()) == [
        "train.lr_decay: 0.1 -> 0.5"
    ]

"""Recurrent nets: scoRNN stays orthogonal, padded sequences give exactly the results of the sequence alone,
stability bounds equal one-direction margins, and the Japanese Vowels loader reads the real files."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fixtures import VOWELS_DIR as VOWELS
from flax import nnx

import lld_jax as L
from lld_jax.data import load_japanese_vowels, pad_sequences, sequence_lengths
from lld_jax.training import TrainConfig, Trainer

# Exactness against float64 references (see conftest: the suite runs float32 unless a test opts in).
pytestmark = pytest.mark.float64

F, H = 3, 6


def _model(kind, seed=0, dtype=jnp.float64):
    rngs = nnx.Rngs(seed)
    if kind == "scornn":
        return L.models.ScoRNN(F, 4, hidden=H, num_negative=2, negative_slope=0.1, variable_length=True, rngs=rngs, param_dtype=dtype)
    return L.models.RNN(F, H, 4, negative_slope=0.0, variable_length=True, rngs=rngs, param_dtype=dtype)


def _padded_and_alone(seed=0, lengths=(1, 4)):
    rng = np.random.default_rng(seed)
    seqs = [rng.normal(size=(n, F)) for n in lengths]
    batch = jnp.asarray(pad_sequences(seqs, length=max(lengths) + 2, dtype=np.float64))  # extra padding on every sequence
    alone = [jnp.asarray(pad_sequences([s], dtype=np.float64)[0]) for s in seqs]
    return batch, alone


def _real(a, n):
    """The entries of a per-neuron array (N, ...) that belong to the first n time steps."""
    return a[: n * H]


@pytest.mark.parametrize("kind", ["scornn", "rnn"])
def test_padded_sequence_equals_sequence_alone(kind):
    # Every function compiles once per sequence length: two lengths, value checks off (tested elsewhere).
    full = kind == "scornn"  # the Elman RNN shares the recurrence: a subset of functions, on two lengths
    net, params = L.from_nnx(_model(kind))
    batch, alone = _padded_and_alone(lengths=(3,) if full else (1, 4))
    lengths = sequence_lengths(np.asarray(batch))
    kw = {"check": False}
    margins = {p: L.batched.margin(net, params, batch, p=p, **kw) for p in ((1, 2, np.inf) if full else (2,))}
    patterns = L.batched.activation_pattern(net, params, batch, **kw)
    lo_b, up_b = L.batched.stability_bounds(net, params, batch, **kw)
    for i, (xa, n) in enumerate(zip(alone, lengths)):
        assert xa.shape[0] == n
        for p, m in margins.items():
            np.testing.assert_allclose(m[i], L.margin(net, params, xa, p=p, **kw), rtol=1e-12)
        np.testing.assert_array_equal(_real(patterns[i], n), L.activation_pattern(net, params, xa, **kw))
        assert not np.any(patterns[i][n * H :]), "padded steps must read as inactive"
        for method in ("forward", "reverse", "template") if full else ("template",):
            z_a, g_a = L.neuron_gradients(net, params, xa, method=method, **kw)
            z_m, g_m = L.neuron_gradients(net, params, batch[i], method=method, **kw)
            np.testing.assert_allclose(_real(z_m, n), z_a, rtol=1e-12)
            # Gradients w.r.t. the real frames' features match; padded frames and the flag have none.
            g_m = g_m.reshape(-1, batch.shape[1], F + 1)
            np.testing.assert_allclose(_real(g_m, n)[:, :n, :F], g_a.reshape(-1, n, F + 1)[:, :, :F], rtol=1e-10, atol=1e-14)
            assert not np.any(g_m[:, n:]) and not np.any(g_m[..., F]) and not np.any(g_m[n * H :])
        for gamma in (100, 50, "max") if full else (100,):
            roll = jax.jit(lambda q, u: L.roll_penalty(net, q, u, C=0.7, gamma=gamma))  # the losses run under the user's jit
            np.testing.assert_allclose(roll(params, batch[i]), roll(params, xa), rtol=1e-12)
        # Parameter gradients of the loss (what training uses) agree too.
        grad = jax.jit(jax.grad(lambda q, u: L.roll_penalty(net, q, u, C=0.7)))
        ga, gb = grad(params, xa), grad(params, batch[i])
        jax.tree.map(lambda u, v: np.testing.assert_allclose(v, u, rtol=1e-9, atol=1e-14), ga, gb)
        # Outputs agree (the read-out sees the last real state).
        np.testing.assert_allclose(net.apply(params, batch[i])[0], net.apply(params, xa)[0], rtol=1e-12)
        lo_a, up_a = L.stability_bounds(net, params, xa, **kw)
        np.testing.assert_allclose(lo_b[i][:n, :F], lo_a[:, :F], rtol=1e-12)
        np.testing.assert_allclose(up_b[i][:n, :F], up_a[:, :F], rtol=1e-12)
        assert np.all(np.isinf(lo_b[i][n:, :F])), "padded frames' features move nothing"
        assert np.all(np.isnan(lo_b[i][:, F])) and np.all(np.isnan(up_b[i][:, F])), "the frame flag is not a coordinate one can move"
        if full:
            dist = jax.jit(lambda q, u: L.distance_penalty(net, q, u))
            np.testing.assert_allclose(dist(params, batch[i]), dist(params, xa), rtol=1e-12)
            d = jax.random.normal(jax.random.key(i), (n, F), jnp.float64)
            da = jnp.concatenate([d, jnp.zeros((n, 1))], -1)
            db = jnp.zeros_like(batch[i]).at[:n, :F].set(d)
            np.testing.assert_allclose(
                L.directional_margin(net, params, batch[i], db, **kw), L.directional_margin(net, params, xa, da, **kw), rtol=1e-12
            )


def test_count_regions_ignores_padding_length():
    """Counts over padded batches equal the distinct (length, pattern) pairs of the sequences alone, at two paddings."""
    net, params = L.from_nnx(_model("scornn"))
    rng = np.random.default_rng(3)
    s, t, u = (rng.normal(size=(n, F)) for n in (3, 3, 5))
    alone_s = jnp.asarray(pad_sequences([s], dtype=np.float64)[0])
    eps = float(L.margin(net, params, alone_s, p=np.inf))
    near = s + 0.5 * eps * rng.choice([-1.0, 1.0], size=s.shape)  # inside s's region: the same pattern, other padded states
    seqs = [s, near, t, u, s]
    ref = {(len(q), np.asarray(L.activation_pattern(net, params, jnp.asarray(pad_sequences([q], dtype=np.float64)[0]))).tobytes()) for q in seqs}
    assert len(ref) == 3, "s and near share a region, t and u do not"
    for length in (7, 12):
        counts = L.evaluation.count_regions(net, params, jnp.asarray(pad_sequences(seqs, length=length, dtype=np.float64)))
        assert counts.num_patterns == len(ref), length


def test_scornn_recurrent_matrix_stays_orthogonal_through_training():
    """After training, the forward pass uses W = (I + A)^-1 (I - A) D with A from the trained
    parameters and D's first num_negative entries -1 (a NumPy reconstruction), and W is orthogonal."""
    h, neg = 16, 5
    model = L.models.ScoRNN(F, 3, hidden=h, num_negative=neg, negative_slope=0.1, variable_length=True, rngs=nnx.Rngs(1))
    net, params = L.from_nnx(model)
    rng = np.random.default_rng(0)
    x = pad_sequences([rng.normal(size=(rng.integers(2, 7), F)) for _ in range(16)], dtype=np.float32)
    y = rng.integers(0, 3, 16).astype(np.int32)
    trainer = Trainer(net, TrainConfig(optimizer="amsgrad", lr=0.05, lam=0.5, C=1.0, batch_size=8))
    state = trainer.init_state(params)
    for _ in range(10):
        state, _ = trainer.train_step(state, *trainer.padded_batch(x[:8], y[:8], 8))

    def w_numpy(q):
        upper = np.triu(np.asarray(q["skew"], np.float64), 1)
        a = upper - upper.T
        d = np.diag(np.where(np.arange(h) < neg, -1.0, 1.0))
        return np.linalg.solve(np.eye(h) + a, (np.eye(h) - a) @ d)

    w0, w = w_numpy(params), w_numpy(state.params)
    assert np.abs(w - w0).max() > 1e-3, "training must move W"
    lib = np.asarray(L.models.cayley_recurrent(state.params["skew"], neg), np.float64)  # what the model multiplies by
    np.testing.assert_allclose(lib, w, atol=1e-5)
    np.testing.assert_allclose(lib.T @ lib, np.eye(h), atol=1e-5)
    q = jax.device_get(state.params)
    v, b = np.asarray(q["cell_in"]["kernel"], np.float64), np.asarray(q["cell_in"]["bias"], np.float64)
    for i in range(3):
        n = int(sequence_lengths(x[i : i + 1])[0])
        zs = np.asarray(net.apply(state.params, jnp.asarray(x[i]))[1][0], np.float64)
        state_h = np.zeros(h)
        for step in range(n):
            z = x[i, step, :F].astype(np.float64) @ v + b + w @ state_h
            np.testing.assert_allclose(zs[step], z, rtol=1e-4, atol=1e-5)
            state_h = np.where(z > 0, z, 0.1 * z)


def test_stability_bounds_equal_one_direction_margins():
    for kind, shape in (("scornn", (4, F + 1)), ("mlp", (5,))):
        if kind == "mlp":
            net, params = L.from_nnx(L.models.MLP(5, [7, 6], 2, rngs=nnx.Rngs(3), param_dtype=jnp.float64))
            x = jax.random.normal(jax.random.key(0), shape, jnp.float64)
        else:
            net, params = L.from_nnx(_model("scornn", seed=2))
            x = _padded_and_alone(lengths=(4,))[0][0, :4]
        lo, up = L.stability_bounds(net, params, x, chunk_size=3)
        flag = np.zeros(x.shape, bool)
        if kind == "scornn":
            flag[:, F] = True  # the frame flag: the neuron mask reads it
        for k in range(x.size):
            e = jnp.zeros(x.size, x.dtype).at[k].set(1.0).reshape(x.shape)
            if flag.reshape(-1)[k]:
                # Moving the flag (1 -> 0.4) changes the network (output and pattern) at once: no bound, NaN.
                assert np.isnan(up.reshape(-1)[k]) and np.isnan(lo.reshape(-1)[k])
                assert not L.same_region(net, params, x, x - 0.6 * e)
                continue
            np.testing.assert_allclose(up.reshape(-1)[k], L.directional_margin(net, params, x, e), rtol=1e-12)
            np.testing.assert_allclose(lo.reshape(-1)[k], L.directional_margin(net, params, x, -e), rtol=1e-12)
            # Every finite bound is tight: just inside, the same region; just past it, another.
            for t, sign in ((up.reshape(-1)[k], 1.0), (lo.reshape(-1)[k], -1.0)):
                if np.isfinite(t) and t > 0:
                    assert L.same_region(net, params, x, x + sign * 0.999 * t * e)
                    assert not L.same_region(net, params, x, x + sign * 1.001 * t * e)
        finite = np.isfinite(np.asarray(up)) & (np.asarray(up) > 0)
        assert finite.any()
        # Tight: just past an upper bound the pattern changes, just before it does not.
        k = int(np.argmax(np.where(finite.reshape(-1), -np.asarray(up).reshape(-1), -np.inf)))
        e = jnp.zeros(x.size, x.dtype).at[k].set(1.0).reshape(x.shape)
        t = up.reshape(-1)[k]
        assert L.same_region(net, params, x, x + 0.999 * t * e)
        assert not L.same_region(net, params, x, x + 1.001 * t * e)


def test_japanese_vowels_loader_reads_the_real_files():
    # The committed excerpt (gzipped UCI lines, size_ae counts): 6 training and 4 test utterances per speaker.
    raw = load_japanese_vowels(VOWELS)
    ts = load_japanese_vowels(VOWELS, source="ts")
    assert len(raw.train.x) == 54 and len(raw.test.x) == 36
    assert {s.shape[1] for s in raw.train.x + raw.test.x} == {12}
    assert all(7 <= len(s) <= 29 for s in raw.train.x + raw.test.x)
    np.testing.assert_array_equal(raw.train.y, np.repeat(np.arange(9), 6))
    np.testing.assert_array_equal(raw.test.y, np.repeat(np.arange(9), 4))
    # Line 1 of ae.train as written (speaker 1, utterance 1, frame 1), read independently of the loader.
    np.testing.assert_allclose(raw.train.x[0][0, :3], [1.860936, -0.207383, 0.261557], rtol=1e-6)
    for a, b in zip(raw.train.x + raw.test.x, ts.train.x + ts.test.x):  # two independent copies of the data
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(raw.train.y, ts.train.y)
    np.testing.assert_array_equal(raw.test.y, ts.test.y)


def test_loader_and_padding_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        load_japanese_vowels(str(tmp_path))
    (tmp_path / "ae.train").write_text("1.0 2.0 x\n")
    (tmp_path / "ae.test").write_text("")
    with pytest.raises(ValueError, match="line 1"):
        load_japanese_vowels(str(tmp_path))
    (tmp_path / "ae.train").write_text(" ".join(["0.5"] * 12) + "\n" + " ".join(["1.0"] * 12) + "\n")
    with pytest.raises(ValueError, match="holds 1 utterances, expected 270"):
        load_japanese_vowels(str(tmp_path))
    with pytest.raises(ValueError, match="never truncated"):
        pad_sequences([np.ones((3, 2))], length=2)
    with pytest.raises(ValueError, match="one F"):
        pad_sequences([np.ones((3, 2)), np.ones((3, 4))])
    with pytest.raises(ValueError, match=r"shape \(T, 4\)"):
        L.from_nnx(_model("scornn"))[0].apply(L.from_nnx(_model("scornn"))[1], jnp.ones((5, 3)))


def test_vowels_files_are_checked_line_by_line(tmp_path):
    row = lambda n: ",".join(["0.5"] * n)
    header = "@problemName JapaneseVowels\n@data\n"
    good = ":".join([row(7)] * 12)

    def write_ts(train_line, test_line=None):
        (tmp_path / "JapaneseVowels_TRAIN.ts").write_text(header + train_line + "\n")
        (tmp_path / "JapaneseVowels_TEST.ts").write_text(header + (test_line or good + ":1") + "\n")

    write_ts(":".join([row(7)] * 11) + ":1")  # 11 channels: the case
    with pytest.raises(ValueError, match=r"TRAIN.ts, line 3: 11 channels, expected 12"):
        load_japanese_vowels(str(tmp_path), source="ts")
    write_ts(good + ":0")  # label 0: there is no speaker 0
    with pytest.raises(ValueError, match=r"TRAIN.ts, line 3: label 0 is not a speaker 1-9"):
        load_japanese_vowels(str(tmp_path), source="ts")
    write_ts(":".join([row(7)] * 11 + [row(6)]) + ":1")
    with pytest.raises(ValueError, match="different lengths"):
        load_japanese_vowels(str(tmp_path), source="ts")
    # A folder where a file belongs, and a binary file: one error naming the path.
    (tmp_path / "ae.train").mkdir()
    (tmp_path / "ae.test").write_bytes(b"\x00\xff\xfe binary")
    with pytest.raises(ValueError, match=r"ae.train is a folder"):
        load_japanese_vowels(str(tmp_path))
    (tmp_path / "ae.train").rmdir()
    (tmp_path / "ae.train").write_bytes(b"\xff\xfe\x00 not text")
    with pytest.raises(ValueError, match=r"ae.train is not a readable text file"):
        load_japanese_vowels(str(tmp_path))


# --- method="causal": tangents start at their own frame (issue 26) -------------------------------------------------


def _sequences(lengths, t_len, seed=0, feats=F):
    rng = np.random.default_rng(seed)
    return jnp.asarray(pad_sequences([rng.normal(size=(n, feats)) for n in lengths], length=t_len, dtype=np.float64))


@pytest.mark.parametrize("kind", ["scornn", "rnn"])
def test_causal_norms_equal_forward_mode_on_padded_batches(kind):
    # Every length 1..T in one batch (T = 7), plus extra padding: every norm of every real neuron equals
    # forward-mode AD along all input axes (the reference), and masked entries read 0 in both.
    net, params = L.from_nnx(_model(kind))
    assert L.batched.neuron_gradient_norms(net, params, _sequences([2], 3), p=2, check=False).norms.shape == (1, 3 * H)
    x = _sequences(list(range(1, 8)), 9)
    for p in (1, 2, np.inf):
        want = L.batched.neuron_gradient_norms(net, params, x, p=p, method="forward")
        got = L.batched.neuron_gradient_norms(net, params, x, p=p, method="causal")
        np.testing.assert_array_equal(got.preacts, want.preacts)
        np.testing.assert_allclose(got.norms, want.norms, rtol=1e-12, atol=1e-14)
    sq_f = L.batched.neuron_gradient_norms(net, params, x, p=2, method="forward", squared=True).norms
    sq_c = L.batched.neuron_gradient_norms(net, params, x, p=2, method="causal", squared=True).norms
    np.testing.assert_allclose(sq_c, sq_f, rtol=1e-12, atol=1e-14)
    # auto takes the causal schedule for a network that declares its cell
    np.testing.assert_allclose(L.batched.margin(net, params, x), L.batched.margin(net, params, x, method="forward"), rtol=1e-12)


def test_causal_norms_unpadded_and_long_sequences():
    # Fixed-length inputs (no frame flag) and T = 70 > 32: steps run in blocks of 3 (the last one short).
    for t_len, hidden in ((1, 5), (70, 4)):
        model = L.models.ScoRNN(2, 3, hidden=hidden, negative_slope=0.2, rngs=nnx.Rngs(3), param_dtype=jnp.float64)
        net, params = L.from_nnx(model)
        x = jnp.asarray(np.random.default_rng(t_len).normal(size=(2, t_len, 2)))
        for p in (2, np.inf):
            want = L.batched.neuron_gradient_norms(net, params, x, p=p, method="forward").norms
            np.testing.assert_allclose(L.batched.neuron_gradient_norms(net, params, x, p=p, method="causal").norms, want, rtol=1e-11, atol=1e-14)


def test_grouped_roll_penalties_equal_per_example_values_and_gradients():
    from lld_jax._src.losses import roll_penalties_grouped

    net, params = L.from_nnx(_model("scornn"))
    x = _sequences([5, 1, 7, 3, 7, 2, 4], 8, seed=1)
    x = x.at[3, :2, -1].set(0.0)  # frames 0-1 of a length-3 row are padding: its last real frame, not its count, ends it
    x = jnp.concatenate([x, x[:1]])  # a padded row of the training step (a copy of the first)

    def ref(p, gamma=100):
        return jax.vmap(lambda u: L.roll_penalty(net, p, u, C=2.0, gamma=gamma, method="forward"))(x)

    def grouped(p, gamma=100):
        return roll_penalties_grouped(net, p, x, C=2.0, gamma=gamma, group=3)  # 8 rows: groups of 3, 3, 2

    for gamma in (100, "max", 50):
        np.testing.assert_allclose(grouped(params, gamma), ref(params, gamma), rtol=1e-12)
    w = jnp.arange(1.0, 9.0)
    g_ref = jax.jit(jax.grad(lambda p: jnp.sum(w * ref(p))))(params)
    g_new = jax.jit(jax.grad(lambda p: jnp.sum(w * grouped(p))))(params)
    for a, b in zip(jax.tree.leaves(g_new), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


def test_training_step_with_the_causal_schedule_equals_forward_mode():
    net, params = L.from_nnx(_model("rnn"))
    x = np.asarray(_sequences([4, 1, 6, 2, 5, 6, 3], 6, seed=2))  # 7 rows in a batch of 8 (the suite's 8 CPU devices)
    y = np.array([0, 1, 2, 3, 0, 1, 2], np.int32)
    after = {}
    for method in ("forward", "causal"):
        tr = Trainer(net, TrainConfig(lam=0.5, C=3.0, batch_size=8, method=method))
        state, m = tr.train_step(tr.init_state(params), *tr.padded_batch(x, y, 8))
        after[method] = (state.params, float(m["loss"]))
    assert after["causal"][1] == pytest.approx(after["forward"][1], rel=1e-12)
    for a, b in zip(jax.tree.leaves(after["causal"][0]), jax.tree.leaves(after["forward"][0])):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_a_wrong_recurrent_cell_poisons_and_is_named():
    import dataclasses

    net, params = L.from_nnx(_model("scornn"))
    cell = net.recurrent_cell
    assert isinstance(cell(params), L.models.RecurrentCell)
    bad = dataclasses.replace(net, recurrent_cell=lambda p: (cell(p).w_in, cell(p).w_rec, cell(p).bias + 0.5))  # a plain tuple is a declaration too
    x = _sequences([3], 4)[0]
    poisoned = L.neuron_gradient_norms(bad, params, x, p=2, method="causal", check=False).preacts
    assert np.all(np.isnan(poisoned[: 3 * H])) and np.all(poisoned[3 * H :] == -1.0)  # real frames NaN; the padded frame is no neuron
    assert np.isnan(L.margin(bad, params, x, check=False))
    with pytest.raises(ValueError, match="recurrent_cell"):
        L.margin(bad, params, x)
    swapped = dataclasses.replace(net, recurrent_cell=lambda p: (cell(p).w_in, cell(p).w_rec.T, cell(p).bias))  # W transposed
    with pytest.raises(ValueError, match="recurrent_cell"):
        L.margin(swapped, params, x)
    with pytest.raises(ValueError, match="method='causal' is the recurrent fast path"):
        L.margin(L.as_network(net.apply), params, x, method="causal")
    with pytest.raises(ValueError, match="not the full Jacobian"):
        L.neuron_gradients(net, params, x, method="causal")


def test_causal_loss_gradient_on_long_padded_sequences():
    # T = 35: blocks of 2 steps in the hand-written reverse sweep (the last one short), block boundaries inside the tails.
    from lld_jax._src.losses import roll_penalties_grouped

    model = L.models.RNN(2, 4, 3, negative_slope=0.3, variable_length=True, rngs=nnx.Rngs(5), param_dtype=jnp.float64)
    net, params = L.from_nnx(model)
    x = _sequences([35, 6, 20], 35, seed=4, feats=2)

    def ref(p):
        return jnp.sum(jnp.arange(1.0, 4.0) * jax.vmap(lambda u: L.roll_penalty(net, p, u, C=1.5, method="forward"))(x))

    def new(p):
        return jnp.sum(jnp.arange(1.0, 4.0) * roll_penalties_grouped(net, p, x, C=1.5, group=2))

    (v_new, g_new), (v_ref, g_ref) = (jax.jit(jax.value_and_grad(f))(params) for f in (new, ref))
    np.testing.assert_allclose(v_new, v_ref, rtol=1e-12)
    for a, b in zip(jax.tree.leaves(g_new), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


def test_causal_with_float32_weights_and_float64_inputs_and_forward_mode_ad():
    # Mixed precision (float32 parameters, float64 sequences) goes through the declaration check and the kernel;
    # the per-example loss stays plain JAX, so forward-mode AD of it works (jvp equals forward mode's).
    net, params = L.from_nnx(_model("scornn", dtype=jnp.float32))
    x = _sequences([4, 2], 5)
    np.testing.assert_allclose(L.batched.margin(net, params, x), L.batched.margin(net, params, x, method="forward"), rtol=1e-5)
    loss = lambda p, method: L.roll_penalty(net, p, x[0], C=2.0, method=method)
    tangent = jax.tree.map(jnp.ones_like, params)
    got = jax.jvp(lambda p: loss(p, "auto"), (params,), (tangent,))
    want = jax.jvp(lambda p: loss(p, "forward"), (params,), (tangent,))
    np.testing.assert_allclose(got, want, rtol=1e-5)

"""Exact input gradients of every hidden neuron (paper Sec. 4.1, App. C, D).

Interchangeable methods, all exact at the activation pattern of ``x``:

* ``"forward"``: forward-mode AD, one JVP per input axis (the paper's
  "perturbation" algorithm phrased as AD); cost ~ D forward passes.
* ``"reverse"``: ``vmap`` of a VJP over one-hot cotangents, one per neuron;
  cost ~ |I| backward passes.
* ``"template"``: the explicit linearised network g_theta with the pattern
  frozen, evaluated on the D+1 inputs {0, e_1, ..., e_D};
  dz_j/dx_k = g_j(e_k) - g_j(0). Needs ``Network.apply_frozen``.
* ``"causal"``: recurrent networks that declare ``recurrent_cell``: the
  tangents of frame s start at step s and the frame flag gets none
  (:mod:`lld_jax._src.causal`); cost ~ F T (T + 1) / 2 tangent-steps
  against forward's (F + 1) T^2. Norms only (no full Jacobian).
* ``"gram"``: MLPs only, squared l2 norms only: forward propagation of a
  square root F_1 of the Gram matrix W_1 W_1^T (F_1 F_1^T = W_1 W_1^T, with
  min(D, N_1) columns), F_i = W_i S_{i-1} F_{i-1}; then
  ||grad_x z^i_j||_2^2 = ||row_j(F_i)||^2 (App. D's dynamic programme, with the
  input dimension compressed from D to N_1).

Every method streams over chunks of ``chunk_size`` input axes (or neurons) so
memory stays bounded; norms are accumulated chunk by chunk and the full
Jacobian is only materialised by :func:`neuron_gradients`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lld_jax._src.arguments import positive_int
from lld_jax._src.causal import RecurrentCell, causal_norms, l2_norms
from lld_jax._src.checks import error_if
from lld_jax._src.declarations import dense_mismatch, frozen_mismatch, poison_mismatch, recurrent_mismatch
from lld_jax._src.kernel import Kernel, Plan
from lld_jax._src.network import ApplyFn, Network, PyTree, flat_mask, flat_preacts, mask_neurons, pattern_slopes
from lld_jax._src.poison import poison, poison_where

Array = jax.Array
METHODS = ("auto", "forward", "reverse", "template", "gram", "rowspace", "causal")
_ORDS = (1, 2, np.inf)
# Elements of one chunk's tangent block per example: keeps B * chunk * N bounded.
_CHUNK_ELEMENTS = 1 << 18


def check_method(net: Network, method: str, ord: float | None) -> None:
    """Raises a clear error if ``method`` cannot serve ``net`` (``ord=None``: full Jacobian)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}.")
    if method == "template" and net.apply_frozen is None:
        raise ValueError(
            "method='template' needs a network with a frozen-pattern apply (Network.apply_frozen); "
            "the built-in models have one. Use method='forward' for a plain function."
        )
    if method == "gram":
        if net.dense_layers is None:
            raise ValueError("method='gram' is the MLP-only l2 fast path: it needs Network.dense_layers (built-in MLP).")
        if ord != 2:
            raise ValueError("method='gram' only computes l2 norms (ord=2, i.e. margins with p=2).")
    if method == "causal":
        if net.recurrent_cell is None:
            raise ValueError(
                "method='causal' is the recurrent fast path: it needs Network.recurrent_cell (built-in RNN and ScoRNN). "
                "Use method='forward' for other networks."
            )
        if ord is None:
            raise ValueError("method='causal' computes gradient norms, not the full Jacobian; use method='forward' for neuron_gradients.")
    if method == "rowspace" and ord != 2:
        raise ValueError("method='rowspace' only computes l2 norms (ord=2, i.e. margins with p=2); use 'forward' or 'reverse'.")


def choose_method(net: Network, ord: float | None, dim: int, hidden: tuple[tuple[int, ...], ...]) -> str:
    """The ``auto`` rule, by multiply-add count per example.

    forward ~ D * (D N_1 + sum_i N_{i-1} N_i) for an MLP (D * |I| generally),
    gram ~ min(D, N_1) * sum_i N_{i-1} N_i (MLP, l2 only) <= forward, so it is
    always taken when it applies; rowspace ~ N_1 * (forward pass) for l2 when
    N_1 <= D / 2 (not for masked, e.g. recurrent, nets); reverse ~ 2 |I|
    forward passes.
    """
    n = sum(math.prod(s) for s in hidden)
    if ord is not None and net.recurrent_cell is not None:
        return "causal"  # at most half of forward's tangent-steps, any norm
    if ord == 2 and net.dense_layers is not None:
        return "gram"
    if ord == 2 and net.neuron_mask is None and 2 * math.prod(hidden[0]) <= dim:
        return "rowspace"  # JVPs along r <= N_1 basis vectors instead of D axes (a feed-forward net; verified at run time)
    # A VJP costs about two forward passes, a JVP about one.
    return "forward" if dim <= 2 * n else "reverse"


def default_chunk(dim: int, num_neurons: int) -> int:
    return int(max(1, min(dim, _CHUNK_ELEMENTS // max(num_neurons, 1))))


# --------------------------------------------------------------------------
# Per-example kernels. Each returns z (N,) and an accumulator over input axes.


def _reduce_init(n: int, dtype) -> tuple[Array, Array, Array]:
    zero = jnp.zeros((n,), dtype)
    return zero, zero, zero  # sum of squares (scaled by max^2 unless squared), max |.|, sum |.|


def _reduce_block(acc, cols, squared: bool):
    """Folds a block of Jacobian columns ``cols`` (c, N) into the accumulators.

    For certificates (``squared=False``) the sum of squares is kept relative to
    the running maximum (LAPACK's nrm2 rescaling), so that norms neither
    overflow above ~1e19 nor flush to zero below ~1e-19 in float32. The
    training loss (``squared=True``) needs the plain, smooth sum of squares.
    NaN propagates through both.
    """
    sq, mx, ab = acc
    a = jnp.abs(cols)
    new_mx = jnp.maximum(mx, jnp.max(a, 0))
    if squared:
        sq = sq + jnp.sum(cols * cols, 0)
    else:
        safe = jnp.where(new_mx > 0, new_mx, 1)
        sq = sq * jnp.square(mx / safe) + jnp.sum(jnp.square(a / safe), 0)
    return sq, new_mx, ab + jnp.sum(a, 0)


def _columns_scan(column_block, dim: int, chunk: int, n: int, dtype, *, keep: bool, squared: bool):
    """Scans ``column_block(tangents (c, D)) -> (c, N)`` over chunks of basis vectors."""
    n_chunks = -(-dim // chunk)
    chunk = -(-dim // n_chunks)  # balanced chunks: no block mostly padding

    def step(acc, k):
        idx = k * chunk + jnp.arange(chunk)
        tangents = jax.nn.one_hot(idx, dim, dtype=dtype)  # rows past D are all zero
        cols = column_block(tangents).astype(acc[0].dtype)
        return _reduce_block(acc, cols, squared), (cols if keep else None)

    acc, cols = jax.lax.scan(step, _reduce_init(n, dtype), jnp.arange(n_chunks))
    if keep:
        cols = cols.reshape(n_chunks * chunk, n)[:dim].T  # (N, D)
    return acc, cols


def linearize_preacts(net: Network, params, x: Array) -> tuple[Array, Any]:
    """``(z (N,), lin)`` for ONE example: ``lin`` maps a flat input tangent (D,) to dz (N,) (one JVP)."""
    shape = x.shape
    return jax.linearize(lambda u: flat_preacts(net, params, u.reshape(shape))[1], x.reshape(-1))


def _forward(net: Network, params, x, chunk: int, keep: bool, squared: bool):
    z, lin = linearize_preacts(net, params, x)
    return z, _columns_scan(jax.vmap(lin), x.size, chunk, z.shape[0], x.dtype, keep=keep, squared=squared)


def _template(net: Network, params, x, chunk: int, keep: bool, squared: bool):
    shape, dim = x.shape, x.size
    _, pre = net.apply(params, x)
    slopes = jax.lax.stop_gradient(pattern_slopes(net, pre))
    z = jnp.concatenate([jnp.ravel(p) for p in pre])
    z = poison_mismatch(z, frozen_mismatch, net, params, x)  # a frozen apply that is not this network: poison
    g = lambda u: jnp.concatenate([jnp.ravel(p) for p in net.apply_frozen(params, u.reshape(shape), slopes)[1]])
    g0 = g(jnp.zeros((dim,), x.dtype))
    block = lambda t: jax.vmap(g)(t) - g0  # biases cancel: columns of the Jacobian
    return z, _columns_scan(block, dim, chunk, z.shape[0], x.dtype, keep=keep, squared=squared)


def _reverse(net: Network, params, x, chunk: int, keep: bool, squared: bool):
    shape = x.shape
    f = lambda u: flat_preacts(net, params, u.reshape(shape))[1]
    z, vjp = jax.vjp(f, x.reshape(-1))
    n = z.shape[0]

    def row(i):
        g = vjp(jax.nn.one_hot(i, n, dtype=z.dtype))[0]
        acc = _reduce_block(tuple(jnp.zeros((1,), z.dtype) for _ in range(3)), g[:, None], squared)
        return tuple(a[0] for a in acc) + ((g,) if keep else ())

    res = jax.lax.map(row, jnp.arange(n), batch_size=chunk)
    return z, (res[:3], res[3] if keep else None)


def l2_factor(w1: Array) -> Array:
    """A matrix F with F F^T = W_1 W_1^T and min(D, N_1) columns (W_1 of shape (N_1, D)).

    l2 norms of gradient rows are invariant under right-multiplication by an
    orthogonal matrix, so every neuron's ||grad_x z_j||_2 can be computed from F
    in place of W_1. With D > N_1 (MNIST: 784 > 300) F = R^T from the reduced
    QR W_1^T = Q R, which makes every later layer D / N_1 times cheaper.
    """
    n1, d = w1.shape
    if d <= n1:
        return w1
    return jnp.linalg.qr(w1.T, mode="r").T


def mlp_tangent_rows(net: Network, params, x, f1: Array) -> tuple[Array, Array]:
    """``(z (N,), F (N, r))`` for ONE example of an MLP, from layer 1's block ``f1`` (N_1, r).

    F_1 = f1, F_i = W_i S_{i-1} F_{i-1}: with f1 = W_1 T the rows of F are the
    neurons' input gradients times T (the Jacobian applied to r directions).
    """
    _, pre = net.apply(params, x)
    z = jnp.concatenate([jnp.ravel(p) for p in pre])
    z = poison_mismatch(z, dense_mismatch, net, params, x)  # a dense stack that is not this network: poison
    slopes = jax.lax.stop_gradient(pattern_slopes(net, pre))
    layers = net.dense_layers(params)[: len(pre)]
    rows = [f1]
    for i, (w, _) in enumerate(layers[1:], start=1):
        rows.append(w @ (slopes[i - 1][:, None] * rows[-1]))
    return mask_neurons(flat_mask(net, params, x), z, jnp.concatenate(rows))


def first_layer_basis(net: Network, params, x: Array) -> tuple[Array, Array]:
    """``(Q (D, N_1), R (N_1, N_1))``: the reduced QR of A^T, A the first pre-activation's Jacobian.

    Q is an orthonormal basis containing A's row space. From N_1 VJPs through
    the first layer only. For an affine first layer (every feed-forward net)
    the result does not depend on ``x``, so under ``vmap`` it is computed once
    per batch.
    """
    shape = x.shape
    f1 = lambda u: jnp.ravel(net.apply(params, u.reshape(shape))[1][0])
    z1, vjp1 = jax.vjp(f1, x.reshape(-1))
    a_t = jax.vmap(vjp1)(jnp.eye(z1.shape[0], dtype=z1.dtype))[0].T  # (D, N_1) = A^T
    return jnp.linalg.qr(a_t, mode="reduced")


def _rowspace(net: Network, params, x, chunk: int, keep: bool, squared: bool):
    """l2 norms from JVPs along a basis Q of the first layer's row space (r = N_1 < D directions).

    In a feed-forward net every neuron depends on x only through the first
    pre-activation z_1 = A x + b, so grad z_j = (dz_j / dz_1) A lies in A's row
    space and ||grad z_j||_2 = ||grad z_j Q||_2. A net that reads x elsewhere
    (skip connections from the input, recurrences) breaks this; a JVP along a
    direction orthogonal to Q then moves some neuron, which is checked for every
    example: the call raises and the norms are NaN, never silently wrong. When
    the check passes the norms are exact, whatever the architecture (e.g. a
    recurrent net reporting all its steps as one preact).
    """
    del keep
    q, r = first_layer_basis(net, params, x)
    z, lin = linearize_preacts(net, params, x)
    tangents = q.T  # (r, D)
    acc, _ = _tangent_scan(jax.vmap(lin), tangents, chunk, z.shape[0], x.dtype, squared=squared)
    sq, mx, ab = acc
    if q.shape[1] >= x.size:  # the basis spans every direction: nothing to check (and no gain)
        return z, ((sq, mx, ab), None)
    v = jax.random.normal(jax.random.key(0), (x.size,), x.dtype)
    v = v - q @ (q.T @ v)
    tangent = lin(v / jnp.linalg.norm(v))
    leak = jnp.abs(tangent)
    # The tolerance is per neuron, so that a small gradient with a large share outside the basis is
    # caught too (one global threshold missed a 1e-5 input skip that made a margin 37% too large).
    # In a feed-forward net the leak is rounding only: leak_j = |u_j . t1| with t1 the first layer's
    # computed tangent (exactly 0 without rounding) and u_j = dz_j / dz_1, ||u_j|| <= n_j / sigma_min(A);
    # so leak_j <= n_j ||t1|| / sigma_min(A), which stays valid when neurons cancel each other.
    n = l2_norms(sq, mx, squared)
    n = jnp.sqrt(n) if squared else n
    eps, tiny = jnp.finfo(x.dtype).eps, jnp.finfo(x.dtype).tiny
    t1 = jnp.linalg.norm(tangent[: q.shape[1]])  # preacts[0] comes first in the flat order
    sigma_min = jnp.min(jnp.abs(jnp.linalg.svd(r, compute_uv=False)))
    biggest = jnp.maximum(jnp.max(mx), tiny)  # the largest |dz_j / dq_i|: the scale of the gradients
    per_neuron = n * (jnp.sqrt(eps) + 2 * t1 / jnp.maximum(sigma_min, tiny))
    # Capped by the old global test's sqrt(eps) x largest gradient entry (so it catches all that caught), plus a floor.
    bad = jnp.any(leak > jnp.minimum(per_neuron, jnp.sqrt(eps) * biggest) + 4 * eps * biggest)
    z = error_if(
        z,
        bad,
        "method='rowspace' needs a feed-forward network whose first pre-activation is its first hidden layer (every "
        "neuron depends on x only through it; preacts in depth order, NNX sow names in natural order), but a direction "
        "that layer ignores moves another neuron{where}: use method='forward' or 'reverse'.",
    )
    return z, (tuple(poison_where(a, bad) for a in (sq, mx, ab)), None)


def _tangent_scan(column_block, tangents: Array, chunk: int, n: int, dtype, *, squared: bool):
    """Like :func:`_columns_scan` over the rows of ``tangents`` (r, D) instead of the basis vectors."""
    r = tangents.shape[0]
    n_chunks = -(-r // chunk)
    chunk = -(-r // n_chunks)  # balanced chunks: no block mostly padding
    padded = jnp.concatenate([tangents, jnp.zeros((n_chunks * chunk - r, tangents.shape[1]), tangents.dtype)]).reshape(n_chunks, chunk, -1)

    def step(acc, t):
        return _reduce_block(acc, column_block(t).astype(acc[0].dtype), squared), None

    return jax.lax.scan(step, _reduce_init(n, dtype), padded)


def _exponent(a: Array) -> Array:
    """e with 2^(e-1) <= max|a| < 2^e (0 for an all-zero array): an exact power-of-two scale."""
    return jnp.frexp(jnp.max(jnp.abs(a)))[1]


def _safe_row_norms(f: Array, log2_scale: Array) -> Array:
    """l2 norms of the rows of ``f * 2^log2_scale``, with ``f`` normalised to O(1) entries.

    One pass over ``f``. A row whose sum of squares may have overflowed, or
    flushed entries to zero, gets its l1 norm instead: an upper bound of its l2
    norm, so its margin term can only shrink (a sound, slightly conservative
    certificate in that pathological case, never an over-estimate).
    """
    ss = jnp.sum(f * f, -1)
    l1 = jnp.sum(jnp.abs(f), -1)
    tiny = jnp.finfo(f.dtype).tiny * f.shape[-1] / jnp.finfo(f.dtype).eps
    unsafe = ~jnp.isfinite(ss) | ((ss < tiny) & (l1 > 0))
    return jnp.ldexp(jnp.where(unsafe, l1, jnp.sqrt(ss)), log2_scale)


def _gram(net: Network, params, x, chunk: int, keep: bool, squared: bool):
    del chunk, keep
    layers = net.dense_layers(params)
    f1 = l2_factor(layers[0][0])  # independent of x: vmap keeps it (and its QR) unbatched
    if squared:  # the training loss: plain, smooth sums of squares
        z, f = mlp_tangent_rows(net, params, x, f1)  # gradients up to a rotation: l2 norms are exact
        return z, ((jnp.sum(f * f, -1), None, None), None)
    # Certificates: every layer's block is normalised by an exact power of two taken from the
    # parameters (free: unbatched), so norms are invariant to rescaling the layers.
    _, pre = net.apply(params, x)
    z = jnp.concatenate([jnp.ravel(p) for p in pre])
    z = poison_mismatch(z, dense_mismatch, net, params, x)  # a dense stack that is not this network: poison
    slopes = pattern_slopes(net, pre)
    scale = _exponent(f1)
    f = jnp.ldexp(f1, -scale)
    norms = [_safe_row_norms(f, scale)]
    for i, (w, _) in enumerate(layers[1 : len(pre)], start=1):
        e = _exponent(w)
        f = jnp.ldexp(w, -e) @ (slopes[i - 1][:, None] * f)
        scale = scale + e
        norms.append(_safe_row_norms(f, scale))
    return z, ((jnp.concatenate(norms), None, None), None)


def _causal(net: Network, params, x, chunk: int, keep: bool, squared: bool):
    del chunk, keep  # chunk_size is ignored (one step holds F T tangent rows at most); norms only (check_method)
    _, pre = net.apply(params, x)
    z = poison_mismatch(jnp.ravel(pre[0]), recurrent_mismatch, net, params, x)  # a cell that is not this network: poison
    slopes = jax.lax.stop_gradient(pattern_slopes(net, pre)[0])
    valid = jnp.ones(slopes.shape[:1], bool) if net.neuron_mask is None else jnp.any(net.neuron_mask(params, x)[0], axis=-1)
    acc = causal_norms(RecurrentCell(*net.recurrent_cell(params)), slopes[None], valid[None], squared=squared)
    return z, (tuple(jnp.ravel(a) for a in acc), None)


_KERNELS = {"forward": _forward, "template": _template, "reverse": _reverse, "gram": _gram, "rowspace": _rowspace, "causal": _causal}


def norms_kernel(net: Network, params: PyTree, x: Array, *, ord: float, method: str, chunk: int, squared: bool = False) -> tuple[Array, Array]:
    """``(z (N,), n (N,))`` for ONE example: n_j = ||grad z_j||_ord (squared for ``squared`` and ord 2).

    No checks; ``method`` already resolved. ``squared=True`` is the smooth sum
    of squares the ROLL loss differentiates; otherwise norms are scale-safe.
    """
    z, ((sq, mx, ab), _) = _KERNELS[method](net, params, x, chunk, False, squared and ord == 2)
    if method == "gram":
        n = sq  # already the norm (or its square with ``squared``)
    elif ord == 2:
        n = l2_norms(sq, mx, squared)
    else:
        n = ab if ord == 1 else mx
    # forward/reverse see masked neurons through flat_preacts already; template and gram do not.
    return mask_neurons(flat_mask(net, params, x), z, n)


def jacobian_kernel(net: Network, params: PyTree, x: Array, *, method: str, chunk: int) -> tuple[Array, Array]:
    """``(z (N,), J (N, D))`` for ONE example; no checks."""
    z, (_, cols) = _KERNELS[method](net, params, x, chunk, True, False)
    return mask_neurons(flat_mask(net, params, x), z, cols)


def pick_method(
    net: Network, method: str, ord: float | None, shape: tuple[int, ...], hidden: tuple[tuple[int, ...], ...], chunk_size: int | None
) -> tuple[str, int]:
    """Resolves ``method="auto"`` and the default chunk size (no value checks: jit-safe)."""
    dim, n = math.prod(shape), sum(math.prod(s) for s in hidden)
    check_method(net, method, ord)
    if method == "auto":
        method = choose_method(net, ord, dim, hidden)
    chunk_size = positive_int(chunk_size, "chunk_size", allow_none=True)
    chunk = chunk_size or (default_chunk(n, dim) if method == "reverse" else default_chunk(dim, n))
    return method, chunk


def resolve_method(
    net: Network, method: str, ord: float | None, x: Array, hidden: tuple[tuple[int, ...], ...], chunk_size: int | None, *, batched: bool
) -> tuple[str, int]:
    """:func:`pick_method` for an input ``x`` (one example, or a batch when ``batched``)."""
    return pick_method(net, method, ord, tuple(x.shape[1:] if batched else x.shape), hidden, chunk_size)


class NeuronGradients(NamedTuple):
    """Pre-activations and input gradients of every hidden neuron (one example; a leading ``B`` axis when batched).

    Attributes:
      preacts: ``(N,)``, all N hidden pre-activations z (layers concatenated, each flattened).
      grads: ``(N, D)``, their gradients with respect to the flattened input
        (paper Lemma 2: on x's region, z_j(x') = z_j + grads_j . (x' - x)).
    """

    preacts: Array
    grads: Array


class NeuronGradientNorms(NamedTuple):
    """Pre-activations and the norms of their input gradients (one example; a leading ``B`` axis when batched).

    Attributes:
      preacts: ``(N,)``, the hidden pre-activations z.
      norms: ``(N,)``, ``||grad_x z_j||_p`` (or its square with ``squared=True``).
    """

    preacts: Array
    norms: Array


def _gradients_body(net, params, x, *, method, chunk, ord, squared):
    if ord is None:
        out = NeuronGradients(*jacobian_kernel(net, params, x, method=method, chunk=chunk))
    else:
        out = NeuronGradientNorms(*norms_kernel(net, params, x, ord=ord, method=method, chunk=chunk, squared=squared))
    # A non-finite x (e.g. poisoned by a failed value check) gives NaN, even through a network that would swallow it.
    return type(out)(*(poison(a, x) for a in out))


def _gradients_plan(net, params, x, hidden, *, p, method, chunk_size, squared, batched):
    if squared and p != 2:
        raise ValueError(f"squared=True is for p=2 (squared l2 norms); got p={p!r}.")
    if p is None and method in ("gram", "rowspace"):
        raise ValueError(f"method={method!r} yields l2 norms only; use neuron_gradient_norms(..., p=2).")
    ord = None if p is None else canonical_ord(p)
    method, chunk = resolve_method(net, method, ord, x, hidden, chunk_size, batched=batched)
    return Plan(static=(("method", method), ("chunk", chunk), ("ord", ord), ("squared", squared)))


GRADIENTS = Kernel(_gradients_body, _gradients_plan)


def neuron_gradients(
    apply_fn: ApplyFn | Network, params: PyTree, x: Array, *, method: str = "auto", chunk_size: int | None = None, check: bool = True
) -> tuple[Array, Array]:
    """Pre-activations and exact input gradients of every hidden neuron, for ONE example.

    Args:
      apply_fn: the network (plain ``(params, x) -> (out, preacts)`` or a
        :class:`~lld_jax.Network`).
      params: its parameters.
      x: one input, shape ``input_shape``.
      method: ``"auto"``, ``"forward"``, ``"reverse"`` or ``"template"``
        (``"gram"`` and ``"rowspace"`` give l2 norms only: use :func:`neuron_gradient_norms`).
      chunk_size: input axes (forward, template) or neurons (reverse) per
        chunk; bounds memory. Default keeps chunk * N around 2^18.
      check: run the value checks (README: "What is checked, and when").

    Returns:
      :class:`NeuronGradients` ``(preacts, grads)``: ``preacts`` ``(N,)`` holds
      all N hidden pre-activations (layers concatenated, each flattened),
      ``grads`` ``(N, D)`` their gradients with respect to the flattened input
      (paper Lemma 2: on x's region, z_j(x') = z_j + grads_j . (x' - x)).

    Example:
      >>> import jax.numpy as jnp, lld_jax
      >>> f = lambda w, x: (jnp.sum(w @ x), (w @ x,))
      >>> z, g = lld_jax.neuron_gradients(f, jnp.eye(2), jnp.array([1.0, -2.0]))
      >>> g.tolist()
      [[1.0, 0.0], [0.0, 1.0]]
    """
    return GRADIENTS(apply_fn, params, x, p=None, method=method, chunk_size=chunk_size, squared=False, check=check)


def neuron_gradient_norms(
    apply_fn: ApplyFn | Network,
    params: PyTree,
    x: Array,
    *,
    p: float | str = 2,
    method: str = "auto",
    chunk_size: int | None = None,
    squared: bool = False,
    check: bool = True,
) -> NeuronGradientNorms:
    """Pre-activations and the ``p``-norms of every neuron's input gradient, for ONE example.

    Arguments as in :func:`neuron_gradients`, and for ``p=2``
    ``method="gram"`` (MLPs with ``dense_layers``) and ``method="rowspace"``
    (feed-forward nets: JVPs along a basis of the first layer's row space,
    min(D, N_1) instead of D; a net that reads x beyond its first layer
    raises) are allowed.

    Args:
      p: 1, 2 or ``inf``: the norm of the gradient. (:func:`~lld_jax.margin`
        with norm p uses the q-norms of these gradients, 1/p + 1/q = 1.)
      squared: with ``p=2``, return the plain sum of squares
        ||grad z_j||_2^2 (what ROLL differentiates); otherwise norms are
        accumulated scale-safely (no overflow or underflow of squares).

    Returns:
      :class:`NeuronGradientNorms` ``(preacts, norms)``, both ``(N,)``.
    """
    return GRADIENTS(apply_fn, params, x, p=p, method=method, chunk_size=chunk_size, squared=squared, check=check)


def canonical_ord(ord: Any) -> float:
    """Validates a norm order; returns 1, 2 or ``np.inf``."""
    if isinstance(ord, str) and ord.lower() in ("inf", "infinity"):
        return np.inf
    if isinstance(ord, bool):  # float(True) is 1: a flag passed by mistake, not an order
        raise ValueError(f"norm order must be 1, 2 or inf, got {ord!r}.")
    try:
        value = float(ord)
    except (TypeError, ValueError):
        value = None
    if value not in _ORDS:
        raise ValueError(f"norm order must be 1, 2 or inf, got {ord!r}.")
    return 2 if value == 2 else (1 if value == 1 else np.inf)

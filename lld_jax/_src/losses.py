"""Regularisers that enlarge linear regions (paper Eq. 4, 7, 9, 10; Sec. 4.2).

Every penalty is a function of ONE example returning a scalar; ``jax.vmap``
it over a batch, average, and add it to the task loss with weight lambda:

    loss = mean_B CE(f(x), y) + lam * mean_B penalty(x).

They are meant for training: no value checks run inside them (the training
loop watches the loss instead), and they are differentiable in ``params``.

* :func:`distance_penalty`: Eq. 4, minus the exact l2 margin.
* :func:`roll_penalty`: Eq. 9, the aggregated per-neuron TSVM loss
  ``||grad_x z_j||^2 + C * max(0, 1 - |z_j|)``; ``gamma="max"`` is Eq. 7,
  ``gamma=100`` the plain mean, otherwise the mean of the top gamma percent.
* :func:`roll_penalty_sampled`: Eq. 10, an unbiased estimate of the
  ``gamma=100`` penalty from ``num_samples`` input axes (optionally stratified
  by channel) or Gaussian probes.

The parameter gradient flows through both |z_j| and the gradient term;
activation masks carry none.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from lld_jax._src.arguments import positive_int
from lld_jax._src.causal import RecurrentCell, group_norms
from lld_jax._src.gradients import linearize_preacts, mlp_tangent_rows, norms_kernel, pick_method
from lld_jax._src.margins import margin_terms
from lld_jax._src.network import MASKED_PREACT, ApplyFn, Network, PyTree, as_network, flat_mask, flat_preacts, hidden_shapes, neuron_count
from lld_jax._src.stem import check_stem, stem_columns

Array = jax.Array
GAMMAS = ("max", 25, 50, 75, 100)


def check_gamma(gamma: Any) -> Any:
    """Returns ``"max"`` or a float in (0, 100]; raises otherwise."""
    if isinstance(gamma, str):
        if gamma.lower() == "max":
            return "max"
        raise ValueError(f"gamma must be 'max' or a percentage in (0, 100], got {gamma!r}.")
    if isinstance(gamma, bool) or not (isinstance(gamma, numbers.Real) and 0 < gamma <= 100):
        raise ValueError(f"gamma must be 'max' or a percentage in (0, 100], got {gamma!r}.")
    return float(gamma)


def check_hyper(*, C: float | None = None, lam: float | None = None, num_samples: int | None = None) -> None:
    """Refuses invalid ROLL hyper-parameters with a message naming them; traced values (C or lambda swept
    under ``jit``/``vmap``) cannot be checked and pass."""
    for value, name in ((C, "C (hinge weight)"), (lam, "lambda (regularisation weight)")):
        if value is not None and not isinstance(value, jax.core.Tracer) and not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value}.")
    positive_int(num_samples, "the number of sampled axes D' (num_samples)", allow_none=True)


def tsvm_terms(z: Array, sq_norms: Array, C: float) -> Array:
    """Per-neuron relaxed loss ``||grad z_j||_2^2 + C * max(0, 1 - |z_j|)`` (Eq. 7-9 bracket)."""
    return sq_norms + C * jax.nn.relu(1.0 - jnp.abs(z))


def aggregate(terms: Array, gamma: Any, mask: Array | None = None) -> Array:
    """Aggregates per-neuron terms (N,) of one example: max, or mean of the top gamma percent.

    ``gamma=100`` is the plain mean; otherwise k = max(1, int(N * gamma / 100))
    largest terms are averaged (the paper code's ``topk``). With ``mask``
    (the example's neurons, see :class:`~lld_jax.Network`) N counts only them;
    masked terms must be 0 (they are: see ``MASKED_PREACT``), the smallest
    possible value of the non-negative terms.
    """
    gamma = check_gamma(gamma)
    if gamma == "max":
        return jnp.max(terms, axis=-1)
    n = terms.shape[-1]
    if mask is None:
        if gamma == 100:
            return jnp.mean(terms, axis=-1)
        k = max(1, int(n * gamma / 100))
        return jnp.mean(jax.lax.top_k(terms, k)[0], axis=-1)
    count = jnp.sum(mask)
    if gamma == 100:
        return jnp.sum(terms, axis=-1) / count
    # k depends on the example's neuron count: average the k largest through a rank mask.
    k = jnp.maximum(1, jnp.floor(count * gamma / 100)).astype(jnp.int32)
    ranked = -jnp.sort(-terms, axis=-1)
    return jnp.sum(jnp.where(jnp.arange(n) < k, ranked, 0), axis=-1) / k


def loss_method(net: Network, x: Array, method: str, chunk_size: int | None, params: PyTree) -> tuple[str, int]:
    shape = tuple(x.shape)
    return pick_method(net, method, 2, shape, hidden_shapes(net, params, shape, x.dtype), chunk_size)


def roll_penalty(
    apply_fn: ApplyFn | Network,
    params: PyTree,
    x: Array,
    *,
    C: float,
    gamma: Any = 100,
    method: str = "auto",
    chunk_size: int | None = None,
) -> Array:
    """Exact ROLL penalty of ONE example (Eq. 9; Eq. 7 with ``gamma="max"``), a scalar.

    Args:
      apply_fn: the network.
      params: its parameters (the penalty is differentiable in them).
      x: one input, shape ``input_shape``.
      C: weight of the hinge ``max(0, 1 - |z_j|)``.
      gamma: ``"max"`` or the percentage of neurons (largest terms) averaged; 100 = all.
      method: gradient method for ||grad z_j||^2 (``"auto"``: ``gram`` on MLPs).
      chunk_size: memory bound, see :func:`~lld_jax.neuron_gradients`.

    Returns:
      The penalty. Batch it with ``jax.vmap``.

    Example:
      >>> import jax, jax.numpy as jnp, lld_jax
      >>> f = lambda w, x: (jnp.sum(w @ x), (w @ x,))
      >>> float(lld_jax.roll_penalty(f, 2 * jnp.eye(2), jnp.array([0.25, 1.0]), C=1.0))
      4.25
    """
    net = as_network(apply_fn)
    check_hyper(C=C)
    gamma = check_gamma(gamma)
    x = jnp.asarray(x)
    method, chunk = loss_method(net, x, method, chunk_size, params)
    z, sq = norms_kernel(net, params, x, ord=2, method=method, chunk=chunk, squared=True)
    return aggregate(tsvm_terms(z, sq, C), gamma, flat_mask(net, params, x))


def roll_penalties_grouped(net: Network, params: PyTree, x: Array, *, C: float, gamma: Any = 100, group: int = 8) -> Array:
    """``jax.vmap(roll_penalty)(x)`` for a BATCH of sequences of a network with a ``recurrent_cell``, ``(B,)``.

    The causal schedule of :func:`roll_penalty` with ``method="causal"``, run on
    the batch sorted by length in groups of ``group``: each group stops at its
    longest real frame (on Japanese Vowels batches about half the tangent-steps
    of one padded call). Equal values and parameter gradients; the training
    step's exact loss for recurrent networks. No declaration check (the
    training step verifies one example per batch).
    """
    pre = jax.vmap(lambda u: net.apply(params, u)[1][0])(x)
    masks = jax.vmap(lambda u: flat_mask(net, params, u))(x) if net.neuron_mask is not None else None
    slopes = jax.lax.stop_gradient(jnp.where(pre > 0, 1.0, net.negative_slope).astype(pre.dtype))
    valid = jnp.ones(pre.shape[:2], bool) if masks is None else jnp.any(masks.reshape(pre.shape), axis=-1)
    sq = group_norms(RecurrentCell(*net.recurrent_cell(params)), slopes, valid, group=group, squared=True)[0]
    z, sq = pre.reshape(x.shape[0], -1), sq.reshape(x.shape[0], -1)
    if masks is None:
        return jax.vmap(lambda zi, si: aggregate(tsvm_terms(zi, si, C), gamma))(z, sq)
    z, sq = jnp.where(masks, z, MASKED_PREACT), jnp.where(masks, sq, 0)  # masked terms must be 0 (see aggregate)
    return jax.vmap(lambda zi, si, mi: aggregate(tsvm_terms(zi, si, C), gamma, mi))(z, sq, masks)


def distance_penalty(apply_fn: ApplyFn | Network, params: PyTree, x: Array, *, method: str = "auto", chunk_size: int | None = None) -> Array:
    """Eq. 4's regulariser for ONE example: minus the exact l2 margin, a scalar (non-smooth; toy use)."""
    net = as_network(apply_fn)
    x = jnp.asarray(x)
    method, chunk = loss_method(net, x, method, chunk_size, params)
    z, sq = norms_kernel(net, params, x, ord=2, method=method, chunk=chunk, squared=True)
    # sqrt has an infinite derivative at 0; a dead-gradient neuron's term is inf anyway.
    return -jnp.min(margin_terms(z, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)) * (sq > 0)))


def _distinct(key: Array, n: int, k: int) -> Array:
    """``k`` distinct integers drawn uniformly from [0, n) (Floyd's algorithm).

    k random draws and O(k^2) comparisons, where ``jax.random.choice(replace=False)``
    permutes all n (on the MNIST step that alone cost 2.5x a vanilla step).
    """
    keys = jax.random.split(key, k)

    def body(i, s):
        j = n - k + i
        t = jax.random.randint(keys[i], (), 0, j + 1, s.dtype)
        return s.at[i].set(jnp.where(jnp.any(s == t), j, t).astype(s.dtype))

    return jax.lax.fori_loop(0, k, body, jnp.full((k,), -1, jnp.int32))


def _sample_axes(key: Array, shape: tuple[int, ...], num_samples: int, stratify: bool) -> tuple[Array, Array]:
    """Axes (flat indices) and their weights so that sum_k w_k s_k is unbiased for sum_all s."""
    dim = math.prod(shape)
    if not stratify:
        if num_samples > dim:
            raise ValueError(f"num_samples={num_samples} exceeds the input dimension {dim}.")
        idx = _distinct(key, dim, num_samples)
        return idx, jnp.full((num_samples,), dim / num_samples)
    channels = shape[-1]
    per = num_samples // channels
    if per < 1 or num_samples % channels:
        raise ValueError(f"stratified sampling needs num_samples to be a positive multiple of the {channels} channels; got {num_samples}.")
    per_channel = dim // channels
    keys = jax.random.split(key, channels)
    # Positions within a channel, then mapped to flat indices of that channel (channel is the last axis).
    pos = jax.vmap(lambda k: _distinct(k, per_channel, per))(keys)
    idx = (pos * channels + jnp.arange(channels)[:, None]).reshape(-1)
    return idx, jnp.full((num_samples,), per_channel / per)


def roll_penalty_sampled(
    apply_fn: ApplyFn | Network,
    params: PyTree,
    x: Array,
    key: Array,
    *,
    C: float,
    num_samples: int,
    estimator: str = "axes",
    stratify: bool = False,
    chunk_size: int | None = None,
) -> Array:
    """Unbiased estimate of the ``gamma=100`` ROLL penalty of ONE example (Eq. 10), a scalar.

    ``(1/|I|) sum_j ||grad z_j||^2`` is estimated from ``num_samples`` (D')
    directional derivatives, computed by JVPs (the perturbation trick on
    D' + 1 inputs):

    * ``estimator="axes"``: D' input axes drawn uniformly without replacement,
      weighted D / D'; with ``stratify=True`` D'/C_ch axes per channel (last
      axis) weighted by that channel's D_c / n_c, so the estimate stays unbiased;
    * ``estimator="gaussian"``: D' probes v ~ N(0, I), E[(grad z . v)^2] = ||grad z||^2.

    The hinge part is exact. Give each example its own ``key``
    (``jax.random.split(key, B)``) when you ``vmap`` it.

    ``chunk_size`` bounds memory: the D' directional derivatives are taken
    that many at a time in a rematerialised scan, so the loss and its
    parameter gradient hold ``chunk_size`` (not D') tangent copies of the
    network's activations (ResNet-18 at 299x299 with D' = 360 needs it).
    None: all D' at once (fastest when it fits). The value does not depend
    on it beyond rounding. On CPU prefer None where memory allows: XLA:CPU
    runs a convolution's weight gradient inside a loop body on a slow path
    (jax-ml/jax#12868), so chunks make a conv net's step several times slower
    there (ResNet-18, D' = 18 in chunks of 6: 3.4x at 64x64, 23x at
    299x299; ``python -m benchmarks.run --only resnet``).
    """
    net = as_network(apply_fn)
    check_hyper(C=C, num_samples=num_samples)
    if estimator not in ("axes", "gaussian"):
        raise ValueError(f"estimator must be 'axes' or 'gaussian', got {estimator!r}.")
    chunk_size = positive_int(chunk_size, "chunk_size", allow_none=True)
    x = jnp.asarray(x)
    shape = tuple(x.shape)
    dim = math.prod(shape)
    hidden = hidden_shapes(net, params, shape, x.dtype)  # protocol and shape checks
    if estimator == "axes":
        idx, w = _sample_axes(key, shape, num_samples, stratify)
    else:
        w = jnp.full((num_samples,), 1.0 / num_samples, x.dtype)
    if estimator == "axes" and net.dense_layers is not None:
        # MLP: the derivatives along e_k start as columns k of W_1, no first-layer product.
        z, cols = mlp_tangent_rows(net, params, x, net.dense_layers(params)[0][0][:, idx])
        cols = cols.T
    else:
        if estimator == "axes" and net.stem is not None:
            # Conv net: the first layer's derivatives along e_k are its kernel placed; JVPs start after it.
            check_stem(net, params, x, hidden)
            columns, probes = (lambda p, t: stem_columns(net, p, x, t)), idx
        else:
            columns = lambda p, t: _jvp_columns(net, p, x, t)
            probes = jax.nn.one_hot(idx, dim, dtype=x.dtype) if estimator == "axes" else jax.random.normal(key, (num_samples, dim), x.dtype)
        if chunk_size is not None and chunk_size < num_samples:
            z = flat_preacts(net, params, x)[1]
            return _sampled_value(net, params, x, z, _chunked_squares(columns, params, probes, w, chunk_size, x.dtype), C)
        z, cols = columns(params, probes)  # (N,), (D', N) directional derivatives
    return _sampled_value(net, params, x, z, jnp.sum(w[:, None] * cols * cols), C)


def _jvp_columns(net: Network, params: PyTree, x: Array, probes: Array) -> tuple[Array, Array]:
    """``(z (N,), cols (K, N))``: pre-activations and their derivatives along the input tangents ``probes`` (K, D)."""
    z, lin = linearize_preacts(net, params, x)
    return z, jax.vmap(lin)(probes)


def _sampled_value(net: Network, params: PyTree, x: Array, z: Array, sq: Array, C: float) -> Array:
    """Eq. 10 from the weighted squared derivatives ``sq`` and the pre-activations ``z`` (N,)."""
    # Masked neurons have zero columns and a zero hinge; only the count needs them excluded.
    n = neuron_count(flat_mask(net, params, x), z.shape[0])
    return (sq + C * jnp.sum(jax.nn.relu(1.0 - jnp.abs(z)))) / n


def _chunked_squares(
    columns: Callable[[PyTree, Array], tuple[Array, Array]], params: PyTree, probes: Array, w: Array, chunk: int, dtype: Any
) -> Array:
    """``sum_k w_k ||cols_k||^2`` with ``(_, cols) = columns(params, block)``, ``chunk`` probes at a time.

    ``probes`` are input tangents (K, D) or axis indices (K,). Each chunk
    re-linearises the network inside ``jax.checkpoint``, so neither the
    forward pass nor its reverse-mode gradient keeps more than one chunk's
    tangent activations (the price: one extra forward pass per chunk). Padding
    probes (zeros) get weight 0.
    """
    k = probes.shape[0]
    n_chunks = -(-k // chunk)
    chunk = -(-k // n_chunks)  # balanced chunks: the last one is not mostly padding
    pad = n_chunks * chunk - k
    probes = jnp.concatenate([probes, jnp.zeros((pad, *probes.shape[1:]), probes.dtype)]).reshape(n_chunks, chunk, *probes.shape[1:])
    w = jnp.concatenate([w, jnp.zeros((pad,), w.dtype)]).reshape(n_chunks, chunk)

    @jax.checkpoint
    def block(params, t, wb):
        cols = columns(params, t)[1]
        return jnp.sum(wb[:, None] * cols * cols)

    def step(acc, tw):
        return acc + block(params, *tw).astype(acc.dtype), None

    return jax.lax.scan(step, jnp.zeros((), dtype), (probes, w))[0]

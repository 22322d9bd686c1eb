"""Exact input-gradient norms of a recurrent network's neurons on a causal schedule (paper Sec. 4.3).

For an Elman cell ``z_t = V x_t + b + W h_{t-1}``, ``h_t = act(z_t)`` on real
frames (``h_t = h_{t-1}`` on padded ones), the gradient of neuron ``(t, j)``
with respect to frame ``s`` is ``M_{t,s}[j]`` with

    M_{s,s} = V,   M_{t,s} = W S_{t-1} M_{t-1,s}   (s < t),   M_{t,s} = 0   (s > t),

``S_t`` the diagonal of activation slopes at ``x``. Forward-mode AD along all
``(T, F + 1)`` input axes (``method="forward"``) propagates every tangent
through every step, zeros included: ``(F + 1) T`` tangents over ``T`` steps.
Here the tangents of frame ``s`` start at step ``s`` (and the frame flag gets
none): ``F T (T + 1) / 2`` tangent-steps for T <= 32 (a little more past
that, see below), about half, and under
:func:`group_norms` a group of sequences sorted by length stops at its longest
real frame. The squared norms ``sum_s ||M_{t,s}[j]||^2`` (and the l1 and l-inf
reductions) are accumulated step by step, so the Jacobian is never stored
(except by a reverse-mode gradient, which keeps each step's tangents).

Steps run in blocks of ``ceil(T / 32)``: block ``k`` carries the tangents of
every frame that can have started by its end (``F (k + 1) b`` rows), so the
unrolled programme has at most 32 blocks whatever ``T``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
_MAX_BLOCKS = 32


class RecurrentCell(NamedTuple):
    """What a recurrent network declares for the causal schedule (``Network.recurrent_cell``).

    Attributes:
      w_in: ``(H, F)``, V: the input weights (real feature channels only, no frame flag).
      w_rec: ``(H, H)``, W: the recurrent weights.
      bias: ``(H,)``, b.
    """

    w_in: Array
    w_rec: Array
    bias: Array


def _reduce(rows: Array, squared: bool) -> tuple[Array, Array, Array]:
    """``(sum of squares, max |.|, sum |.|)`` over the tangent rows of one step, ``rows (G, n, H)`` -> each ``(G, H)``.

    For certificates (``squared=False``) the sum of squares is taken relative to
    the step's maximum (as in :mod:`lld_jax._src.gradients`), so it neither
    overflows nor flushes to zero in float32; :func:`l2_norms` undoes it.
    """
    if squared:  # the loss needs the sums of squares only: no max or l1 pass over the rows
        sq = jnp.sum(rows * rows, axis=1)
        return sq, jnp.zeros_like(sq), jnp.zeros_like(sq)
    a = jnp.abs(rows)
    mx = jnp.max(a, axis=1)
    safe = jnp.where(mx > 0, mx, 1)[:, None, :]
    return jnp.sum(jnp.square(a / safe), axis=1), mx, jnp.sum(a, axis=1)


def _blocks(t_len: int) -> list[tuple[int, int]]:
    b = -(-t_len // _MAX_BLOCKS)
    return [(t0, min(t0 + b, t_len)) for t0 in range(0, t_len, b)]


def _sweep(w_in: Array, w_rec: Array, slopes: Array, valid: Array, active: Array | None, squared: bool, residuals: bool):
    """The forward sweep: per-step reductions ``(sq, mx, ab)`` (each ``(G, T, H)``) and, with ``residuals``, each
    block's per-step ``(dh_in, dz)`` for :func:`_sq_bwd` (zeros for skipped blocks)."""
    g, t_len, hidden = slopes.shape
    feats = w_in.shape[1]
    inject = jnp.broadcast_to(w_in.T, (g, feats, hidden))
    w_t = w_rec.T
    dh = jnp.zeros((g, 0, hidden), slopes.dtype)
    outs, saved = [], []
    for t0, t1 in _blocks(t_len):
        dh = jnp.concatenate([dh, jnp.zeros((g, feats * (t1 - t0), hidden), dh.dtype)], axis=1)

        def step(dh, t):
            dz = jnp.einsum("gnh,hk->gnk", dh, w_t)
            dz = jax.lax.dynamic_update_slice_in_dim(dz, inject, t * feats, axis=1)  # frame t starts: dz_t/dx_t = V
            keep = valid[:, t][:, None, None]
            return jnp.where(keep, dz * slopes[:, t][:, None, :], dh), (_reduce(dz, squared), (dh, dz) if residuals else None)

        def block(dh, t0=t0, t1=t1):
            return jax.lax.scan(step, dh, jnp.arange(t0, t1))

        if active is None or t0 == 0:
            dh, (acc, res) = block(dh)
        else:  # an unbatched predicate stays a real branch: a group of short sequences skips the block
            zeros = lambda dh, t0=t0, t1=t1: jax.tree.map(jnp.zeros_like, jax.eval_shape(block, dh)[1])
            dh, (acc, res) = jax.lax.cond(t0 < active, block, lambda dh: (dh, zeros(dh)), dh)
        outs.append(acc)
        saved.append(res)
    acc = tuple(jnp.moveaxis(jnp.concatenate([o[i] for o in outs]), 0, 1) for i in range(3))
    return acc, saved


@jax.custom_vjp
def _sq_norms(w_in: Array, w_rec: Array, slopes: Array, valid: Array, active: Array) -> Array:
    return _sweep(w_in, w_rec, slopes, valid, active, True, False)[0][0]


def _sq_fwd(w_in, w_rec, slopes, valid, active):
    (sq, _, _), saved = _sweep(w_in, w_rec, slopes, valid, active, True, True)
    return sq, (w_in, w_rec, slopes, valid, active, saved)


def _sq_bwd(res, cot):
    """Reverse-time sweep for the squared norms: two GEMMs per step (AD through :func:`_sweep`'s skipping branches
    took ~1.4x as long). With ``a`` the adjoint of ``dz`` at step t:
    ``a = 2 c_t dz + keep_t s_t A_out``, ``A_in = (1 - keep_t) A_out + a W``, ``dW += a^T dh_in``, ``dV += a[frame t rows]^T``."""
    w_in, w_rec, slopes, valid, active, saved = res
    g, t_len, hidden = slopes.shape
    feats = w_in.shape[1]
    cot = cot.astype(slopes.dtype)
    adh = jnp.zeros((g, feats * t_len, hidden), slopes.dtype)
    d_w, d_v = jnp.zeros_like(w_rec), jnp.zeros_like(w_in)
    for (t0, t1), (dh_in, dz) in reversed(list(zip(_blocks(t_len), saved))):
        adh = adh[:, : feats * t1]

        def step(carry, inp):
            adh, d_w, d_v = carry
            t, dh_in, dz = inp
            keep = valid[:, t][:, None, None]
            a = 2 * cot[:, t][:, None, :] * dz + jnp.where(keep, slopes[:, t][:, None, :] * adh, 0)
            own = jax.lax.dynamic_slice_in_dim(a, t * feats, feats, axis=1)  # the rows frame t's injection overwrote
            d_v = d_v + jnp.sum(own, axis=0).T
            a = jax.lax.dynamic_update_slice_in_dim(a, jnp.zeros_like(own), t * feats, axis=1)
            d_w = d_w + jnp.einsum("gnh,gnk->hk", a, dh_in)
            return (jnp.where(keep, 0, adh) + jnp.einsum("gnh,hk->gnk", a, w_rec), d_w, d_v), None

        def block(carry, t0=t0, t1=t1, dh_in=dh_in, dz=dz):
            return jax.lax.scan(step, carry, (jnp.arange(t0, t1), dh_in, dz), reverse=True)[0]

        carry = (adh, d_w, d_v)
        adh, d_w, d_v = block(carry) if t0 == 0 else jax.lax.cond(t0 < active, block, lambda c: c, carry)
        adh = adh[:, : feats * t0]
    # No gradient for the slopes: callers stop it (piecewise constant in x and params; :func:`group_norms`).
    return d_v, d_w, jnp.zeros_like(slopes), None, None


_sq_norms.defvjp(_sq_fwd, _sq_bwd)


def causal_norms(cell: RecurrentCell, slopes: Array, valid: Array, *, squared: bool, active: Array | None = None) -> tuple[Array, Array, Array]:
    """Per-neuron reductions of the exact input gradients of a group of sequences.

    Args:
      cell: the cell's weights (:class:`RecurrentCell`).
      slopes: ``(G, T, H)``, activation slopes at the examples' own pattern
        (no gradient flows to them: they are piecewise constant).
      valid: ``(G, T)`` booleans, real frames (real frames first).
      squared: the training loss's plain sums of squares (else scaled, see :func:`_reduce`).
      active: optional unbatched int scalar: no frame at or after it is real in
        any sequence of the group; blocks from there on are skipped (their
        neurons are not neurons: zeros are returned). ``None``: every block runs.

    Returns:
      ``(sq, mx, ab)``, each ``(G, T, H)``: the sum of squares (scaled unless
      ``squared``), the max and the sum of absolute values of ``dz_{t,j}/dx`` over
      the real input coordinates (frames' feature channels); with ``squared``
      only ``sq`` is computed (``mx`` and ``ab`` are zeros). Plain JAX:
      differentiable in the cell's weights in forward and reverse mode.
    """
    w_in, w_rec = cell.w_in.astype(slopes.dtype), cell.w_rec.astype(slopes.dtype)
    return _sweep(w_in, w_rec, jax.lax.stop_gradient(slopes), valid, active, squared, False)[0]


def l2_norms(sq: Array, mx: Array, squared: bool) -> Array:
    """The l2 norms (squared ones with ``squared``) from scaled sums: ``mx * sqrt(sq)``.

    The accumulators of :func:`causal_norms` and of ``gradients``' column scans.
    """
    if squared:
        return sq
    # sqrt's derivative at 0 is inf: a neuron with an exactly zero gradient (every ReLU upstream inactive) would make
    # the l2 margin's parameter gradient NaN (0 x inf), although that neuron never bounds the region. Its norm is 0
    # either way; its derivative is taken as 0 (a subgradient), and a NaN sq stays NaN.
    pos = sq > 0
    return jnp.where(pos, mx * jnp.sqrt(jnp.where(pos, sq, 1)), mx * sq)


def group_norms(cell: RecurrentCell, slopes: Array, valid: Array, *, group: int, squared: bool) -> tuple[Array, Array, Array]:
    """:func:`causal_norms` of a batch, sorted by length into groups of ``group`` so short groups stop early.

    Same results as one call on the whole batch (the order is restored); a
    batch-level function (the sort needs the batch), used by the training
    step's exact ROLL loss. ``slopes (B, T, H)``, ``valid (B, T)``. With
    ``squared`` the parameter gradient is a hand-written reverse sweep
    (:func:`_sq_bwd`; reverse mode only: ``jax.jvp`` of it raises) that keeps
    every step's tangents, about F T^2 H / 2 values per sequence.
    """
    n, t_len = slopes.shape[:2]
    w_in, w_rec = cell.w_in.astype(slopes.dtype), cell.w_rec.astype(slopes.dtype)
    slopes = jax.lax.stop_gradient(slopes)
    ends = jnp.max(jnp.where(valid, jnp.arange(1, t_len + 1), 0), axis=1)  # one past each sequence's last real frame
    order = jnp.argsort(-ends, stable=True)
    slopes, valid, ends = slopes[order], valid[order], ends[order]
    parts = []
    for lo in range(0, n, group):
        hi = min(lo + group, n)
        if squared:  # the training loss: a hand-written reverse sweep (reverse mode only)
            sq = _sq_norms(w_in, w_rec, slopes[lo:hi], valid[lo:hi], ends[lo].astype(jnp.int32))
            parts.append((sq, jnp.zeros_like(sq), jnp.zeros_like(sq)))
        else:
            parts.append(_sweep(w_in, w_rec, slopes[lo:hi], valid[lo:hi], ends[lo], False, False)[0])
    inverse = jnp.argsort(order)
    return tuple(jnp.concatenate([p[i] for p in parts])[inverse] for i in range(3))


def tangent_steps(lengths: list[int], t_len: int, feats: int, group: int | None = None) -> int:
    """Tangent-steps (rows times steps) the schedule runs: the FLOP floor is ``2 H^2`` per tangent-step (forward).

    ``group=None``: one call over padded ``t_len``; else :func:`group_norms`'s groups.
    """
    blocks = _blocks(t_len)
    if group is None:
        return len(lengths) * sum(feats * t1 * (t1 - t0) for t0, t1 in blocks)
    srt = sorted(lengths, reverse=True)
    total = 0
    for lo in range(0, len(srt), group):
        size, longest = len(srt[lo : lo + group]), srt[lo]
        total += size * sum(feats * t1 * (t1 - t0) for t0, t1 in blocks if t0 == 0 or t0 < longest)
    return total


__all__ = ["RecurrentCell", "causal_norms", "group_norms", "l2_norms", "tangent_steps"]

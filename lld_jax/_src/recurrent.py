"""Recurrent networks with ReLU-type units: every hidden unit at every time step is a neuron (paper Sec. 4.3).

Sequences of different lengths share one padded array. With
``variable_length=True`` a model takes one sequence as ``(T, F + 1)``: F
feature channels and, last, a frame flag (1 for a real frame, 0 for padding;
real frames first), as :func:`lld_jax.data.pad_sequences` builds it. The hidden
state stops at the last real frame, padded frames reach no neuron of a real
step, and the model's ``neuron_mask`` tells the library that padded steps are
not neurons. So margins, patterns, gradients and losses of a padded sequence
equal those of the sequence alone; padded frames and the flag channel have zero
gradient (they are layout, not input coordinates: perturb only real frames).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lld_jax._src.causal import RecurrentCell
from lld_jax._src.models import leaky

Array = jax.Array


def _frames(x: Array, in_features: int, variable_length: bool, name: str) -> tuple[Array, Array]:
    """``(features (T, F), valid (T,) bool)`` of one sequence; checks the shape."""
    want = in_features + int(variable_length)
    if x.ndim != 2 or x.shape[-1] != want:
        flag = " (F features and the frame flag last, see lld_jax.data.pad_sequences)" if variable_length else ""
        raise ValueError(f"{name} takes one sequence of shape (T, {want}){flag}; got shape {x.shape}.")
    if not variable_length:
        return x, jnp.ones(x.shape[:1], bool)
    return x[:, :in_features], jax.lax.stop_gradient(x[:, in_features]) > 0.5


def _recur(u: Array, valid: Array, w_rec: Array, negative_slope: float, slopes: Array | None) -> tuple[Array, Array]:
    """``h_t = act(u_t + W h_{t-1})`` over real frames; returns the last real state and every z_t (T, H)."""

    def step(h, inp):
        ut, vt, st = inp
        z = ut + w_rec @ h
        return jnp.where(vt, leaky(z, negative_slope, st), h), z

    h0 = jnp.zeros(u.shape[1:], u.dtype)
    return jax.lax.scan(step, h0, (u, valid, slopes))


def _step_mask(x: Array, hidden: int, variable_length: bool) -> tuple[Array, ...]:
    valid = x[:, -1] > 0.5 if variable_length else jnp.ones(x.shape[:1], bool)
    return (jnp.broadcast_to(valid[:, None], (x.shape[0], hidden)),)


class RNN(nnx.Module):
    """Elman RNN h_t = act(W x_t + U h_{t-1} + b) with a dense read-out of the last state.

    Input: one sequence, ``(T, F)`` (or ``(T, F + 1)`` with
    ``variable_length``, see the module docstring). Each time step's hidden
    pre-activations are neurons (paper Sec. 4.3), returned as ONE preact of
    shape (T, H). ``U`` starts orthogonal; :class:`ScoRNN` keeps it so.

    Args:
      in_features: F.
      hidden: H.
      out_features: number of outputs.
      negative_slope: 0 for ReLU, alpha for LeakyReLU.
      length: T, if every sequence has the same length (sets ``input_shape``).
      variable_length: take padded sequences with a frame flag.
    """

    def __init__(
        self,
        in_features: int,
        hidden: int,
        out_features: int,
        *,
        negative_slope: float = 0.0,
        length: int | None = None,
        variable_length: bool = False,
        rngs: nnx.Rngs,
        param_dtype=jnp.float32,
    ):
        self.in_features, self.hidden, self.variable_length = in_features, hidden, bool(variable_length)
        self.input_shape = None if length is None else (length, in_features + int(variable_length))
        self.negative_slope = float(negative_slope)
        self.cell_in = nnx.Linear(in_features, hidden, rngs=rngs, param_dtype=param_dtype)
        ortho = nnx.initializers.orthogonal()
        self.cell_rec = nnx.Linear(hidden, hidden, use_bias=False, kernel_init=ortho, rngs=rngs, param_dtype=param_dtype)
        self.readout = nnx.Linear(hidden, out_features, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x: Array, slopes: Sequence[Array] | None = None):
        feats, valid = _frames(x, self.in_features, self.variable_length, "RNN")
        u = jax.vmap(self.cell_in)(feats)  # (T, H)
        h, zs = _recur(u, valid, self.cell_rec.kernel[...].T, self.negative_slope, None if slopes is None else slopes[0])
        return self.readout(h), (zs,)

    def neuron_mask(self, x: Array) -> tuple[Array, ...]:
        """Which pre-activations are neurons: the hidden units of real frames, ``((T, H),)``."""
        return _step_mask(x, self.hidden, self.variable_length)

    def recurrent_cell(self) -> RecurrentCell:
        """``(V, W, b)`` of the cell, for the exact causal gradient schedule (``method="causal"``)."""
        return RecurrentCell(self.cell_in.kernel[...].T, self.cell_rec.kernel[...].T, self.cell_in.bias[...])


def cayley_recurrent(skew_params: Array, num_negative: int) -> Array:
    """scoRNN's recurrent matrix W = (I + A)^-1 (I - A) D (Helfrich et al. 2018), orthogonal.

    Args:
      skew_params: ``(H, H)``; A is its strictly upper triangle minus that
        triangle's transpose (skew-symmetric, so I + A is invertible).
      num_negative: number of -1 entries of the fixed diagonal D (first ones).

    Returns:
      W, ``(H, H)``, orthogonal up to the rounding of one linear solve.
    """
    h = skew_params.shape[0]
    upper = jnp.triu(skew_params, 1)
    a = upper - upper.T
    eye = jnp.eye(h, dtype=skew_params.dtype)
    d = jnp.where(jnp.arange(h) < num_negative, -1.0, 1.0).astype(skew_params.dtype)
    return jnp.linalg.solve(eye + a, (eye - a) * d[None, :])


def _cayley_init(key: Array, hidden: int, dtype) -> Array:
    """scoRNN's initialisation: A block diagonal with 2x2 blocks [[0, s], [-s, 0]], s = sqrt((1 - cos t) / (1 + cos t)), t ~ U(0, pi/2)."""
    t = jax.random.uniform(key, (hidden // 2,), dtype, 0.0, math.pi / 2)
    s = jnp.sqrt((1 - jnp.cos(t)) / (1 + jnp.cos(t)))
    m = jnp.zeros((hidden, hidden), dtype)
    idx = 2 * np.arange(hidden // 2)
    return m.at[idx, idx + 1].set(s)


class ScoRNN(nnx.Module):
    """Scaled Cayley orthogonal RNN (scoRNN, Helfrich et al. 2018), the paper's Japanese Vowel model (paper Sec. 5.2, App. H).

    h_t = act(V x_t + W h_{t-1} + b) with W = (I + A)^-1 (I - A) D
    (:func:`cayley_recurrent`): A skew-symmetric and trained, D a fixed diagonal
    of +-1, so W is orthogonal at every step of training. The last real
    state feeds one dense layer. Inputs and neurons as in :class:`RNN`.

    Args:
      in_features: F (12 for Japanese Vowels).
      hidden: H (paper: 512).
      out_features: number of classes.
      num_negative: number of -1 entries of D (any value keeps W orthogonal;
        Helfrich et al. tune it; the paper does not state it).
      negative_slope: LeakyReLU slope (0: ReLU).
      length: T for fixed-length inputs (sets ``input_shape``).
      variable_length: take padded sequences with a frame flag.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        hidden: int = 512,
        num_negative: int = 0,
        negative_slope: float = 0.01,
        length: int | None = None,
        variable_length: bool = False,
        rngs: nnx.Rngs,
        param_dtype=jnp.float32,
    ):
        if not 0 <= num_negative <= hidden:
            raise ValueError(f"num_negative must be in [0, hidden={hidden}], got {num_negative}.")
        self.in_features, self.hidden, self.variable_length = in_features, hidden, bool(variable_length)
        self.num_negative = int(num_negative)
        self.input_shape = None if length is None else (length, in_features + int(variable_length))
        self.negative_slope = float(negative_slope)
        self.cell_in = nnx.Linear(in_features, hidden, rngs=rngs, param_dtype=param_dtype)
        self.skew = nnx.Param(_cayley_init(rngs.params(), hidden, param_dtype))
        self.readout = nnx.Linear(hidden, out_features, rngs=rngs, param_dtype=param_dtype)

    def recurrent_matrix(self) -> Array:
        """The current orthogonal W, ``(H, H)``."""
        return cayley_recurrent(self.skew[...], self.num_negative)

    def __call__(self, x: Array, slopes: Sequence[Array] | None = None):
        feats, valid = _frames(x, self.in_features, self.variable_length, "ScoRNN")
        u = jax.vmap(self.cell_in)(feats)
        h, zs = _recur(u, valid, self.recurrent_matrix(), self.negative_slope, None if slopes is None else slopes[0])
        return self.readout(h), (zs,)

    def neuron_mask(self, x: Array) -> tuple[Array, ...]:
        """Which pre-activations are neurons: the hidden units of real frames, ``((T, H),)``."""
        return _step_mask(x, self.hidden, self.variable_length)

    def recurrent_cell(self) -> RecurrentCell:
        """``(V, W, b)`` of the cell, for the exact causal gradient schedule (``method="causal"``)."""
        return RecurrentCell(self.cell_in.kernel[...].T, self.recurrent_matrix(), self.cell_in.bias[...])

"""Recurrent networks with ReLU-type units: every hidden unit at every time step is a neuron (paper Sec. 4.3)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lld_jax._src.models import leaky

Array = jax.Array


class RNN(nnx.Module):
    """Elman RNN h_t = act(W x_t + U h_{t-1} + b) with a dense read-out of h_T.

    Input: one sequence of shape (T, F). Each time step's hidden
    pre-activations are neurons (paper Sec. 4.3), returned as ONE preact of
    shape (T, H). ``negative_slope`` > 0 gives the LeakyReLU of the paper's
    Japanese-Vowel model; ``U`` starts orthogonal (as scoRNN's Cayley
    parametrisation keeps it; the Cayley parametrisation itself is not built).

    Args:
      in_features: F.
      hidden: H.
      out_features: number of outputs.
      length: T, if every sequence has the same length (sets ``input_shape``).
    """

    def __init__(
        self,
        in_features: int,
        hidden: int,
        out_features: int,
        *,
        negative_slope: float = 0.0,
        length: int | None = None,
        rngs: nnx.Rngs,
        param_dtype=jnp.float32,
    ):
        self.input_shape = None if length is None else (length, in_features)
        self.negative_slope = float(negative_slope)
        self.cell_in = nnx.Linear(in_features, hidden, rngs=rngs, param_dtype=param_dtype)
        ortho = nnx.initializers.orthogonal()
        self.cell_rec = nnx.Linear(hidden, hidden, use_bias=False, kernel_init=ortho, rngs=rngs, param_dtype=param_dtype)
        self.readout = nnx.Linear(hidden, out_features, rngs=rngs, param_dtype=param_dtype)
        self.hidden = hidden

    def __call__(self, x: Array, slopes: Sequence[Array] | None = None):
        if x.ndim != 2:
            raise ValueError(f"RNN takes one sequence of shape (T, F); got shape {x.shape}.")
        u = jax.vmap(self.cell_in)(x)  # (T, H)
        w_rec = self.cell_rec.kernel[...]
        s = None if slopes is None else slopes[0]

        def step(h, inp):
            ut, st = inp
            z = ut + h @ w_rec
            return leaky(z, self.negative_slope, st), z

        h0 = jnp.zeros((self.hidden,), u.dtype)
        if s is None:
            h, zs = jax.lax.scan(lambda h, ut: step(h, (ut, None)), h0, u)
        else:
            h, zs = jax.lax.scan(step, h0, (u, s))
        return self.readout(h), (zs,)

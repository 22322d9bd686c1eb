"""Max-pooling and maxout as switching constraints (paper Sec. 4.3, App. E).

A max unit ``m = max(u_1, ..., u_k)`` is linear wherever its arg-max ``a`` is
fixed; the region of ``a`` is the polyhedron ``{d_i = u_a - u_i >= 0, i != a}``
(App. E). This module reports every max unit as ``k`` pre-activation entries

    d_i = u_a - u_i  (i != a),   d_a = MASKED_PREACT = -1 (a constant),

together with a neuron mask that is False at ``i = a`` (``d_a = 0`` identically
is no constraint). The arg-max is ``jnp.argmax``'s: the FIRST maximal index
(row-major order over a pooling window). With the mask the rest of the library
needs no change: margins are the minimum over constraints of
``d_i / ||grad d_i||_q`` (App. E exactly), the pattern ``d > 0`` is True at the
non-arg-max entries and False at the arg-max (it encodes the arg-max; a tie
``d_i = 0`` reads as a region boundary, margin 0), and region counts,
directional margins and the ROLL losses include the constraints. Reporting the
arg-max entry as the constant -1 (rather than 0) makes the raw pre-activations
read exactly as the library's masked view, so brute-force tools (``jacfwd`` of
the preacts) agree with it.

Max-pooled networks have no frozen-pattern apply (freezing needs the arg-max at
``x``), so ``method="template"`` is unavailable for them; set
``supports_frozen_pattern = False`` on a module whose ``__call__`` takes
``slopes`` (see :func:`lld_jax.from_nnx`).

Pool pre-activations, not activations: a max-pool after a ReLU ties (every
inactive input of a window is 0), and a tie is a boundary, margin 0. Max
commutes with the monotone ReLU/LeakyReLU, so ``act(max_pool(z))`` is the same
function as ``max_pool(act(z))`` with switching constraints between affine
functions and no systematic ties; :class:`lld_jax.models.CNN` with
``downsample="max"`` does this.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from lld_jax._src.arguments import positive_int
from lld_jax._src.network import MASKED_PREACT

Array = jax.Array


class MaxConstraints(NamedTuple):
    """A max unit's output, its switching constraints and their neuron mask (paper App. E).

    Attributes:
      output: the maxima, shape ``S`` (the pieces' shape without the last axis).
      constraints: ``(*S, k)``: ``u_a - u_i`` at ``i != a``, :data:`MASKED_PREACT`
        (-1, constant) at the arg-max ``i = a``. Report it as a pre-activation.
      mask: ``(*S, k)`` booleans, False at the arg-max: report it in the
        module's ``neuron_mask``.
    """

    output: Array
    constraints: Array
    mask: Array


def max_constraints(u: Array) -> MaxConstraints:
    """The maximum over the LAST axis of ``u`` with its switching constraints (maxout, App. E).

    Args:
      u: ``(*S, k)`` pieces, ``k >= 1`` (e.g. the ``k`` affine pieces of maxout
        units, or a pooling window's inputs).

    Returns:
      :class:`MaxConstraints`: ``output = u[..., a]`` with ``a`` the first
      maximal index (``jnp.argmax``), ``constraints = u_a - u_i`` (``-1`` at
      ``a``), ``mask = (i != a)``. The output's derivative flows through
      ``u_a`` only, consistently with the constraints.

    Example:
      >>> import jax.numpy as jnp, lld_jax
      >>> c = lld_jax.layers.max_constraints(jnp.array([1.0, 3.0, 0.5]))
      >>> float(c.output), c.constraints.tolist(), c.mask.tolist()
      (3.0, [2.0, -1.0, 2.5], [True, False, True])
    """
    u = jnp.asarray(u)
    if u.ndim == 0 or u.shape[-1] < 1:
        raise ValueError(f"max_constraints takes pieces on the last axis, shape (..., k) with k >= 1; got shape {u.shape}.")
    a = jnp.argmax(u, axis=-1)
    top = jnp.take_along_axis(u, a[..., None], axis=-1)
    is_max = jnp.arange(u.shape[-1]) == a[..., None]
    d = jnp.where(is_max, jnp.asarray(MASKED_PREACT, u.dtype), top - u)
    return MaxConstraints(top[..., 0], d, jax.lax.stop_gradient(~is_max))


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, numbers.Integral) else tuple(value) if isinstance(value, Sequence) else ()
    if len(pair) != 2:
        raise ValueError(f"{name} must be a positive integer or a pair of them, got {value!r}.")
    return positive_int(pair[0], name), positive_int(pair[1], name)


def pool_output_shape(shape: Sequence[int], window: int | Sequence[int], strides: int | Sequence[int] | None = None) -> tuple[int, int, int]:
    """``(H_out, W_out, C)`` of :func:`max_pool` on an input of shape ``(H, W, C)``; validates the arguments.

    Raises:
      ValueError: if ``shape`` is not ``(H, W, C)``, the window or strides
        are not positive, or the window is larger than the input.
    """
    shape = tuple(shape)
    if len(shape) != 3:
        raise ValueError(f"max_pool takes ONE example of shape (H, W, C) (vmap it over a batch); got shape {shape}.")
    wh, ww = _pair(window, "window")
    sh, sw = _pair(window if strides is None else strides, "strides")
    h, w, c = shape
    if wh > h or ww > w:
        raise ValueError(f"the pooling window {(wh, ww)} is larger than the input's spatial size {(h, w)} (VALID padding needs window <= input).")
    return (h - wh) // sh + 1, (w - ww) // sw + 1, c


def max_pool(x: Array, window: int | Sequence[int], strides: int | Sequence[int] | None = None) -> MaxConstraints:
    """2-D max pooling of ONE example (VALID padding) with its switching constraints (App. E).

    Args:
      x: ``(H, W, C)``.
      window: ``(wh, ww)`` or one int for both.
      strides: ``(sh, sw)`` or one int; default ``window`` (non-overlapping
        windows, as PyTorch; Flax's ``nnx.max_pool`` defaults to stride 1).

    Returns:
      :class:`MaxConstraints`: ``output`` ``(H_out, W_out, C)`` equal to
      ``nnx.max_pool``'s, ``constraints`` and ``mask`` of shape
      ``(H_out, W_out, C, wh * ww)``, the window's entries in row-major order
      (ties go to the first of them).

    Raises:
      ValueError: for a bad shape, window or stride (see :func:`pool_output_shape`).

    Example:
      >>> import jax.numpy as jnp, lld_jax
      >>> x = jnp.arange(16.0).reshape(4, 4, 1)
      >>> pool = lld_jax.layers.max_pool(x, 2)
      >>> pool.output[..., 0].tolist()
      [[5.0, 7.0], [13.0, 15.0]]
      >>> pool.constraints[0, 0, 0].tolist(), pool.mask[0, 0, 0].tolist()
      ([5.0, 4.0, 1.0, -1.0], [True, True, True, False])
    """
    x = jnp.asarray(x)
    ho, wo, _ = pool_output_shape(x.shape, window, strides)
    wh, ww = _pair(window, "window")
    sh, sw = _pair(window if strides is None else strides, "strides")
    pieces = [x[i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :] for i in range(wh) for j in range(ww)]
    return max_constraints(jnp.stack(pieces, axis=-1))


class NeuronRecorder:
    """Collects the pre-activations of one forward pass and their neuron masks, in depth order.

    The helper for a user's own NNX module with max-pooling or maxout units:
    call it in the forward pass, return ``recorder.preacts`` as the module's
    pre-activations and ``recorder.masks`` from a ``neuron_mask(x)`` method
    (what :func:`lld_jax.from_nnx` reads). Plain ReLU pre-activations get an
    all-True mask.

    Example:
      >>> import jax, jax.numpy as jnp, lld_jax
      >>> from flax import nnx
      >>> class Net(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.conv = nnx.Conv(1, 2, (3, 3), rngs=rngs)
      ...         self.head = nnx.Linear(8, 3, rngs=rngs)
      ...     def forward(self, x):
      ...         rec = lld_jax.layers.NeuronRecorder()
      ...         h = rec.max_pool(self.conv(x), 2)  # pool the pre-activation ...
      ...         h = rec.relu(h)  # ... then ReLU: the function of ReLU-then-pool, without ties
      ...         return self.head(h.reshape(-1)), rec
      ...     def __call__(self, x):
      ...         out, rec = self.forward(x)
      ...         return out, rec.preacts
      ...     def neuron_mask(self, x):
      ...         return self.forward(x)[1].masks
      >>> net, params = lld_jax.from_nnx(Net(nnx.Rngs(0)), input_shape=(4, 4, 1))
      >>> [p.shape for p in net.apply(params, jnp.ones((4, 4, 1)))[1]]
      [(2, 2, 2, 4), (2, 2, 2)]
      >>> bool(lld_jax.margin(net, params, jax.random.normal(jax.random.key(0), (4, 4, 1))) > 0)
      True
    """

    def __init__(self) -> None:
        self._preacts: list[Array] = []
        self._masks: list[Array] = []

    @property
    def preacts(self) -> tuple[Array, ...]:
        """The recorded pre-activations, in the order they were recorded."""
        return tuple(self._preacts)

    @property
    def masks(self) -> tuple[Array, ...]:
        """Their neuron masks (booleans, same shapes)."""
        return tuple(self._masks)

    def add(self, z: Array, mask: Array | None = None) -> Array:
        """Records a pre-activation ``z`` (with its mask, default all True); returns ``z``."""
        self._preacts.append(z)
        self._masks.append(jnp.ones(jnp.shape(z), bool) if mask is None else jax.lax.stop_gradient(jnp.asarray(mask, bool)))
        return z

    def relu(self, z: Array, negative_slope: float = 0.0) -> Array:
        """Records ``z`` as ReLU (or LeakyReLU) neurons; returns the activation (``z == 0`` inactive)."""
        self.add(z)
        return jnp.where(z > 0, z, negative_slope * z)

    def record(self, res: MaxConstraints) -> Array:
        """Records a :class:`MaxConstraints` (e.g. from :class:`Maxout`); returns its output."""
        self.add(res.constraints, res.mask)
        return res.output

    def maxout(self, u: Array) -> Array:
        """Records the maximum over the last axis of ``u`` (:func:`max_constraints`); returns it."""
        return self.record(max_constraints(u))

    def max_pool(self, x: Array, window: int | Sequence[int], strides: int | Sequence[int] | None = None) -> Array:
        """Records :func:`max_pool` of ``x`` ``(H, W, C)``; returns the pooled ``(H_out, W_out, C)``."""
        return self.record(max_pool(x, window, strides))


class Maxout(nnx.Module):
    """A dense maxout layer (Goodfellow et al. 2013): unit j outputs max_i (W_ji h + b_ji), i = 1..k.

    Args:
      in_features: fan-in.
      out_features: number of maxout units.
      k: affine pieces per unit (>= 2).
    """

    def __init__(self, in_features: int, out_features: int, k: int = 2, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        k = positive_int(k, "k (affine pieces per maxout unit)", minimum=2)
        in_features, out_features = positive_int(in_features, "in_features"), positive_int(out_features, "out_features")
        self.out_features, self.k = out_features, k
        self.linear = nnx.Linear(in_features, out_features * k, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, h: Array) -> MaxConstraints:
        """Maxout of ``h`` ``(..., in_features)``: output ``(..., out_features)``, constraints and mask ``(..., out_features, k)``."""
        u = self.linear(h)
        return max_constraints(u.reshape(u.shape[:-1] + (self.out_features, self.k)))


class MaxoutMLP(nnx.Module):
    """Fully connected maxout network: maxout hidden layers and a dense output layer.

    Each hidden layer's pre-activation is its switching constraints,
    ``(width, k)`` (paper App. E); ``neuron_mask(x)`` marks the arg-max entries.
    ``__call__(x) -> (output, preacts)`` on ONE example; no frozen-pattern
    apply (``method="template"`` is unavailable), no MLP gram path.

    Args:
      in_features: input size D, or an input shape (flattened internally).
      widths: number of maxout units per hidden layer.
      out_features: output size L.
      k: affine pieces per maxout unit (>= 2).

    Example:
      >>> import jax.numpy as jnp, lld_jax
      >>> from flax import nnx
      >>> net, params = lld_jax.from_nnx(lld_jax.layers.MaxoutMLP(4, [5, 5], 2, k=3, rngs=nnx.Rngs(0)))
      >>> out, pre = net.apply(params, jnp.ones(4))
      >>> out.shape, [p.shape for p in pre], net.apply_frozen is None
      ((2,), [(5, 3), (5, 3)], True)
    """

    supports_frozen_pattern = False

    def __init__(
        self,
        in_features: int | Sequence[int],
        widths: Sequence[int],
        out_features: int,
        *,
        k: int = 2,
        rngs: nnx.Rngs,
        param_dtype=jnp.float32,
    ):
        shape = (in_features,) if isinstance(in_features, int) else tuple(in_features)
        if not widths:
            raise ValueError("a MaxoutMLP needs at least one hidden layer (widths is empty).")
        widths = [positive_int(n, "every entry of widths") for n in widths]
        self.input_shape = shape
        self.k = k
        sizes = [math.prod(shape), *widths]
        self.layers = nnx.List([Maxout(a, b, k, rngs=rngs, param_dtype=param_dtype) for a, b in zip(sizes[:-1], sizes[1:])])
        self.head = nnx.Linear(sizes[-1], out_features, rngs=rngs, param_dtype=param_dtype)

    def forward(self, x: Array) -> tuple[Array, NeuronRecorder]:
        """``(output, recorder)`` for ONE example; the recorder holds the preacts and masks."""
        rec = NeuronRecorder()
        h = x.reshape(-1)
        for layer in self.layers:
            h = rec.record(layer(h))
        return self.head(h), rec

    def __call__(self, x: Array) -> tuple[Array, tuple[Array, ...]]:
        """``(output (L,), preacts)``: one ``(width, k)`` constraint array per hidden layer."""
        out, rec = self.forward(x)
        return out, rec.preacts

    def neuron_mask(self, x: Array) -> tuple[Array, ...]:
        """Which constraint entries are neurons: False at each unit's arg-max, shapes as the preacts."""
        return self.forward(x)[1].masks

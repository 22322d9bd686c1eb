"""Stability bounds: the directional margin along every input coordinate, both ways (paper Sec. 5.2, Fig. 3).

For input coordinate k the bounds are the directional margins (Sec. 3.2.1)
along +e_k and -e_k: the coordinate can move within
``[x_k - lower_k, x_k + upper_k]`` (all else fixed) and the network stays
linear, so its gradient (the explanation) is unchanged. All 2D bounds come
from the neuron Jacobian in one pass, a chunk of input axes at a time.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lld_jax._src.arguments import positive_int
from lld_jax._src.gradients import default_chunk, linearize_preacts
from lld_jax._src.kernel import Kernel, Plan
from lld_jax._src.network import ApplyFn, Network, PyTree, flat_mask
from lld_jax._src.poison import poison, poison_where

Array = jax.Array


def _first_crossing(z: Array, dz: Array) -> Array:
    """Smallest t >= 0 at which some z_j + t dz_j changes sign against x's pattern (+inf if none); as in directional_margin."""
    leaving = jnp.where(z > 0, dz < 0, dz > 0)
    t = jnp.where(leaving, jnp.abs(z) / jnp.where(dz != 0, jnp.abs(dz), 1), jnp.inf)
    return jnp.min(t, axis=-1)


def _bounds_one(net: Network, params: PyTree, x: Array, chunk: int) -> tuple[Array, Array]:
    z, lin = linearize_preacts(net, params, x)
    dim = x.size

    def axis(k):
        dz = lin(jax.nn.one_hot(k, dim, dtype=x.dtype))  # column k of the neuron Jacobian
        return _first_crossing(z, -dz), _first_crossing(z, dz)

    lower, upper = jax.lax.map(axis, jnp.arange(dim), batch_size=chunk)
    if net.neuron_mask is not None:
        # A coordinate the neuron mask reads (the frame flag of a padded sequence) decides which neurons
        # exist: moving it changes the region although no pre-activation's derivative sees it. It is not a
        # coordinate one can move: NaN, never a bound. Detected by moving it (both ways, by 1 + |x_k|,
        # and to just inside each finite bound) and comparing the mask.
        m0 = flat_mask(net, params, x)
        flat = x.reshape(-1)

        def reads(k, lo, up):
            c = 1 + jnp.abs(flat[k])
            steps = jnp.stack([-c, c, -0.999 * jnp.where(jnp.isfinite(lo), lo, c), 0.999 * jnp.where(jnp.isfinite(up), up, c)])
            moved = jax.vmap(lambda s: flat_mask(net, params, flat.at[k].add(s).reshape(x.shape)))(steps)
            return jnp.any(moved != m0[None])

        masked = jax.lax.map(lambda a: reads(*a), (jnp.arange(dim), lower, upper), batch_size=chunk)
        lower, upper = jnp.where(masked, jnp.nan, lower), jnp.where(masked, jnp.nan, upper)
    bad = jnp.any(jnp.isnan(z))
    fix = lambda b: poison(poison_where(b, bad), x, params).reshape(x.shape)
    return fix(lower), fix(upper)


class StabilityBounds(NamedTuple):
    """How far each input coordinate may move alone, each way, inside x's region (shaped like ``x``).

    Attributes:
      lower: the distance along -e_k (``x_k - lower_k`` is the interval's left end).
      upper: the distance along +e_k.
    """

    lower: Array
    upper: Array


def _stability_body(net, params, x, *, chunk):
    return StabilityBounds(*_bounds_one(net, params, x, chunk))


def _stability_plan(net, params, x, hidden, *, chunk_size, batched):
    dim = x[0].size if batched else x.size
    n = sum(math.prod(s) for s in hidden)
    chunk_size = positive_int(chunk_size, "chunk_size", allow_none=True)
    return Plan(static=(("chunk", chunk_size or default_chunk(dim, n)),))


STABILITY = Kernel(_stability_body, _stability_plan)


def stability_bounds(apply_fn: ApplyFn | Network, params: PyTree, x: Array, *, chunk_size: int | None = None, check: bool = True) -> StabilityBounds:
    """Per-coordinate stability bounds of ONE example: how far each input coordinate may move alone.

    ``upper[k]`` is :func:`~lld_jax.directional_margin` along +e_k and
    ``lower[k]`` along -e_k: for every t in ``[x_k - lower_k, x_k + upper_k]``
    (other coordinates fixed) the input stays in x's linear region, so the
    network's gradient there is exactly its gradient at x (paper Sec. 5.2,
    the intervals of Fig. 3). +inf where the whole ray stays in the region
    (e.g. the padding of a padded sequence). NaN for a coordinate that the
    network's :attr:`~lld_jax.Network.neuron_mask` reads (the frame flag of a
    padded sequence): it decides which neurons exist, so it is not a
    coordinate one can move within a region.

    Args:
      apply_fn: the network.
      params: its parameters.
      x: one input, shape ``input_shape``; bounds are in its units.
      chunk_size: input axes per vectorised chunk (memory ~ chunk_size * N).
      check: run the value checks.

    Returns:
      :class:`StabilityBounds` ``(lower, upper)``, each shaped like ``x`` (NaN for non-finite inputs
      and mask-read coordinates).

    Example:
      >>> import jax.numpy as jnp, lld_jax
      >>> f = lambda w, x: (x.sum(), (x - 1.0,))     # boundaries at x_k = 1
      >>> lo, up = lld_jax.stability_bounds(f, None, jnp.array([3.0, 0.5]))
      >>> lo.tolist(), up.tolist()
      ([2.0, inf], [inf, 0.5])
    """
    return STABILITY(apply_fn, params, x, chunk_size=chunk_size, check=check)

"""Exact enumeration of linear regions on a 2-D affine slice of input space.

The slice is {x0 + u*a + v*b : (u, v) in a convex polygon}. Polygons are
split layer by layer: on a polygon where the pattern of all earlier layers is
fixed, every neuron of the next layer is affine in (u, v) (paper Lemma 2), so
its zero set is a line, found exactly from its value and its 2-D gradient at
one interior point (two JVPs). Works for any network that meets the protocol
(MLP, CNN, ResNet, ...). Max-pooling and maxout units (paper App. E) cut
along their switching constraints, repeated until every piece keeps its
arg-maxes, and pieces of one pattern are joined. Entries that are not
neurons (``Network.neuron_mask``) never cut. Use float64 parameters for
exact geometry.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lld_jax._src.network import MASKED_PREACT, ApplyFn, Network, PyTree, as_network, hidden_shapes

Array = jax.Array


class SliceRegion(NamedTuple):
    """One linear region of the slice.

    Attributes:
      vertices: (K, 2) convex polygon in (u, v), counter-clockwise.
      pattern: (N,) bool activation pattern (z_j > 0) on the region.
      out_slope: (L, 2) d output / d(u, v) on the region.
      out_offset: (L,) output at (u, v) = (0, 0) of the region's affine map.
    """

    vertices: np.ndarray
    pattern: np.ndarray
    out_slope: np.ndarray
    out_offset: np.ndarray


class TooManyRegions(RuntimeError):
    """Raised when the slice holds more regions than ``max_regions``."""


def polygon_area(v: np.ndarray) -> float:
    """Signed area (shoelace formula); positive for counter-clockwise vertices."""
    x, y = v[:, 0], v[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _clip(poly: np.ndarray, vals: np.ndarray, keep_positive: bool) -> np.ndarray:
    """Sutherland-Hodgman clip of a convex polygon by the half-plane sign(val) (vals at vertices)."""
    s = vals if keep_positive else -vals
    out = []
    k = len(poly)
    for i in range(k):
        p, q, sp, sq = poly[i], poly[(i + 1) % k], s[i], s[(i + 1) % k]
        if sp >= 0:
            out.append(p)
        if (sp > 0 and sq < 0) or (sp < 0 and sq > 0):
            t = sp / (sp - sq)
            out.append(p + t * (q - p))
    return np.array(out) if out else np.zeros((0, 2))


@functools.partial(jax.jit, static_argnames=("net", "layer"))
def _layer_points(net, params, x0, a, b, uv, *, layer):
    """Per point (u, v): (z of `layer`, dz/du, dz/dv, output, dout/du, dout/dv, full pattern)."""

    def one(uv):
        x = x0 + uv[0] * a + uv[1] * b
        f = lambda t: net.apply(params, x0 + t[0] * a + t[1] * b)
        (out, pre), (dout_u, dpre_u) = jax.jvp(f, (uv,), (jnp.array([1.0, 0.0], uv.dtype),))
        _, (dout_v, dpre_v) = jax.jvp(f, (uv,), (jnp.array([0.0, 1.0], uv.dtype),))
        # Entries that are not neurons (padding, a max unit's arg-max) are inert: never a boundary.
        masks = (None,) * len(pre) if net.neuron_mask is None else net.neuron_mask(params, x)
        inert = lambda z, m, fill: z.ravel() if m is None else jnp.where(m.ravel(), z.ravel(), fill)
        z = tuple(inert(p, m, MASKED_PREACT) for p, m in zip(pre, masks))
        return (
            z[layer],
            inert(dpre_u[layer], masks[layer], 0.0),
            inert(dpre_v[layer], masks[layer], 0.0),
            out.ravel(),
            dout_u.ravel(),
            dout_v.ravel(),
            jnp.concatenate(z) > 0,
        )

    return jax.vmap(one)(uv)


def _layer_fn(net: Network, layer: int):
    def padded(params, x0, a, b, uv):
        # Pad the number of points to a power of two: a handful of compiled shapes, not one per layer.
        n = uv.shape[0]
        size = 1 << max(0, (n - 1).bit_length())
        uv = jnp.concatenate([uv, jnp.broadcast_to(uv[:1], (size - n, 2))])
        return tuple(t[:n] for t in _layer_points(net, params, x0, a, b, uv, layer=layer))

    return padded


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Counter-clockwise convex hull of 2-D points (Andrew's monotone chain)."""
    pts = sorted(set(map(tuple, np.round(points, 15))))
    if len(pts) < 3:
        return np.array(pts)

    def half(seq):
        out = []
        for p in seq:
            while len(out) >= 2 and (out[-1][0] - out[-2][0]) * (p[1] - out[-2][1]) - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0]) <= 0:
                out.pop()
            out.append(p)
        return out[:-1]

    return np.array(half(pts) + half(pts[::-1]))


def _merge_same_pattern(fn, params, x0, a, b, pieces: list[np.ndarray], dtype, prefix: int) -> list[np.ndarray]:
    """Joins pieces whose patterns agree on the first ``prefix`` neurons.

    A max unit's cuts are lines u_a = u_i, which also cross regions of other
    arg-maxes and cut them in two. A region with a fixed pattern is convex and
    so is its parent piece, so the pieces of one pattern are the convex hull of
    their vertices.
    """
    centres = jnp.asarray(np.stack([p.mean(0) for p in pieces]), dtype)
    pats = np.asarray(fn(params, x0, a, b, centres)[6])[:, :prefix]
    groups: dict[bytes, list[np.ndarray]] = {}
    for p, pat in zip(pieces, pats):
        groups.setdefault(pat.tobytes(), []).append(p)
    return [g[0] if len(g) == 1 else _convex_hull(np.concatenate(g)) for g in groups.values()]


def _split_layer(fn, params, x0, a, b, pieces: list[np.ndarray], dtype, min_area: float) -> tuple[list[np.ndarray], bool]:
    """Cuts every piece by the zero lines of one layer's neurons (affine on the piece); returns (pieces, whether any was cut)."""
    centres = jnp.asarray(np.stack([p.mean(0) for p in pieces]), dtype)
    z, du, dv = (np.asarray(t, np.float64) for t in fn(params, x0, a, b, centres)[:3])
    new, split = [], False
    for p, c, zc, gu, gv in zip(pieces, np.asarray(centres), z, du, dv):
        # Affine in (u, v) on this piece: z_j(w) = z_j(c) + g_j . (w - c).
        vals_all = zc[None] + (p[:, :1] - c[0]) * gu[None] + (p[:, 1:] - c[1]) * gv[None]  # (K, N)
        crossing = np.flatnonzero((vals_all.max(0) > 0) & (vals_all.min(0) < 0))
        parts = [p]
        for j in crossing:
            nxt = []
            for q in parts:
                vals = zc[j] + (q[:, 0] - c[0]) * gu[j] + (q[:, 1] - c[1]) * gv[j]
                if vals.max() <= 0 or vals.min() >= 0:
                    nxt.append(q)
                    continue
                for side in (True, False):
                    r = _clip(q, vals, side)
                    if len(r) >= 3 and polygon_area(r) > min_area:
                        nxt.append(r)
            parts = nxt
        split = split or len(parts) > 1
        new.extend(parts)
    return new, split


def enumerate_slice(
    apply_fn: ApplyFn | Network,
    params: PyTree,
    x0: Array,
    a: Array,
    b: Array,
    polygon: Sequence[Sequence[float]],
    *,
    max_regions: int = 100_000,
    min_area: float = 1e-14,
) -> list[SliceRegion]:
    """All linear regions of the network on the slice x0 + u a + v b, (u, v) in ``polygon``.

    Args:
      x0, a, b: arrays of the network's example shape (``a``, ``b`` span the slice).
      polygon: convex polygon in (u, v) (e.g. a box ``[(u0, v0), (u1, v0), (u1, v1), (u0, v1)]``).
      max_regions: raise :class:`TooManyRegions` past this many regions.
      min_area: pieces of smaller area (rounding slivers) are dropped.

    Returns:
      The regions; their areas add up to the polygon's area.
    """
    net = as_network(apply_fn)
    x0, a, b = (jnp.asarray(t) for t in (x0, a, b))
    if not (x0.shape == a.shape == b.shape):
        raise ValueError(f"x0, a and b must share the example shape; got {x0.shape}, {a.shape}, {b.shape}.")
    hidden = hidden_shapes(net, params, tuple(x0.shape), x0.dtype)
    poly = np.asarray(polygon, np.float64)
    if poly.ndim != 2 or poly.shape[1] != 2 or len(poly) < 3:
        raise ValueError(f"polygon must be a (K >= 3, 2) array of (u, v) vertices, got shape {poly.shape}.")
    if polygon_area(poly) < 0:
        poly = poly[::-1]
    if abs(polygon_area(poly)) <= min_area:
        raise ValueError("polygon has zero area.")
    dtype = x0.dtype
    pieces = [poly]
    for layer in range(len(hidden)):
        fn = _layer_fn(net, layer)
        # A ReLU layer is affine on each piece: one pass cuts it exactly. A max unit's switching
        # constraints u_a - u_i are those of the arg-max a at the piece's centre; across a cut the
        # arg-max changes and the new piece has constraints of its own, so repeat until no cut is made.
        while True:
            pieces, split = _split_layer(fn, params, x0, a, b, pieces, dtype, min_area)
            if len(pieces) > max_regions:
                raise TooManyRegions(f"more than max_regions={max_regions} regions after layer {layer + 1}; shrink the polygon or raise max_regions.")
            if not split or net.neuron_mask is None:
                break
        if net.neuron_mask is not None:
            pieces = _merge_same_pattern(fn, params, x0, a, b, pieces, dtype, sum(math.prod(h) for h in hidden[: layer + 1]))
    centres = jnp.asarray(np.stack([p.mean(0) for p in pieces]), dtype)
    _, _, _, out, ou, ov, pats = (np.asarray(t) for t in _layer_fn(net, 0)(params, x0, a, b, centres))
    regions = []
    for p, c, o, gu, gv, pat in zip(pieces, np.asarray(centres), out, ou, ov, pats):
        slope = np.stack([gu, gv], 1).astype(np.float64)
        regions.append(SliceRegion(p, pat, slope, o.astype(np.float64) - slope @ c))
    return regions


def _inside_convex(v: np.ndarray, points: np.ndarray, tol: float) -> np.ndarray:
    """(P,) whether each (u, v) point lies in the CCW convex polygon ``v``: every edge's cross product is >= -tol."""
    e = np.roll(v, -1, 0) - v
    cross = e[None, :, 0] * (points[:, None, 1] - v[None, :, 1]) - e[None, :, 1] * (points[:, None, 0] - v[None, :, 0])
    return (cross >= -tol).all(1)


def locate(regions: Sequence[SliceRegion], points: np.ndarray, *, tol: float = 1e-12) -> np.ndarray:
    """Index of the region containing each (u, v) point, -1 if none (boundary points go to the first match)."""
    points = np.asarray(points, np.float64)
    idx = np.full(len(points), -1)
    for r, reg in enumerate(regions):
        idx[_inside_convex(reg.vertices, points, tol) & (idx < 0)] = r
    return idx

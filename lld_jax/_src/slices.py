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
    # Closing edge apart instead of np.roll: this runs once per piece of every cut (~10x faster on small polygons).
    return 0.5 * float(x[:-1] @ y[1:] - y[:-1] @ x[1:] + x[-1] * y[0] - y[-1] * x[0])


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
    centres = jnp.asarray(_centres(*_padded(pieces)), dtype)
    pats = np.asarray(fn(params, x0, a, b, centres)[6])[:, :prefix]
    groups: dict[bytes, list[np.ndarray]] = {}
    for p, pat in zip(pieces, pats):
        groups.setdefault(pat.tobytes(), []).append(p)
    return [g[0] if len(g) == 1 else _convex_hull(np.concatenate(g)) for g in groups.values()]


def _padded(pieces: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Polygons as one ``(P, K, 2)`` array (rows padded with their first vertex) and their vertex counts ``(P,)``."""
    counts = np.array([len(p) for p in pieces])
    out = np.empty((len(pieces), counts.max(), 2))
    for i, p in enumerate(pieces):
        out[i, : len(p)], out[i, len(p) :] = p, p[0]
    return out, counts


def _centres(v: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Vertex averages of padded polygons ``(P, 2)`` (what ``p.mean(0)`` gives each one)."""
    valid = np.arange(v.shape[1])[None, :, None] < counts[:, None, None]
    return np.where(valid, v, 0.0).sum(1) / counts[:, None]


def _next(counts: np.ndarray, k: int) -> np.ndarray:
    """``(P, K)`` index of each vertex's successor around its polygon (padding points at the first vertex)."""
    return (np.arange(k)[None, :] + 1) % counts[:, None]


def _areas(v: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Signed shoelace areas of padded polygons ``(P,)`` (padding is skipped)."""
    nxt = _next(counts, v.shape[1])
    xn, yn = np.take_along_axis(v[..., 0], nxt, 1), np.take_along_axis(v[..., 1], nxt, 1)
    valid = np.arange(v.shape[1])[None, :] < counts[:, None]
    return 0.5 * np.sum(np.where(valid, v[..., 0] * yn - v[..., 1] * xn, 0.0), axis=1)


def _cut(v: np.ndarray, counts: np.ndarray, s: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Both sides of padded convex polygons cut by the lines s = 0 (``s (P, K)`` at the vertices): :func:`_clip` for
    every row at once. Returns ``((v, counts) of s >= 0, (v, counts) of s <= 0)``."""
    p, k = s.shape
    valid = np.arange(k)[None, :] < counts[:, None]
    nxt = _next(counts, k)
    vn, sn = np.take_along_axis(v, nxt[..., None], 1), np.take_along_axis(s, nxt, 1)
    crossing = valid & (((s > 0) & (sn < 0)) | ((s < 0) & (sn > 0)))
    t = s / np.where(crossing, s - sn, 1.0)
    cand = np.stack([v, v + t[..., None] * (vn - v)], axis=2).reshape(p, 2 * k, 2)  # vertex i, then edge i's crossing
    sides = []
    for keep in (valid & (s >= 0), valid & (s <= 0)):
        mask = np.stack([keep, crossing], axis=2).reshape(p, 2 * k)
        order = np.argsort(~mask, axis=1, kind="stable")  # kept points first, in order around the polygon
        n = mask.sum(1)
        out = np.take_along_axis(cand, order[..., None], 1)[:, : n.max()]
        out = np.where((np.arange(out.shape[1])[None, :] < n[:, None])[..., None], out, out[:, :1])
        sides.append((out, n))
    return sides[0], sides[1]


def _split_layer(fn, params, x0, a, b, pieces: list[np.ndarray], dtype, min_area: float) -> tuple[list[np.ndarray], bool]:
    """Cuts every piece by the zero lines of one layer's neurons (affine on the piece); returns (pieces, whether any was cut).

    Neuron by neuron, all pieces at once (numpy over padded polygons): only the
    pieces whose parent piece the neuron's line crosses are evaluated, and the
    line of neuron j is affine on every descendant of a parent piece.
    """
    v, counts = _padded(pieces)
    centres = _centres(v, counts)
    z, du, dv = (np.asarray(t, np.float64) for t in fn(params, x0, a, b, jnp.asarray(centres, dtype))[:3])
    # Which neurons' lines cross each parent piece (affine there): the only cuts to try.
    crosses = np.empty(z.shape, bool)
    step = max(1, (1 << 22) // (v.shape[1] * z.shape[1]))  # (P, K, N) in blocks of ~4M values
    for lo in range(0, len(v), step):
        sl = slice(lo, lo + step)
        rel = v[sl, :, None, :] - centres[sl, None, None, :]
        vals_all = z[sl, None, :] + rel[..., 0] * du[sl, None, :] + rel[..., 1] * dv[sl, None, :]  # padding repeats a vertex
        crosses[sl] = (vals_all.max(1) > 0) & (vals_all.min(1) < 0)
    parent = np.arange(len(pieces))
    split = False
    for j in np.flatnonzero(crosses.any(0)):
        rows = np.flatnonzero(crosses[parent, j])
        par = parent[rows]
        rv, rc = v[rows], counts[rows]
        vals = z[par, j, None] + (rv[..., 0] - centres[par, 0, None]) * du[par, j, None] + (rv[..., 1] - centres[par, 1, None]) * dv[par, j, None]
        valid = np.arange(rv.shape[1])[None, :] < rc[:, None]
        cut = (np.where(valid, vals, -np.inf).max(1) > 0) & (np.where(valid, vals, np.inf).min(1) < 0)
        if not cut.any():
            continue
        keep = np.ones(len(parent), bool)
        keep[rows[cut]] = False
        parts_v, parts_c, parts_p, kept = [v[keep]], [counts[keep]], [parent[keep]], []
        for sv, sc in _cut(rv[cut], rc[cut], vals[cut]):
            ok = (sc >= 3) & (_areas(sv, sc) > min_area)  # a rounding sliver is dropped: the piece only shrinks
            parts_v.append(sv[ok])
            parts_c.append(sc[ok])
            parts_p.append(par[cut][ok])
            kept.append(ok)
        split = split or bool(np.any(kept[0] & kept[1]))  # a piece divided in two
        width = max(pv.shape[1] for pv in parts_v)
        v = np.concatenate([np.concatenate([pv, np.repeat(pv[:, :1], width - pv.shape[1], 1)], 1) for pv in parts_v])
        counts, parent = np.concatenate(parts_c), np.concatenate(parts_p)
    return [v[i, : counts[i]] for i in range(len(counts))], split


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
    centres = jnp.asarray(_centres(*_padded(pieces)), dtype)
    _, _, _, out, ou, ov, pats = (np.asarray(t) for t in _layer_fn(net, 0)(params, x0, a, b, centres))
    slopes = np.stack([ou, ov], -1).astype(np.float64)  # (P, outputs, 2)
    offsets = out.astype(np.float64) - np.einsum("pok,pk->po", slopes, np.asarray(centres, np.float64))
    return [SliceRegion(p, pat, slope, off) for p, pat, slope, off in zip(pieces, pats, slopes, offsets)]


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

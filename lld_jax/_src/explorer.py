"""A self-contained interactive HTML page of the exact linear regions of a 2-D slice.

On a region every hidden pre-activation is affine in the input, z_i(x) = w_i . x + c_i,
so on the slice x0 + u a + v b it is z_i = alpha_i + beta_i u + gamma_i v, and the exact
l2 margin at (u, v) is min_i |z_i| / ||w_i|| (full input space). |z_i| / ||w_i|| is affine
on the region (z_i keeps its sign), so neuron i can be the minimiser somewhere only if its
minimum over the vertices is at most min_j (maximum over the vertices of j's term): only
those candidates are embedded, and the page's hover values are exact without a server.
The same holds for the distance to the affine piece's decision boundary, d_D.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lld_jax._src.explorer_page import PAGE
from lld_jax._src.gradients import neuron_gradient_norms
from lld_jax._src.network import Network, PyTree, as_network, flat_preacts, hidden_shapes
from lld_jax._src.slices import _clip, _inside_convex, enumerate_slice, polygon_area

_SLACK = 64 * float(np.finfo(np.float64).eps)  # the certificate's rounding slack (as lld_jax.certified_radius, float64)
_REL_TOL = 1e-9  # relative slack that keeps candidate sets supersets under rounding


class SlicePayload(NamedTuple):
    """Everything the page needs for one model on one slice (numpy arrays; R regions).

    Attributes:
      polygon: (K, 2) the slice polygon, counter-clockwise.
      layer_sizes: neurons per hidden layer (flat neuron index -> layer, unit).
      num_logits: L.
      vertices, vertex_offsets: all regions' vertices (V, 2) and (R + 1,) offsets.
      hashes: (R,) uint32 hash of each region's activation pattern.
      logits: (R, L, 3) the logits' affine map per region: offset at (0, 0), d/du, d/dv.
      cand_offsets, cand_neuron, cand_affine: candidate bounding neurons per region, their flat
        indices and (alpha, beta, gamma, ||w||) with z = alpha + beta u + gamma v.
      class_offsets, class_ids, class_norms: classes predicted somewhere in each region (a superset)
        and per class y the (L,) norms ||grad_x (f_y - f_k)|| (L == 1: ||grad_x f||).
      fill_vertices, fill_offsets, fill_class: polygons of constant predicted class (drawing).
      boundary: (S, 4) decision-boundary segments (u0, v0, u1, v1).
    """

    polygon: np.ndarray
    layer_sizes: tuple[int, ...]
    num_logits: int
    vertices: np.ndarray
    vertex_offsets: np.ndarray
    hashes: np.ndarray
    logits: np.ndarray
    cand_offsets: np.ndarray
    cand_neuron: np.ndarray
    cand_affine: np.ndarray
    class_offsets: np.ndarray
    class_ids: np.ndarray
    class_norms: np.ndarray
    fill_vertices: np.ndarray
    fill_offsets: np.ndarray
    fill_class: np.ndarray
    boundary: np.ndarray


@functools.partial(jax.jit, static_argnames=("net",))
def _region_maps(net: Network, params: PyTree, x0: jax.Array, a: jax.Array, b: jax.Array, uv: jax.Array):
    """Per centre (u, v): flat z, dz/du, dz/dv, ||grad_x z|| (masked neurons inert) and the (L, L) norms ||grad_x (f_y - f_k)||."""

    def one(c):
        x = x0 + c[0] * a + c[1] * b
        f = lambda t: flat_preacts(net, params, x0 + t[0] * a + t[1] * b)
        (_, z), (_, zu) = jax.jvp(f, (c,), (jnp.array([1.0, 0.0], c.dtype),))
        _, (_, zv) = jax.jvp(f, (c,), (jnp.array([0.0, 1.0], c.dtype),))
        norms = neuron_gradient_norms(net, params, x, p=2).norms  # the library's Jacobian machinery (gram, forward, ...)
        jac = jax.jacrev(lambda t: jnp.ravel(net.apply(params, t)[0]))(x)
        jac = jac.reshape(jac.shape[0], -1)
        if jac.shape[0] == 1:
            return z, zu, zv, norms, jnp.linalg.norm(jac, axis=1)[None]
        return z, zu, zv, norms, jnp.linalg.norm(jac[:, None] - jac[None], axis=2)

    return jax.vmap(one)(uv)


def _chunk_size(num_neurons: int, dim: int, num_logits: int) -> int:
    """Regions per call: a power of two (few compiled shapes) with about 2**24 numbers of working memory."""
    per = num_neurons * (num_neurons + dim) + num_logits * num_logits * dim
    return 1 << int(np.clip(np.log2(2**24 / max(per, 1)), 3, 11))


def _pattern_hash(pattern: np.ndarray) -> int:
    return int.from_bytes(hashlib.blake2b(np.packbits(pattern).tobytes(), digest_size=4).digest(), "little")


def _candidates(verts: np.ndarray, centre: np.ndarray, z, zu, zv, norms) -> np.ndarray:
    """Neurons that can bound the margin somewhere on the polygon (a superset under rounding)."""
    ok = norms > 0  # a zero-gradient neuron never bounds (lld_jax.margin's convention; masked entries)
    vals = np.abs(z[None] + (verts[:, :1] - centre[0]) * zu[None] + (verts[:, 1:] - centre[1]) * zv[None])  # (K, N)
    terms = np.where(ok[None], vals / np.where(ok, norms, 1.0)[None], np.inf)
    hi = terms.max(0).min()
    return np.flatnonzero(ok & (terms.min(0) <= hi * (1 + _REL_TOL) + 1e-300))


def _class_cells(verts: np.ndarray, aff: np.ndarray) -> tuple[list[int], list[tuple[int, np.ndarray]]]:
    """(classes predicted somewhere on the polygon, a superset; [(class, polygon)] of constant prediction)."""
    f = aff[None, :, 0] + verts[:, :1] * aff[None, :, 1] + verts[:, 1:] * aff[None, :, 2]  # (K, L)
    tol = _REL_TOL * (1.0 + np.abs(f).max())
    if f.shape[1] == 1:
        classes = sorted({int(s) for s in (f[:, 0] > 0)} | ({0, 1} if np.abs(f[:, 0]).min() <= tol else set()))
        if len(classes) == 1:
            return classes, [(classes[0], verts)]
        return classes, [
            (c, p) for c, p in ((1, _clip(verts, f[:, 0], True)), (0, _clip(verts, f[:, 0], False))) if len(p) >= 3 and polygon_area(p) > 0
        ]
    near_max = f >= f.max(1, keepdims=True) - tol
    if (near_max.sum(0) > 0).sum() == 1:  # one class is the maximum at every vertex: everywhere (convexity)
        y = int(np.flatnonzero(near_max.any(0))[0])
        return [y], [(y, verts)]
    classes, cells = [], []
    for y in range(f.shape[1]):
        loose, exact = verts, verts
        for k in range(f.shape[1]):
            if k == y:
                continue
            gap = lambda p: (aff[y, 0] - aff[k, 0]) + p[:, 0] * (aff[y, 1] - aff[k, 1]) + p[:, 1] * (aff[y, 2] - aff[k, 2])
            loose = _clip(loose, gap(loose) + tol, True) if len(loose) else loose
            exact = _clip(exact, gap(exact), True) if len(exact) >= 3 else exact[:0]
        if len(loose):
            classes.append(y)
        if len(exact) >= 3 and polygon_area(exact) > 0:
            cells.append((y, exact))
    return classes, cells


def _boundary_edges(cell: np.ndarray, y: int, aff: np.ndarray) -> list[np.ndarray]:
    """Edges of a constant-class cell on which another logit ties with class y's (the decision boundary)."""
    if aff.shape[0] == 1:
        f = aff[0, 0] + cell @ aff[0, 1:]
        gaps = np.abs(f)[:, None]
    else:
        f = aff[None, :, 0] + cell[:, :1] * aff[None, :, 1] + cell[:, 1:] * aff[None, :, 2]
        gaps = np.delete(np.abs(f[:, [y]] - f), y, axis=1)  # (K, L - 1)
    tie = gaps <= _REL_TOL * (1.0 + np.abs(f).max())
    nxt = np.roll(np.arange(len(cell)), -1)
    return [np.concatenate([cell[i], cell[j]]) for i, j in enumerate(nxt) if (tie[i] & tie[j]).any()]


def _offsets(parts: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)


def slice_payload(
    net: Any, params: PyTree, x0: jax.Array, a: jax.Array, b: jax.Array, polygon: Sequence[Sequence[float]], *, max_regions: int = 100_000
) -> SlicePayload:
    """The exact per-region data of one model on the slice x0 + u a + v b that :func:`explorer_html` embeds.

    Arguments as in :func:`lld_jax.slices.enumerate_slice` (use float64 parameters and arrays for exact values).
    """
    net = as_network(net)
    x0, a, b = (jnp.asarray(t) for t in (x0, a, b))
    regions = enumerate_slice(net, params, x0, a, b, polygon, max_regions=max_regions)
    layer_sizes = tuple(math.prod(s) for s in hidden_shapes(net, params, tuple(x0.shape), x0.dtype))
    poly = np.asarray(polygon, np.float64)
    poly = poly if polygon_area(poly) > 0 else poly[::-1]
    centres = np.stack([r.vertices.mean(0) for r in regions])
    chunk = min(_chunk_size(sum(layer_sizes), math.prod(x0.shape), len(regions[0].out_offset)), 1 << (len(regions) - 1).bit_length())
    verts, cand_idx, cand_aff, cls_ids, cls_norms, fills, fill_cls, segs, logits = [], [], [], [], [], [], [], [], []
    for start in range(0, len(regions), chunk):
        uv = centres[start : start + chunk]
        uv = np.concatenate([uv, np.repeat(uv[:1], chunk - len(uv), 0)])  # padded: one compiled shape
        z, zu, zv, norms, gaps = (np.asarray(t, np.float64) for t in _region_maps(net, params, x0, a, b, jnp.asarray(uv, x0.dtype)))
        for i, reg in enumerate(regions[start : start + chunk]):
            c = centres[start + i]
            aff = np.concatenate([reg.out_offset[:, None], reg.out_slope], 1)  # (L, 3)
            logits.append(aff)
            verts.append(reg.vertices)
            cand = _candidates(reg.vertices, c, z[i], zu[i], zv[i], norms[i])
            alpha = z[i, cand] - zu[i, cand] * c[0] - zv[i, cand] * c[1]
            cand_idx.append(cand)
            cand_aff.append(np.stack([alpha, zu[i, cand], zv[i, cand], norms[i, cand]], 1))
            classes, cells = _class_cells(reg.vertices, aff)
            cls_ids.append(np.asarray(classes, np.int64))
            cls_norms.append(gaps[i][classes] if aff.shape[0] > 1 else np.repeat(gaps[i], len(classes), 0))
            for y, cell in cells:
                fills.append(cell)
                fill_cls.append(y)
                if len(cells) > 1:
                    segs.extend(_boundary_edges(cell, y, aff))
    return SlicePayload(
        polygon=poly,
        layer_sizes=layer_sizes,
        num_logits=int(logits[0].shape[0]),
        vertices=np.concatenate(verts),
        vertex_offsets=_offsets(verts),
        hashes=np.array([_pattern_hash(r.pattern) for r in regions], np.uint32),
        logits=np.stack(logits),
        cand_offsets=_offsets(cand_idx),
        cand_neuron=np.concatenate(cand_idx).astype(np.int64),
        cand_affine=np.concatenate(cand_aff).reshape(-1, 4),
        class_offsets=_offsets(cls_ids),
        class_ids=np.concatenate(cls_ids),
        class_norms=np.concatenate(cls_norms).reshape(-1, logits[0].shape[0]),
        fill_vertices=np.concatenate(fills),
        fill_offsets=_offsets(fills),
        fill_class=np.asarray(fill_cls, np.int64),
        boundary=np.asarray(segs, np.float64).reshape(-1, 4),
    )


def _inside(poly: np.ndarray, u: float, v: float, tol: float = 1e-12) -> bool:
    return bool(_inside_convex(poly, np.array([[u, v]], np.float64), tol)[0])


def payload_values(p: SlicePayload, u: float, v: float) -> dict[str, Any] | None:
    """What the page shows on hovering (u, v), computed in Python from the payload; None outside the polygon.

    Returns a dict with region, hash, cls, logits, margin, neuron (flat index), layer, unit,
    boundary_distance (d_D) and certified (min(margin, d_D) less the certificate's 64-epsilon slack).
    """
    if not _inside(p.polygon, u, v):
        return None
    region = next((r for r in range(len(p.hashes)) if _inside(p.vertices[p.vertex_offsets[r] : p.vertex_offsets[r + 1]], u, v)), None)
    if region is None:
        return None
    aff = p.logits[region]
    f = aff[:, 0] + u * aff[:, 1] + v * aff[:, 2]
    c0, c1 = p.cand_offsets[region : region + 2]
    ca = p.cand_affine[c0:c1]
    terms = np.abs(ca[:, 0] + u * ca[:, 1] + v * ca[:, 2]) / ca[:, 3]
    j = int(np.argmin(terms)) if len(terms) else -1
    margin = float(terms[j]) if len(terms) else math.inf
    neuron = int(p.cand_neuron[c0 + j]) if len(terms) else -1
    cls = int(f[0] > 0) if len(f) == 1 else int(np.argmax(f))
    k0, k1 = p.class_offsets[region : region + 2]
    hit = np.flatnonzero(p.class_ids[k0:k1] == cls)
    d_d = math.nan
    if len(hit):
        n = p.class_norms[k0 + hit[0]]
        m = np.abs(f) if len(f) == 1 else f[cls] - f
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(n > 0, np.maximum(m, 0) / np.where(n > 0, n, 1), np.where(m > 0, np.inf, 0.0))
        d_d = float(d.min() if len(f) == 1 else np.delete(d, cls).min())
    starts = np.cumsum((0, *p.layer_sizes))
    layer = int(np.searchsorted(starts[1:], neuron, side="right")) if neuron >= 0 else -1
    return {
        "region": region,
        "hash": f"{int(p.hashes[region]):08x}",
        "cls": cls,
        "logits": f,
        "margin": margin,
        "neuron": neuron,
        "layer": layer,
        "unit": neuron - int(starts[layer]) if neuron >= 0 else -1,
        "boundary_distance": d_d,
        "certified": math.nan if math.isnan(d_d) else min(margin, d_d) * (1 - _SLACK),
    }


def _b64(x: np.ndarray, dtype: Any) -> str:
    return base64.b64encode(np.ascontiguousarray(x, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()).decode("ascii")


def _encode(p: SlicePayload) -> dict[str, Any]:
    f64, f32, i32 = "<f8", "<f4", "<i4"
    arrays = {
        "vertices": (p.vertices, f64),
        "vertexOffsets": (p.vertex_offsets, i32),
        "hashes": (p.hashes, "<u4"),
        "logits": (p.logits, f64),
        "candOffsets": (p.cand_offsets, i32),
        "candNeuron": (p.cand_neuron, i32),
        "candAffine": (p.cand_affine, f64),
        "classOffsets": (p.class_offsets, i32),
        "classIds": (p.class_ids, i32),
        "classNorms": (p.class_norms, f64),
        "fillVertices": (p.fill_vertices, f32),
        "fillOffsets": (p.fill_offsets, i32),
        "fillClass": (p.fill_class, i32),
        "boundary": (p.boundary, f32),
    }
    out: dict[str, Any] = {k: {"dtype": d[1:], "b64": _b64(x, d)} for k, (x, d) in arrays.items()}
    out.update(numRegions=len(p.hashes), numLogits=p.num_logits, layerSizes=list(p.layer_sizes))
    return out


def _check_models(models: Mapping[str, Any]) -> None:
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be a non-empty mapping name -> (net, params), e.g. {'vanilla': (net, params)}.")
    if len(models) > 2:
        raise ValueError(f"the page compares at most two models on one plane, got {len(models)} ({', '.join(map(str, models))}); pass one or two.")
    for name, m in models.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"model names must be non-empty strings, got {name!r}.")
        if not (isinstance(m, (tuple, list)) and len(m) == 2):
            raise ValueError(f"models[{name!r}] must be a pair (net, params), got {type(m).__name__}.")


def explorer_html(
    models: Mapping[str, tuple[Any, PyTree]],
    x0: jax.Array,
    a: jax.Array,
    b: jax.Array,
    polygon: Sequence[Sequence[float]],
    *,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    max_regions: int = 100_000,
    title: str = "",
) -> str:
    """One self-contained HTML page (no network access) to explore the exact regions of a 2-D slice.

    The page draws the regions of x0 + u a + v b, (u, v) in ``polygon``, coloured by predicted
    class or by activation pattern, the exact decision boundary and the data points, with zoom
    (wheel) and pan (drag). Hovering shows the region, its pattern hash, the predicted class and
    logits, the exact l2 margin in the full input space with its bounding neuron, and the certified
    l2 radius min(margin, d_D) (less the 64-epsilon slack of :func:`lld_jax.certified_radius`).
    ``window.lldExplorer.valuesAt(u, v, name)`` returns the same values to scripts.

    Args:
      models: one or two entries name -> (net, params), shown in turn on the same plane.
      x0, a, b: arrays of one example's shape spanning the slice (float64 for exact values).
      polygon: convex polygon in (u, v).
      points: optional (P, 2) data points in (u, v); labels: optional (P,) integer classes.
      max_regions: per model, as in :func:`lld_jax.slices.enumerate_slice`.
      title: page title.

    Returns:
      The HTML document as a string.
    """
    _check_models(models)
    pts = np.zeros((0, 2)) if points is None else np.asarray(points, np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must be a (P, 2) array of (u, v) coordinates, got shape {pts.shape}.")
    lab = np.full(len(pts), -1) if labels is None else np.asarray(labels)
    if lab.shape != (len(pts),) or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be ({len(pts)},) integers, one per point, got shape {lab.shape} and dtype {lab.dtype}.")
    payloads = {name: slice_payload(net, params, x0, a, b, polygon, max_regions=max_regions) for name, (net, params) in models.items()}
    poly = next(iter(payloads.values())).polygon
    data = {
        "title": title,
        "polygon": poly.tolist(),
        "points": {"uv": _b64(pts, "<f8"), "labels": _b64(lab, "<i4"), "count": len(pts)},
        "models": {name: _encode(p) for name, p in payloads.items()},
    }
    blob = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")  # nothing in the data can close or comment the script
    head, tail = PAGE.split("__DATA__")
    return head.replace("__TITLE__", html.escape(title or "lld_jax region explorer")) + blob + tail

"""Matplotlib figures of linear regions on a 2-D slice (paper Figure 1 style)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lld_jax._src.slices import SliceRegion


def draw_regions(
    ax,
    regions: Sequence[SliceRegion],
    *,
    logit: int | None = 0,
    fill: str | None = "random",
    seed: int = 0,
    edge_width: float = 0.15,
) -> None:
    """Region outlines and fills on a matplotlib axis, plus the exact decision boundary of output ``logit``.

    Args:
      ax: the axis.
      regions: from :func:`~lld_jax.slices.enumerate_slice`.
      logit: output whose zero set is drawn (exact: on each region the logit
        is affine, so its zero set is a segment clipped to the region);
        ``None`` draws no boundary.
      fill: ``"random"`` pastel colours, ``"class"`` the arg-max output at
        each region's centre (tab10 colours), or ``None``.
      seed: of the random colours.
      edge_width: of the region outlines.
    """
    from matplotlib import colormaps
    from matplotlib.collections import LineCollection, PolyCollection

    polys = [r.vertices for r in regions]
    if fill == "random":
        colors = 0.75 + 0.25 * np.random.default_rng(seed).random((len(polys), 3))
    elif fill == "class":
        cmap = colormaps["tab10"]
        colors = [cmap(int(np.argmax(r.out_slope @ r.vertices.mean(0) + r.out_offset)) % 10) for r in regions]
    elif fill is None:
        colors = "none"
    else:
        raise ValueError(f"fill must be 'random', 'class' or None, got {fill!r}.")
    ax.add_collection(PolyCollection(polys, facecolors=colors, edgecolors="0.45", linewidths=edge_width, alpha=0.6 if fill == "class" else 1.0))
    allv = np.concatenate(polys)
    ax.set_xlim(allv[:, 0].min(), allv[:, 0].max())
    ax.set_ylim(allv[:, 1].min(), allv[:, 1].max())
    ax.set_aspect("equal")
    if logit is None:
        return
    segs = []
    for r in regions:
        g, c = r.out_slope[logit], r.out_offset[logit]
        vals = r.vertices @ g + c
        k = len(vals)
        pts = [
            r.vertices[i] + vals[i] / (vals[i] - vals[(i + 1) % k]) * (r.vertices[(i + 1) % k] - r.vertices[i])
            for i in range(k)
            if (vals[i] > 0) != (vals[(i + 1) % k] > 0)
        ]
        if len(pts) == 2:
            segs.append(pts)
    ax.add_collection(LineCollection(segs, colors="k", linewidths=2.0))


def draw_points(
    ax, points: np.ndarray, labels: np.ndarray, *, margins: np.ndarray | None = None, grads: np.ndarray | None = None, arrow_scale: float = 0.1
) -> None:
    """Training points by label, their l2 margin circles and gradient arrows (length proportional to the norm)."""
    from matplotlib.patches import Circle

    ax.scatter(points[:, 0], points[:, 1], c=np.where(labels > 0, "tab:red", "tab:blue"), s=10, zorder=3, edgecolors="k", linewidths=0.3)
    if margins is not None:
        for p, r in zip(points, margins):
            ax.add_patch(Circle(p, r, fill=False, color="tab:green", lw=0.8, zorder=4))
    if grads is not None:
        ax.quiver(
            points[:, 0],
            points[:, 1],
            grads[:, 0],
            grads[:, 1],
            angles="xy",
            scale_units="xy",
            scale=1 / arrow_scale,
            width=0.004,
            color="0.1",
            zorder=5,
        )


def draw_heatmap(ax, predict, box: Sequence[float], n: int = 200) -> None:
    """Prediction heat map of ``predict((n*n, 2) points) -> (n*n,) values`` over ``box = (u0, u1, v0, v1)``."""
    u = np.linspace(box[0], box[1], n)
    v = np.linspace(box[2], box[3], n)
    uu, vv = np.meshgrid(u, v)
    vals = np.asarray(predict(np.stack([uu.ravel(), vv.ravel()], 1))).reshape(n, n)
    ax.imshow(vals, origin="lower", extent=tuple(box), cmap="coolwarm", aspect="equal")
    ax.set_xticks([])
    ax.set_yticks([])

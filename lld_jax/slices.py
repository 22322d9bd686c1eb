"""Exact linear regions on 2-D affine slices of input space, their figures and an interactive page."""

from lld_jax._src.explorer import explorer_html
from lld_jax._src.plotting import draw_heatmap, draw_points, draw_regions
from lld_jax._src.slices import SliceRegion, TooManyRegions, enumerate_slice, locate, polygon_area

__all__ = [
    "SliceRegion",
    "TooManyRegions",
    "draw_heatmap",
    "draw_points",
    "draw_regions",
    "enumerate_slice",
    "explorer_html",
    "locate",
    "polygon_area",
]

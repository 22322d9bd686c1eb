"""Exact linear regions on 2-D affine slices of input space, and their figures."""

from lld_jax._src.plotting import draw_heatmap, draw_points, draw_regions
from lld_jax._src.slices import SliceRegion, TooManyRegions, enumerate_slice, locate, polygon_area

__all__ = ["SliceRegion", "TooManyRegions", "draw_heatmap", "draw_points", "draw_regions", "enumerate_slice", "locate", "polygon_area"]

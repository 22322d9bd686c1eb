"""Gradient explanations and their stability (paper Sec. 5.3, Table 3, Figures 4-6).

:func:`input_gradient` and :func:`integrated_gradients` explain a prediction;
:func:`expected_gradient_distortion` and :func:`max_gradient_distortion` (a
:class:`GradientDistortion`) measure how much the gradient changes in an
l_inf ball, with :func:`sample_linf_ball` drawing its points. All take a
batch.
"""

from lld_jax._src.distortion import (
    GradientDistortion,
    expected_gradient_distortion,
    input_gradient,
    integrated_gradients,
    max_gradient_distortion,
    sample_linf_ball,
)

__all__ = [
    "GradientDistortion",
    "expected_gradient_distortion",
    "input_gradient",
    "integrated_gradients",
    "max_gradient_distortion",
    "sample_linf_ball",
]

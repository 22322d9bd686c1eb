"""lld_jax: robust, locally linear deep networks in JAX (Lee, Alvarez-Melis, Jaakkola, ICLR 2019).

Inference: exact linear-region geometry of piecewise-linear networks
(:func:`margin`, :func:`directional_margin`, :func:`activation_pattern`,
:func:`count_regions`). The network protocol is documented in
:mod:`lld_jax.network`.
"""

from lld_jax.gradients import METHODS, neuron_gradient_norms, neuron_gradients
from lld_jax.margins import (
    Margin,
    directional_margin,
    directional_margin_bisect,
    dual_exponent,
    margin,
    margin_fn,
)
from lld_jax.models import CNN, MLP, RNN, ResNet, resnet18
from lld_jax.network import Network, as_network, from_nnx
from lld_jax.regions import (
    RegionCounts,
    activation_pattern,
    count_regions,
    hull_in_region,
    l1_ball_in_region,
    l1_ball_vertices,
    same_region,
)

__version__ = "0.1.0"

__all__ = [
    "CNN",
    "METHODS",
    "MLP",
    "Margin",
    "Network",
    "RNN",
    "RegionCounts",
    "ResNet",
    "activation_pattern",
    "as_network",
    "count_regions",
    "directional_margin",
    "directional_margin_bisect",
    "dual_exponent",
    "from_nnx",
    "hull_in_region",
    "l1_ball_in_region",
    "l1_ball_vertices",
    "margin",
    "margin_fn",
    "neuron_gradient_norms",
    "neuron_gradients",
    "resnet18",
    "same_region",
]

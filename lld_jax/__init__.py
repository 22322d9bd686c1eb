"""lld_jax: robust, locally linear deep networks in JAX (Lee, Alvarez-Melis, Jaakkola, ICLR 2019).

The top level holds what acts on ONE example: pure JAX functions that
compose with ``jax.jit``, ``jax.vmap``, ``jax.grad`` and ``shard_map``.
:mod:`lld_jax.batched` has every geometry function for batches (generated
from these, checks raised as named errors eagerly).

* Geometry: :func:`margin`, :func:`margin_with_neuron`,
  :func:`directional_margin`, :func:`directional_margin_bisect`,
  :func:`activation_pattern`, :func:`same_region`, :func:`hull_in_region`,
  :func:`l1_ball_in_region` (:func:`l1_ball_vertices`),
  :func:`neuron_gradients`, :func:`neuron_gradient_norms`,
  :func:`stability_bounds`, the certificate self-check
  :func:`check_certificate`, and the robustness radius the regions certify
  :func:`certified_radius`.
* Learning: :func:`roll_penalty`, :func:`roll_penalty_sampled`,
  :func:`distance_penalty` (more in :mod:`lld_jax.losses`; the training
  loop in :mod:`lld_jax.training`).
* Networks: the protocol :class:`Network` / :func:`as_network`
  (:func:`normalized_inputs`), the adapters :func:`from_nnx`,
  :func:`from_linen`, :func:`from_equinox`; :class:`ProtocolError`,
  :class:`CheckError` and :func:`checked`.
* Results: :class:`Margin`, :class:`CertificateCheck`,
  :class:`CertifiedRadius`, :class:`NeuronGradients`, :class:`NeuronGradientNorms`,
  :class:`StabilityBounds`.

Namespaces: :mod:`lld_jax.models` (built-in models, the conv stem, torch
weights), :mod:`lld_jax.layers` (max-pooling and maxout, App. E),
:mod:`lld_jax.attribution` (gradient explanations and their stability,
Sec. 5.3), :mod:`lld_jax.evaluation` (region counts over a data set, table
reports), :mod:`lld_jax.data`, :mod:`lld_jax.training`, :mod:`lld_jax.slices`.
"""

from lld_jax import attribution, batched, data, evaluation, layers, losses, models, slices, training
from lld_jax._src.adapters import from_equinox, from_linen
from lld_jax._src.certify import CertifiedRadius, certified_radius
from lld_jax._src.checks import CheckError, checked
from lld_jax._src.gradients import NeuronGradientNorms, NeuronGradients, neuron_gradient_norms, neuron_gradients
from lld_jax._src.losses import distance_penalty, roll_penalty, roll_penalty_sampled
from lld_jax._src.margins import Margin, directional_margin, directional_margin_bisect, margin, margin_with_neuron
from lld_jax._src.network import Network, ProtocolError, as_network, normalized_inputs
from lld_jax._src.nnx_adapter import from_nnx
from lld_jax._src.regions import activation_pattern, hull_in_region, l1_ball_in_region, l1_ball_vertices, same_region
from lld_jax._src.selfcheck import CertificateCheck, check_certificate
from lld_jax._src.stability import StabilityBounds, stability_bounds

__version__ = "0.3.0"

__all__ = [
    # per-example geometry
    "margin",
    "margin_with_neuron",
    "directional_margin",
    "directional_margin_bisect",
    "activation_pattern",
    "same_region",
    "hull_in_region",
    "l1_ball_in_region",
    "l1_ball_vertices",
    "neuron_gradients",
    "neuron_gradient_norms",
    "stability_bounds",
    "check_certificate",
    "certified_radius",
    # losses
    "roll_penalty",
    "roll_penalty_sampled",
    "distance_penalty",
    # networks: protocol, adapters, checks
    "Network",
    "as_network",
    "normalized_inputs",
    "from_nnx",
    "from_linen",
    "from_equinox",
    "ProtocolError",
    "CheckError",
    "checked",
    # results
    "Margin",
    "CertificateCheck",
    "CertifiedRadius",
    "NeuronGradients",
    "NeuronGradientNorms",
    "StabilityBounds",
    # namespaces
    "attribution",
    "batched",
    "data",
    "evaluation",
    "layers",
    "losses",
    "models",
    "slices",
    "training",
]

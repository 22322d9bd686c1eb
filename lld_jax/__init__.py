"""lld_jax: robust, locally linear deep networks in JAX (Lee, Alvarez-Melis, Jaakkola, ICLR 2019).

The geometry and learning functions here act on ONE example and compose
with ``jax.vmap``, ``jax.jit`` and ``jax.grad`` (the gradient-stability
functions take a batch, :func:`count_regions` a data set); :mod:`lld_jax.batched` holds the same functions
for batches (fast CPU blocking, value errors raised as ``ValueError``).

* Geometry: :func:`margin`, :func:`margin_with_neuron`,
  :func:`directional_margin`, :func:`activation_pattern`, :func:`same_region`,
  :func:`hull_in_region`, :func:`l1_ball_in_region`, :func:`neuron_gradients`,
  :func:`neuron_gradient_norms`, :func:`stability_bounds`, and over a data
  set :func:`count_regions`.
* Learning: :func:`roll_penalty`, :func:`roll_penalty_sampled`,
  :func:`distance_penalty` (more in :mod:`lld_jax.losses`); the training loop
  is in :mod:`lld_jax.training`.
* Gradient stability (paper Sec. 5.3): :func:`input_gradient`,
  :func:`expected_gradient_distortion`, :func:`max_gradient_distortion`,
  :func:`integrated_gradients`.
* Networks: :class:`Network`, :func:`as_network`, :func:`from_nnx`, :func:`from_linen`, :func:`from_equinox`,
  :func:`normalized_inputs`, :class:`ProtocolError` (raised for a function
  that does not follow the protocol),
  :class:`Stem` and :func:`conv_axis_tangent` (a conv net's first layer
  split off for the sampled loss), and the
  built-in models :class:`MLP`, :class:`CNN`, :class:`ResNet`,
  :func:`resnet18`, :class:`RNN`, :class:`ScoRNN` (padded sequences: see
  :func:`lld_jax.data.pad_sequences`).
* Max-pooling and maxout (paper App. E): :func:`max_pool`,
  :func:`max_constraints`, :class:`NeuronRecorder`, :class:`Maxout`,
  :class:`MaxoutMLP`; and the certificate self-check
  :func:`check_certificate`.
"""

from lld_jax import batched, data, evaluation, losses, slices, training
from lld_jax._src.adapters import from_equinox, from_linen
from lld_jax._src.checks import CheckError, checked
from lld_jax._src.distortion import (
    GradientDistortion,
    expected_gradient_distortion,
    input_gradient,
    integrated_gradients,
    max_gradient_distortion,
    sample_linf_ball,
)
from lld_jax._src.gradients import METHODS, neuron_gradient_norms, neuron_gradients
from lld_jax._src.losses import distance_penalty, roll_penalty, roll_penalty_sampled
from lld_jax._src.margins import (
    Margin,
    directional_margin,
    directional_margin_bisect,
    dual_exponent,
    margin,
    margin_with_neuron,
)
from lld_jax._src.models import CNN, INITS, MLP, ResNet, reinitialize, resnet18
from lld_jax._src.network import Network, ProtocolError, as_network, normalized_inputs
from lld_jax._src.nnx_adapter import from_nnx
from lld_jax._src.pooling import MaxConstraints, Maxout, MaxoutMLP, NeuronRecorder, max_constraints, max_pool
from lld_jax._src.recurrent import RNN, ScoRNN, cayley_recurrent
from lld_jax._src.regions import (
    RegionCounts,
    activation_pattern,
    count_regions,
    hull_in_region,
    l1_ball_in_region,
    l1_ball_vertices,
    same_region,
)
from lld_jax._src.selfcheck import CertificateCheck, check_certificate
from lld_jax._src.stability import stability_bounds
from lld_jax._src.stem import Stem, conv_axis_tangent
from lld_jax._src.torch_weights import load_torch_resnet

__version__ = "0.2.0"

__all__ = [
    "sample_linf_ball",
    "max_gradient_distortion",
    "integrated_gradients",
    "input_gradient",
    "expected_gradient_distortion",
    "GradientDistortion",
    "CNN",
    "Stem",
    "conv_axis_tangent",
    "CertificateCheck",
    "CheckError",
    "INITS",
    "METHODS",
    "MLP",
    "Margin",
    "MaxConstraints",
    "Maxout",
    "MaxoutMLP",
    "Network",
    "NeuronRecorder",
    "ProtocolError",
    "RNN",
    "RegionCounts",
    "ResNet",
    "ScoRNN",
    "activation_pattern",
    "as_network",
    "normalized_inputs",
    "batched",
    "cayley_recurrent",
    "check_certificate",
    "checked",
    "count_regions",
    "data",
    "directional_margin",
    "directional_margin_bisect",
    "distance_penalty",
    "dual_exponent",
    "evaluation",
    "from_equinox",
    "from_linen",
    "from_nnx",
    "hull_in_region",
    "l1_ball_in_region",
    "l1_ball_vertices",
    "load_torch_resnet",
    "losses",
    "margin",
    "margin_with_neuron",
    "max_constraints",
    "max_pool",
    "neuron_gradient_norms",
    "neuron_gradients",
    "reinitialize",
    "resnet18",
    "roll_penalty",
    "roll_penalty_sampled",
    "same_region",
    "slices",
    "stability_bounds",
    "training",
]

"""Batched forms of the per-example geometry functions of :mod:`lld_jax`.

Each takes ``x`` with a leading batch axis, ``(B, *input_shape)``, and
returns the per-example results stacked along it. Every function here is
generated from its per-example namesake by one mechanism
(``vectorize(lld_jax.<name>)``): the same arguments, the same kernel, one
``jax.jit`` per configuration, the batch evaluated in cache-sized blocks on
CPU and whole on accelerators, and value checks on every example: eagerly a
failure raises :class:`~lld_jax.CheckError` naming the examples; traced
inside a user's ``jax.jit`` a failed check poisons (NaN), as the
per-example functions do (see :func:`lld_jax.checked`).

Example:
  >>> import jax, jax.numpy as jnp, lld_jax
  >>> f = lambda w, x: (jnp.sum(w @ x), (w @ x,))
  >>> xs = jnp.array([[1.0, 2.0], [-3.0, 0.5]])
  >>> lld_jax.batched.margin(f, jnp.eye(2), xs, p=2).tolist()
  [1.0, 0.5]
"""

from __future__ import annotations

from lld_jax._src import certify as _certify
from lld_jax._src import gradients as _gradients
from lld_jax._src import margins as _margins
from lld_jax._src import regions as _regions
from lld_jax._src import selfcheck as _selfcheck
from lld_jax._src import stability as _stability
from lld_jax._src.kernel import vectorize as _vectorize

margin = _vectorize(_margins.margin)
margin_with_neuron = _vectorize(_margins.margin_with_neuron)
directional_margin = _vectorize(_margins.directional_margin)
directional_margin_bisect = _vectorize(_margins.directional_margin_bisect)
neuron_gradients = _vectorize(_gradients.neuron_gradients)
neuron_gradient_norms = _vectorize(_gradients.neuron_gradient_norms)
activation_pattern = _vectorize(_regions.activation_pattern)
same_region = _vectorize(_regions.same_region)
hull_in_region = _vectorize(_regions.hull_in_region)
l1_ball_in_region = _vectorize(_regions.l1_ball_in_region)
stability_bounds = _vectorize(_stability.stability_bounds)
check_certificate = _vectorize(_selfcheck.check_certificate)
certified_radius = _vectorize(_certify.certified_radius)

__all__ = [
    "activation_pattern",
    "certified_radius",
    "check_certificate",
    "directional_margin",
    "directional_margin_bisect",
    "hull_in_region",
    "l1_ball_in_region",
    "margin",
    "margin_with_neuron",
    "neuron_gradient_norms",
    "neuron_gradients",
    "same_region",
    "stability_bounds",
]

"""Max-pooling and maxout with exposed switching constraints (paper App. E).

A max over several inputs is piecewise linear but switches inside a region
unless its constraints are part of the activation pattern:
:func:`max_pool` / :func:`max_constraints` report them as
:class:`MaxConstraints`, :class:`NeuronRecorder` collects them inside a Flax
model, and :class:`Maxout` / :class:`MaxoutMLP` are maxout units and a maxout
network built on them.
"""

from lld_jax._src.pooling import MaxConstraints, Maxout, MaxoutMLP, NeuronRecorder, max_constraints, max_pool

__all__ = ["MaxConstraints", "Maxout", "MaxoutMLP", "NeuronRecorder", "max_constraints", "max_pool"]

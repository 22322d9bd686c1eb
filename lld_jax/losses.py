"""Regularisers that enlarge linear regions (paper Sec. 2), one example at a time.

Every penalty maps ONE example to a scalar; ``jax.vmap`` it and add
``lam * mean`` to the task loss (see :mod:`lld_jax.training` for a loop that
does it).
"""

from lld_jax._src.losses import (
    GAMMAS,
    aggregate,
    distance_penalty,
    roll_penalty,
    roll_penalty_sampled,
    tsvm_terms,
)

__all__ = ["GAMMAS", "aggregate", "distance_penalty", "roll_penalty", "roll_penalty_sampled", "tsvm_terms"]

"""Demo: exact linear-region margins of a small MLP on built-in 2-D data.

Run: python -m experiments.demo
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import lld_jax


def main() -> None:
    model = lld_jax.MLP(2, [100, 100, 100, 100], 1, rngs=nnx.Rngs(0))
    net, params = lld_jax.from_nnx(model)
    x = jax.random.uniform(jax.random.key(0), (8, 2), minval=-1.0, maxval=1.0)
    res = lld_jax.margin(net, params, x, p=2, return_neuron=True)
    eps1 = lld_jax.margin(net, params, x, p=1)
    epsinf = lld_jax.margin(net, params, x, p="inf")
    t = lld_jax.directional_margin(net, params, x, jnp.array([1.0, 0.0]))
    print(f"{'x':>20} {'l1':>9} {'l2':>9} {'linf':>9} {'dir +e1':>9}  bounding neuron (layer, index)")
    for i in range(x.shape[0]):
        xi = np.asarray(x[i])
        print(f"({xi[0]:+.3f}, {xi[1]:+.3f})".rjust(20), f"{eps1[i]:9.5f} {res.radius[i]:9.5f} {epsinf[i]:9.5f} {t[i]:9.5f}  ({int(res.layer[i])}, {int(res.neuron[i])})")
    print("regions hit by the 8 points:", lld_jax.count_regions(net, params, np.asarray(x)))


if __name__ == "__main__":
    main()

"""Worker for test_training.test_multiprocess_fit_equals_single_process: one of N processes.

Usage: python tests/multiprocess_fit.py RUN_DIR OUT.npz [other-data | bad-labels]  (with JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID set); process 1 passes a differently ordered training split, or 2-D labels.
"""

import json
import sys

import jax
import numpy as np

from lld_jax.training import fit, maybe_initialize_distributed

maybe_initialize_distributed()

from test_training import multiprocess_config, small_problem  # noqa: E402  (after initialize: no devices touched before)

run_dir, out = sys.argv[1], sys.argv[2]
net, params, x, y = small_problem(60)
val = (x[:20], y[:20])
if sys.argv[3:] == ["other-data"] and jax.process_index() == 1:
    x, y = x[::-1], y[::-1]  # the same examples in another order: process 1 would train on a mix of two orders
if sys.argv[3:] == ["bad-labels"] and jax.process_index() == 1:
    y = y[:, None]  # refused by process 1's own checks, before any collective
best, hist = fit(net, params, multiprocess_config(), (x, y), val, run_dir, progress=False)
if jax.process_index() == 0:
    np.savez(out, *[np.asarray(a) for a in jax.tree.leaves(jax.device_get(best))])
    with open(out + ".json", "w") as fh:
        json.dump({"history": hist, "process_count": jax.process_count(), "device_count": jax.device_count()}, fh)

"""Worker for test_training's crash tests: trains a small problem into RUN_DIR, writes OUT.npz at the end.

Usage: python tests/killable_fit.py RUN_DIR OUT.npz
"""

import json
import sys

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)  # as in the test process (conftest)

from test_training import crash_config, small_problem  # noqa: E402

from lld_jax.training import fit  # noqa: E402

run_dir, out = sys.argv[1], sys.argv[2]
net, params, x, y = small_problem(60)
best, hist = fit(net, params, crash_config(), (x, y), (x[:20], y[:20]), run_dir, progress=False)
np.savez(out, *[np.asarray(a) for a in jax.tree.leaves(jax.device_get(best))])
with open(out + ".json", "w") as fh:
    json.dump(hist, fh)

"""Test set-up: float64 available everywhere, 8 fake CPU devices for sharding tests, fast compiles."""

import os

# LLVM's optimisation level 0: the suite is compile-bound (many small programs, each run a few times),
# and level 0 halves its compile time (tests/test_stem.py: 108 s -> 51 s). It only changes how XLA's
# fused loops are lowered to machine code: the HLO optimisations and the matmul library calls stay.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")

import tempfile  # noqa: E402

# Tests read the committed fixtures in tests/data or data they make: never the user's cache, a
# $LLD_JAX_DATA copy or the internet (a call that would download fails at once, no network here).
os.environ.pop("LLD_JAX_DATA", None)
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="lld_jax_test_cache_")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

# Worker scripts run as subprocesses, and the optional-torch reference model: not imported at collection.
collect_ignore = ["data", "fixtures.py", "killable_fit.py", "multiprocess_fit.py", "torch_resnet.py"]

"""Test set-up: float64 available everywhere, 8 fake CPU devices for sharding tests, fast compiles."""

import os

# LLVM's optimisation level 0: the suite is compile-bound (many small programs, each run a few times),
# and level 0 halves its compile time (tests/test_stem.py: 108 s -> 51 s). It only changes how XLA's
# fused loops are lowered to machine code: the HLO optimisations and the matmul library calls stay.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

# Worker scripts run as subprocesses, and the optional-torch reference model: not imported at collection.
collect_ignore = ["killable_fit.py", "multiprocess_fit.py", "torch_resnet.py"]

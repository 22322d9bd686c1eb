"""Test set-up: float64 available everywhere, 8 fake CPU devices for sharding tests."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

# Worker scripts run as subprocesses, and the optional-torch reference model: not imported at collection.
collect_ignore = ["killable_fit.py", "multiprocess_fit.py", "torch_resnet.py"]

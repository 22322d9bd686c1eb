"""Test set-up: float32 by default as users run, float64 where a test opts in, 8 fake CPU devices, fast compiles."""

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

# Worker scripts run as subprocesses, and the optional-torch reference model: not imported at collection.
collect_ignore = ["data", "fixtures.py", "killable_fit.py", "multiprocess_fit.py", "torch_resnet.py"]


import pytest  # noqa: E402


def _mapped_regions() -> int:
    try:
        with open("/proc/self/maps", "rb") as fh:
            return fh.read().count(b"\n")
    except OSError:  # not Linux: no per-process map limit to watch
        return 0


def _map_budget() -> int:
    try:
        with open("/proc/sys/vm/max_map_count") as fh:
            return int(fh.read()) // 2
    except (OSError, ValueError):
        return 32765


_MAP_BUDGET = _map_budget()


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "float64: run with jax_enable_x64 on, for exactness against float64 references (brute force, linear programs, "
        "1e-10 agreement); unmarked tests run in float32 with JAX's defaults, the precision users run",
    )


@pytest.fixture(autouse=True)
def _precision(request):
    """float32 unless the test is marked ``float64`` (autouse, so it wraps every other fixture the test builds)."""
    with jax.enable_x64(request.node.get_closest_marker("float64") is not None):
        yield
    # Nothing may leave x64 on for the next test, nor for the doctests under lld_jax/ (the experiments
    # that need float64 use the jax.enable_x64 context, not the global switch).
    assert not jax.config.jax_enable_x64, "a test or the code it ran turned jax_enable_x64 on globally"


@pytest.fixture(autouse=True)
def _release_compiled_programs():
    """Drop every compiled program once this process holds half of Linux's memory-map limit.

    XLA:CPU maps about nine memory regions per loaded executable and keeps them while the
    executable is cached; a pytest worker that compiled ~7000 programs reached the default
    ``vm.max_map_count`` (65530) and died inside the compiler (a segfault or an abort, at a
    different test each run). Clearing only when needed keeps the programs tests share.
    """
    yield
    if _mapped_regions() > _MAP_BUDGET:
        jax.clear_caches()

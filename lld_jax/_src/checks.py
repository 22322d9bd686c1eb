"""Input checks that behave the same eagerly, under ``jax.jit``, ``vmap`` and ``grad``.

Two layers make a wrong certificate impossible to miss:

* **Poisoning in the maths** (always on, free): a non-finite input or parameter
  makes every margin NaN (never a finite, plausible radius).
* **Value checks** (``check=True``, the default of every public geometry
  function): non-finite inputs or parameters, networks that are not
  piecewise linear, and declarations that are not the network, at ANY
  example of the call. Called eagerly (concrete arrays, e.g. every
  :mod:`lld_jax.batched` call outside ``jit``), a failure raises
  :class:`CheckError` (a ``ValueError``) naming the problem and the examples:
  the checks run as their own compiled function, which returns one flag per
  check to the host. Traced (inside a user's ``jit``, ``vmap``, ``grad``),
  the functions stay pure: a failed check poisons its result (NaN, never a
  plausible number) and no host callback is emitted. A user who wants the
  named error raised from inside their own ``jit`` wraps the traced function
  in :func:`checked` (one host callback per check; the error then surfaces as
  a ``jax.errors.JaxRuntimeError`` holding the same text).

Shape, dtype and protocol checks are static: they run at trace time, always.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lld_jax._src.declarations import Probe, declaration_mismatch, declared_names
from lld_jax._src.declarations import probe as probe_network
from lld_jax._src.network import Network, PyTree, hidden_shapes
from lld_jax._src.poison import float_leaves, not_finite, poison_where

Array = jax.Array
# Marks our messages so that batched functions can re-raise them from a JaxRuntimeError.
MARK = "[lld_jax] "


class CheckError(ValueError):
    """A value check of lld_jax failed (non-finite input or parameter, network not piecewise linear)."""


class _QuietFailedChecks(logging.Filter):
    # JAX logs every exception raised in a callback with its traceback; ours are
    # expected errors that reach the caller with a clear message, so skip the log.
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, CheckError)


logging.getLogger("jax._src.callback").addFilter(_QuietFailedChecks())


def _format(msg: str, bad: np.ndarray) -> str:
    if bad.ndim == 0:
        return MARK + msg.format(where="")
    idx = np.flatnonzero(bad.reshape(-1))
    shown = ", ".join(str(i) for i in idx[:5]) + (", ..." if len(idx) > 5 else "")
    return MARK + msg.format(where=f" at example(s) {shown} of the batch")


def _host_check(bad: np.ndarray, msg: str) -> np.ndarray:
    bad = np.asarray(bad)
    if bad.any():
        raise CheckError(_format(msg, bad))
    return np.zeros(bad.shape, np.bool_)


# How a failed check inside a trace behaves: poison (default), raise through a host callback
# (inside :func:`checked`, and for the eager calls' internal checks), or, while the eager value
# checks are traced, be collected so that its flag is returned to the host.
_RAISING: contextvars.ContextVar[bool] = contextvars.ContextVar("lld_jax_raising", default=False)
_COLLECT: contextvars.ContextVar[list | None] = contextvars.ContextVar("lld_jax_collect", default=None)


def error_if(x: Array, bad: Array, msg: str) -> Array:
    """Returns ``x``; a failed check (any ``bad``) raises ``msg`` or poisons ``x`` with NaN.

    ``bad`` is a scalar or a vector with one flag per example (named in the
    message through ``{where}``). On concrete arrays the error is raised at
    once. On tracers the result is poisoned (NaN where ``bad``), unless the
    trace runs inside :func:`checked` (or an eager call's internal checks),
    where a host callback raises when the compiled code runs.
    """
    bad = jax.lax.stop_gradient(bad)
    if not isinstance(bad, jax.core.Tracer):
        _host_check(np.asarray(bad), msg)
        return x
    collected = _COLLECT.get()
    if collected is not None:
        collected.append((bad, msg))
        return x
    if not _RAISING.get():
        return poison_where(x, bad)
    spec = jax.ShapeDtypeStruct(bad.shape, jnp.bool_)
    flag = jax.pure_callback(lambda b: _host_check(b, msg), spec, bad, vmap_method="broadcast_all")
    # Tie the callback to the data path so that it is never dead-code eliminated.
    return poison_where(x, jnp.any(flag))


def checked(fn: Callable) -> Callable:
    """``fn`` with lld_jax's failed checks raised from inside a trace, instead of poisoning results with NaN.

    The lld_jax functions traced while ``fn`` runs (e.g. under the user's
    ``jax.jit``) carry one host callback per check, which raises when the
    compiled code runs; the error surfaces as a ``jax.errors.JaxRuntimeError``
    whose message holds the :class:`CheckError` text. The cost is a device to
    host round trip per check per call (measured in ``benchmarks/run.py``).
    Without it, traced calls are pure: a failed check gives NaN.

    Example:
      >>> import jax, jax.numpy as jnp, lld_jax
      >>> f = lambda w, x: (jnp.sum(w @ x), (w @ x,))
      >>> safe = jax.jit(lld_jax.checked(lambda w, x: lld_jax.margin(f, w, x)))
      >>> float(safe(jnp.eye(2), jnp.array([1.0, -2.0])))
      1.0
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        token = _RAISING.set(True)
        try:
            return fn(*args, **kwargs)
        finally:
            _RAISING.reset(token)

    return wrapper


@dataclasses.dataclass(frozen=True)
class Checks:
    """The static checking mode of one kernel call: run the value checks? raise (host callback) or poison?

    Truthy when the value checks run, so kernels keep ``if check:``.
    """

    values: bool
    raising: bool

    def __bool__(self) -> bool:
        return self.values


def reraise(err: Exception) -> None:
    """Re-raises a failed check that surfaced as a runtime error as the ``ValueError`` it is."""
    text = str(err)
    if MARK in text:
        line = next(line for line in text.splitlines() if MARK in line)
        raise CheckError(line[line.index(MARK) :]) from err


def working_dtype(params: PyTree, x: Array) -> Any:
    """The floating dtype margins are computed in: at least float32, and that of the parameters.

    Half-precision inputs are promoted (a float16 margin is no certificate);
    float32 inputs to a float64 network are promoted to float64.
    """
    dt = jnp.result_type(jnp.float32, *(jnp.result_type(a) for a in float_leaves(params)), jnp.result_type(x))
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"x and the parameters must be real floating point arrays; got dtype {dt}.")
    return dt


def example_shape(net: Network, x: Array, *, batched: bool) -> tuple[int, ...]:
    """Shape of one example of ``x`` (a batch when ``batched``), checked against the network."""
    if batched:
        if x.ndim == 0:
            raise ValueError("x must be a batch of examples with a leading batch axis; got a scalar.")
        if x.shape[0] == 0:
            raise ValueError(f"x is an empty batch (shape {x.shape}); pass at least one example.")
    shape = tuple(x.shape[1:]) if batched else tuple(x.shape)
    if net.input_shape is not None and shape != tuple(net.input_shape):
        if batched:
            what = f"x has shape {x.shape}, read as a batch (batch axis first); for one example pass x[None]"
        else:
            what = f"x has shape {x.shape}, read as ONE example (no batch axis); for a batch use lld_jax.batched.*"
        raise ValueError(f"input shape mismatch: the network takes examples of shape {tuple(net.input_shape)}, but {what}.")
    return shape


def prepare(net: Network, params: PyTree, x: Any, *, batched: bool) -> tuple[Array, tuple[tuple[int, ...], ...]]:
    """Static checks: returns ``x`` cast to the working dtype and the hidden shapes."""
    try:
        x = jnp.asarray(x)
    except TypeError as err:
        raise ValueError(f"x must be a numeric array (floating point); got {type(x).__name__} that JAX cannot convert: {err}") from err
    x = x.astype(working_dtype(params, x))
    shape = example_shape(net, x, batched=batched)
    return x, hidden_shapes(net, params, shape, x.dtype)


def _curvature(ref: Probe, dtype: Any) -> tuple[Array, Array]:
    """Of one example's probe: is the second directional derivative of (output, preacts) non-zero?

    A piecewise-linear map has zero second derivative almost everywhere, and
    JAX's derivatives of relu/leaky_relu/abs/max are exactly zero there; tanh,
    GELU or a softmax inside the network are not.
    """
    # Exactly zero for affine maps and piecewise-linear activations (JAX differentiates their
    # kinks as steps), so any non-zero value is curvature, whatever the network's scale.
    amax = lambda t: jnp.max(
        jnp.stack([jnp.max(jnp.abs(a)) for a in jax.tree.leaves(t)] + [jnp.zeros((), dtype)])
    )  # x's dtype: an empty output has no leaves
    return amax(ref.curve[0]) > 0, amax(ref.curve[1]) > 0


def check_values(net: Network, params: PyTree, x: Array, *, batched: bool, name: str = "x", probe: bool = True) -> Array:
    """The value checks of one call; returns ``x`` (tied to the checks).

    Non-finite ``x`` (per example), non-finite parameters, and a non-zero
    second derivative of the network at any example of ``x``.
    """
    axes = tuple(range(1, x.ndim)) if batched else None
    x = error_if(x, ~jnp.all(jnp.isfinite(x), axis=axes), f"{name} contains NaN or Inf{{where}}; margins are only defined for finite inputs.")
    x = error_if(
        x,
        not_finite(params),
        "the parameters contain NaN or Inf{where}: the network's regions are undefined. Check the checkpoint or the training run that produced them.",
    )
    names = declared_names(net)
    each = jax.vmap if batched else lambda f: f
    # One nested JVP per example serves the declaration checks and the curvature probe.
    ref = each(lambda u: probe_network(net, params, u, second=probe))(x) if names or probe else None
    if names:
        mismatch = each(lambda u, r: declaration_mismatch(net, params, u, r))(x, ref)
        x = error_if(
            x,
            mismatch,
            f"the network's declared structure ({names}) does not reproduce its own pre-activations{{where}}: the fast paths "
            "would compute on the declaration, not on the network. Fix the declaration (e.g. a LeakyReLU model must declare "
            "negative_slope; dense_layers must return the module's own weights), or drop it (as_network(apply) alone).",
        )
    if probe:
        out_bent, pre_bent = each(lambda r: _curvature(r, x.dtype))(ref)
        advice = (
            "lld_jax needs affine maps and piecewise-linear activations only (ReLU, LeakyReLU, abs, "
            "max-pooling); remove tanh, GELU, sigmoid or softmax from inside the network (put softmax in the loss)."
        )
        x = error_if(x, out_bent, "the network is not piecewise linear: its output has a non-zero second derivative{where}. " + advice)
        x = error_if(x, pre_bent, "the network is not piecewise linear: its preacts have a non-zero second derivative{where}. " + advice)
    return x


def check_finite_array(a: Array, name: str, *, batched: bool = False) -> Array:
    """Raises (under the same rules as :func:`error_if`) if ``a`` holds NaN or Inf; returns ``a``."""
    axes = tuple(range(1, a.ndim)) if batched and a.ndim > 0 else None
    return error_if(a, ~jnp.all(jnp.isfinite(a), axis=axes), f"{name} contains NaN or Inf{{where}}.")


# The messages of each compiled value check, recorded when it is traced (in flag order).
_MESSAGES: dict[Any, list[str]] = {}


def _messages_key(net, names, batched, xname, x, extras) -> tuple:
    return (net, names, batched, xname, tuple(x.shape), str(x.dtype), tuple((tuple(a.shape), str(a.dtype)) for a in extras))


def _collect_checks(net: Network, params: PyTree, x: Array, extras: tuple, names: tuple, batched: bool, xname: str) -> list:
    """``[(flag, message), ...]`` of every value check of one call (traced)."""
    collected: list = []
    token = _COLLECT.set(collected)
    try:
        check_values(net, params, x, batched=batched, name=xname)
        for name, a in zip(names, extras):
            check_finite_array(a, name, batched=batched)
    finally:
        _COLLECT.reset(token)
    return collected


@functools.partial(jax.jit, static_argnames=("net", "names", "batched", "xname"))
def _value_flags(net: Network, params: PyTree, x: Array, extras: tuple, *, names: tuple, batched: bool, xname: str) -> list[Array]:
    """Every value check of one call as a flag (scalar, or one per example) for the host; no callback."""
    collected = _collect_checks(net, params, x, extras, names, batched, xname)
    _MESSAGES[_messages_key(net, names, batched, xname, x, extras)] = [msg for _, msg in collected]
    return [bad for bad, _ in collected]


def _messages(net: Network, params: PyTree, x: Array, extras: tuple, names: tuple, batched: bool, xname: str) -> list[str]:
    key = _messages_key(net, names, batched, xname, x, extras)
    if key not in _MESSAGES:  # compiled under a key that has changed since (a closure's captured value): trace again, abstractly
        msgs: list[str] = []
        jax.eval_shape(lambda p, u, e: msgs.extend(m for _, m in _collect_checks(net, p, u, e, names, batched, xname)), params, x, extras)
        _MESSAGES[key] = msgs
    return _MESSAGES[key]


def eager_value_checks(net: Network, params: PyTree, x: Array, extras: dict | None = None, *, batched: bool, xname: str = "x") -> None:
    """Runs the value checks of one eager call and raises :class:`CheckError` for the first that fails."""
    extras = extras or {}
    names, arrays = tuple(extras), tuple(extras.values())
    flags = jax.device_get(_value_flags(net, params, x, arrays, names=names, batched=batched, xname=xname))
    for bad, msg in zip(flags, _messages(net, params, x, arrays, names, batched, xname), strict=True):
        _host_check(np.asarray(bad), msg)


def run_checked(fn, net: Network, params: PyTree, x: Array, *rest, check: bool, batched: bool, extras: dict | None = None, xname: str = "x", **kw):
    """Calls a jitted kernel ``fn(net, params, x, *rest, check=Checks(...), batched=..., **kw)``.

    Eagerly (concrete arrays) the value checks run first, as their own
    compiled function returning flags (compiled once per network and input
    shape, whichever kernel follows), and a failure raises
    :class:`CheckError` here; the kernel then runs without value checks, its
    internal checks (e.g. ``method="rowspace"``'s structure test, the
    certificate self-check) raising named errors. Under a trace the kernel
    carries the value checks itself (``check=True``) and poisons, or raises
    inside :func:`checked`. ``extras`` maps names to further arrays that must
    be finite. Everything is traced with ``jax.default_matmul_precision("highest")``.
    """
    extras = extras or {}
    tracing = any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves((params, x, rest, tuple(extras.values()))))
    mode = Checks(values=bool(check), raising=_RAISING.get()) if tracing else Checks(values=False, raising=True)
    token = _RAISING.set(mode.raising)
    try:
        # Certificates need full-precision products: GPUs default to TF32 and TPUs to bf16 passes
        # for float32 matmuls and convolutions, which would move margins by ~1e-3 relative.
        with jax.default_matmul_precision("highest"):
            if check and not tracing:
                eager_value_checks(net, params, x, extras, batched=batched, xname=xname)
            return fn(net, params, x, *rest, check=mode, batched=batched, **kw)
    except Exception as err:  # XLA wraps a callback's exception in its own type; recover ours
        reraise(err)
        raise
    finally:
        _RAISING.reset(token)

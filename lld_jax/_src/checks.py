"""Input checks that behave the same eagerly, under ``jax.jit``, ``vmap`` and ``grad``.

Two layers make a wrong certificate impossible to miss:

* **Poisoning in the maths** (always on, free): a non-finite input or parameter
  makes every margin NaN (never a finite, plausible radius).
* **Value checks** (``check=True``, the default of every public geometry
  function): non-finite inputs or parameters, and networks that are not
  piecewise linear at ANY example of the call, raise ``ValueError``. With
  concrete arrays outside ``jit`` the error is raised at once; inside a
  traced computation the check becomes one device-side reduction and one
  host callback that raises when it fails (the error then surfaces as a
  ``jax.errors.JaxRuntimeError`` whose message holds the same text; the
  batched functions, called outside ``jit``, re-raise it as ``ValueError``;
  inside a user's ``jit`` it stays a ``JaxRuntimeError``).

Shape, dtype and protocol checks are static: they run at trace time, always.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lld_jax._src.declarations import declaration_mismatch, declared_names
from lld_jax._src.network import Network, PyTree, hidden_shapes

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


def error_if(x: Array, bad: Array, msg: str) -> Array:
    """Returns ``x``; raises ``msg`` if any element of ``bad`` is True.

    ``bad`` is a scalar or a vector with one flag per example (named in the
    message through ``{where}``). Works on concrete arrays (raises at once) and
    on tracers (a host callback raises when the compiled code runs), under
    ``jit``, ``vmap`` and ``grad``.
    """
    bad = jax.lax.stop_gradient(bad)
    if not isinstance(bad, jax.core.Tracer):
        _host_check(np.asarray(bad), msg)
        return x
    spec = jax.ShapeDtypeStruct(bad.shape, jnp.bool_)
    flag = jax.pure_callback(lambda b: _host_check(b, msg), spec, bad, vmap_method="broadcast_all")
    # Tie the callback to the data path so that it is never dead-code eliminated.
    return jnp.where(jnp.any(flag), jnp.full_like(x, jnp.nan), x)


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
    dt = jnp.result_type(jnp.float32, *(jnp.result_type(a) for a in _float_leaves(params)), jnp.result_type(x))
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
    x = jnp.asarray(x)
    x = x.astype(working_dtype(params, x))
    shape = example_shape(net, x, batched=batched)
    return x, hidden_shapes(net, params, shape, x.dtype)


def _curvature(net: Network, params: PyTree, x: Array) -> tuple[Array, Array]:
    """Per example: is the second directional derivative of (output, preacts) non-zero?

    A piecewise-linear map has zero second derivative almost everywhere, and
    JAX's derivatives of relu/leaky_relu/abs/max are exactly zero there; tanh,
    GELU or a softmax inside the network are not.
    """
    v = jax.random.normal(jax.random.key(0), x.shape, x.dtype)
    first = lambda u: jax.jvp(lambda w: net.apply(params, w), (u,), (v,))[1]
    d1, d2 = jax.jvp(first, (x,), (v,))
    amax = lambda t: jnp.max(jnp.stack([jnp.max(jnp.abs(a)) for a in jax.tree.leaves(t)] + [jnp.zeros((), x.dtype)]))
    # Exactly zero for affine maps and piecewise-linear activations (JAX differentiates their
    # kinks as steps), so any non-zero value is curvature, whatever the network's scale.
    bent = lambda i: amax(d2[i]) > 0
    return bent(0), bent(1)


def _float_leaves(tree: PyTree) -> list[Array]:
    return [a for a in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(a), jnp.inexact)]


def not_finite(tree: PyTree) -> Array:
    """Scalar: does any floating leaf of ``tree`` hold NaN or Inf?"""
    return jnp.any(jnp.stack([~jnp.all(jnp.isfinite(a)) for a in _float_leaves(tree)] + [jnp.zeros((), bool)]))


def poison(result: Array, *trees: PyTree) -> Array:
    """``result`` (one example's float) turned NaN when any of ``trees`` holds NaN or Inf.

    Applied to every margin, with or without checks: a certificate computed
    from non-finite inputs or parameters is never finite. The parameter test
    is unbatched (computed once per call).
    """
    return jnp.where(jnp.any(jnp.stack([not_finite(t) for t in trees])), jnp.nan, result)


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
    if names:
        mismatch = (jax.vmap if batched else lambda f: f)(lambda u: declaration_mismatch(net, params, u))(x)
        x = error_if(
            x,
            mismatch,
            f"the network's declared structure ({names}) does not reproduce its own pre-activations{{where}}: the fast paths "
            "would compute on the declaration, not on the network. Fix the declaration (e.g. a LeakyReLU model must declare "
            "negative_slope; dense_layers must return the module's own weights), or drop it (as_network(apply) alone).",
        )
    if probe:
        out_bent, pre_bent = (jax.vmap if batched else lambda f: f)(lambda u: _curvature(net, params, u))(x)
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


@functools.partial(jax.jit, static_argnames=("net", "names", "batched", "xname"))
def _eager_checks(net: Network, params: PyTree, x: Array, extras: tuple, *, names: tuple, batched: bool, xname: str) -> Array:
    x = check_values(net, params, x, batched=batched, name=xname)
    flags = [jnp.zeros((), bool)]
    for name, a in zip(names, extras):
        flags.append(jnp.any(jnp.isnan(check_finite_array(a, name, batched=batched))))
    return jnp.any(jnp.stack(flags)) | jnp.any(jnp.isnan(x))


def run_checked(fn, net: Network, params: PyTree, x: Array, *rest, check: bool, batched: bool, extras: dict | None = None, xname: str = "x", **kw):
    """Calls a jitted kernel ``fn(net, params, x, *rest, check=..., batched=..., **kw)`` with the value checks.

    Eagerly (concrete arrays) the checks run first, as their own compiled
    function (compiled once per network and input shape, whichever kernel
    follows), and a failure raises :class:`CheckError` here; the kernel then
    runs unchecked and asynchronously. Under a trace the kernel carries the
    checks itself. ``extras`` maps names to further arrays that must be finite.
    Everything is traced with ``jax.default_matmul_precision("highest")``.
    """
    extras = extras or {}
    tracing = any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves((params, x, rest, tuple(extras.values()))))
    try:
        # Certificates need full-precision products: GPUs default to TF32 and TPUs to bf16 passes
        # for float32 matmuls and convolutions, which would move margins by ~1e-3 relative.
        with jax.default_matmul_precision("highest"):
            if check and not tracing:
                jax.block_until_ready(_eager_checks(net, params, x, tuple(extras.values()), names=tuple(extras), batched=batched, xname=xname))
                check = False
            return fn(net, params, x, *rest, check=check, batched=batched, **kw)
    except Exception as err:  # XLA wraps a callback's exception in its own type; recover ours
        reraise(err)
        raise

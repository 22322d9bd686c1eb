"""One mechanism for every per-example geometry function and its batched form.

A :class:`Kernel` pairs a host-side ``plan`` (argument checks, method and
chunk choice: static, cheap, raising ``ValueError``) with a pure per-example
``body``. Calling it runs, in order: the protocol and shape checks
(:func:`~lld_jax._src.checks.prepare`), the plan, then
:func:`~lld_jax._src.checks.run_checked`: eagerly, the value checks as their
own compiled function returning flags (named errors), then the kernel;
traced, the kernel alone, carrying the value checks (poison). The kernel is
one compiled function (:func:`_run`): the body on one example or mapped over
a batch (vmap, or blocks of examples on CPU), and an optional ``finish`` over
the stacked results.

The same kernel serves both layers: a public per-example function calls it;
:func:`vectorize` turns that function into its batched form (every
:mod:`lld_jax.batched` function is ``vectorize(lld_jax.<name>)``), so the two
cannot drift apart. The compiled code is keyed on the network's stable
identity (:class:`~lld_jax.Network`), the kernel and the plan's static
options; the inner ``jax.jit`` costs nothing under a user's own ``jit``
(nested jits are inlined) and gives eager calls one compilation per shape.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from lld_jax._src.checks import check_finite_array, check_values, prepare, run_checked
from lld_jax._src.declarations import verified_at
from lld_jax._src.network import as_network

Array = jax.Array

# Examples per vectorised block in inference kernels on CPU: with the whole batch
# at once the (B, N, r) tangent blocks spill out of cache (gram margins on the
# MNIST net, batch 256: 1.6x faster in blocks of 16). Accelerators take the batch whole.
CPU_EXAMPLE_BLOCK = 16

# Set by :func:`vectorize` around a public function: its kernel then reads x (and its mapped
# arguments) with a leading batch axis. Reset while the kernel runs, so bodies never see it.
_BATCHED: contextvars.ContextVar[bool] = contextvars.ContextVar("lld_jax_batched", default=False)


class Plan(NamedTuple):
    """A kernel's arguments after the host-side checks.

    Attributes:
      mapped: arrays with one entry per example (a leading batch axis when
        batched), passed to the body after ``x``.
      shared: arrays every example shares (traced, not mapped), passed after ``mapped``.
      static: ``(name, value)`` pairs of hashable compile-time options, passed to
        the body (and ``finish``) as keywords.
      names: one name per ``mapped`` array: a non-empty name makes it a checked
        input (finite, named in the error), ``""`` leaves it unchecked.
    """

    mapped: tuple = ()
    shared: tuple = ()
    static: tuple = ()
    names: tuple = ()


@dataclasses.dataclass(frozen=True, eq=False)
class Kernel:
    """A per-example geometry function: ``plan`` on the host, ``body`` per example, ``finish`` on the results.

    Attributes:
      body: ``(net, params, x, *mapped, *shared, **static) -> result`` of ONE example (pure).
      plan: ``(net, params, x, hidden, *inputs, batched, **options) -> Plan``;
        raises ``ValueError`` for bad options.
      finish: ``(result, *, check, **static) -> result``, applied once to the
        whole (stacked) result; ``check`` is the call's
        :class:`~lld_jax._src.checks.Checks`.
      block: map costly bodies over a batch in blocks of
        :data:`CPU_EXAMPLE_BLOCK` examples on CPU (else one ``vmap``).
      xname: the name of ``x`` in error messages.
    """

    body: Callable
    plan: Callable
    finish: Callable | None = None
    block: bool = True
    xname: str = "x"

    def __call__(self, apply_fn: Any, params: Any, x: Any, *inputs: Any, check: bool = True, **options: Any) -> Any:
        batched = _BATCHED.get()
        token = _BATCHED.set(False)
        try:
            net = as_network(apply_fn)
            x, hidden = prepare(net, params, x, batched=batched)
            plan = self.plan(net, params, x, hidden, *inputs, batched=batched, **options)
            extras = {name: a for name, a in zip(plan.names, plan.mapped) if name}
            return run_checked(
                _run,
                net,
                params,
                x,
                plan.mapped,
                plan.shared,
                kernel=self,
                static=plan.static,
                names=plan.names,
                check=check,
                batched=batched,
                extras=extras,
                xname=self.xname,
            )
        finally:
            _BATCHED.reset(token)


def map_examples(fn: Callable, *xs: Array, block: bool = True) -> Any:
    """``jax.vmap(fn)(*xs)``; on CPU in blocks of :data:`CPU_EXAMPLE_BLOCK` examples (``lax.map``) when ``block``."""
    if not block or jax.default_backend() != "cpu" or xs[0].shape[0] <= CPU_EXAMPLE_BLOCK:
        return jax.vmap(fn)(*xs)
    return jax.lax.map(lambda a: fn(*a), xs, batch_size=CPU_EXAMPLE_BLOCK)


@functools.partial(jax.jit, static_argnames=("net", "kernel", "static", "names", "check", "batched"))
def _run(net, params, x, mapped, shared, *, kernel: Kernel, static: tuple, names: tuple, check, batched: bool):
    if check:
        x = check_values(net, params, x, batched=batched, name=kernel.xname)
        mapped = tuple(check_finite_array(a, name, batched=batched) if name else a for a, name in zip(mapped, names))
    kw = dict(static)

    def one(xi, *mi):
        # The value checks just traced covered the declarations at xi: the body's fast paths need not verify them
        # again. Only here, in the same trace: an eager kernel compiles apart from the cached eager checks, and a
        # network reading mutable state could have changed in between (a stale pass).
        with verified_at(xi) if check else contextlib.nullcontext():
            return kernel.body(net, params, xi, *mi, *shared, **kw)

    out = map_examples(one, x, *mapped, block=kernel.block) if batched else one(x, *mapped)
    return out if kernel.finish is None else kernel.finish(out, check=check, **kw)


def vectorize(fn: Callable) -> Callable:
    """The batched form of a public per-example function built on :class:`Kernel`.

    ``x`` (and each per-example argument) gains a leading batch axis; results
    are stacked along it. Same arguments, same checks (a failure names the
    examples of the batch), same compiled-code reuse.
    """

    @functools.wraps(fn)
    def batched(*args: Any, **kwargs: Any) -> Any:
        token = _BATCHED.set(True)
        try:
            return fn(*args, **kwargs)
        finally:
            _BATCHED.reset(token)

    if isinstance(fn, Kernel):  # a private kernel called directly: no public docs to derive
        return batched
    summary = (fn.__doc__ or "").strip().splitlines()[0]
    batched.__doc__ = (
        f":func:`lld_jax.{fn.__name__}` of every example of a batch.\n\n"
        f"Per example: {summary}\n\n"
        "``x`` is ``(B, *input_shape)``; the per-example arguments take a leading batch "
        "axis too (or are shared where the per-example function says so); every result "
        f"gains a leading ``B`` axis. Arguments and checks as in :func:`lld_jax.{fn.__name__}`; "
        "a failed value check raises :class:`~lld_jax.CheckError` naming the examples."
    )
    batched.__wrapped__ = fn
    batched.__module__ = "lld_jax.batched"
    return batched

"""Validation of the plain Python arguments of public functions (sizes, counts, orders)."""

from __future__ import annotations

import numbers
from typing import Any


def positive_int(value: Any, name: str, *, minimum: int = 1, allow_none: bool = False) -> int | None:
    """``value`` as a Python ``int`` >= ``minimum`` (NumPy integers accepted, bools and floats refused).

    Returns a plain ``int`` so that it can serve as a static ``jax.jit``
    argument; ``None`` passes through when ``allow_none``.

    Raises:
      ValueError: naming ``name`` and what it got.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        need = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {need}{' or None' if allow_none else ''}, got {value!r}.")
    return int(value)

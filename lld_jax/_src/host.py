"""Host-side utilities: padding batches, epoch order, atomic JSON files."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np


def pad_rows(x: np.ndarray, size: int) -> np.ndarray:
    """Pads a host batch to ``size`` rows with copies of its first row (one compiled shape);
    callers mask or drop the padded results."""
    n = len(x)
    return x if n >= size else np.concatenate([x, np.repeat(x[:1], size - n, axis=0)])


def round_up(n: int, k: int) -> int:
    """The smallest multiple of ``k`` that is >= ``n``."""
    return int(math.ceil(n / k) * k)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """Deterministic shuffle of epoch ``epoch`` (so a resumed run replays it exactly)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def atomic_write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` atomically: a crash leaves the old file or the new one, never half."""
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json(path: str, obj: Any) -> None:
    """Writes ``obj`` to ``path`` as indented JSON (``str`` for what JSON lacks), atomically: a crash leaves the old file or the new one."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=str))


def read_json(path: str) -> Any:
    """The JSON in ``path``; a corrupt file raises one ``ValueError`` naming it."""
    with open(path) as fh:
        try:
            return json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not valid JSON ({err}); the file is corrupt: delete it or the run directory holding it.") from err

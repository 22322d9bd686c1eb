"""A run directory that knows what it holds: its config, and per-epoch metrics.

Layout::

    run_dir/config.json        everything needed to resume and rebuild the run
    run_dir/metrics.jsonl      one JSON object per finished epoch
    run_dir/checkpoints/       Orbax checkpoints (see :mod:`checkpoints`)

Crash safety: ``config.json`` is written atomically once everything has been
validated; each metrics line is appended and synced before the epoch's
checkpoint is saved, and lines of epochs newer than the restored checkpoint are
dropped (atomically) on resume, since those epochs are replayed exactly.
"""

from __future__ import annotations

import json
import os
from typing import Any

from lld_jax._src.host import atomic_write_text, read_json, write_json

CONFIG = "config.json"
METRICS = "metrics.jsonl"


def _diff(old: Any, new: Any, prefix: str = "", defaults: dict[str, Any] | None = None) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            missing = (defaults or {}).get(f"{prefix}{k}", "<missing>")
            out += _diff(old.get(k, missing), new.get(k, "<missing>"), f"{prefix}{k}.", defaults)
        return out
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


class RunDir:
    """One run's directory. ``mutable`` names the config keys (dotted) that may change on resume."""

    def __init__(self, path: str, *, write: bool = True):
        self.path = path
        self.write = write  # False on every process but the first of a multi-process run

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def stored_config(self) -> dict | None:
        """The recorded config, or None for a new run."""
        return read_json(self.file(CONFIG)) if os.path.exists(self.file(CONFIG)) else None

    def differences(self, config: dict, *, mutable: tuple[str, ...] = (), defaults: dict[str, Any] | None = None, parts: bool = False) -> list[str]:
        """How ``config`` (JSON-able) differs from the recorded one: ``"key.path: recorded -> new"`` lines.

        ``defaults`` (dotted key -> value) stand in for keys the recorded config
        lacks (written before the key existed); ``mutable`` keys are not
        compared. ``parts=True`` compares only the top-level parts ``config``
        has (to check some settings against a run without rebuilding all of
        its record). No recorded config: no differences.
        """
        new = json.loads(json.dumps(config, default=str))
        old = self.stored_config()
        if old is None:
            return []
        if parts:
            old = {k: old.get(k, {}) for k in new}
        return [d for d in _diff(old, new, defaults=defaults) if d.split(":")[0] not in mutable]

    def claim(self, config: dict, *, mutable: tuple[str, ...] = (), defaults: dict[str, Any] | None = None, record: bool = True) -> dict | None:
        """Records ``config`` (JSON-able) or checks it against the recorded one; returns the old one.

        ``mutable`` and ``defaults`` as in :meth:`differences`; ``record=False``
        only checks (a reader of the run, which must not change what it records).

        Raises:
          ValueError: the directory holds a run with another config (other
            than in ``mutable`` keys); the message lists the differences.
        """
        diffs = self.differences(config, mutable=mutable, defaults=defaults)
        if diffs:
            raise ValueError(
                f"{self.path} holds a run with a different config ({'; '.join(diffs)}). "
                "Use a fresh run directory, or rerun with the recorded settings to resume it."
            )
        new = json.loads(json.dumps(config, default=str))
        old = self.stored_config()
        if record and self.write and old != new:
            os.makedirs(self.path, exist_ok=True)
            write_json(self.file(CONFIG), new)
        return old

    def metrics(self) -> list[dict[str, Any]]:
        """Recorded per-epoch metrics; a torn last line (a crash mid-append) is ignored."""
        if not os.path.exists(self.file(METRICS)):
            return []
        out = []
        with open(self.file(METRICS)) as fh:
            lines = fh.read().split("\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                if i != len(lines) - 1:  # only a last line without its newline can be torn
                    raise ValueError(f"{self.file(METRICS)} line {i + 1} is corrupt: {line[:80]!r}") from None
        return out

    def keep_metrics(self, epochs: int) -> list[dict[str, Any]]:
        """Keeps the lines of the first ``epochs`` epochs (atomic rewrite); returns them."""
        kept = [m for m in self.metrics() if m["epoch"] <= epochs]
        if self.write:
            os.makedirs(self.path, exist_ok=True)
            atomic_write_text(self.file(METRICS), "".join(json.dumps(m) + "\n" for m in kept))
        return kept

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Appends one epoch's line and syncs it to disk."""
        if not self.write:
            return
        with open(self.file(METRICS), "a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def write_json(self, name: str, obj: Any) -> None:
        """Writes ``run_dir/name`` atomically (first process only)."""
        if self.write:
            write_json(self.file(name), obj)

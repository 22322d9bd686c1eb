"""Figures of the experiments: a headless pyplot and one way to save (PNG for the README, PDF for papers)."""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, stem: str, *, dpi: int = 100, small_png: bool = False) -> None:
    """Saves ``fig`` as ``stem.png`` and ``stem.pdf`` and closes it; ``small_png`` quantises the PNG to 128 colours."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(stem + ".png", dpi=dpi)
    fig.savefig(stem + ".pdf", metadata={"CreationDate": None})  # byte-identical when redrawn from the same files
    plt.close(fig)
    if small_png:
        from PIL import Image  # ships with matplotlib

        Image.open(stem + ".png").convert("RGB").quantize(colors=128).save(stem + ".png", optimize=True)

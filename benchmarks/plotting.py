"""Matplotlib for the benchmarks' plots: headless, and a figure written whole or not at all."""

from __future__ import annotations

from pathlib import Path

from distracted_driver.fsutil import atomic_path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """``fig`` as a PNG at ``path`` (folders made, written under a temporary name), then closed."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    pyplot().close(fig)
    return path

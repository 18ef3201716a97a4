"""A picture of the run history: each run's wall time, split by stage, with its outcome."""

from __future__ import annotations

from pathlib import Path

from distracted_driver.fsutil import atomic_path
from distracted_driver.pipeline.outcomes import STAGES
from distracted_driver.pipeline.records import RunRecord


def plot_history(records: list[RunRecord], path: str | Path) -> Path:
    """Horizontal stacked bars (seconds per stage) per run, newest at the top, labelled with the outcome."""
    import matplotlib  # pyplot takes about a second and picks a backend: loaded only to draw

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pyplot takes about a second and picks a backend: loaded only to draw

    records = records[-30:]
    fig, ax = plt.subplots(figsize=(11, 1.6 + 0.45 * max(len(records), 1)))
    colors = plt.get_cmap("tab10").colors
    labels = [f"{r.run_id}  {r.outcome or 'unfinished'}" for r in records]
    left = [0.0] * len(records)
    for i, stage in enumerate(STAGES):
        widths = [r.stage(stage).seconds for r in records]
        ax.barh(labels, widths, left=left, color=colors[i % len(colors)], label=stage)
        left = [a + b for a, b in zip(left, widths)]
    for y, total in enumerate(left):
        ax.text(total, y, f" {total:.1f} s", va="center", fontsize=8)
    ax.set_xlabel("wall time (s)")
    ax.set_title("pipeline runs: seconds per stage")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)

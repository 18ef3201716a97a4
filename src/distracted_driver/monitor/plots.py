"""The drift report's figures: predicted classes side by side, confidence, image statistics."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from distracted_driver.data.image_stats import STATISTICS  # noqa: E402
from distracted_driver.data.layout import CLASSES  # noqa: E402

CAPTURED, BASELINE = "tab:orange", "tab:blue"


def plot_classes(captured_counts: np.ndarray, baseline_counts: np.ndarray, png: Path, title: str) -> Path:
    """Share of answers per predicted class, captured beside validation."""
    x = np.arange(len(CLASSES))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(x - 0.2, baseline_counts / max(baseline_counts.sum(), 1), 0.4, label="validation (baseline)", color=BASELINE)
    ax.bar(x + 0.2, captured_counts / max(captured_counts.sum(), 1), 0.4, label="captured", color=CAPTURED)
    ax.set_xticks(x, CLASSES)
    ax.set_ylabel("share of answers")
    ax.set_title(title)
    ax.legend()
    return _save(fig, png)


def plot_confidence(captured: np.ndarray, baseline: np.ndarray, low_confidence: float, png: Path, title: str) -> Path:
    """Histograms of the top probability, as densities so that sample sizes do not matter."""
    fig, ax = plt.subplots(figsize=(8, 4))
    bins = np.linspace(0, 1, 21)
    ax.hist(baseline, bins, density=True, alpha=0.55, label=f"validation (baseline, {len(baseline)})", color=BASELINE)
    ax.hist(captured, bins, density=True, alpha=0.55, label=f"captured ({len(captured)})", color=CAPTURED)
    ax.axvline(low_confidence, color="tab:red", linestyle=":", label=f"low confidence < {low_confidence:g}")
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(loc="upper left")
    return _save(fig, png)


def plot_statistics(
    captured: dict[str, np.ndarray], baseline: dict[str, np.ndarray], verdicts: dict[str, dict], png: Path, title: str
) -> Path:
    """One histogram per image statistic, captured over baseline, with the KS distance in the title."""
    fig, axes = plt.subplots(1, len(STATISTICS), figsize=(4 * len(STATISTICS), 3.6))
    for ax, name in zip(axes, STATISTICS):
        both = np.concatenate([captured[name], baseline[name]])
        low, high = float(both.min()), float(both.max())
        bins = np.linspace(low, high if high > low else low + 1, 31)
        ax.hist(baseline[name], bins, density=True, alpha=0.55, label="training + validation", color=BASELINE)
        ax.hist(captured[name], bins, density=True, alpha=0.55, label="captured", color=CAPTURED)
        check = verdicts[name]
        mark = "DRIFT" if check["drifted"] else "ok"
        ax.set_title(f"{name}: KS {check['ks_statistic']:.2f} ({mark})")
        ax.set_yticks([])
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    return _save(fig, png)


def _save(fig, png: Path) -> Path:
    fig.tight_layout()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    return png

"""The drift checks: captured traffic against the live model's training baseline.

Each check returns a JSON-ready dict with its figures and ``drifted`` (True, False, or None
when there was nothing to judge). The tests themselves are scipy's: the chi-square test of
homogeneity (``chi2_contingency``), the two-sample Kolmogorov-Smirnov test (``ks_2samp``),
relative entropy for the PSI (``rel_entr``) and the matrix square root of the Fréchet
distance (``linalg.sqrtm``). Thresholds come from ``load_test/drift.toml``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import linalg, special, stats

from distracted_driver.config import dataclass_from_toml
from distracted_driver.data.layout import CLASSES

# Empty classes get this share before the PSI's logarithms (the usual guard; it caps one class's term).
PSI_FLOOR = 1e-4
# The feature distance's reference is the median over this many splits of validation.
REFERENCE_SPLITS = 8


@dataclass(frozen=True)
class DriftThresholds:
    min_records: int = 50
    alpha: float = 0.01
    max_class_psi: float = 0.25
    low_confidence: float = 0.5
    max_low_confidence_increase: float = 0.05
    max_confidence_ks: float = 0.3
    max_statistic_ks: float = 0.6
    max_frechet_ratio: float = 1.2
    max_refused_share: float = 0.05

    @classmethod
    def load(cls, path: str | Path) -> DriftThresholds:
        return dataclass_from_toml(cls, path, "drift", "drift thresholds")

    def to_dict(self) -> dict:
        return asdict(self)


def class_shift(captured: np.ndarray, baseline: np.ndarray, limits: DriftThresholds) -> dict:
    """Predicted-class counts (``[10]`` each): PSI and the chi-square test that both come from one distribution."""
    captured, baseline = np.asarray(captured, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    p = np.clip(captured / captured.sum(), PSI_FLOOR, None)
    q = np.clip(baseline / baseline.sum(), PSI_FLOOR, None)
    psi = float(np.sum(special.rel_entr(p, q) + special.rel_entr(q, p)))  # = sum (p - q) ln(p / q)
    seen = (captured + baseline) > 0
    if seen.sum() > 1:
        chi2, p_value, dof, _ = stats.chi2_contingency(np.stack([captured[seen], baseline[seen]]))
    else:  # one class on both sides: nothing differs
        chi2, p_value, dof = 0.0, 1.0, 0
    return {
        "captured_counts": _by_class(captured),
        "baseline_counts": _by_class(baseline),
        "psi": psi,
        "chi2": float(chi2),
        "dof": int(dof),
        "p_value": float(p_value),
        "limit": limits.max_class_psi,
        "drifted": bool(psi > limits.max_class_psi and p_value < limits.alpha),
    }


def distribution_shift(captured: np.ndarray, baseline: np.ndarray, max_ks: float, alpha: float) -> dict:
    """Two samples of one quantity: the KS distance and its p-value, with the medians for people.

    Drift needs both: a p-value below ``alpha`` and a distance above ``max_ks``. Captured traffic comes
    in clusters (each driver's cabin and light), so with a few hundred images any difference is
    "significant"; the distance says whether it is large.
    """
    result = stats.ks_2samp(captured, baseline)
    return {
        "captured_median": float(np.median(captured)),
        "baseline_median": float(np.median(baseline)),
        "ks_statistic": float(result.statistic),
        "p_value": float(result.pvalue),
        "limit": max_ks,
        "drifted": bool(result.statistic > max_ks and result.pvalue < alpha),
    }


def statistic_shift(captured: np.ndarray, baseline: np.ndarray, limits: DriftThresholds) -> dict:
    """One per-image statistic (brightness, sharpness...), captured against training and validation images."""
    return distribution_shift(captured, baseline, limits.max_statistic_ks, limits.alpha)


def confidence_shift(captured: np.ndarray, baseline: np.ndarray, limits: DriftThresholds) -> dict:
    """Top probabilities: their distribution (KS) and the share of low-confidence answers."""
    result = distribution_shift(captured, baseline, limits.max_confidence_ks, limits.alpha)
    low_captured = float(np.mean(captured < limits.low_confidence))
    low_baseline = float(np.mean(baseline < limits.low_confidence))
    too_many_low = low_captured - low_baseline > limits.max_low_confidence_increase
    return {
        **result,
        "low_confidence_share": low_captured,
        "baseline_low_confidence_share": low_baseline,
        "low_confidence_limit": low_baseline + limits.max_low_confidence_increase,
        "drifted": bool(result["drifted"] or too_many_low),
    }


def frechet_distance(mean_a, covariance_a, mean_b, covariance_b) -> float:
    """Fréchet distance between two Gaussians: |m_a - m_b|² + Tr(C_a + C_b - 2 (C_a C_b)^½)."""
    root = linalg.sqrtm(np.asarray(covariance_a) @ np.asarray(covariance_b))
    root = np.real(root)  # rounding leaves tiny imaginary parts
    difference = np.asarray(mean_a) - np.asarray(mean_b)
    distance = difference @ difference + np.trace(covariance_a) + np.trace(covariance_b) - 2.0 * np.trace(root)
    return float(max(distance, 0.0))


def _gaussian(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return points.mean(axis=0), np.atleast_2d(np.cov(points, rowvar=False))


def feature_shift(
    captured: np.ndarray, baseline_covariance: np.ndarray, validation: np.ndarray, limits: DriftThresholds
) -> dict:
    """Fréchet distance of the captured features from the baseline's, in the baseline's principal coordinates.

    ``captured`` ``[n, k]`` and ``validation`` ``[m, k]`` are features in the baseline's principal
    coordinates (``train.baseline.Baseline.project``: centred on its mean, each direction scaled to
    unit variance, so the baseline there is a standard normal), and ``baseline_covariance`` ``[k, k]``
    is the baseline covariance there (the identity, up to rounding). A distance alone means
    nothing (it grows as the sample shrinks, and with how much drivers differ), so it is set
    against a reference: the distance between a part of validation as large as the capture (at
    most half) and the rest, the median over ``REFERENCE_SPLITS`` parts. The parts are contiguous
    runs of validation in channel order, which is the driver list's (subject, class, image): so
    the parts hold different drivers, as live traffic does, and the reference measures how much
    one set of unseen drivers differs from another. A ratio near 1 is traffic like that.
    """
    if len(captured) < 2 or len(validation) < 4:
        return {
            "frechet_distance": None,
            "reference": None,
            "ratio": None,
            "drifted": None,
            "limit": limits.max_frechet_ratio,
            "note": "too few images to estimate a covariance",
        }
    mean, covariance = _gaussian(captured)
    distance = frechet_distance(mean, covariance, np.zeros(len(baseline_covariance)), baseline_covariance)
    size = min(len(captured), len(validation) // 2)
    starts = np.linspace(0, len(validation), REFERENCE_SPLITS, endpoint=False).astype(int)
    references = []
    for start in starts:
        inside = (np.arange(len(validation)) - start) % len(validation) < size
        references.append(frechet_distance(*_gaussian(validation[inside]), *_gaussian(validation[~inside])))
    reference = float(np.median(references))
    ratio = distance / reference if reference > 0 else float("inf")
    return {
        "frechet_distance": distance,
        "reference": reference,
        "reference_size": int(size),
        "ratio": ratio,
        "components": int(captured.shape[1]),
        "limit": limits.max_frechet_ratio,
        "drifted": bool(ratio > limits.max_frechet_ratio),
    }


def refused_share(refused: int, total: int, limits: DriftThresholds) -> dict:
    share = refused / total if total else 0.0
    return {
        "refused": int(refused),
        "requests": int(total),
        "share": share,
        "limit": limits.max_refused_share,
        "drifted": bool(share > limits.max_refused_share),
    }


def _by_class(counts: np.ndarray) -> dict[str, int]:
    return {name: int(counts[i]) for i, name in enumerate(CLASSES)}

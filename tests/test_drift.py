"""The drift checks on samples whose answer is known: same distribution passes, a shift is flagged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from distracted_driver.monitor import drift
from distracted_driver.monitor.drift import DriftThresholds

REPO = Path(__file__).resolve().parents[1]
LIMITS = DriftThresholds()


def test_the_shipped_thresholds_load_and_unknown_keys_are_refused(tmp_path):
    shipped = DriftThresholds.load(REPO / "load_test" / "drift.toml")
    assert shipped == DriftThresholds()  # the file and the defaults say the same
    bad = tmp_path / "drift.toml"
    bad.write_text("[drift]\nmax_psi = 0.2\n")
    with pytest.raises(ValueError, match="unknown drift thresholds \\['max_psi'\\]"):
        DriftThresholds.load(bad)


def test_psi_is_zero_for_the_same_distribution_and_large_for_another():
    baseline = np.array([15] * 10)
    same = drift.class_shift(np.array([30] * 10), baseline, LIMITS)
    assert same["psi"] == pytest.approx(0.0) and same["p_value"] == pytest.approx(1.0) and not same["drifted"]
    # Half the traffic answered c0: what a camera pointed at an empty seat might give.
    counts = np.array([150, 17, 17, 17, 17, 17, 17, 16, 16, 16])
    skewed = drift.class_shift(counts, baseline, LIMITS)
    p, q = counts / counts.sum(), np.full(10, 0.1)
    assert skewed["psi"] == pytest.approx(float(np.sum((p - q) * np.log(p / q))))
    assert skewed["psi"] > LIMITS.max_class_psi and skewed["p_value"] < LIMITS.alpha and skewed["drifted"]
    assert skewed["captured_counts"]["c0"] == 150


def test_a_class_never_seen_on_one_side_does_not_break_the_psi_or_the_test():
    result = drift.class_shift(
        np.array([0, 10, 10, 10, 10, 10, 10, 10, 10, 10]), np.array([0, 10, 10, 10, 10, 10, 10, 10, 10, 12]), LIMITS
    )
    assert np.isfinite(result["psi"]) and result["dof"] == 8 and not result["drifted"]
    gone = drift.class_shift(np.array([0, 20, 10, 10, 10, 10, 10, 10, 10, 10]), np.full(10, 10), LIMITS)
    assert np.isfinite(gone["psi"]) and gone["psi"] > 0.5


def test_a_large_sample_flags_only_a_large_distance():
    rng = np.random.default_rng(0)
    baseline = rng.normal(80, 15, 5000)
    # Slightly brighter: with 5,000 images "significant", but a small distance: not drift.
    slight = drift.statistic_shift(rng.normal(83, 15, 5000), baseline, LIMITS)
    assert slight["p_value"] < LIMITS.alpha and slight["ks_statistic"] < LIMITS.max_statistic_ks
    assert not slight["drifted"]
    night = drift.statistic_shift(rng.normal(20, 8, 200), baseline, LIMITS)
    assert night["ks_statistic"] > 0.9 and night["drifted"]
    assert night["captured_median"] == pytest.approx(20, abs=2)


def test_a_small_sample_needs_a_significant_difference_too():
    result = drift.statistic_shift(np.array([150.0, 160.0]), np.arange(10.0), LIMITS)
    assert result["ks_statistic"] == 1.0 and result["p_value"] > LIMITS.alpha
    assert not result["drifted"]


def test_more_low_confidence_answers_is_drift_even_when_the_distribution_test_is_not():
    rng = np.random.default_rng(1)
    baseline = np.clip(rng.normal(0.95, 0.03, 300), 0, 1)
    fine = drift.confidence_shift(np.clip(rng.normal(0.95, 0.03, 300), 0, 1), baseline, LIMITS)
    assert not fine["drifted"] and fine["low_confidence_share"] == 0.0
    unsure = np.concatenate([np.clip(rng.normal(0.95, 0.03, 270), 0, 1), np.full(30, 0.3)])
    result = drift.confidence_shift(unsure, baseline, LIMITS)
    assert result["ks_statistic"] < LIMITS.max_confidence_ks  # 10 % moved: a small distance
    assert result["low_confidence_share"] == pytest.approx(0.1) and result["drifted"]


def test_frechet_distance_of_known_gaussians():
    # One dimension: (m1 - m2)² + (s1 - s2)².
    assert drift.frechet_distance([1.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(4.0 + 1.0)
    # Diagonal covariances: the sum over dimensions.
    a, b = np.diag([1.0, 9.0]), np.diag([4.0, 1.0])
    assert drift.frechet_distance([0, 0], a, [1, 1], b) == pytest.approx(2.0 + (1 - 2) ** 2 + (3 - 1) ** 2)
    assert drift.frechet_distance([0, 0], a, [0, 0], a) == pytest.approx(0.0, abs=1e-9)


def _drivers(rng, count: int, per_driver: int, dims: int, spread: float, offset: float = 0.0) -> np.ndarray:
    """Features of ``count`` drivers in a row, each driver a cluster around its own centre, as images are."""
    centres = rng.normal(offset, spread, (count, dims))
    return np.concatenate([centre + rng.normal(0, 1, (per_driver, dims)) for centre in centres])


def test_feature_distance_is_calibrated_by_parts_of_validation_that_hold_other_drivers():
    rng = np.random.default_rng(0)
    dims = 4
    validation = _drivers(rng, 12, 20, dims, spread=0.7)  # 12 drivers, in channel (driver) order
    mean, covariance = validation.mean(axis=0), np.cov(validation, rowvar=False)
    values, vectors = np.linalg.eigh(covariance)
    whiten = vectors / np.sqrt(values)

    def as_baseline(features):
        return (features - mean) @ whiten

    projected_covariance = whiten.T @ covariance @ whiten
    assert np.allclose(projected_covariance, np.eye(dims), atol=1e-9)

    like_validation = drift.feature_shift(
        as_baseline(_drivers(rng, 10, 20, dims, spread=0.7)), projected_covariance, as_baseline(validation), LIMITS
    )
    assert like_validation["ratio"] < LIMITS.max_frechet_ratio and not like_validation["drifted"]
    assert like_validation["reference_size"] == len(validation) // 2 and like_validation["components"] == dims
    shifted = drift.feature_shift(
        as_baseline(_drivers(rng, 10, 20, dims, spread=0.7, offset=2.0)),
        projected_covariance,
        as_baseline(validation),
        LIMITS,
    )
    assert shifted["ratio"] > 3 * LIMITS.max_frechet_ratio and shifted["drifted"]
    # Parts of validation holding other drivers are farther apart than random halves of it would be.
    order = rng.permutation(len(validation))
    first, second = as_baseline(validation)[order[:120]], as_baseline(validation)[order[120:]]
    random_halves = drift.frechet_distance(
        first.mean(0), np.cov(first, rowvar=False), second.mean(0), np.cov(second, rowvar=False)
    )
    assert like_validation["reference"] > 2 * random_halves


def test_one_captured_image_is_too_few_for_a_covariance():
    result = drift.feature_shift(np.zeros((1, 3)), np.eye(3), np.zeros((10, 3)), LIMITS)
    assert result["drifted"] is None and "too few" in result["note"]


def test_refused_share():
    assert not drift.refused_share(2, 100, LIMITS)["drifted"]
    assert drift.refused_share(6, 100, LIMITS) == {
        "refused": 6,
        "requests": 100,
        "share": 0.06,
        "limit": 0.05,
        "drifted": True,
    }

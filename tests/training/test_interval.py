"""training/interval.py: the scale model's fit, conformal risk control and the uncertainty metrics, on synthetic
answers whose errors are drawn from a known scale (so the right answer is known)."""

from __future__ import annotations

import numpy as np
import pytest

from xraysr.service.interval import FEATURES, features
from xraysr.training.interval import (
    Answers,
    calibrate_factors,
    fit_weights,
    interval_metrics,
    scores,
    sparsification,
)

pytest.importorskip("scipy", reason="the metrics use scipy's Spearman (the train extra)")


def _answers(count: int, seed: int, size: int = 64) -> Answers:
    """Answers whose |error| is Laplace with a scale that grows with the local departure from bicubic."""
    rng = np.random.default_rng(seed)
    bicubic = rng.integers(60, 190, (count, size, size)).astype(np.uint8)
    answer = np.clip(bicubic.astype(int) + rng.integers(-20, 21, (count, size, size)), 0, 255).astype(np.uint8)
    departure = np.abs(answer.astype(np.float64) - bicubic)
    sigma = 0.5 + 0.3 * departure
    hr = np.clip(np.rint(answer + rng.laplace(0, sigma)), 0, 255).astype(np.uint8)
    lr = np.zeros((count, size // 4, size // 4), np.uint8)
    return Answers([f"{i}.png" for i in range(count)], ["synthetic"] * count, lr, hr, answer, bicubic)


def test_the_fit_makes_sigma_follow_the_error_it_was_drawn_with() -> None:
    train = _answers(40, seed=0)
    weights = fit_weights(train, pixels_per_image=1024)
    assert len(weights) == len(FEATURES)
    held_out = _answers(10, seed=1)
    metrics = interval_metrics(held_out, weights, factor=2.0)
    assert metrics["spearman"] > 0.3  # the error's scale is in the features; a constant σ would score 0
    assert metrics["ause"] < 0.6 * metrics["ause_random"]


def test_conformal_risk_control_holds_its_coverage_on_new_images() -> None:
    train, calibration, test = _answers(30, seed=2), _answers(60, seed=3), _answers(60, seed=4)
    weights = fit_weights(train, pixels_per_image=512)
    factors = calibrate_factors(scores(calibration, weights), (0.8, 0.9, 0.95))
    assert factors[0] < factors[1] < factors[2]
    for coverage, factor in zip((0.8, 0.9, 0.95), factors, strict=True):
        measured = interval_metrics(test, weights, factor)["coverage"]
        assert coverage - 0.03 <= measured <= coverage + 0.03, (coverage, measured)


def test_a_coverage_too_high_for_the_calibration_set_is_refused() -> None:
    # With two images the correction alone ((n·R + 1) / (n + 1) >= 1/3) rules out a miscoverage under 1/3.
    with pytest.raises(ValueError, match="cannot certify coverage 0.9"):
        calibrate_factors([np.ones(100), np.ones(100)], (0.9,))


def test_sparsification_falls_for_the_oracle_and_rises_for_its_opposite() -> None:
    error = np.arange(100, dtype=np.float64)
    oracle = sparsification(error, error)
    assert oracle[0] == pytest.approx(1.0) and oracle[-1] < 0.05
    assert np.all(np.diff(oracle) <= 1e-12)
    backwards = sparsification(-error, error)  # removes the smallest errors first
    assert np.all(backwards >= 1.0 - 1e-12) and backwards[-1] > 1.5


def test_features_are_finite_and_of_the_stated_count() -> None:
    rng = np.random.default_rng(5)
    answer, bicubic = rng.integers(0, 256, (2, 32, 40)).astype(np.uint8)
    values = features(answer, bicubic)
    assert values.shape == (len(FEATURES), 32, 40) and np.isfinite(values).all()

"""service/uncertainty.py: the posterior mean and spread of K samples, and the spread's fixed 8-bit scale."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from xraysr.service.uncertainty import UNCERTAINTY_SCALE, mean_and_spread, uncertainty_levels, uncertainty_png


def test_mean_and_population_spread_in_grey_levels() -> None:
    decoded = np.array([[[-1.0, 0.5]], [[1.0, 0.5]]], np.float32)  # K = 2 images of 1×2 pixels
    mean, spread = mean_and_spread(decoded)
    np.testing.assert_array_equal(mean, [[0.0, 0.5]])
    assert spread is not None and spread.dtype == np.float32
    np.testing.assert_array_equal(spread, [[127.5, 0.0]])  # ddof = 0: half the 255-level range, not 180.3


def test_samples_are_clipped_to_the_model_range_first() -> None:
    mean, spread = mean_and_spread(np.array([[[3.0]], [[1.0]]], np.float32))
    assert spread is not None
    assert (float(mean[0, 0]), float(spread[0, 0])) == (1.0, 0.0)


def test_one_sample_is_its_own_mean_and_has_no_spread() -> None:
    image = np.random.default_rng(0).uniform(-1, 1, (1, 4, 4)).astype(np.float32)
    mean, spread = mean_and_spread(image)
    np.testing.assert_array_equal(mean, image[0])
    assert spread is None


def test_identical_samples_average_to_exactly_that_sample() -> None:
    image = np.random.default_rng(1).uniform(-1, 1, (1, 16, 16)).astype(np.float32)
    for samples in range(2, 9):
        mean, spread = mean_and_spread(np.repeat(image, samples, axis=0))
        np.testing.assert_array_equal(mean, image[0])
        assert spread is not None and not spread.any()


def test_a_wrong_layout_is_refused() -> None:
    with pytest.raises(ValueError, match=r"expected K ≥ 1 images as a \(K, H, W\) array, got shape \(4, 4\)"):
        mean_and_spread(np.zeros((4, 4), np.float32))


def test_the_png_scale_is_fixed_and_saturates() -> None:
    assert UNCERTAINTY_SCALE == 0.5
    spread = np.array([[0.0, 0.24, 0.26, 2.0, 127.5, 200.0]], np.float32)
    np.testing.assert_array_equal(uncertainty_levels(spread), [[0, 0, 1, 4, 255, 255]])
    image = Image.open(io.BytesIO(uncertainty_png(spread)))
    assert image.mode == "L"
    np.testing.assert_array_equal(np.asarray(image), [[0, 0, 1, 4, 255, 255]])

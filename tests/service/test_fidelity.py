"""service/fidelity.py: the one PSNR, pinned to hand computations for each way the project calls it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xraysr.service.fidelity import psnr, psnr_from_mse


def test_identical_images_give_inf_or_the_cap_exactly() -> None:
    image = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    assert psnr(image, image.copy(), data_range=255) == math.inf
    assert psnr(image, image.copy(), data_range=255, cap=99.99) == 99.99
    assert psnr_from_mse(0.0, data_range=255) == math.inf
    assert psnr_from_mse(0.0, data_range=255, cap=99.99) == 99.99


def test_a_known_mse_gives_its_decibels() -> None:
    reference = np.zeros((16, 16), np.uint8)
    one_wrong = reference.copy()
    one_wrong[3, 7] = 255
    # MSE = 255² / 256, so PSNR = 10 log10(256) dB.
    assert psnr(one_wrong, reference, data_range=255) == pytest.approx(10 * math.log10(256), abs=1e-12)
    assert psnr_from_mse(255**2 / 256, data_range=255) == psnr(one_wrong, reference, data_range=255)
    offset = np.full((64, 64), 100, np.uint8)
    assert psnr(offset + 5, offset, data_range=255) == pytest.approx(10 * math.log10(255**2 / 25), abs=1e-12)
    assert psnr(offset + 5, offset, data_range=255) == pytest.approx(34.1514, abs=1e-4)
    assert psnr(offset, offset + 5, data_range=255) == psnr(offset + 5, offset, data_range=255)
    assert psnr_from_mse(0.01, data_range=1.0) == pytest.approx(20.0, abs=1e-12)


def test_the_smallest_8bit_error_on_64x64_stays_under_the_cap() -> None:
    image = np.full((64, 64), 100, np.uint8)
    one_level = image.copy()
    one_level[3, 5] = 101
    expected = 10 * math.log10(255**2 * 64 * 64)
    assert psnr(one_level, image, data_range=255, cap=99.99) == pytest.approx(expected, abs=1e-12)
    assert psnr(one_level, image, data_range=255, cap=99.99) == pytest.approx(84.25, abs=0.01)


def test_the_cap_bounds_every_value() -> None:
    image = np.full((8, 8), 100, np.uint8)
    assert psnr(image + 5, image, data_range=255, cap=30.0) == 30.0  # 34.15 dB uncapped
    assert psnr_from_mse(1e-12, data_range=255, cap=99.99) == 99.99


def test_uint8_differences_do_not_wrap_around() -> None:
    reference = np.full((8, 8), 250, np.uint8)
    prediction = np.full((8, 8), 5, np.uint8)
    # |5 - 250| = 245, not (5 - 250) mod 256 = 11.
    assert psnr(prediction, reference, data_range=255) == pytest.approx(10 * math.log10(255**2 / 245**2), abs=1e-12)


def test_float_images_use_the_range_given() -> None:
    reference = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)  # range 3
    shifted = reference + np.float32(0.5)  # MSE 0.25
    assert psnr(shifted, reference, data_range=3.0) == pytest.approx(10 * math.log10(9 / 0.25), abs=1e-12)
    assert psnr(shifted, reference, data_range=1.0) == pytest.approx(10 * math.log10(1 / 0.25), abs=1e-12)
    # Any layout: a batch of C×H×W latents is one array of values.
    batch = np.stack([reference[None], reference[None]])
    assert psnr(batch + np.float32(0.5), batch, data_range=3.0) == psnr(shifted, reference, data_range=3.0)


def test_mismatched_shapes_or_dtypes_are_refused() -> None:
    image = np.zeros((64, 64), np.uint8)
    with pytest.raises(ValueError, match=r"shapes differ: image \(64, 64\), reference \(32, 64\)"):
        psnr(image, image[:32], data_range=255)
    with pytest.raises(ValueError, match="dtypes differ: image uint8, reference float32"):
        psnr(image, image.astype(np.float32), data_range=255)


def test_a_nan_error_is_refused_not_scored_perfect() -> None:
    with pytest.raises(ValueError, match="NaN"):
        psnr_from_mse(float("nan"), data_range=1.0)
    with pytest.raises(ValueError, match="NaN"):
        psnr(np.array([0.0, np.nan]), np.zeros(2), data_range=1.0)

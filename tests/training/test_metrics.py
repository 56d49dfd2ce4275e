"""training/metrics.py: PSNR/SSIM on uint8 images against hand computations, and the bicubic baseline."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from xraysr.training.metrics import bicubic_upscale, psnr, ssim

SHARED_CXR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cxr"
# skimage's SSIM constants for data_range=255: C1 = (0.01 * 255)², C2 = (0.03 * 255)².
C1 = (0.01 * 255) ** 2


def _random_image(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


# --- psnr -----------------------------------------------------------------------------------------------


def test_psnr_of_identical_images_is_infinite() -> None:
    image = _random_image(0)
    assert psnr(image, image.copy()) == math.inf


def test_psnr_of_a_constant_offset_of_five_grey_levels() -> None:
    reference = np.clip(_random_image(1), 0, 250)
    prediction = reference + 5
    expected = 10 * math.log10(255**2 / 25)
    assert expected == pytest.approx(34.1514, abs=1e-4)
    assert psnr(prediction, reference) == pytest.approx(expected, abs=1e-9)
    assert psnr(reference, prediction) == pytest.approx(expected, abs=1e-9)


def test_psnr_of_one_wrong_pixel() -> None:
    reference = np.zeros((16, 16), dtype=np.uint8)
    prediction = reference.copy()
    prediction[3, 7] = 255
    # MSE = 255² / 256, so PSNR = 10 log10(256) dB.
    assert psnr(prediction, reference) == pytest.approx(10 * math.log10(256), abs=1e-9)


def test_psnr_does_not_wrap_around_in_uint8() -> None:
    reference = np.full((8, 8), 250, dtype=np.uint8)
    prediction = np.full((8, 8), 5, dtype=np.uint8)
    # |5 - 250| = 245, not (5 - 250) mod 256 = 11.
    assert psnr(prediction, reference) == pytest.approx(10 * math.log10(255**2 / 245**2), abs=1e-9)


def test_psnr_is_scikit_images_to_the_last_bit() -> None:
    # The PSNR of every number in docs/RESULTS.md was skimage's; service/fidelity.py's must not move one of them.
    from skimage.metrics import peak_signal_noise_ratio

    for seed in range(20):
        reference, prediction = _random_image(2 * seed), _random_image(2 * seed + 1)
        assert psnr(prediction, reference) == peak_signal_noise_ratio(reference, prediction, data_range=255)


# --- ssim -----------------------------------------------------------------------------------------------


def test_ssim_of_identical_images_is_one() -> None:
    image = _random_image(2)
    assert ssim(image, image.copy()) == pytest.approx(1.0, abs=1e-12)


def test_ssim_of_constant_images_is_the_luminance_term() -> None:
    reference = np.full((16, 16), 100, dtype=np.uint8)
    prediction = np.full((16, 16), 105, dtype=np.uint8)
    # No variance anywhere: SSIM = (2 μx μy + C1) / (μx² + μy² + C1).
    expected = (2 * 100 * 105 + C1) / (100**2 + 105**2 + C1)
    assert expected == pytest.approx(0.998811, abs=1e-6)
    assert ssim(prediction, reference) == pytest.approx(expected, abs=1e-9)


def test_ssim_of_an_inverted_image_is_low() -> None:
    reference = _random_image(3)
    assert ssim(255 - reference, reference) < 0.0


# --- input checks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_metrics_refuse_float_images(metric) -> None:
    reference = _random_image(4)
    with pytest.raises(ValueError, match="prediction must be a 2-D uint8 image, got float32 with shape \\(32, 32\\)"):
        metric(reference.astype(np.float32), reference)
    with pytest.raises(ValueError, match="reference must be a 2-D uint8 image, got float64"):
        metric(reference, reference.astype(np.float64))


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_metrics_refuse_three_dimensional_images(metric) -> None:
    reference = _random_image(5)
    with pytest.raises(ValueError, match="prediction must be a 2-D uint8 image, got uint8 with shape \\(32, 32, 1\\)"):
        metric(reference[:, :, None], reference)


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_metrics_refuse_a_shape_mismatch(metric) -> None:
    with pytest.raises(ValueError, match="shapes differ: prediction \\(32, 32\\), reference \\(16, 16\\)"):
        metric(_random_image(6), _random_image(7, size=16))


# --- bicubic_upscale ------------------------------------------------------------------------------------


def test_bicubic_upscale_is_cv2_inter_cubic() -> None:
    lr_image = _random_image(8, size=64)
    upscaled = bicubic_upscale(lr_image, 256)
    assert upscaled.shape == (256, 256)
    assert upscaled.dtype == np.uint8
    assert np.array_equal(upscaled, cv2.resize(lr_image, (256, 256), interpolation=cv2.INTER_CUBIC))


def test_bicubic_upscale_of_a_constant_image_is_constant() -> None:
    assert np.array_equal(bicubic_upscale(np.full((64, 64), 77, np.uint8), 256), np.full((256, 256), 77, np.uint8))


@pytest.mark.parametrize(
    "lr_image", [np.zeros((64, 64), np.float32), np.zeros((64, 64, 3), np.uint8)], ids=["float", "colour"]
)
def test_bicubic_upscale_refuses_what_is_not_a_grey_uint8_image(lr_image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="lr_image must be a 2-D uint8 image"):
        bicubic_upscale(lr_image, 256)


def test_bicubic_baseline_on_a_real_pair() -> None:
    hr_path, lr_path = SHARED_CXR / "HR_256" / "ieee8023_10_0.png", SHARED_CXR / "LR_64" / "ieee8023_10_0.png"
    if not (hr_path.is_file() and lr_path.is_file()):
        pytest.skip(f"needs ../shared/data: a measured CXR pair (not found at {SHARED_CXR})")
    hr_image = cv2.imread(str(hr_path), cv2.IMREAD_UNCHANGED)
    lr_image = cv2.imread(str(lr_path), cv2.IMREAD_UNCHANGED)
    assert (hr_image.shape, lr_image.shape) == ((256, 256), (64, 64))
    upscaled = bicubic_upscale(lr_image, 256)
    # Measured once on this pair; the whole set's baseline is 32.36 ± 3.34 dB and 0.8935 ± 0.0421.
    assert round(psnr(upscaled, hr_image), 2) == 35.04
    assert round(ssim(upscaled, hr_image), 4) == 0.9070

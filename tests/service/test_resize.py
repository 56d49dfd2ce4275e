"""service/resize.py against OpenCV itself, on real X-rays and random images: every pixel, no tolerance, except
the one documented case (IPP's 64 -> 256 upscale), whose difference is bounded and measured here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import xrays
from xraysr.service.resize import resize_area, resize_cubic, resize_cubic_float

cv2 = pytest.importorskip("cv2", reason="checking against OpenCV needs the train extra")

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SOURCES = ("nih", "nih_starter", "cxr", "pediatric")


def _real_pairs(per_source: int = 8) -> list[tuple[Path, Path]]:
    """(HR, LR) paths: the suite's phantoms, and real X-rays where ../shared is beside the repository."""
    pairs = list(zip(xrays.hr_paths(), xrays.lr_paths(), strict=True))[:per_source]
    for source in SOURCES:
        for hr_path in sorted((DATA / source / "HR_256").glob("*.png"))[:per_source]:
            pairs.append((hr_path, hr_path.parent.parent / "LR_64" / hr_path.name))
    return pairs


def _gray(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


@pytest.fixture
def without_ipp() -> Iterator[None]:
    """OpenCV's own kernels: what builds without Intel IPP (ARM, Jetson) run."""
    was = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(False)
    try:
        yield
    finally:
        cv2.ipp.setUseIPP(was)


def _cv2_cubic(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    return cv2.resize(pixels, (width, height), interpolation=cv2.INTER_CUBIC)


def _cv2_area(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    return cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA)


def test_the_training_downscale_equals_opencv_and_the_stored_lr_files() -> None:
    for hr_path, lr_path in _real_pairs():
        hr = _gray(hr_path)
        ours = resize_cubic(hr, 64, 64)
        np.testing.assert_array_equal(ours, _cv2_cubic(hr, 64, 64), err_msg=hr_path.name)
        np.testing.assert_array_equal(ours, _gray(lr_path), err_msg=f"stored {lr_path}")


def test_the_training_downscale_equals_opencv_without_ipp_too(without_ipp: None) -> None:
    for hr_path, _ in _real_pairs(4):
        hr = _gray(hr_path)
        np.testing.assert_array_equal(resize_cubic(hr, 64, 64), _cv2_cubic(hr, 64, 64), err_msg=hr_path.name)


def test_the_bicubic_upscale_equals_opencvs_own_kernel(without_ipp: None) -> None:
    for _, lr_path in _real_pairs():
        lr = _gray(lr_path)
        np.testing.assert_array_equal(resize_cubic(lr, 256, 256), _cv2_cubic(lr, 256, 256), err_msg=lr_path.name)
    rng = np.random.default_rng(0)
    for _ in range(20):  # random pixels reach every rounding tie and the 0/255 saturation
        lr = rng.integers(0, 256, (64, 64), dtype=np.uint8)
        np.testing.assert_array_equal(resize_cubic(lr, 256, 256), _cv2_cubic(lr, 256, 256))


def test_ipps_upscale_differs_from_opencvs_kernel_by_one_level_at_a_few_pixels_per_million() -> None:
    if not cv2.ipp.useIPP():
        pytest.skip("this OpenCV build does not use Intel IPP: the kernels are the same")
    rng = np.random.default_rng(1)
    images = [_gray(lr) for _, lr in _real_pairs()] + [
        rng.integers(0, 256, (64, 64), dtype=np.uint8) for _ in range(100)
    ]
    differences = [resize_cubic(lr, 256, 256).astype(int) - _cv2_cubic(lr, 256, 256) for lr in images]
    assert max(int(np.abs(difference).max()) for difference in differences) <= 1
    differing = sum(int(np.count_nonzero(difference)) for difference in differences)
    assert differing / (len(images) * 256 * 256) < 2e-5  # the module docstring says "a few pixels in a million"


@pytest.mark.parametrize(("source", "target"), [((100, 80), (37, 53)), ((64, 64), (200, 150)), ((31, 97), (31, 45))])
def test_other_cubic_sizes_equal_opencv(without_ipp: None, source: tuple[int, int], target: tuple[int, int]) -> None:
    image = np.random.default_rng(2).integers(0, 256, source, dtype=np.uint8)
    np.testing.assert_array_equal(resize_cubic(image, *target), _cv2_cubic(image, *target))


def _raw_films() -> list[Path]:
    """Raw 1024² films: the suite's phantoms, and NIH's own where ../shared is beside the repository."""
    return xrays.raw_paths(3) + sorted((DATA / "nih_sample").glob("*.png"))


def test_area_of_raw_nih_images_equals_opencv() -> None:
    for path in _raw_films():
        image = _gray(path)  # 1024x1024: the integer factor 4
        np.testing.assert_array_equal(resize_area(image, 256, 256), _cv2_area(image, 256, 256), err_msg=path.name)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ((512, 512), (256, 256)),  # factor 2: OpenCV's SIMD kernel, (sum + 2) >> 2
        ((768, 768), (256, 256)),  # factor 3
        ((2048, 2048), (256, 256)),  # factor 8
        ((300, 300), (256, 256)),  # general: partial pixels at every edge
        ((1000, 1000), (256, 256)),
        ((777, 777), (256, 256)),
        ((333, 517), (64, 100)),  # different factors per axis
        ((256, 256), (256, 256)),  # identity
    ],
)
def test_area_of_any_size_equals_opencv(source: tuple[int, int], target: tuple[int, int]) -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, source, dtype=np.uint8)
    np.testing.assert_array_equal(resize_area(image, *target), _cv2_area(image, *target))
    # A real X-ray, cropped and tiled to that size: smooth regions meet the rounding differently than noise.
    for path in (_raw_films()[0], _raw_films()[-1]):
        xray = np.tile(_gray(path), (3, 3))[: source[0], : source[1]].copy()
        np.testing.assert_array_equal(resize_area(xray, *target), _cv2_area(xray, *target))


def test_area_of_real_xrays_at_general_sizes_equals_opencv_without_ipp(without_ipp: None) -> None:
    for path in _raw_films()[:6]:
        image = _gray(path)[:1000, :900].copy()
        np.testing.assert_array_equal(resize_area(image, 256, 230), _cv2_area(image, 256, 230), err_msg=path.name)


def test_area_refuses_to_enlarge_and_both_refuse_what_is_not_a_2d_uint8_image() -> None:
    with pytest.raises(ValueError, match="only downscales: 64x64 to 256x256 would enlarge"):
        resize_area(np.zeros((64, 64), np.uint8), 256, 256)
    with pytest.raises(ValueError, match=r"2-D uint8 array \(H x W\); got shape \(8, 8\), dtype float32"):
        resize_cubic(np.zeros((8, 8), np.float32), 4, 4)
    with pytest.raises(ValueError, match=r"got shape \(8, 8, 3\), dtype uint8"):
        resize_area(np.zeros((8, 8, 3), np.uint8), 4, 4)
    with pytest.raises(ValueError, match="at least 1x1, got 0x4"):
        resize_cubic(np.zeros((8, 8), np.uint8), 4, 0)


def test_the_float_cubic_is_the_unrounded_resize() -> None:
    flat = np.full((64, 64), 37.5)
    np.testing.assert_allclose(resize_cubic_float(flat, 256, 256), 37.5)  # Keys' weights sum to one
    for hr_path, lr_path in _real_pairs(2):
        for image, size in ((_gray(hr_path), 64), (_gray(lr_path), 256)):
            unrounded = np.clip(resize_cubic_float(image.astype(np.float64), size, size), 0, 255)
            # The fixed-point resize is the float one saturated and rounded, give or take its 11-bit weights.
            assert np.abs(unrounded - resize_cubic(image, size, size)).max() < 1.0
    with pytest.raises(ValueError, match=r"non-empty 2-D array, got shape \(3,\)"):
        resize_cubic_float(np.zeros(3), 4, 4)

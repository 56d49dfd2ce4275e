"""service/consistency.py: the PSNR it reports, and what back-projection does on real X-rays."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import xrays
from xraysr.service.consistency import (
    BACK_PROJECTION_ITERATIONS,
    PSNR_CAP_DB,
    FidelityReport,
    bicubic_upscale,
    enforce_consistency,
    guard,
    lr_consistency_psnr,
    shrink_output,
)
from xraysr.service.resize import resize_cubic

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="module")
def pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """(LR, HR): the suite's phantoms, and real X-rays of adults and children where ../shared is beside the
    repository."""
    found = xrays.pairs()[:3]
    for source in ("nih", "cxr", "pediatric"):
        for hr_path in sorted((DATA / source / "HR_256").glob("*.png"))[:3]:
            lr_path = hr_path.parent.parent / "LR_64" / hr_path.name
            found.append((np.asarray(Image.open(lr_path)), np.asarray(Image.open(hr_path))))
    return found


def _with_invented_detail(hr: np.ndarray, seed: int) -> np.ndarray:
    """HR plus texture the input does not support: what a hallucinating model would add."""
    noise = np.random.default_rng(seed).normal(0, 8, hr.shape)
    return np.clip(np.rint(hr + noise), 0, 255).astype(np.uint8)


def test_psnr_is_capped_and_exact() -> None:
    sr = np.full((256, 256), 100, np.uint8)
    image = shrink_output(sr, 64)
    np.testing.assert_array_equal(image, np.full((64, 64), 100, np.uint8))
    assert lr_consistency_psnr(image, sr) == PSNR_CAP_DB == 99.99
    one_level = image.copy()
    one_level[3, 5] = 101  # the smallest error there is on 64x64: why 99.99 cannot be mistaken for a real value
    assert lr_consistency_psnr(one_level, sr) == pytest.approx(10 * math.log10(255**2 * 64 * 64))
    assert lr_consistency_psnr(one_level, sr) == pytest.approx(84.25, abs=0.01)
    assert lr_consistency_psnr(image + 5, sr) == pytest.approx(10 * math.log10(255**2 / 25))
    with pytest.raises(ValueError, match="shapes differ"):
        lr_consistency_psnr(image[:32], sr)  # sr shrinks to 32x32, the input is 32x64
    with pytest.raises(ValueError, match="lr must be a 2-D uint8 image"):
        lr_consistency_psnr(image.astype(np.float32), sr)


def test_the_real_hr_shrinks_back_to_its_lr_exactly(pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    # The stored LR_64 was made from HR_256 by the recipe: the truth is perfectly consistent.
    for lr, hr in pairs:
        assert lr_consistency_psnr(lr, hr) == PSNR_CAP_DB
        assert lr_consistency_psnr(lr, _with_invented_detail(hr, 0)) < 50


def test_bicubic_is_opencvs_inter_cubic(pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    for lr, _ in pairs:
        np.testing.assert_array_equal(bicubic_upscale(lr, 256), resize_cubic(lr, 256, 256))


def test_enforce_raises_the_consistency_of_real_images_and_stays_8bit(
    pairs: list[tuple[np.ndarray, np.ndarray]],
) -> None:
    for index, (lr, hr) in enumerate(pairs):
        reported = _with_invented_detail(hr, index)
        enforced = enforce_consistency(lr, reported)
        assert (enforced.shape, enforced.dtype) == ((256, 256), np.uint8)
        assert lr_consistency_psnr(lr, enforced) > lr_consistency_psnr(lr, reported) + 10
        bicubic = bicubic_upscale(lr, 256)
        assert lr_consistency_psnr(lr, enforce_consistency(lr, bicubic)) > lr_consistency_psnr(lr, bicubic)


def test_an_answer_that_shrinks_back_to_its_input_is_left_as_it_is(
    pairs: list[tuple[np.ndarray, np.ndarray]],
) -> None:
    for lr, hr in pairs:
        np.testing.assert_array_equal(enforce_consistency(lr, hr), hr)


def test_each_iteration_brings_the_shrunk_answer_closer_to_the_input(
    pairs: list[tuple[np.ndarray, np.ndarray]],
) -> None:
    lr, hr = pairs[0]
    reported = _with_invented_detail(hr, 1)
    np.testing.assert_array_equal(enforce_consistency(lr, reported, iterations=0), reported)
    psnrs = [lr_consistency_psnr(lr, enforce_consistency(lr, reported, count)) for count in range(3)]
    assert psnrs[0] < psnrs[1] < psnrs[2]
    with pytest.raises(ValueError, match="iterations must be 0 or more, got -1"):
        enforce_consistency(lr, reported, iterations=-1)


def test_guard_reports_flags_and_projects(pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    lr, hr = pairs[0]
    reported = _with_invented_detail(hr, 2)
    psnr = round(lr_consistency_psnr(lr, reported), 2)
    image, report = guard(lr, reported, "report", low_db=psnr + 1)
    assert image is reported and report == FidelityReport("report", psnr, True)
    assert report.headers() == {"X-LR-Consistency-PSNR": f"{psnr:.2f}", "X-LR-Consistency-Low": "1"}
    image, report = guard(lr, reported, "enforce", low_db=psnr + 1)
    np.testing.assert_array_equal(image, enforce_consistency(lr, reported, BACK_PROJECTION_ITERATIONS))
    assert report.mode == "enforce" and report.psnr_db > psnr + 1 and not report.low
    assert report.headers() == {"X-LR-Consistency-PSNR": f"{report.psnr_db:.2f}"}
    with pytest.raises(ValueError, match="consistency must be one of report, enforce, got 'always'"):
        guard(lr, reported, "always", low_db=0)  # type: ignore[arg-type]

"""Per-image scores and their per-group summary, on real X-rays."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SHARED_DATA
from xraysr.training.metrics import bicubic_upscale, psnr
from xraysr.training.scoring import gradient_magnitude, markdown_summary, score_image, summarize_by_group


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    folder = SHARED_DATA / "cxr"
    if not (folder / "HR_256").is_dir():
        pytest.skip(f"needs ../shared/data: the CXR set (not found at {folder})")
    name = sorted(path.name for path in (folder / "HR_256").glob("*.png"))[0]
    return np.asarray(Image.open(folder / "LR_64" / name)), np.asarray(Image.open(folder / "HR_256" / name))


def test_score_image_against_hr_and_the_baselines(pair: tuple[np.ndarray, np.ndarray]) -> None:
    lr, hr = pair
    bicubic = bicubic_upscale(lr, 256)
    scores = score_image(bicubic, hr, lr)
    assert scores["psnr_model"] == scores["psnr_bicubic"] == pytest.approx(psnr(bicubic, hr))
    assert scores["psnr_bilinear"] != scores["psnr_bicubic"]
    assert 0 < scores["sharpness_bilinear"] < scores["sharpness_bicubic"] < 1.2  # bilinear is the blurrier
    assert scores["spearman_uncertainty"] is None
    assert score_image(hr, hr, lr)["sharpness_model"] == pytest.approx(1.0)


def test_an_uncertainty_map_that_is_the_error_ranks_it_perfectly(pair: tuple[np.ndarray, np.ndarray]) -> None:
    lr, hr = pair
    sr = bicubic_upscale(lr, 256)
    error = np.abs(sr.astype(np.float32) - hr.astype(np.float32))
    assert score_image(sr, hr, lr, uncertainty=error)["spearman_uncertainty"] == pytest.approx(1.0)
    assert score_image(sr, hr, lr, uncertainty=-error)["spearman_uncertainty"] == pytest.approx(-1.0)
    assert score_image(sr, hr, lr, uncertainty=np.zeros_like(error))["spearman_uncertainty"] is None


def test_gradient_magnitude_of_flat_and_edged_images() -> None:
    assert gradient_magnitude(np.full((32, 32), 100, np.uint8)) == 0
    edge = np.zeros((32, 32), np.uint8)
    edge[:, 16:] = 200
    assert gradient_magnitude(edge) > 0


def test_summaries_by_group_put_adults_first_and_pediatric_beside(pair: tuple[np.ndarray, np.ndarray]) -> None:
    lr, hr = pair
    good = {**score_image(hr, hr, lr), "source": "nih_starter"}
    bad = {**score_image(np.zeros_like(hr), hr, lr), "source": "pediatric"}
    summaries = summarize_by_group([good, bad, {**good, "source": "cxr"}])
    assert list(summaries) == ["adult", "pediatric", "source:cxr", "source:nih_starter", "source:pediatric", "all"]
    assert summaries["adult"]["images"] == 2 and summaries["pediatric"]["images"] == 1
    assert summaries["adult"]["vs_bicubic"]["wins_psnr"] == 1.0
    assert summaries["pediatric"]["vs_bicubic"]["wins_psnr"] == 0.0
    assert summaries["all"]["vs_bilinear"]["wins_psnr"] == pytest.approx(2 / 3)
    table = markdown_summary(summaries, "title")
    assert table.startswith("title") and "| pediatric | 1 |" in table

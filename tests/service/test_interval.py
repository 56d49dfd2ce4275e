"""service/interval.py and the interval every JSON answer carries, on a real server with the shipped model (its
manifests hold the calibrated interval; no shared data needed)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.service.serving import DEFAULT_ENGINES
from xraysr.service.interval import FEATURES, box_mean, factor, half_width
from xraysr.service.manifest import IntervalSpec, read_manifest
from xraysr.service.settings import SettingsError, load_settings
from xraysr.service.tools.local_server import local_server

JSON = {"content-type": "image/png", "accept": "application/json"}


def _png(size: int = 64) -> bytes:
    ramp = np.add.outer(np.arange(size), np.arange(size)) * (255 / (2 * size - 2))
    texture = 20 * np.sin(np.arange(size)[:, None] / 3.0) * np.cos(np.arange(size)[None, :] / 5.0)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.rint(ramp + texture), 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _levels(encoded: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))))


def _spec(**changes: object) -> IntervalSpec:
    values: dict[str, object] = {
        "features": FEATURES,
        "weights": (0.5,) + (0.0,) * (len(FEATURES) - 1),
        "coverages": (0.5, 0.9, 0.99),
        "factors": {"estimate": (1.0, 2.0, 4.0)},
    }
    return IntervalSpec.model_validate({**values, **changes})


def test_box_mean_is_the_window_mean_with_the_border_replicated() -> None:
    values = np.random.default_rng(0).random((9, 13)).astype(np.float32)
    padded = np.pad(values, 3, mode="edge")
    naive = np.array([[padded[i : i + 7, j : j + 7].mean() for j in range(13)] for i in range(9)])
    np.testing.assert_allclose(box_mean(values, 3), naive, rtol=1e-5)


def test_the_factor_interpolates_and_refuses_what_was_not_calibrated() -> None:
    spec = _spec()
    assert factor(spec, "estimate", 0.7) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="outside the calibrated 0.5..0.99"):
        factor(spec, "estimate", 0.995)
    with pytest.raises(ValueError, match="not calibrated for 'samples'"):
        factor(spec, "samples", 0.9)
    answer = np.full((8, 8), 100, np.uint8)
    np.testing.assert_allclose(half_width(answer, answer, spec, "estimate", 0.9), 2.0 * np.exp(0.5), rtol=1e-6)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"coverages": (0.9, 0.5, 0.99)}, "coverages must ascend"),
        ({"factors": {"estimate": (2.0, 1.0, 4.0)}}, "must not fall"),
        ({"weights": (0.0,)}, "weights for"),
        ({"coverages": (0.5, 0.9, 1.0)}, "strictly between 0 and 1"),
    ],
)
def test_a_broken_interval_spec_is_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _spec(**changes)


def test_the_shipped_model_is_calibrated_for_both_answers_at_both_precisions() -> None:
    for precision in ("fp32", "int8"):
        spec = read_manifest(DEFAULT_ENGINES / "cxr-default", precision).interval
        assert spec is not None and set(spec.factors) == {"estimate", "samples"}, precision
        assert spec.coverages[0] <= 0.9 <= spec.coverages[-1]


def test_a_coverage_outside_the_settings_range_stops_start_up() -> None:
    with pytest.raises(SettingsError, match="uncertainty_coverage"):
        load_settings(uncertainty_coverage=0.995)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[float, str]]:
    """The shipped model at the default coverage (0.9), and at 0.8 and 0.95."""
    folder = tmp_path_factory.mktemp("interval")
    with (
        local_server(DEFAULT_ENGINES, "cxr-default", log=folder / "90.log") as default,
        local_server(
            DEFAULT_ENGINES, "cxr-default", env={"XRAYSR_UNCERTAINTY_COVERAGE": "0.8"}, log=folder / "80.log"
        ) as low,
        local_server(
            DEFAULT_ENGINES, "cxr-default", env={"XRAYSR_UNCERTAINTY_COVERAGE": "0.95"}, log=folder / "95.log"
        ) as high,
    ):
        yield {0.9: default, 0.8: low, 0.95: high}


def test_the_default_answer_carries_the_calibrated_interval(servers: dict[float, str]) -> None:
    answer = httpx.post(f"{servers[0.9]}/upscale", content=_png(), headers=JSON, timeout=60).json()
    assert answer["answer"] == "estimate"
    assert answer["uncertainty_coverage"] == 0.9
    levels = _levels(answer["uncertainty_png_base64"])
    assert levels.shape == (256, 256) and levels.std() > 0  # not a constant
    assert 0 < np.percentile(levels, 99) < 255  # the scale keeps a typical map off saturation
    assert answer["uncertainty_mean"] == pytest.approx(levels.mean() * answer["uncertainty_scale"], abs=0.3)
    assert answer["samples_png_base64"] is None
    assert "interval" in answer["stage_ms"]


def test_a_wider_coverage_gives_a_wider_interval_at_every_pixel(servers: dict[float, str]) -> None:
    maps = {
        coverage: _levels(
            httpx.post(f"{url}/upscale", content=_png(), headers=JSON, timeout=60).json()["uncertainty_png_base64"]
        )
        for coverage, url in servers.items()
    }
    assert np.all(maps[0.95] >= maps[0.9]) and np.all(maps[0.9] >= maps[0.8])
    assert maps[0.95].mean() > maps[0.8].mean()


def test_samples_carry_their_images_and_a_calibrated_map(servers: dict[float, str]) -> None:
    url = f"{servers[0.9]}/upscale?samples=3&steps=10&seed=5"
    answer = httpx.post(url, content=_png(), headers=JSON, timeout=120).json()
    assert answer["answer"] == "samples" and answer["uncertainty_coverage"] == 0.9
    samples = np.stack([_levels(png) for png in answer["samples_png_base64"]])
    assert samples.shape == (3, 256, 256)
    assert len({sample.tobytes() for sample in samples}) == 3  # three seeds, three images
    mean = samples.astype(np.float64).mean(axis=0)
    assert np.abs(mean - _levels(answer["image_png_base64"])).max() <= 1.0  # the answer is their mean
    assert _levels(answer["uncertainty_png_base64"]).std() > 0
    one = httpx.post(f"{servers[0.9]}/upscale?samples=1&steps=10", content=_png(), headers=JSON, timeout=60).json()
    assert one["samples_png_base64"] is None  # one sample is the answer itself


def test_png_and_dicom_answers_say_nothing_new(servers: dict[float, str], tmp_path: Path) -> None:
    response = httpx.post(f"{servers[0.9]}/upscale", content=_png(), headers={"content-type": "image/png"})
    text = Image.open(io.BytesIO(response.content)).text
    assert not any("interval" in key or "uncertainty" in key for key in text)

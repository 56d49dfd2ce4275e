"""service/python_api.py: ``xraysr.load().upscale()`` gives the server's answer, byte for byte, batched or not."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

import xraysr
from tests.service.serving import DEFAULT_ENGINES
from xraysr.service.tools.local_server import local_server


def _xray(shift: int) -> np.ndarray:
    ramp = np.add.outer(np.arange(64), np.arange(64)) * 2 + shift
    texture = 15 * np.sin(np.arange(64)[:, None] / (2.0 + shift / 10)) * np.cos(np.arange(64)[None, :] / 4.0)
    return np.clip(np.rint(ramp + texture), 0, 255).astype(np.uint8)


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _decoded(encoded: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))))


@pytest.fixture(scope="module")
def upscaler() -> xraysr.Upscaler:
    return xraysr.load(engines_dir=DEFAULT_ENGINES, precision="fp32")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("api") / "server.log"
    with local_server(DEFAULT_ENGINES, "cxr-default", precision="fp32", log=log) as url:
        yield url


@pytest.mark.parametrize("query", [{}, {"samples": 2, "steps": 10, "seed": 7}])
def test_the_python_api_gives_the_servers_answer(upscaler: xraysr.Upscaler, server: str, query: dict) -> None:
    lr = _xray(3)
    options = {"samples": query.get("samples"), "steps": query.get("steps"), "seed": query.get("seed", 0)}
    result = upscaler.upscale(lr, **options)
    answer = httpx.post(
        f"{server}/upscale", params=query, content=_png(lr), headers={"accept": "application/json"}, timeout=60
    ).json()
    np.testing.assert_array_equal(result.image, _decoded(answer["image_png_base64"]))
    assert (result.answer, result.steps, result.seed, result.coverage) == (
        answer["answer"],
        answer["steps"],
        answer["seed"],
        answer["uncertainty_coverage"],
    )
    levels = np.clip(np.round(result.interval / answer["uncertainty_scale"]), 0, 255)
    np.testing.assert_array_equal(levels, _decoded(answer["uncertainty_png_base64"]))
    if query:
        assert result.samples is not None and result.samples.shape == (2, 256, 256)
        for mine, theirs in zip(result.samples, answer["samples_png_base64"], strict=True):
            np.testing.assert_array_equal(mine, _decoded(theirs))


def test_a_batch_gives_each_image_what_it_gets_alone(upscaler: xraysr.Upscaler) -> None:
    images = [_xray(shift) for shift in (0, 5, 9)]
    batched = upscaler.upscale_batch(images, samples=2, steps=10, seeds=[1, 2, 3])
    for image, seed, result in zip(images, (1, 2, 3), batched, strict=True):
        np.testing.assert_array_equal(result.image, upscaler.upscale(image, samples=2, steps=10, seed=seed).image)


def test_16_bit_input_is_mapped_like_a_16_bit_png_and_bad_arrays_are_refused(upscaler: xraysr.Upscaler) -> None:
    lr = _xray(1)
    sixteen = lr.astype(np.uint16) * 257  # 8-bit v is 16-bit 257 v: full range to full range
    np.testing.assert_array_equal(upscaler.upscale(sixteen).image, upscaler.upscale(lr).image)
    for bad in (lr.astype(np.float32), lr[:32], np.stack([lr, lr])):
        with pytest.raises(ValueError, match=r"expected a \(64, 64\) uint8 or uint16 array"):
            upscaler.upscale(bad)
    with pytest.raises(ValueError, match="seed"):
        upscaler.upscale_batch([lr], samples=2, seeds=[-1])

"""service/python_api.py: ``xraysr.load().upscale()`` gives the server's answer, byte for byte, batched or not,
and the CLI's: one finishing step (service/answer.py) behind the route, `xraysr upscale` and the Python API."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

import xraysr
from tests.service.dicom_files import dicom_file
from tests.service.serving import DEFAULT_ENGINES
from xraysr.service.cli import main
from xraysr.service.tools.local_server import local_server

# The HTTP query options and the CLI flags that ask for the same answer: the estimate, the loop, the projection.
ANSWERS = [
    ({}, []),
    ({"samples": 2, "steps": 10, "seed": 7}, ["--samples", "2", "--steps", "10", "--seed", "7"]),
    ({"consistency": "enforce"}, ["--consistency", "enforce"]),
]


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
    return xraysr.load(engines_dir=DEFAULT_ENGINES, precision="fp32", backend="onnxruntime")


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
    levels = np.clip(np.round(result.uncertainty / answer["uncertainty_scale"]), 0, 255)
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


def test_a_coverage_the_interval_was_not_calibrated_for_is_refused(
    upscaler: xraysr.Upscaler, monkeypatch: pytest.MonkeyPatch
) -> None:
    def not_run(*args: object) -> None:
        raise AssertionError("the engines ran")

    monkeypatch.setattr(upscaler.pipeline, "answer_batch", not_run)
    with pytest.raises(ValueError, match="coverage 0.3 is outside the calibrated 0.5..0.99"):
        upscaler.upscale(_xray(1), coverage=0.3)


def test_skipping_the_map_changes_nothing_else(upscaler: xraysr.Upscaler) -> None:
    image = _xray(3)
    full, bare = upscaler.upscale(image), upscaler.upscale(image, uncertainty=False)
    assert full.uncertainty is not None and full.coverage == 0.9 and "interval" in full.stage_ms
    assert bare.uncertainty is None and bare.coverage is None and "interval" not in bare.stage_ms
    np.testing.assert_array_equal(bare.image, full.image)
    assert bare.consistency == full.consistency


def test_16_bit_input_is_mapped_like_a_16_bit_png_and_bad_arrays_are_refused(upscaler: xraysr.Upscaler) -> None:
    lr = _xray(1)
    sixteen = lr.astype(np.uint16) * 257  # 8-bit v is 16-bit 257 v: full range to full range
    np.testing.assert_array_equal(upscaler.upscale(sixteen).image, upscaler.upscale(lr).image)
    for bad in (lr.astype(np.float32), lr[:32], np.stack([lr, lr])):
        with pytest.raises(ValueError, match=r"expected a \(64, 64\) uint8 or uint16 array"):
            upscaler.upscale(bad)
    with pytest.raises(ValueError, match="seed"):
        upscaler.upscale_batch([lr], samples=2, seeds=[-1])


@pytest.mark.parametrize(("query", "flags"), ANSWERS, ids=["estimate", "loop", "enforce"])
def test_the_api_the_server_and_the_cli_give_the_same_answer(
    upscaler: xraysr.Upscaler, server: str, tmp_path: Path, query: dict, flags: list[str]
) -> None:
    lr = _xray(4)
    result = upscaler.upscale(lr, **query)
    answer = httpx.post(
        f"{server}/upscale", params=query, content=_png(lr), headers={"accept": "application/json"}, timeout=60
    ).json()
    np.testing.assert_array_equal(result.image, _decoded(answer["image_png_base64"]))
    assert (result.consistency.mode, result.consistency.psnr_db, result.consistency.low) == (
        answer["consistency"],
        answer["lr_consistency_psnr"],
        answer["lr_consistency_low"],
    )
    assert result.coverage == answer["uncertainty_coverage"] == 0.9  # cxr-default's interval, at the default
    assert result.uncertainty is not None
    assert float(result.uncertainty.mean()) == pytest.approx(answer["uncertainty_mean"], abs=5e-5)
    # The same stages as the route's, less the server's own (queue, png).
    assert list(result.stage_ms) == [stage for stage in answer["stage_ms"] if stage not in ("queue", "png")]

    source, output = tmp_path / "lr.png", tmp_path / "sr.png"
    source.write_bytes(_png(lr))
    model = ["--engines-dir", str(DEFAULT_ENGINES), "--model", "cxr-default", "--precision", "fp32"]
    assert main(["upscale", str(source), "-o", str(output), *flags, *model]) == 0
    # Not only the pixels: the file is the server's PNG, provenance (and the projection's note) included.
    assert output.read_bytes() == base64.b64decode(answer["image_png_base64"])
    np.testing.assert_array_equal(np.asarray(Image.open(output)), result.image)


def test_a_path_a_dicom_and_a_pil_image_are_decoded_as_the_server_decodes_uploads(
    upscaler: xraysr.Upscaler, tmp_path: Path
) -> None:
    lr = _xray(2)
    expected = upscaler.upscale(lr).image
    png, sixteen, dicom = tmp_path / "lr.png", tmp_path / "lr16.png", tmp_path / "lr.dcm"
    png.write_bytes(_png(lr))
    Image.fromarray(lr.astype(np.uint16) * 257).save(sixteen)  # a 16-bit PNG, rescaled as the server does
    dicom.write_bytes(dicom_file(lr))
    for image in (png, str(png), sixteen, dicom, Image.fromarray(lr), Image.fromarray(lr).convert("RGB")):
        result = upscaler.upscale(image)
        np.testing.assert_array_equal(result.image, expected)
        assert list(result.stage_ms)[0] == "decode"
    with pytest.raises(ValueError, match="expected a 64x64 image, got 32x32"):
        upscaler.upscale(Image.fromarray(lr[:32, :32]))
    with pytest.raises(ValueError, match="the file is empty"):
        (tmp_path / "empty.png").write_bytes(b"")
        upscaler.upscale(tmp_path / "empty.png")
    with pytest.raises(TypeError, match="a numpy array, a path or a PIL image"):
        upscaler.upscale(b"not a path")  # type: ignore[arg-type]


def test_upscale_batch_takes_every_option_per_call_and_a_seed_per_image(upscaler: xraysr.Upscaler) -> None:
    images = [_xray(1), _xray(6)]
    batched = upscaler.upscale_batch(images, steps=10, samples=1, seeds=[4, 5], coverage=0.8, consistency="enforce")
    for image, seed, result in zip(images, (4, 5), batched, strict=True):
        alone = upscaler.upscale(image, steps=10, samples=1, seed=seed, coverage=0.8, consistency="enforce")
        np.testing.assert_array_equal(result.image, alone.image)
        np.testing.assert_array_equal(result.uncertainty, alone.uncertainty)
        assert (result.seed, result.coverage, result.consistency) == (seed, 0.8, alone.consistency)
    assert upscaler.upscale_batch([]) == []


def test_load_takes_the_backend_as_the_server_does() -> None:
    with pytest.raises(ValueError, match="backend: Input should be 'onnxruntime' or 'tensorrt'"):
        xraysr.load(engines_dir=DEFAULT_ENGINES, backend="cuda")  # type: ignore[arg-type]

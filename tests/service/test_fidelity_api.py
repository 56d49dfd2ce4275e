"""The fidelity guard on POST /upscale, and POST /shrink: in-process, with the tiny real engine."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr

from tests import xrays
from tests.service.conftest import bomb_png, png_of
from tests.service.dicom_files import dicom_file
from xraysr.service.app import create_app
from xraysr.service.consistency import BACK_PROJECTION_ITERATIONS, lr_consistency_psnr
from xraysr.service.resize import resize_cubic
from xraysr.service.settings import Settings
from xraysr.service.shrink import RECIPE, shrink

PNG = {"content-type": "image/png"}
AS_JSON = {"content-type": "image/png", "accept": "application/json"}


@pytest.fixture(scope="module")
def client(engine_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(engine_settings), base_url="http://localhost") as client:
        yield client


@pytest.fixture(scope="module")
def full_size_png() -> bytes:
    return xrays.raw_path(0).read_bytes()


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _upscale(client: TestClient, lr_png: bytes, headers: dict[str, str], **params: object) -> httpx.Response:
    response = client.post("/upscale", params={"steps": 2, "seed": 5, **params}, headers=headers, content=lr_png)
    assert response.status_code == 200, response.text
    return response


def test_every_answer_reports_the_consistency_of_the_image_it_carries(client: TestClient, lr_png: bytes) -> None:
    lr = _pixels(lr_png)
    response = _upscale(client, lr_png, PNG)
    expected = lr_consistency_psnr(lr, _pixels(response.content))
    assert response.headers["x-lr-consistency-psnr"] == f"{expected:.2f}"
    body = _upscale(client, lr_png, AS_JSON).json()
    assert body["lr_consistency_psnr"] == round(expected, 2) and body["consistency"] == "report"
    assert isinstance(body["lr_consistency_low"], bool)
    np.testing.assert_array_equal(_pixels(base64.b64decode(body["image_png_base64"])), _pixels(response.content))


def test_the_json_answer_carries_the_bicubic_baseline(client: TestClient, lr_png: bytes) -> None:
    body = _upscale(client, lr_png, AS_JSON).json()
    bicubic = _pixels(base64.b64decode(body["bicubic_png_base64"]))
    np.testing.assert_array_equal(bicubic, resize_cubic(_pixels(lr_png), 256, 256))


def test_enforce_raises_the_consistency_and_keeps_an_8bit_256_answer(client: TestClient, lr_png: bytes) -> None:
    lr = _pixels(lr_png)
    reported = _upscale(client, lr_png, PNG, consistency="report")
    enforced = _upscale(client, lr_png, PNG, consistency="enforce")
    image = Image.open(io.BytesIO(enforced.content))
    assert (image.size, image.mode) == ((256, 256), "L")
    assert float(enforced.headers["x-lr-consistency-psnr"]) > float(reported.headers["x-lr-consistency-psnr"])
    assert float(enforced.headers["x-lr-consistency-psnr"]) == round(lr_consistency_psnr(lr, np.asarray(image)), 2)
    assert image.text["xraysr-consistency"] == f"enforce: {BACK_PROJECTION_ITERATIONS} back-projection iterations"
    assert image.text["xraysr-seed"] == "5" and "not for diagnosis" in image.text["Disclaimer"]
    body = _upscale(client, lr_png, AS_JSON, consistency="enforce").json()
    assert body["consistency"] == "enforce"
    np.testing.assert_array_equal(_pixels(base64.b64decode(body["image_png_base64"])), np.asarray(image))


def test_a_bad_consistency_mode_is_422(client: TestClient, lr_png: bytes) -> None:
    response = client.post("/upscale", params={"consistency": "always"}, headers=PNG, content=lr_png)
    assert response.status_code == 422
    assert response.json()["detail"].startswith("consistency: Input should be 'report' or 'enforce'")


@pytest.mark.parametrize("low_db", [0.0, 100.0])
def test_a_low_consistency_is_flagged(engine_settings: Settings, lr_png: bytes, low_db: float) -> None:
    settings = engine_settings.model_copy(update={"lr_consistency_low_db": low_db})
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        response = _upscale(client, lr_png, PNG)
        body = _upscale(client, lr_png, AS_JSON).json()
    flagged = float(response.headers["x-lr-consistency-psnr"]) < low_db
    assert flagged == (low_db == 100.0)  # every PSNR is below 100 dB and none below 0
    assert response.headers.get("x-lr-consistency-low") == ("1" if flagged else None)
    assert body["lr_consistency_low"] is flagged


def test_metrics_hold_the_consistency_histogram(engine_settings: Settings, lr_png: bytes) -> None:
    with TestClient(create_app(engine_settings), base_url="http://localhost") as client:
        psnrs = [float(_upscale(client, lr_png, PNG).headers["x-lr-consistency-psnr"]) for _ in range(2)]
        _upscale(client, lr_png, PNG, consistency="enforce")
        text = client.get("/metrics").text
    assert 'xraysr_lr_consistency_psnr_db_count{mode="report"} 2.0' in text
    assert 'xraysr_lr_consistency_psnr_db_count{mode="enforce"} 1.0' in text
    assert f'xraysr_lr_consistency_psnr_db_sum{{mode="report"}} {sum(psnrs)}' in text


def test_a_full_size_image_is_refused_saying_who_the_model_is_for(client: TestClient, full_size_png: bytes) -> None:
    response = client.post("/upscale", headers=PNG, content=full_size_png[:1_000_000])
    assert response.status_code == 422
    assert response.json()["detail"] == (
        "expected a 64x64 image, got 1024x1024: xraysr enlarges 4x chest X-rays of exactly that size (thumbnails, "
        "downsampled archives); make one from a full-size image with `xraysr shrink IN -o OUT` or POST /shrink"
    )
    small = client.post("/upscale", headers=PNG, content=png_of(np.zeros((32, 48), np.uint8)))
    assert small.json()["detail"] == (
        "expected a 64x64 image, got 48x32: xraysr enlarges 4x chest X-rays of exactly that size (thumbnails, "
        "downsampled archives); this one is smaller, and enlarging it would not give the model what it was trained on"
    )


# --- POST /shrink ------------------------------------------------------------------------------------------------


def test_shrink_answers_the_recipes_64x64_png(client: TestClient, full_size_png: bytes) -> None:
    expected = shrink(_pixels(full_size_png))
    for request in (
        {"content": full_size_png, "headers": PNG},
        {"content": full_size_png},  # sniffed
        {"files": {"file": ("xray.png", full_size_png, "image/png")}},
        {"content": dicom_file(_pixels(full_size_png)), "headers": {"content-type": "application/dicom"}},
    ):
        response = client.post("/shrink", **request)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        assert response.headers["x-shrink-recipe"] == RECIPE == "centre-square, area to 256, cubic to 64"
        assert response.headers["x-original-size"] == "1024x1024"
        np.testing.assert_array_equal(_pixels(response.content), expected)
    # What /shrink answers is what /upscale takes.
    assert client.post("/upscale", params={"steps": 2}, headers=PNG, content=response.content).status_code == 200


@pytest.mark.parametrize(
    ("content", "status", "detail"),
    [
        (b"", 400, "the request body is empty"),
        (b"hello", 422, "the body is not a PNG"),
        (png_of(np.zeros((200, 300), np.uint8)), 422, "the image is 300x200; shrinking needs a short side of at "),
        (bomb_png(4097, 4097), 422, "over this server's limit of 16777216 pixels (decompression-bomb guard)"),
    ],
)
def test_shrink_refuses_what_it_cannot_shrink(client: TestClient, content: bytes, status: int, detail: str) -> None:
    response = client.post("/shrink", headers=PNG, content=content)
    assert response.status_code == status
    assert detail in response.json()["detail"]


def test_shrink_bounds_the_body_and_shares_the_token_and_query_checks(
    engine_settings: Settings, full_size_png: bytes
) -> None:
    key = "k" * 24
    settings = engine_settings.model_copy(update={"api_key": SecretStr(key), "max_shrink_body_bytes": 4096})
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        assert client.post("/shrink", headers=PNG, content=full_size_png).status_code == 401
        authorised = {**PNG, "authorization": f"Bearer {key}"}
        too_large = client.post("/shrink", headers=authorised, content=full_size_png)
        assert too_large.status_code == 413
        assert too_large.json()["detail"].endswith("this server accepts at most 4096 bytes")
        unknown = client.post("/shrink", params={"size": 32}, headers=authorised, content=full_size_png)
        assert unknown.status_code == 422
        assert unknown.json()["detail"] == "unknown query parameter(s): size; /shrink takes none"
        assert 'xraysr_requests_total{endpoint="/shrink",status="413"} 1.0' in client.get(
            "/metrics", headers={"authorization": f"Bearer {key}"}
        ).text

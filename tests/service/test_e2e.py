"""The real server: `python -m service.cli serve` in a subprocess on a free loopback port, spoken to over HTTP.

Every /upscale request goes through `Server.upscale`, which counts the statuses it received, so the last test
can check that /metrics counted exactly those.
"""

from __future__ import annotations

import base64
import collections
import io
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.service.dicom_files import dicom_file
from xraysr.service.tools.local_server import local_server

MAX_BODY_BYTES = 16 * 1024
STAGES = ["decode", "queue", "encode", "denoise", "vae_decode", "png", "consistency", "total"]


class Server:
    def __init__(self, base_url: str, log: Path) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30)
        self.log = log
        self.upscale_statuses: collections.Counter[int] = collections.Counter()

    def upscale(self, body: Any = None, content_type: str | None = "image/png", **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if content_type is not None:
            headers["content-type"] = content_type
        response = self.http.post("/upscale", content=body, headers=headers, **kwargs)
        self.upscale_statuses[response.status_code] += 1
        return response


@pytest.fixture(scope="module")
def server(tiny_engine_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("e2e") / "server.log"
    settings = {"XRAYSR_MAX_BODY_BYTES": str(MAX_BODY_BYTES), "XRAYSR_THREADS": "1"}
    with local_server(tiny_engine_dir.parent, tiny_engine_dir.name, ready_timeout=60, env=settings, log=log) as url:
        server = Server(url, log)
        try:
            yield server
        finally:
            server.http.close()


def _png_image(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


def test_readyz_names_the_model(server: Server) -> None:
    ready = server.http.get("/readyz").json()
    assert ready.pop("precision_choice").startswith("auto: fp32")  # the tiny model has no INT8 manifest
    assert ready == {
        "status": "ready",
        "model": "tiny",
        "version": "tiny-test",
        "backend": "onnxruntime",
        "precision": "fp32",
        "default_answer": "estimate",
    }


def test_a_real_x_ray_comes_back_256_grayscale_with_its_headers(server: Server, lr_png: bytes) -> None:
    response = server.upscale(lr_png, params={"seed": 12345, "samples": 1})
    image = _png_image(response)
    assert (image.size, image.mode) == ((256, 256), "L")
    assert response.headers["x-seed"] == "12345"
    assert response.headers["x-steps"] == "4"
    assert response.headers["x-model-version"] == "tiny-test"
    timing = {
        name: duration.split(";")[0]
        for name, duration in (entry.split(";dur=") for entry in response.headers["server-timing"].split(", "))
    }
    assert list(timing) == STAGES and all(float(ms) >= 0 for ms in timing.values())
    assert float(timing["total"]) >= float(timing["denoise"])


def test_the_default_answer_is_one_pass_and_the_same_for_any_seed(server: Server, lr_png: bytes) -> None:
    """On a real uvicorn: no sampling options → the estimate, one network pass, the same bytes for every seed."""
    answers = [server.upscale(lr_png, params=params) for params in ({}, {"seed": 1}, {"seed": 2**31 - 1})]
    assert all(answer.status_code == 200 for answer in answers)
    assert answers[0].content == answers[1].content == answers[2].content
    headers = answers[1].headers
    assert (headers["x-answer"], headers["x-steps"], headers["x-samples"], "x-seed" in headers) == (
        "estimate", "1", "0", False
    )
    assert 'denoise;dur=' in headers["server-timing"] and 'desc="1 pass"' in headers["server-timing"]
    loop = server.upscale(lr_png, params={"seed": 1, "samples": 2})
    assert (loop.headers["x-answer"], loop.headers["x-samples"], loop.headers["x-steps"]) == ("samples", "2", "4")
    assert 'desc="4 steps x 2 samples"' in loop.headers["server-timing"]
    assert loop.content != answers[0].content


def test_the_same_seed_twice_gives_identical_bytes(server: Server, lr_png: bytes) -> None:
    first = server.upscale(lr_png, params={"seed": 99, "steps": 2})
    second = server.upscale(lr_png, params={"seed": 99, "steps": 2})
    assert first.status_code == second.status_code == 200
    assert first.content == second.content


def test_multipart_and_json(server: Server, lr_png_paths: list[Path]) -> None:
    lr_png = lr_png_paths[1].read_bytes()
    files = {"file": (lr_png_paths[1].name, lr_png, "image/png")}
    response = server.http.post("/upscale", params={"seed": 5, "steps": 2}, files=files)
    server.upscale_statuses[response.status_code] += 1
    assert _png_image(response).size == (256, 256)
    as_json = server.upscale(lr_png, params={"seed": 5, "steps": 2}, headers={"accept": "application/json"})
    assert as_json.status_code == 200 and as_json.headers["content-type"] == "application/json"
    body = as_json.json()
    assert (body["width"], body["height"], body["steps"], body["seed"]) == (256, 256, 2, 5)
    assert body["model_version"] == "tiny-test" and body["input_conversion"] is None
    assert list(body["stage_ms"]) == STAGES
    assert base64.b64decode(body["image_png_base64"]) == response.content  # same seed, same image either way


def test_every_bad_input_is_a_4xx_with_a_detail(
    server: Server,
    lr_png: bytes,
    make_png: Callable[[np.ndarray], bytes],
    make_bomb_png: Callable[[int, int], bytes],
) -> None:
    def refused(response: httpx.Response, status: int, *fragments: str) -> None:
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        detail = response.json()["detail"]
        assert isinstance(detail, str)
        for fragment in fragments:
            assert fragment in detail, detail

    refused(server.upscale(b"this is not an image"), 422, "not a PNG")
    refused(server.upscale(lr_png[: len(lr_png) // 2]), 422, "truncated")
    refused(server.upscale(make_png(np.zeros((96, 128), np.uint8))), 422, "128x96")
    refused(server.upscale(b""), 400, "empty")
    refused(server.upscale(b"\0" * (MAX_BODY_BYTES + 1)), 413, f"at most {MAX_BODY_BYTES} bytes")
    chunked = server.upscale(iter([b"\0" * 4096] * 8))  # no Content-Length: the cap is applied while reading
    assert "content-length" not in chunked.request.headers
    refused(chunked, 413, f"over {MAX_BODY_BYTES} bytes")
    refused(server.upscale(make_bomb_png(50000, 50000)), 422, "decompression bomb")  # Pillow's own guard
    refused(server.upscale(make_bomb_png(5000, 5000)), 422, "5000x5000", "decompression-bomb guard")  # xraysr's
    refused(server.upscale(lr_png, content_type="text/plain"), 415, "text/plain")
    refused(server.upscale(b"garbage", content_type="multipart/form-data; boundary=zzz"), 400, "multipart")
    no_file = server.http.post("/upscale", files={"image": ("lr.png", lr_png, "image/png")})
    server.upscale_statuses[no_file.status_code] += 1
    refused(no_file, 422, "a file field named 'file'")
    refused(server.upscale(lr_png, params={"steps": 51}), 422, "between 2 and 50")
    refused(server.upscale(lr_png, params={"steps": 1}), 422, "between 2 and 50")
    refused(server.upscale(lr_png, params={"steps": "ten"}), 422, "steps", "valid integer")
    refused(server.upscale(lr_png, params={"step": 10}), 422, "unknown query parameter(s): step")
    absurd = dicom_file(np.zeros((64, 64), np.uint16), bits_stored=16, RescaleIntercept=1e300)
    refused(server.upscale(absurd, content_type="application/dicom"), 422, "RescaleIntercept")  # was a 500
    # The server is still serving.
    assert server.http.get("/healthz").json() == {"status": "alive"}
    assert _png_image(server.upscale(lr_png, params={"seed": 1, "steps": 2})).size == (256, 256)


def test_samples_average_and_report_their_spread(server: Server, lr_png: bytes) -> None:
    as_json = {"accept": "application/json"}
    four = server.upscale(lr_png, params={"seed": 7, "steps": 2, "samples": 4}, headers=as_json)
    assert four.status_code == 200, four.text
    assert four.headers["x-samples"] == "4" and four.headers["x-seed"] == "7"
    body = four.json()
    # The tiny model has no calibrated interval: its map is the samples' spread, which promises no coverage.
    assert (body["samples"], body["seed"], body["uncertainty_scale"]) == (4, 7, 0.5)
    assert body["uncertainty_coverage"] is None and len(body["samples_png_base64"]) == 4
    spread = Image.open(io.BytesIO(base64.b64decode(body["uncertainty_png_base64"])))
    assert (spread.size, spread.mode) == ((256, 256), "L")
    levels = np.asarray(spread)
    assert levels.max() > 0 and body["uncertainty_mean"] > 0
    # The PNG holds round(std / scale), clipped at 255: its mean, rescaled, cannot exceed the reported mean by
    # more than half a level.
    assert levels.mean() * body["uncertainty_scale"] <= body["uncertainty_mean"] + body["uncertainty_scale"] / 2

    one = server.upscale(lr_png, params={"seed": 7, "steps": 2, "samples": 1})
    default = server.upscale(lr_png, params={"seed": 7, "steps": 2})
    assert one.headers["x-samples"] == default.headers["x-samples"] == "1"
    assert _png_image(one).size == (256, 256) and one.content == default.content  # the tiny model's default is 1
    assert base64.b64decode(body["image_png_base64"]) != one.content  # a mean of four is not the first sample
    one_json = server.upscale(lr_png, params={"seed": 7, "steps": 2, "samples": 1}, headers=as_json).json()
    assert one_json["samples"] == 1
    assert [one_json[key] for key in ("uncertainty_png_base64", "uncertainty_scale", "uncertainty_mean")] == [None] * 3
    assert base64.b64decode(one_json["image_png_base64"]) == one.content


@pytest.mark.parametrize(
    ("samples", "fragments"),
    [
        (0, ["samples must be between 1 and 8, got 0"]),
        (9, ["samples must be between 1 and 8, got 9"]),
        ("abc", ["samples", "valid integer"]),
    ],
)
def test_samples_outside_1_to_8_or_not_integers_are_422(
    server: Server, lr_png: bytes, samples: object, fragments: list[str]
) -> None:
    response = server.upscale(lr_png, params={"samples": samples, "steps": 2})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert all(fragment in detail for fragment in fragments), detail


def test_metrics_count_exactly_the_requests_made(server: Server) -> None:
    """Runs last in this module: it compares the server's counters with every /upscale made above."""
    response = server.http.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=")
    text = response.text
    counted = {
        int(status): float(value)
        for status, value in re.findall(
            r'^xraysr_requests_total\{endpoint="/upscale",status="(\d+)"\} (\S+)$', text, re.MULTILINE
        )
    }
    assert counted == {status: float(count) for status, count in server.upscale_statuses.items()}
    assert counted[200] >= 5 and counted[422] >= 8
    assert f'xraysr_stage_duration_seconds_count{{stage="denoise"}} {float(counted[200])}' in text
    assert "xraysr_inflight_requests 0.0" in text
    assert 'xraysr_model_info{backend="onnxruntime",model="tiny",precision="fp32",version="tiny-test"} 1.0' in text
    assert 500 not in counted and "Traceback" not in server.log.read_text()


def test_a_server_that_cannot_start_is_reported_with_its_own_words(tiny_engine_dir: Path) -> None:
    with (
        pytest.raises(RuntimeError, match=r"xraysr serve exited with 2: .*no-such-model"),
        local_server(tiny_engine_dir.parent, "no-such-model", ready_timeout=30),
    ):
        pass

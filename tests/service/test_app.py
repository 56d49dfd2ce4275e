"""service/app.py and service/api/*, in-process: the lifespan loads the tiny real engine once per module."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr

from xraysr.service import __version__
from xraysr.service.app import create_app
from xraysr.service.app_state import state_of
from xraysr.service.manifest import read_manifest, write_manifest
from xraysr.service.provenance import DISCLAIMER
from xraysr.service.settings import Settings

STAGES = ["decode", "queue", "encode", "denoise", "vae_decode", "png", "consistency", "total"]


@pytest.fixture(scope="module")
def client(engine_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(engine_settings), base_url="http://localhost") as client:
        yield client


def _image(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


def test_importing_the_app_loads_no_model_and_no_training_library() -> None:
    code = (
        "import sys, service.app, service.cli, service.commands\n"
        "heavy = [m for m in ('onnxruntime', 'torch', 'cv2', 'skimage', 'diffusers') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_before_the_lifespan_ran_it_is_alive_but_not_ready(engine_settings: Settings, lr_png: bytes) -> None:
    # No `with`: the lifespan never runs.
    unstarted = TestClient(create_app(engine_settings), base_url="http://localhost")
    assert unstarted.get("/healthz").json() == {"status": "alive"}
    ready = unstarted.get("/readyz")
    assert (ready.status_code, ready.headers["retry-after"]) == (503, "1")
    busy = unstarted.post("/upscale", content=lr_png, headers={"content-type": "image/png"})
    assert busy.status_code == 503 and busy.json() == {"detail": "the model is not loaded yet; retry shortly"}


def test_ready_names_what_is_served(client: TestClient) -> None:
    ready = client.get("/readyz").json()
    # The tiny model has no manifest.int8.json, so auto serves fp32 whatever this CPU has.
    assert ready.pop("precision_choice").startswith("auto: fp32")
    assert ready == {
        "status": "ready",
        "model": "tiny",
        "version": "tiny-test",
        "backend": "onnxruntime",
        "precision": "fp32",
        "default_answer": "estimate",
    }


def _stages(response: httpx.Response) -> dict[str, str]:
    """Server-Timing as {stage: its desc, or ""}."""
    stages = {}
    for entry in response.headers["server-timing"].split(", "):
        name, _, rest = entry.partition(";dur=")
        stages[name] = rest.partition(';desc="')[2].rstrip('"')
    return stages


def test_upscale_returns_a_256_grayscale_png_with_its_timings(client: TestClient, lr_png: bytes) -> None:
    response = client.post("/upscale", params={"seed": 7}, content=lr_png, headers={"content-type": "image/png"})
    image = _image(response)
    assert (image.size, image.mode) == ((256, 256), "L")
    headers = response.headers
    # No steps or samples: the estimate, one network pass, no noise drawn (so no seed to echo).
    assert (headers["x-answer"], headers["x-steps"], headers["x-samples"]) == ("estimate", "1", "0")
    assert "x-seed" not in headers and headers["x-model-version"] == "tiny-test"
    assert "x-input-conversion" not in headers  # an 8-bit grayscale PNG is used as is
    assert list(_stages(response)) == STAGES and _stages(response)["denoise"] == "1 pass"
    png = {"content": lr_png, "headers": {"content-type": "image/png"}}
    loop = client.post("/upscale", params={"seed": 7, "steps": 4}, **png)
    assert (loop.headers["x-answer"], loop.headers["x-steps"], loop.headers["x-seed"]) == ("samples", "4", "7")
    assert _stages(loop)["denoise"] == "4 steps x 1 sample"


def test_the_estimate_is_the_same_for_any_seed_and_the_loop_follows_its_seed(
    client: TestClient, lr_png: bytes
) -> None:
    def post(**params: int) -> httpx.Response:
        return client.post("/upscale", params=params, content=lr_png, headers={"content-type": "image/png"})

    estimate = post().content
    assert post(seed=3).content == post(seed=2**31 - 1).content == estimate
    assert post(seed=3, steps=2).content == post(seed=3, steps=2).content
    assert post(seed=3, steps=2).content != post(seed=4, steps=2).content != estimate
    assert 0 <= int(post(samples=1).headers["x-seed"]) <= 2**31 - 1


def test_multipart_json_and_conversion(client: TestClient, make_png: Callable[[np.ndarray], bytes]) -> None:
    sixteen_bit = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    response = client.post(
        "/upscale",
        params={"seed": 1, "steps": 2},
        files={"file": ("lr.png", make_png(sixteen_bit), "image/png")},
        headers={"accept": "application/json"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["x-input-conversion"] == body["input_conversion"] == "16bit_rescaled"
    assert (body["width"], body["height"], body["steps"], body["seed"]) == (256, 256, 2, 1)
    assert body["model_version"] == "tiny-test" and list(body["stage_ms"]) == STAGES
    assert Image.open(io.BytesIO(base64.b64decode(body["image_png_base64"]))).size == (256, 256)


@pytest.mark.parametrize(
    ("request_args", "status", "detail"),
    [
        ({"content": b"", "headers": {"content-type": "image/png"}}, 400, "the request body is empty"),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "content type 'text/plain'"),
        ({"content": b"hello", "headers": {"content-type": "image/png"}}, 422, "the body is not a PNG"),
        ({"content": b"x" * 2_000_000, "headers": {"content-type": "image/png"}}, 413, "at most 1048576 bytes"),
        ({"files": {"image": ("lr.png", b"x", "image/png")}}, 422, "a file field named 'file'"),
        (
            {"content": b"garbage", "headers": {"content-type": "multipart/form-data; boundary=zzz"}},
            400,
            "Invalid multipart data",
        ),
        ({"params": {"steps": 51}}, 422, "steps must be between 2 and 50 for model tiny tiny-test, got 51"),
        ({"params": {"steps": "four"}}, 422, "steps: Input should be a valid integer"),
        ({"params": {"seed": -1}}, 422, "seed: Input should be greater than or equal to 0 (got '-1')"),
    ],
)
def test_bad_requests_get_a_one_line_detail(
    client: TestClient, lr_png: bytes, request_args: dict, status: int, detail: str
) -> None:
    if "content" not in request_args and "files" not in request_args:
        request_args = {**request_args, "content": lr_png, "headers": {"content-type": "image/png"}}
    response = client.post("/upscale", **request_args)
    assert response.status_code == status
    assert detail in response.json()["detail"]


def test_a_pipeline_bug_is_a_logged_500_and_the_server_carries_on(
    client: TestClient, lr_png: bytes, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline = state_of(client.app).pipeline  # type: ignore[arg-type]

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("onnxruntime exploded")

    monkeypatch.setattr(pipeline, "upscale_batch", broken)
    with caplog.at_level(logging.ERROR, logger="xraysr.service.api.upscale"):
        response = client.post(
            "/upscale", params={"seed": 5, "steps": 4}, content=lr_png, headers={"content-type": "image/png"}
        )
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error while upscaling; the server log has the details"}
    assert "upscale failed: answer=samples steps=4 seed=5 samples=1 content-type=image/png" in caplog.text
    assert "onnxruntime exploded" in caplog.text  # the traceback is logged
    monkeypatch.undo()
    assert client.post("/upscale", content=lr_png, headers={"content-type": "image/png"}).status_code == 200


def test_metrics_count_every_upscale_whoever_answered(engine_settings: Settings, lr_png: bytes) -> None:
    with TestClient(create_app(engine_settings), base_url="http://localhost") as client:
        png = {"content": lr_png, "headers": {"content-type": "image/png"}}
        client.post("/upscale", **png)
        client.post("/upscale", params={"steps": "x"}, **png)  # refused by FastAPI before the route runs
        client.post("/upscale", params={"steps": 99}, **png)
        client.post("/upscale", content=b"", headers={"content-type": "image/png"})
        text = client.get("/metrics").text
    assert 'xraysr_requests_total{endpoint="/upscale",status="200"} 1.0' in text
    assert 'xraysr_requests_total{endpoint="/upscale",status="422"} 2.0' in text
    assert 'xraysr_requests_total{endpoint="/upscale",status="400"} 1.0' in text
    assert 'xraysr_request_duration_seconds_count{endpoint="/upscale"} 4.0' in text
    for stage in STAGES:
        assert f'xraysr_stage_duration_seconds_count{{stage="{stage}"}} 1.0' in text
    assert "xraysr_inflight_requests 0.0" in text
    assert 'xraysr_model_info{backend="onnxruntime",model="tiny",precision="fp32",version="tiny-test"} 1.0' in text


def test_a_precision_the_folder_does_not_hold_stops_start_up(engine_settings: Settings) -> None:
    settings = engine_settings.model_copy(update={"precision": "int8"})  # skips the settings' own check
    expected = f"no manifest.int8.json in {settings.model_dir}: quantize it with `xraysr quantize`"
    with pytest.raises(ValueError, match=re.escape(expected)), TestClient(create_app(settings), base_url="http://localhost"):
        pass


def test_a_manifest_of_another_precision_stops_start_up(tiny_engine_dir: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "tiny"
    shutil.copytree(tiny_engine_dir, model_dir)
    shutil.copyfile(model_dir / "manifest.json", model_dir / "manifest.int8.json")  # says fp32
    settings = Settings(engines_dir=tmp_path, model="tiny", precision="int8")
    expected = f"{model_dir / 'manifest.int8.json'} says precision fp32; --precision int8 needs int8"
    with pytest.raises(ValueError, match=re.escape(expected)), TestClient(create_app(settings), base_url="http://localhost"):
        pass


def test_without_samples_the_manifests_default_samples_are_averaged(
    tiny_engine_dir: Path, tmp_path: Path, lr_png: bytes
) -> None:
    model_dir = tmp_path / "tiny"
    shutil.copytree(tiny_engine_dir, model_dir)
    manifest = read_manifest(model_dir)
    sampler = manifest.sampler.model_copy(update={"default_samples": 3})
    write_manifest(manifest.model_copy(update={"sampler": sampler}), model_dir)
    headers = {"content-type": "image/png", "accept": "application/json"}

    def post(client: TestClient, **params: int) -> httpx.Response:
        return client.post("/upscale", params={"seed": 2, "steps": 2, **params}, content=lr_png, headers=headers)

    with TestClient(create_app(Settings(engines_dir=tmp_path, model="tiny")), base_url="http://localhost") as client:
        default, explicit, one = post(client), post(client, samples=3), post(client, samples=1)
    assert default.status_code == 200, default.text
    assert default.headers["x-samples"] == "3" and default.json()["samples"] == 3
    assert default.json()["uncertainty_png_base64"] is not None
    assert default.json()["image_png_base64"] == explicit.json()["image_png_base64"]
    assert one.headers["x-samples"] == "1" and one.json()["uncertainty_png_base64"] is None


def test_a_manifest_without_the_estimate_keeps_the_loop_as_its_default(
    tiny_engine_dir: Path, tmp_path: Path, lr_png: bytes
) -> None:
    """A model exported before the estimate existed (default_answer absent: "samples") answers as it always did."""
    model_dir = tmp_path / "tiny"
    shutil.copytree(tiny_engine_dir, model_dir)
    raw = json.loads((model_dir / "manifest.json").read_text())
    del raw["sampler"]["default_answer"]
    (model_dir / "manifest.json").write_text(json.dumps(raw))
    with TestClient(create_app(Settings(engines_dir=tmp_path, model="tiny")), base_url="http://localhost") as client:
        response = client.post("/upscale", params={"seed": 2}, content=lr_png, headers={"content-type": "image/png"})
        ready = client.get("/readyz").json()
    assert response.status_code == 200, response.text
    assert (response.headers["x-answer"], response.headers["x-steps"], response.headers["x-seed"]) == (
        "samples", "4", "2"
    )
    assert ready["default_answer"] == "samples"


def test_beyond_the_queue_it_answers_503_with_retry_after(engine_settings: Settings, lr_png: bytes) -> None:
    settings = engine_settings.model_copy(update={"max_queued_requests": 0, "max_batch": 1})
    app = create_app(settings)
    release = threading.Event()
    statuses: list[int] = []

    async def main() -> None:
        async with app.router.lifespan_context(app):
            pipeline = state_of(app).pipeline
            real_estimate_batch = pipeline.estimate_batch

            def slow_estimate_batch(*args: object, **kwargs: object) -> object:
                release.wait(10)
                return real_estimate_batch(*args, **kwargs)

            pipeline.estimate_batch = slow_estimate_batch
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:

                async def post() -> None:
                    response = await http.post("/upscale", content=lr_png, headers={"content-type": "image/png"})
                    statuses.append(response.status_code)
                    if response.status_code == 503:
                        assert response.headers["retry-after"] == "1"
                        assert "busy" in response.json()["detail"]
                        release.set()

                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(post)
                    await anyio.sleep(0.2)
                    tasks.start_soon(post)

    anyio.run(main)
    assert statuses == [503, 200]


def test_openapi_documents_the_upscale_body(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    upscale = client.get("/openapi.json").json()["paths"]["/upscale"]["post"]
    assert set(upscale["requestBody"]["content"]) == {"image/png", "application/dicom", "multipart/form-data"}
    assert {parameter["name"] for parameter in upscale["parameters"]} == {
        "steps",
        "seed",
        "samples",
        "consistency",
        "x-request-timeout",
    }


def test_an_unknown_query_parameter_is_422_naming_it(client: TestClient, lr_png: bytes) -> None:
    response = client.post("/upscale", params={"step": 10}, content=lr_png, headers={"content-type": "image/png"})
    assert response.status_code == 422
    assert response.json()["detail"] == (
        "unknown query parameter(s): step; /upscale takes consistency, samples, seed, steps"
    )


@pytest.mark.parametrize("given", ["soon", "0", "-1", "nan", "inf"])
def test_a_bad_request_timeout_header_is_422(client: TestClient, lr_png: bytes, given: str) -> None:
    headers = {"content-type": "image/png", "x-request-timeout": given}
    response = client.post("/upscale", content=lr_png, headers=headers)
    assert response.status_code == 422
    assert response.json()["detail"] == f"X-Request-Timeout must be a positive number of seconds, got {given!r}"


def test_probes_answer_head(client: TestClient) -> None:
    for path in ("/healthz", "/readyz"):
        response = client.head(path)
        assert response.status_code == 200 and response.content == b""


def test_every_operation_has_its_own_id(client: TestClient) -> None:
    # Client generators name their methods by operationId: two operations with one id collide.
    paths = client.get("/openapi.json").json()["paths"]
    ids = [operation["operationId"] for methods in paths.values() for operation in methods.values()]
    assert len(ids) == len(set(ids)) and {"healthz_healthz_head", "readyz_readyz_get"} <= set(ids)


def test_the_bearer_token_guards_upscale_and_optionally_metrics(engine_settings: Settings, lr_png: bytes) -> None:
    key = "k" * 24
    png = {"content": lr_png, "headers": {"content-type": "image/png"}}
    for protect_metrics in (False, True):
        settings = engine_settings.model_copy(update={"api_key": SecretStr(key), "protect_metrics": protect_metrics})
        with TestClient(create_app(settings), base_url="http://localhost") as client:
            refusals = [
                client.post("/upscale", **png),
                client.post(
                    "/upscale",
                    content=lr_png,
                    headers={"content-type": "image/png", "authorization": "Bearer " + "x" * 24},
                ),
                client.post(
                    "/upscale", content=lr_png, headers={"content-type": "image/png", "authorization": "Basic " + key}
                ),
            ]
            for response in refusals:
                assert response.status_code == 401
                assert response.json() == {"detail": "this server needs a valid bearer token"}  # never which part
                assert response.headers["www-authenticate"] == 'Bearer realm="xraysr"'
            authorised = {"content-type": "image/png", "authorization": f"Bearer {key}"}
            assert client.post("/upscale", content=lr_png, headers=authorised).status_code == 200
            assert client.get("/metrics").status_code == (401 if protect_metrics else 200)
            assert client.get("/metrics", headers={"authorization": f"Bearer {key}"}).status_code == 200
            assert client.get("/readyz").status_code == 200  # probes stay open for the orchestrator


def test_every_image_says_it_is_synthetic_and_what_made_it(client: TestClient, lr_png: bytes) -> None:
    png = {"content": lr_png, "headers": {"content-type": "image/png"}}
    text = _image(client.post("/upscale", params={"seed": 9, "samples": 2}, **png)).text
    assert text["Disclaimer"] == DISCLAIMER and "not for diagnosis" in text["Disclaimer"]
    assert text["Software"] == f"xraysr {__version__}"
    assert text["Source"] == "tiny tiny-test (fp32)"
    made = "4x super-resolution of a 64x64 chest X-ray: 4 DDIM steps, mean of 2 samples, seeds 9 to 10"
    assert text["Description"] == made
    keys = ("xraysr-model-version", "xraysr-answer", "xraysr-steps", "xraysr-samples", "xraysr-seed")
    assert {key: text[key] for key in keys} == {
        "xraysr-model-version": "tiny-test", "xraysr-answer": "samples", "xraysr-steps": "4", "xraysr-samples": "2",
        "xraysr-seed": "9",
    }
    as_json = {"content-type": "image/png", "accept": "application/json"}
    body = client.post("/upscale", params={"seed": 9}, headers=as_json, content=lr_png).json()
    assert (body["software"], body["disclaimer"]) == (f"xraysr {__version__}", DISCLAIMER)
    assert (body["answer"], body["steps"], body["samples"], body["seed"]) == ("estimate", 1, 0, None)
    estimate = Image.open(io.BytesIO(base64.b64decode(body["image_png_base64"]))).text
    assert "xraysr-seed" not in estimate and estimate["xraysr-answer"] == "estimate"
    assert estimate["Description"].endswith("the one-pass estimate (the network's posterior mean, no noise drawn)")


def test_the_api_docs_load_nothing_from_the_internet(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assert "cdn." not in html and "fonts.googleapis" not in html and "tiangolo.com" not in html
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets and all(asset.startswith("/docs-assets/") for asset in assets), assets
        for asset in assets:
            response = client.get(asset)
            assert response.status_code == 200 and len(response.content) > 1000, asset
    assert "swagger-ui" in client.get("/docs").text and "/openapi.json" in client.get("/redoc").text

"""POST /upscale: a 64×64 chest X-ray (PNG or DICOM) in, its 256×256 super-resolution out as an 8-bit PNG.

A request's life, and where each answer is decided:
  401  no valid bearer token, when the server has an api_key — api/deps.py
  422  an unknown query parameter, steps/samples/seed out of range, a bad X-Request-Timeout — before anything
       is read
  503  the model is still loading or the server is shutting down (api/deps.py); every place is taken
       (service/concurrency.py): decided at the door, before the body is read
  413/408  the body is read with a cap (Content-Length first, then while streaming) and a time limit
  400/415/422  the body is not a usable image — service/imaging.py, decoded in a small bounded pool
  200  the batcher (service/batching.py) ran it, alone or with others of the same steps
  504  the deadline (request_timeout_s, or the client's lower X-Request-Timeout) passed first
  499  the client disconnected first (nobody reads it; /metrics counts it as abandoned)
  503  the shutdown grace period ended first
  500  anything else is a bug: logged with the request's context, and the server keeps serving
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from xraysr.service import __version__
from xraysr.service.api.deps import (
    AdmissionDep,
    BatcherDep,
    LifecycleDep,
    MetricsDep,
    PipelineDep,
    SettingsDep,
    reject_unknown_query,
    require_token,
)
from xraysr.service.batching import Batcher, Job, JobResult, ShuttingDown
from xraysr.service.concurrency import Overloaded
from xraysr.service.imaging import BodyTimeout, BodyTooLarge, DecodedImage, ImageError, check_body_size, decode_image
from xraysr.service.manifest import MAX_SAMPLES, Manifest
from xraysr.service.metrics import ServiceMetrics
from xraysr.service.pipeline import UpscaleResult, check_samples
from xraysr.service.provenance import DISCLAIMER
from xraysr.service.sampler import SEED_MAX, sample_seeds
from xraysr.service.settings import Settings
from xraysr.service.uncertainty import UNCERTAINTY_SCALE

logger = logging.getLogger(__name__)
router = APIRouter(tags=["upscale"])

ENDPOINT = "/upscale"
STAGES = ("decode", "queue", "encode", "denoise", "vae_decode", "png", "total")

_REQUEST_BODY = {
    "required": True,
    "description": "The low-resolution image: the file itself, or a multipart form with a `file` field.",
    "content": {
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "application/dicom": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            }
        },
    },
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"image/png": {}, "application/json": {}},
        "description": "A 256×256 8-bit grayscale PNG, or JSON with it (and, for samples > 1, the uncertainty "
        "map) base64-encoded when Accept asks for JSON.",
    },
    400: {"description": "Empty body, or a malformed multipart form."},
    401: {"description": "The server has an api_key and the request has no valid bearer token."},
    408: {"description": "The body did not arrive within body_timeout_s."},
    413: {"description": "The body is larger than max_body_bytes."},
    415: {"description": "Neither image/png, application/dicom nor multipart/form-data."},
    422: {
        "description": "Not a decodable image, the wrong size or pixel type, bad steps/seed/samples/"
        "X-Request-Timeout, or an unknown query parameter."
    },
    503: {"description": "Still loading, busy, or shutting down (Retry-After: 1)."},
    504: {"description": "The deadline passed before the upscale finished."},
}


def check_steps(steps: int | None, manifest: Manifest) -> int:
    sampler = manifest.sampler
    if steps is None:
        return sampler.default_steps
    if not sampler.min_steps <= steps <= sampler.max_steps:
        raise HTTPException(
            422,
            f"steps must be between {sampler.min_steps} and {sampler.max_steps} for model {manifest.model} "
            f"{manifest.version}, got {steps}",
        )
    return steps


def check_samples_query(samples: int | None, manifest: Manifest) -> int:
    if samples is None:
        return manifest.sampler.default_samples
    try:
        return check_samples(samples)
    except ValueError as error:
        raise HTTPException(422, str(error)) from error


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``max_bytes``, and with 408 if it has
    not all arrived within ``timeout_s`` (a stalled upload must not hold its place and its memory forever)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit():
        check_body_size(int(declared), max_bytes)
    chunks, received = [], 0
    with anyio.move_on_after(timeout_s) as timer:
        # A missing or understated Content-Length (chunked uploads) is caught while reading, before it is all in.
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise BodyTooLarge(
                    f"the request body is over {max_bytes} bytes, this server's limit; nothing was decoded"
                )
            chunks.append(chunk)
    if timer.cancelled_caught:
        raise BodyTimeout(f"the request body did not arrive within {timeout_s:g} s ({received} bytes came)")
    return b"".join(chunks)


async def image_from_request(request: Request, body: bytes) -> tuple[bytes, str | None]:
    """The image's bytes and declared type: the body itself, or the ``file`` field of a multipart form."""
    content_type = request.headers.get("content-type")
    if content_type is None or content_type.split(";")[0].strip().lower() != "multipart/form-data":
        return body, content_type

    async def replay_body() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    # The body was already read under the size cap; Starlette's parser reads it again from this replay.
    form = await Request(request.scope, replay_body).form(max_files=1, max_fields=8)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise HTTPException(422, "a multipart/form-data body needs a file field named 'file' holding the image")
    return await upload.read(), upload.content_type


def server_timing(stage_ms: dict[str, float]) -> str:
    return ", ".join(f"{stage};dur={milliseconds:.3f}" for stage, milliseconds in stage_ms.items())


def wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "").lower()


def request_deadline(request: Request, settings: Settings) -> float:
    """Seconds this request may take: the server's ``request_timeout_s``, or the client's lower
    X-Request-Timeout (a client cannot raise it)."""
    given = request.headers.get("x-request-timeout")
    if given is None:
        return settings.request_timeout_s
    try:
        seconds = float(given)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise HTTPException(422, f"X-Request-Timeout must be a positive number of seconds, got {given!r}")
    return min(seconds, settings.request_timeout_s)


class _Disconnected(Exception):
    pass


async def _answer_unless_disconnected(request: Request, batcher: Batcher, job: Job) -> JobResult:
    """The job's answer; raises _Disconnected (and abandons the job) as soon as the client goes away."""
    outcome: JobResult | BaseException | None = None

    async def work() -> None:
        nonlocal outcome
        try:
            outcome = await batcher.submit(job)
        except Exception as error:  # noqa: BLE001 - re-raised below, outside the task group
            outcome = error
        tasks.cancel_scope.cancel()

    async def watch() -> None:
        nonlocal outcome
        # The body has been read, so the next ASGI message is the disconnect, whenever it comes.
        while (await request.receive())["type"] != "http.disconnect":
            pass
        outcome = _Disconnected()
        tasks.cancel_scope.cancel()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(work)
        tasks.start_soon(watch)
    if isinstance(outcome, BaseException):
        raise outcome
    assert outcome is not None
    return outcome


@router.post(
    ENDPOINT,
    summary="Upscale a 64×64 chest X-ray 4× with latent diffusion.",
    response_class=Response,
    responses=_RESPONSES,
    openapi_extra={"requestBody": _REQUEST_BODY},
    dependencies=[Depends(require_token), Depends(reject_unknown_query)],
)
async def upscale(
    request: Request,
    pipeline: PipelineDep,
    admission: AdmissionDep,
    batcher: BatcherDep,
    lifecycle: LifecycleDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    steps: Annotated[
        int | None, Query(description="Denoising steps (default: the manifest's; range: the manifest's).")
    ] = None,
    seed: Annotated[
        int | None, Query(ge=0, le=SEED_MAX, description="Noise seed; the same seed gives the same image.")
    ] = None,
    samples: Annotated[
        int | None,
        Query(
            description=f"Diffusion samples averaged into the answer, 1–{MAX_SAMPLES} (default: the manifest's "
            "default_samples); sample k uses seed + k. Above 1 the JSON answer adds their per-pixel spread."
        ),
    ] = None,
    x_request_timeout: Annotated[
        str | None,
        Header(description="Seconds this request may take, at most the server's request_timeout_s (504 past it)."),
    ] = None,
) -> Response:
    started = time.perf_counter()
    steps = check_steps(steps, pipeline.manifest)
    samples = check_samples_query(samples, pipeline.manifest)
    seed = secrets.randbelow(SEED_MAX + 1) if seed is None else seed
    deadline_s = request_deadline(request, settings)
    try:
        with admission.admit(), lifecycle.request_scope() as shutdown, anyio.move_on_after(deadline_s) as deadline:
            body = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
            data, content_type = await image_from_request(request, body)
            decoded, decode_seconds = await anyio.to_thread.run_sync(
                _decode, data, content_type, pipeline.manifest, limiter=admission.decoding
            )
            as_json = wants_json(request)
            job = Job(pixels=decoded.pixels, steps=steps, seeds=sample_seeds(seed, samples), spread_png=as_json)
            answer = await _answer_unless_disconnected(request, batcher, job)
    except ImageError as error:
        return JSONResponse({"detail": error.message}, status_code=error.status_code)
    except Overloaded as error:
        return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": "1"})
    except ShuttingDown:
        return _abandoned(metrics, "shutdown")
    except (ClientDisconnect, _Disconnected):
        logger.info("client disconnected before its answer")
        return _abandoned(metrics, "client_disconnected")
    except StarletteHTTPException:
        raise  # already a client error with its status (FastAPI's own, or Starlette's 400 for a broken form)
    except Exception:
        # Input problems were all answered above: what reaches here is a bug in the pipeline or the runtime.
        logger.exception(
            "upscale failed: steps=%d seed=%d samples=%d content-type=%s body=%s bytes",
            steps,
            seed,
            samples,
            request.headers.get("content-type"),
            request.headers.get("content-length", "?"),
        )
        return JSONResponse({"detail": "internal error while upscaling; the server log has the details"}, 500)
    if shutdown.cancelled_caught:
        return _abandoned(metrics, "shutdown")
    if deadline.cancelled_caught:
        return _abandoned(metrics, "deadline", deadline_s)

    result = answer.result
    stage_seconds = {"decode": decode_seconds, **answer.stage_seconds}
    stage_seconds["total"] = time.perf_counter() - started
    metrics.observe_stages(stage_seconds)
    # The host stages always, in order; a GPU runtime adds its CUDA-event times ("denoise_gpu", …) after.
    stage_ms = {
        stage: 1000 * stage_seconds[stage] for stage in (*STAGES, *(s for s in stage_seconds if s not in STAGES))
    }
    manifest = pipeline.manifest
    headers = {
        "Server-Timing": server_timing(stage_ms),
        "X-Model-Version": manifest.version,
        "X-Steps": str(result.steps),
        "X-Seed": str(result.seed),
        "X-Samples": str(result.samples),
        "X-Batch-Samples": str(answer.batch_samples),
    }
    if decoded.conversion:
        headers["X-Input-Conversion"] = decoded.conversion
    if as_json:
        return JSONResponse(
            {
                "image_png_base64": base64.b64encode(answer.png).decode("ascii"),
                "width": int(result.image.shape[1]),
                "height": int(result.image.shape[0]),
                "steps": result.steps,
                "seed": result.seed,
                "samples": result.samples,
                **_uncertainty_fields(result, answer.spread_png),
                "model_version": manifest.version,
                "stage_ms": {stage: round(ms, 3) for stage, ms in stage_ms.items()},
                "input_conversion": decoded.conversion,
                "batch_samples": answer.batch_samples,
                "software": f"xraysr {__version__}",
                "disclaimer": DISCLAIMER,
            },
            headers=headers,
        )
    return Response(answer.png, media_type="image/png", headers=headers)


def _abandoned(metrics: ServiceMetrics, reason: str, deadline_s: float = 0.0) -> JSONResponse:
    metrics.abandoned.labels(reason=reason).inc()
    if reason == "deadline":
        detail, status = f"the upscale did not finish within its deadline of {deadline_s:g} s", 504
    elif reason == "shutdown":
        detail, status = "the server is shutting down and this upscale could not finish in time; retry", 503
    else:
        detail, status = "the client disconnected before its answer", 499
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _decode(data: bytes, content_type: str | None, manifest: Manifest) -> tuple[DecodedImage, float]:
    started = time.perf_counter()
    decoded = decode_image(data, content_type, expected_size=manifest.image.lr_size)
    return decoded, time.perf_counter() - started


def _uncertainty_fields(result: UpscaleResult, spread_png: bytes | None) -> dict[str, Any]:
    """The spread of the samples for the JSON answer: null for one sample, which has none.

    The PNG's level is the standard deviation in grey levels / ``uncertainty_scale``, a fixed constant so that
    maps of different requests compare; ``uncertainty_mean`` is the unrounded map's mean, in grey levels.
    """
    if result.uncertainty is None or spread_png is None:
        return {"uncertainty_png_base64": None, "uncertainty_scale": None, "uncertainty_mean": None}
    return {
        "uncertainty_png_base64": base64.b64encode(spread_png).decode("ascii"),
        "uncertainty_scale": UNCERTAINTY_SCALE,
        "uncertainty_mean": round(float(result.uncertainty.mean()), 4),
    }

"""POST /upscale: a 64×64 chest X-ray (PNG or DICOM) in, its 256×256 super-resolution out as an 8-bit PNG.

Where each answer is decided:
  413  the body is read with a cap (Content-Length first, then while streaming) — `read_body`
  400/415/422  the body is not a usable image — service/imaging.py, mapped here from ImageError
  422  steps outside the manifest's range — `check_steps`; samples outside 1..MAX_SAMPLES — `check_samples`;
       not an integer — FastAPI, worded by api/errors.py
  503  the model is not loaded yet (api/deps.py) or every slot and queue place is taken (service/concurrency.py)
  500  anything else is a bug: logged with the request's context, and the server keeps serving
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.api.deps import AdmissionDep, MetricsDep, PipelineDep, SettingsDep
from service.concurrency import Overloaded
from service.imaging import BodyTooLarge, DecodedImage, ImageError, check_body_size, decode_image, encode_png
from service.manifest import MAX_SAMPLES, Manifest
from service.pipeline import SRPipeline, UpscaleResult, check_samples
from service.sampler import SEED_MAX
from service.uncertainty import UNCERTAINTY_SCALE, uncertainty_png

logger = logging.getLogger(__name__)
router = APIRouter(tags=["upscale"])

ENDPOINT = "/upscale"
RAW_TYPES = ("image/png", "application/dicom")
STAGES = ("decode", "encode", "denoise", "vae_decode", "png", "total")

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
    413: {"description": "The body is larger than max_body_bytes."},
    415: {"description": "Neither image/png, application/dicom nor multipart/form-data."},
    422: {"description": "Not a decodable image, the wrong size or pixel type, or bad steps/seed/samples."},
    503: {"description": "Still loading, or busy (Retry-After: 1)."},
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


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``max_bytes``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit():
        check_body_size(int(declared), max_bytes)
    chunks, received = [], 0
    # A missing or understated Content-Length (chunked uploads) is caught while reading, before it is all in memory.
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            raise BodyTooLarge(f"the request body is over {max_bytes} bytes, this server's limit; nothing was decoded")
        chunks.append(chunk)
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


@router.post(
    ENDPOINT,
    summary="Upscale a 64×64 chest X-ray 4× with latent diffusion.",
    response_class=Response,
    responses=_RESPONSES,
    openapi_extra={"requestBody": _REQUEST_BODY},
)
async def upscale(
    request: Request,
    pipeline: PipelineDep,
    admission: AdmissionDep,
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
) -> Response:
    started = time.perf_counter()
    steps = check_steps(steps, pipeline.manifest)
    samples = check_samples_query(samples, pipeline.manifest)
    seed = secrets.randbelow(SEED_MAX + 1) if seed is None else seed
    try:
        data, content_type = await image_from_request(request, await read_body(request, settings.max_body_bytes))
        decoded, decode_seconds = await run_in_threadpool(_decode, data, content_type, pipeline.manifest)
        as_json = wants_json(request)
        result, png, spread_png, png_seconds = await admission.run(
            lambda: _upscale_and_encode(pipeline, decoded, steps, seed, samples, spread_png=as_json)
        )
    except ImageError as error:
        return JSONResponse({"detail": error.message}, status_code=error.status_code)
    except Overloaded as error:
        return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": "1"})
    except ClientDisconnect:
        logger.info("client disconnected before its body was complete")
        return JSONResponse({"detail": "the client disconnected before the body was complete"}, status_code=400)
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

    stage_seconds = {"decode": decode_seconds, **result.stage_seconds, "png": png_seconds}
    stage_seconds["total"] = time.perf_counter() - started
    metrics.observe_stages(stage_seconds)
    # The six host stages always, in order; a GPU runtime adds its CUDA-event times ("denoise_gpu", …) after.
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
    }
    if decoded.conversion:
        headers["X-Input-Conversion"] = decoded.conversion
    if as_json:
        return JSONResponse(
            {
                "image_png_base64": base64.b64encode(png).decode("ascii"),
                "width": int(result.image.shape[1]),
                "height": int(result.image.shape[0]),
                "steps": result.steps,
                "seed": result.seed,
                "samples": result.samples,
                **_uncertainty_fields(result, spread_png),
                "model_version": manifest.version,
                "stage_ms": {stage: round(ms, 3) for stage, ms in stage_ms.items()},
                "input_conversion": decoded.conversion,
            },
            headers=headers,
        )
    return Response(png, media_type="image/png", headers=headers)


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


def _upscale_and_encode(
    pipeline: SRPipeline, decoded: DecodedImage, steps: int, seed: int, samples: int, spread_png: bool
) -> tuple[UpscaleResult, bytes, bytes | None, float]:
    """The upscale, its PNG and, when ``spread_png`` and there are several samples, the uncertainty map's PNG
    (only the JSON answer carries it); both encodings are the "png" stage."""
    result = pipeline.upscale(decoded.pixels, steps=steps, seed=seed, samples=samples)
    started = time.perf_counter()
    png = encode_png(result.image)
    spread = uncertainty_png(result.uncertainty) if spread_png and result.uncertainty is not None else None
    return result, png, spread, time.perf_counter() - started

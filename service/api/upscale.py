"""POST /upscale: a 64×64 chest X-ray (PNG or DICOM) in, its 256×256 super-resolution out as an 8-bit PNG.

A request's life, and where each answer is decided:
  400/403  a Host it does not answer to, a browser page of another origin (api/browser.py)
  401  no valid bearer token, when the server has an api_key — api/deps.py
  422  an unknown or repeated query parameter, steps/samples/seed out of range, a bad X-Request-Timeout —
       before anything is read
  503  the model is still loading or the server is shutting down (api/deps.py)
  413/408  the body is read with a cap (Content-Length first, then while streaming) and a time limit
  503  every place is taken (service/concurrency.py): decided once the body has arrived, so that slow
       uploaders hold connections, not places
  400/415/422  the body is not a usable image — service/imaging.py, decoded in a small bounded pool
  406  Accept: application/dicom for an input that is not a DICOM naming its study — service/dicom_out.py
  200  the batcher (service/batching.py) ran it, alone or with others of the same steps; the fidelity guard
       (service/consistency.py) measured it against its input (X-LR-Consistency-PSNR), and projected it for
       consistency=enforce
  504  the deadline (request_timeout_s, or the client's lower X-Request-Timeout) passed first
  499  the client disconnected first (nobody reads it; /metrics counts it as abandoned)
  503  the shutdown grace period ended first
  500  anything else is a bug: logged with the request's context, and the server keeps serving
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import secrets
import time
from typing import Annotated, Any

import anyio
import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from xraysr.service import __version__
from xraysr.service.api.bodies import image_from_request, image_request_body, read_body, wants_dicom, wants_json
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
from xraysr.service.api.errors import abandoned
from xraysr.service.batching import Batcher, Job, JobResult, ShuttingDown
from xraysr.service.concurrency import Admission, Overloaded
from xraysr.service.consistency import (
    BACK_PROJECTION_ITERATIONS,
    ConsistencyMode,
    FidelityReport,
    bicubic_upscale,
    guard,
)
from xraysr.service.dicom_out import NEEDS_DICOM_INPUT, DicomSource, read_source, secondary_capture
from xraysr.service.image_errors import NotAcceptable
from xraysr.service.imaging import (
    DecodedImage,
    ImageError,
    decode_image,
    encode_png,
)
from xraysr.service.manifest import MAX_SAMPLES, Manifest
from xraysr.service.pipeline import AnswerPlan, SRPipeline, UpscaleResult, choose_answer
from xraysr.service.provenance import DISCLAIMER, provenance
from xraysr.service.sampler import SEED_MAX, sample_seeds
from xraysr.service.settings import Settings
from xraysr.service.uncertainty import UNCERTAINTY_SCALE, UncertaintyMap, uncertainty_map, uncertainty_png

logger = logging.getLogger(__name__)
router = APIRouter(tags=["upscale"])

ENDPOINT = "/upscale"
STAGES = ("decode", "queue", "encode", "denoise", "vae_decode", "png", "interval", "consistency", "total")

_REQUEST_BODY = image_request_body(
    "The low-resolution image: the file itself, or a multipart form with a `file` field."
)
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"image/png": {}, "application/json": {}, "application/dicom": {}},
        "description": "A 256×256 8-bit grayscale PNG, or JSON with it (and, for samples > 1, the uncertainty "
        "map) base64-encoded when Accept asks for JSON. For a DICOM input, Accept: application/dicom answers a "
        "DICOM Secondary Capture (SOP Class 1.2.840.10008.5.1.4.1.1.7) of the same pixels: the input's patient and "
        "study, a new series (one per server run and study), ImageType DERIVED\\SECONDARY, a DerivationDescription "
        "naming the model, steps, samples and seed and that it is synthetic, PixelSpacing scaled by 1/4, 8-bit "
        "MONOCHROME2.",
    },
    400: {"description": "Empty body, or a malformed multipart form."},
    401: {"description": "The server has an api_key and the request has no valid bearer token."},
    408: {"description": "The body did not arrive within body_timeout_s."},
    413: {"description": "The body is larger than max_body_bytes."},
    406: {"description": "Accept: application/dicom for a PNG input, or for a DICOM without its StudyInstanceUID."},
    415: {
        "description": "Neither image/png, application/dicom nor multipart/form-data; or a DICOM transfer syntax "
        "this server cannot decode (named in the message)."
    },
    422: {
        "description": "Not a decodable image, the wrong size or pixel type, bad steps/seed/samples/"
        "X-Request-Timeout, or an unknown query parameter."
    },
    503: {"description": "Still loading, busy, or shutting down (Retry-After: 1)."},
    504: {"description": "The deadline passed before the upscale finished."},
}


def plan_of(steps: int | None, samples: int | None, manifest: Manifest) -> AnswerPlan:
    """The answer the query asks for (pipeline.choose_answer); a count out of range is a 422 naming the model."""
    try:
        return choose_answer(manifest.sampler, steps, samples, f"{manifest.model} {manifest.version}")
    except ValueError as error:
        raise HTTPException(422, str(error)) from error


def server_timing(stage_ms: dict[str, float], descriptions: dict[str, str] | None = None) -> str:
    """The Server-Timing header; a stage with a description carries it as ``desc`` (what the denoise stage ran)."""
    descriptions = descriptions or {}
    return ", ".join(
        f"{stage};dur={milliseconds:.3f}" + (f';desc="{descriptions[stage]}"' if stage in descriptions else "")
        for stage, milliseconds in stage_ms.items()
    )


def denoise_description(result: UpscaleResult) -> str:
    """What the denoise stage ran: "1 pass" for the estimate, else "<steps> steps x <samples> samples"."""
    if result.answer == "estimate":
        return "1 pass"
    return f"{result.steps} steps x {result.samples} sample{'s' if result.samples > 1 else ''}"


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
        int | None,
        Query(
            description="Denoising steps of the reverse-diffusion loop (range: the manifest's). Naming steps or "
            "samples asks for the loop; naming neither gets the model's default answer, the one-pass estimate."
        ),
    ] = None,
    seed: Annotated[
        int | None,
        Query(
            ge=0,
            le=SEED_MAX,
            description="Noise seed of the loop; the same seed gives the same image. The estimate draws no noise.",
        ),
    ] = None,
    samples: Annotated[
        int | None,
        Query(
            description=f"Diffusion samples averaged into the answer, 1–{MAX_SAMPLES} (with steps alone: the "
            "manifest's default_samples); sample k uses seed + k. Above 1 the JSON answer adds their spread."
        ),
    ] = None,
    consistency: Annotated[
        ConsistencyMode,
        Query(
            description="report (default): the answer as the model made it, with X-LR-Consistency-PSNR, the PSNR "
            "between the input and the answer shrunk back as the training pairs were made. enforce: the answer "
            f"projected ({BACK_PROJECTION_ITERATIONS} back-projection iterations) so that shrunk back it gives the "
            "input."
        ),
    ] = "report",
    x_request_timeout: Annotated[
        str | None,
        Header(description="Seconds this request may take, at most the server's request_timeout_s (504 past it)."),
    ] = None,
) -> Response:
    started = time.perf_counter()
    plan = plan_of(steps, samples, pipeline.manifest)
    seed = secrets.randbelow(SEED_MAX + 1) if seed is None else seed
    deadline_s = request_deadline(request, settings)
    deadline = anyio.CancelScope()  # replaced once admitted; never cancelled before
    try:
        with lifecycle.request_scope() as shutdown:
            # Read before admission: a slow uploader holds its connection, not a place (service/concurrency.py).
            with admission.receive():
                body = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
            data, content_type = await image_from_request(request, body)
            with admission.admit(), anyio.move_on_after(deadline_s) as deadline:
                answered = await _answer(
                    request, (data, content_type), plan, seed, consistency, pipeline, admission, batcher, settings
                )
    except ImageError as error:
        return JSONResponse({"detail": error.message}, status_code=error.status_code)
    except Overloaded as error:
        return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": "1"})
    except ShuttingDown:
        return abandoned(metrics, "shutdown")
    except (ClientDisconnect, _Disconnected):
        logger.info("client disconnected before its answer")
        return abandoned(metrics, "client_disconnected")
    except StarletteHTTPException:
        raise  # already a client error with its status (FastAPI's own, or Starlette's 400 for a broken form)
    except Exception:
        # Input problems were all answered above: what reaches here is a bug in the pipeline or the runtime.
        logger.exception(
            "upscale failed: answer=%s steps=%d seed=%d samples=%d content-type=%s body=%s bytes",
            plan.answer,
            plan.steps,
            seed,
            plan.samples,
            request.headers.get("content-type"),
            request.headers.get("content-length", "?"),
        )
        return JSONResponse({"detail": "internal error while upscaling; the server log has the details"}, 500)
    if shutdown.cancelled_caught:
        return abandoned(metrics, "shutdown")
    if deadline.cancelled_caught:
        return abandoned(metrics, "deadline", deadline_s)

    finished, answer, decoded = answered.finished, answered.job_result, answered.decoded
    result, fidelity = finished.result, finished.fidelity
    stage_seconds = {"decode": answered.decode_seconds, **result.stage_seconds}
    stage_seconds["total"] = time.perf_counter() - started
    metrics.observe_stages(stage_seconds)
    metrics.answers.labels(answer=result.answer).inc()
    # The host stages always, in order; a GPU runtime adds its CUDA-event times ("denoise_gpu", …) after.
    # A DICOM answer has a "dicom" stage (after "total", with the GPU times) instead of "png".
    order = (*(s for s in STAGES if s in stage_seconds), *(s for s in stage_seconds if s not in STAGES))
    stage_ms = {stage: 1000 * stage_seconds[stage] for stage in order}
    manifest = pipeline.manifest
    headers = {
        "Server-Timing": server_timing(stage_ms, {"denoise": denoise_description(result)}),
        "X-Model-Version": manifest.version,
        "X-Answer": result.answer,
        "X-Steps": str(result.steps),
        "X-Samples": str(result.samples),
        "X-Batch-Samples": str(answer.batch_samples),
    }
    if result.seed is not None:
        headers["X-Seed"] = str(result.seed)
    if decoded.conversion:
        headers["X-Input-Conversion"] = decoded.conversion
    headers.update(fidelity.headers())
    metrics.observe_consistency(fidelity.mode, fidelity.psnr_db)
    if finished.dicom is not None:
        return Response(finished.dicom, media_type="application/dicom", headers=headers)
    if answered.as_json:
        return JSONResponse(
            {
                "image_png_base64": base64.b64encode(finished.png).decode("ascii"),
                "width": int(result.image.shape[1]),
                "height": int(result.image.shape[0]),
                "answer": result.answer,
                "steps": result.steps,
                "seed": result.seed,
                "samples": result.samples,
                **_uncertainty_fields(finished),
                "model_version": manifest.version,
                "stage_ms": {stage: round(ms, 3) for stage, ms in stage_ms.items()},
                "input_conversion": decoded.conversion,
                "batch_samples": answer.batch_samples,
                "consistency": fidelity.mode,
                "lr_consistency_psnr": fidelity.psnr_db,
                "lr_consistency_low": fidelity.low,
                "bicubic_png_base64": base64.b64encode(finished.bicubic_png).decode("ascii"),
                "software": f"xraysr {__version__}",
                "disclaimer": DISCLAIMER,
            },
            headers=headers,
        )
    return Response(finished.png, media_type="image/png", headers=headers)


@dataclasses.dataclass(frozen=True)
class _Answered:
    decoded: DecodedImage
    decode_seconds: float
    job_result: JobResult
    finished: _Finished
    as_json: bool


async def _answer(
    request: Request,
    body: tuple[bytes, str | None],
    plan: AnswerPlan,
    seed: int,
    consistency: ConsistencyMode,
    pipeline: SRPipeline,
    admission: Admission,
    batcher: Batcher,
    settings: Settings,
) -> _Answered:
    """An admitted request's work: decode (and read what a DICOM answer keeps), the batcher, then _finish."""
    data, content_type = body
    decoded, decode_seconds = await anyio.to_thread.run_sync(
        _decode, data, content_type, pipeline.manifest, limiter=admission.decoding
    )
    source: DicomSource | None = None  # what a DICOM answer keeps of the input
    if wants_dicom(request):
        source = await anyio.to_thread.run_sync(_dicom_source, data, decoded, limiter=admission.decoding)
    as_json = wants_json(request)
    seeds = sample_seeds(seed, plan.samples) if plan.answer == "samples" else []
    job = Job(pixels=decoded.pixels, steps=plan.steps, seeds=seeds, answer=plan.answer)
    job_result = await _answer_unless_disconnected(request, batcher, job)
    finished = await anyio.to_thread.run_sync(
        _finish, decoded.pixels, job_result.result, consistency, settings, pipeline.manifest, as_json, source
    )
    return _Answered(decoded, decode_seconds, job_result, finished, as_json)


def _decode(data: bytes, content_type: str | None, manifest: Manifest) -> tuple[DecodedImage, float]:
    started = time.perf_counter()
    decoded = decode_image(data, content_type, expected_size=manifest.image.lr_size)
    return decoded, time.perf_counter() - started


def _dicom_source(data: bytes, decoded: DecodedImage) -> DicomSource:
    if decoded.source_format != "dicom":
        raise NotAcceptable(NEEDS_DICOM_INPUT)
    return read_source(data)


@dataclasses.dataclass(frozen=True)
class _Finished:
    """One answer, checked against its input and encoded once, in the form it is sent."""

    result: UpscaleResult  # its image projected for consistency=enforce
    fidelity: FidelityReport
    png: bytes  # empty for a DICOM answer
    dicom: bytes | None
    uncertainty: UncertaintyMap | None  # the JSON answer's map (the calibrated interval, or an older model's spread)
    samples_png: list[bytes] | None  # the JSON answer's diffusion samples, for two or more
    bicubic_png: bytes  # the baseline, for the JSON answer; else empty


def _finish(
    lr: np.ndarray,
    result: UpscaleResult,
    mode: ConsistencyMode,
    settings: Settings,
    manifest: Manifest,
    as_json: bool,
    source: DicomSource | None,
) -> _Finished:
    """In a worker thread, after the batch: the fidelity guard (service/consistency.py; the "consistency" stage),
    then the one encoding the client asked for ("png", or "dicom" for a DICOM Secondary Capture); a JSON answer
    adds its per-pixel interval ("interval")."""
    started = time.perf_counter()
    image, fidelity = guard(lr, result.image, mode, settings.lr_consistency_low_db)
    if mode == "enforce":
        result = dataclasses.replace(result, image=image)
    stage_seconds = {**result.stage_seconds, "consistency": time.perf_counter() - started}

    started = time.perf_counter()
    enforced = f"{BACK_PROJECTION_ITERATIONS} back-projection iterations" if mode == "enforce" else None
    png, dicom, uncertainty, samples_png, bicubic_png = b"", None, None, None, b""
    if source is not None:
        note = f"projected onto its input, {enforced}" if enforced else None
        dicom = secondary_capture(source, result, manifest, settings.dicom_uid_root, note)
        stage_seconds["dicom"] = time.perf_counter() - started
    else:
        text = provenance(manifest, result)
        if enforced:
            text["xraysr-consistency"] = f"enforce: {enforced}"
        png = encode_png(result.image, text)
        if as_json:
            bicubic = bicubic_upscale(lr, manifest.image.hr_size)
            bicubic_png = encode_png(bicubic)
            if result.sample_images is not None:
                samples_png = [encode_png(sample) for sample in result.sample_images]
        stage_seconds["png"] = time.perf_counter() - started
        if as_json:
            started = time.perf_counter()
            uncertainty = uncertainty_map(result, bicubic, manifest, settings.uncertainty_coverage)
            if manifest.interval is not None:
                stage_seconds["interval"] = time.perf_counter() - started
    result.stage_seconds = stage_seconds
    return _Finished(result, fidelity, png, dicom, uncertainty, samples_png, bicubic_png)


def _uncertainty_fields(finished: _Finished) -> dict[str, Any]:
    """The JSON answer's map: the half-width of the per-pixel interval that holds the true value with probability
    ``uncertainty_coverage`` (service/interval.py); for a model without a calibrated interval, the samples'
    spread (coverage null), and nothing for one sample. The PNG's level × ``uncertainty_scale`` is grey levels, a
    fixed constant so that maps of different requests compare; ``uncertainty_mean`` is the unrounded map's mean.
    ``samples_png_base64`` holds each diffusion sample for two or more: what the model could invent here."""
    fields: dict[str, Any] = {
        "uncertainty_png_base64": None,
        "uncertainty_scale": None,
        "uncertainty_mean": None,
        "uncertainty_coverage": None,
        "samples_png_base64": None,
    }
    if finished.uncertainty is not None:
        fields.update(
            uncertainty_png_base64=base64.b64encode(uncertainty_png(finished.uncertainty.grey_levels)).decode(),
            uncertainty_scale=UNCERTAINTY_SCALE,
            uncertainty_mean=round(float(finished.uncertainty.grey_levels.mean()), 4),
            uncertainty_coverage=finished.uncertainty.coverage,
        )
    if finished.samples_png is not None:
        fields["samples_png_base64"] = [base64.b64encode(png).decode("ascii") for png in finished.samples_png]
    return fields

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
  200  the batcher (service/batching.py) ran it, alone or with others of the same steps; service/answer.py
       finished it as the CLI and the Python API do: the fidelity guard (service/consistency.py) measured it
       against its input (X-LR-Consistency-PSNR), and projected it for consistency=enforce; a JSON answer adds
       its uncertainty map. api/upscale_response.py shapes it: PNG, DICOM or JSON, headers, Server-Timing
  504  the deadline (request_timeout_s, or the client's lower X-Request-Timeout) passed first
  499  the client disconnected first (nobody reads it; /metrics counts it as abandoned)
  503  the shutdown grace period ended first
  500  anything else is a bug: logged with the request's context, and the server keeps serving
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Annotated

import anyio
import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from xraysr.service.answer import Finished, finish, stage_milliseconds
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
from xraysr.service.api.upscale_response import RESPONSES, Answered, Encoded, encode, respond
from xraysr.service.batching import Batcher, Job, JobResult, ShuttingDown
from xraysr.service.concurrency import Admission, Overloaded
from xraysr.service.consistency import BACK_PROJECTION_ITERATIONS, ConsistencyMode
from xraysr.service.dicom_out import NEEDS_DICOM_INPUT, DicomSource, read_source
from xraysr.service.image_errors import NotAcceptable
from xraysr.service.imaging import DecodedImage, ImageError, decode_image
from xraysr.service.manifest import MAX_SAMPLES, Manifest
from xraysr.service.pipeline import AnswerPlan, SRPipeline, UpscaleResult, choose_answer
from xraysr.service.sampler import SEED_MAX, sample_seeds
from xraysr.service.settings import Settings

logger = logging.getLogger(__name__)
router = APIRouter(tags=["upscale"])

ENDPOINT = "/upscale"
_REQUEST_BODY = image_request_body(
    "The low-resolution image: the file itself, or a multipart form with a `file` field."
)

# The query options and the header, as the route and its OpenAPI page take them.
StepsQuery = Annotated[
    int | None,
    Query(
        description="Denoising steps of the reverse-diffusion loop (range: the manifest's). Naming steps or "
        "samples asks for the loop; naming neither gets the model's default answer, the one-pass estimate."
    ),
]
SeedQuery = Annotated[
    int | None,
    Query(
        ge=0,
        le=SEED_MAX,
        description="Noise seed of the loop; the same seed gives the same image. The estimate draws no noise.",
    ),
]
SamplesQuery = Annotated[
    int | None,
    Query(
        description=f"Diffusion samples averaged into the answer, 1–{MAX_SAMPLES} (with steps alone: the "
        "manifest's default_samples); sample k uses seed + k. Above 1 the JSON answer adds each sample."
    ),
]
ConsistencyQuery = Annotated[
    ConsistencyMode,
    Query(
        description="report (default): the answer as the model made it, with X-LR-Consistency-PSNR, the PSNR "
        "between the input and the answer shrunk back as the training pairs were made. enforce: the answer "
        f"projected ({BACK_PROJECTION_ITERATIONS} back-projection iterations) so that shrunk back it gives the "
        "input."
    ),
]
RequestTimeoutHeader = Annotated[
    str | None,
    Header(description="Seconds this request may take, at most the server's request_timeout_s (504 past it)."),
]


@router.post(
    ENDPOINT,
    summary="Upscale a 64×64 chest X-ray 4× with latent diffusion.",
    response_class=Response,
    responses=RESPONSES,
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
    steps: StepsQuery = None,
    seed: SeedQuery = None,
    samples: SamplesQuery = None,
    consistency: ConsistencyQuery = "report",
    x_request_timeout: RequestTimeoutHeader = None,
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

    stage_seconds = {**answered.stage_seconds(), "total": time.perf_counter() - started}
    finished = answered.finished
    metrics.observe_stages(stage_seconds)
    metrics.answers.labels(answer=finished.result.answer).inc()
    metrics.observe_consistency(finished.fidelity.mode, finished.fidelity.psnr_db)
    return respond(answered, stage_milliseconds(stage_seconds), pipeline.manifest)


def plan_of(steps: int | None, samples: int | None, manifest: Manifest) -> AnswerPlan:
    """The answer the query asks for (pipeline.choose_answer); a count out of range is a 422 naming the model."""
    try:
        return choose_answer(manifest.sampler, steps, samples, f"{manifest.model} {manifest.version}")
    except ValueError as error:
        raise HTTPException(422, str(error)) from error


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
) -> Answered:
    """An admitted request's work: 1. decode (and read what a DICOM answer keeps), 2. run it in the batcher,
    3. finish it and encode it, in the form the client asked for."""
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
    finished, encoded = await anyio.to_thread.run_sync(
        _finish, decoded.pixels, job_result.result, consistency, as_json, source, settings, pipeline.manifest
    )
    return Answered(decoded, decode_seconds, job_result, finished, encoded, as_json)


# 1. decode


def _decode(data: bytes, content_type: str | None, manifest: Manifest) -> tuple[DecodedImage, float]:
    started = time.perf_counter()
    decoded = decode_image(data, content_type, expected_size=manifest.image.lr_size)
    return decoded, time.perf_counter() - started


def _dicom_source(data: bytes, decoded: DecodedImage) -> DicomSource:
    if decoded.source_format != "dicom":
        raise NotAcceptable(NEEDS_DICOM_INPUT)
    return read_source(data)


# 2. run: the batcher, until the answer, the client's disconnect or (the caller's scope) the deadline


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


# 3. finish and encode


def _finish(
    lr: np.ndarray,
    result: UpscaleResult,
    consistency: ConsistencyMode,
    as_json: bool,
    source: DicomSource | None,
    settings: Settings,
    manifest: Manifest,
) -> tuple[Finished, Encoded]:
    """In a worker thread, after the batch: the step every surface shares (service/answer.py: the fidelity guard,
    and a JSON answer's uncertainty map), then the one encoding the client asked for (api/upscale_response.py)."""
    coverage = settings.uncertainty_coverage if as_json and source is None else None
    finished = finish(
        lr, result, manifest, consistency=consistency, low_db=settings.lr_consistency_low_db, coverage=coverage
    )
    return finished, encode(finished, manifest, as_json, source, settings.dicom_uid_root)

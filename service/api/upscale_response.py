"""The /upscale answer's shapes: a PNG, a DICOM Secondary Capture, or JSON, with the headers every one carries.

``encode`` writes the finished answer (service/answer.py) once, in the form the client asked for, in a worker
thread; ``respond`` wraps it with its headers (X-*, the fidelity guard's, Server-Timing) into the response.
"""

from __future__ import annotations

import base64
import dataclasses
import time
from typing import Any

from fastapi import Response
from fastapi.responses import JSONResponse

from xraysr.service import __version__
from xraysr.service.answer import Finished, answer_dicom, answer_png, baseline
from xraysr.service.batching import JobResult
from xraysr.service.dicom_out import DicomSource
from xraysr.service.imaging import DecodedImage, encode_png
from xraysr.service.manifest import Manifest
from xraysr.service.pipeline import UpscaleResult
from xraysr.service.provenance import DISCLAIMER
from xraysr.service.uncertainty import UNCERTAINTY_SCALE, uncertainty_png

# The OpenAPI description of every answer /upscale gives (service/api/upscale.py's docstring says where each
# is decided).
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"image/png": {}, "application/json": {}, "application/dicom": {}},
        "description": "A 256×256 8-bit grayscale PNG, or JSON with it (and its uncertainty map: the calibrated "
        "interval, or for a model without one the spread of two or more samples) base64-encoded when Accept asks "
        "for JSON. For a DICOM input, Accept: application/dicom answers a "
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


@dataclasses.dataclass(frozen=True)
class Encoded:
    """One answer encoded once, in the form it is sent."""

    png: bytes  # empty for a DICOM answer
    dicom: bytes | None
    samples_png: list[bytes] | None  # the JSON answer's diffusion samples, for two or more
    bicubic_png: bytes  # the baseline, for the JSON answer; else empty
    uncertainty_png: bytes | None  # the JSON answer's map, when it has one
    stage_seconds: dict[str, float]  # "png", or "dicom" for a DICOM answer


def encode(
    finished: Finished, manifest: Manifest, as_json: bool, source: DicomSource | None, uid_root: str | None
) -> Encoded:
    """The one encoding the client asked for: a DICOM Secondary Capture of a DICOM ``source`` (the "dicom"
    stage), else the PNG, with the baseline and each sample for a JSON answer (the "png" stage)."""
    started = time.perf_counter()
    if source is not None:
        dicom = answer_dicom(finished, source, manifest, uid_root)
        return Encoded(b"", dicom, None, b"", None, {"dicom": time.perf_counter() - started})
    png, samples_png, bicubic_png, map_png = answer_png(finished, manifest), None, b"", None
    if as_json:
        bicubic_png = encode_png(baseline(finished, manifest))
        if finished.result.sample_images is not None:
            samples_png = [encode_png(sample) for sample in finished.result.sample_images]
        if finished.uncertainty is not None:
            map_png = uncertainty_png(finished.uncertainty.grey_levels)
    return Encoded(png, None, samples_png, bicubic_png, map_png, {"png": time.perf_counter() - started})


@dataclasses.dataclass(frozen=True)
class Answered:
    """Everything an /upscale response is made from, in the order the request made it."""

    decoded: DecodedImage
    decode_seconds: float
    job_result: JobResult  # the batcher's: the pipeline's result and the size of its batch
    finished: Finished
    encoded: Encoded
    as_json: bool

    def stage_seconds(self) -> dict[str, float]:
        """Every stage timed so far, in the order it ran ("total" is the route's to add)."""
        return {"decode": self.decode_seconds, **self.finished.result.stage_seconds, **self.encoded.stage_seconds}


def respond(answered: Answered, stage_ms: dict[str, float], manifest: Manifest) -> Response:
    """The 200: the DICOM file, the JSON answer, or the PNG, each with the same headers."""
    headers = answer_headers(answered, stage_ms, manifest)
    encoded = answered.encoded
    if encoded.dicom is not None:
        return Response(encoded.dicom, media_type="application/dicom", headers=headers)
    if answered.as_json:
        return JSONResponse(json_answer(answered, stage_ms, manifest), headers=headers)
    return Response(encoded.png, media_type="image/png", headers=headers)


def answer_headers(answered: Answered, stage_ms: dict[str, float], manifest: Manifest) -> dict[str, str]:
    """What made the answer (X-Answer, X-Steps, X-Samples, X-Seed, the batch), its timings and its fidelity."""
    result = answered.finished.result
    headers = {
        "Server-Timing": server_timing(stage_ms, {"denoise": denoise_description(result)}),
        "X-Model-Version": manifest.version,
        "X-Answer": result.answer,
        "X-Steps": str(result.steps),
        "X-Samples": str(result.samples),
        "X-Batch-Samples": str(answered.job_result.batch_samples),
    }
    if result.seed is not None:
        headers["X-Seed"] = str(result.seed)
    if answered.decoded.conversion:
        headers["X-Input-Conversion"] = answered.decoded.conversion
    headers.update(answered.finished.fidelity.headers())
    return headers


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


def json_answer(answered: Answered, stage_ms: dict[str, float], manifest: Manifest) -> dict[str, Any]:
    """The JSON answer (Accept: application/json): the PNGs base64-encoded, with what made them."""
    finished, encoded = answered.finished, answered.encoded
    result, fidelity = finished.result, finished.fidelity
    return {
        "image_png_base64": base64.b64encode(encoded.png).decode("ascii"),
        "width": int(result.image.shape[1]),
        "height": int(result.image.shape[0]),
        "answer": result.answer,
        "steps": result.steps,
        "seed": result.seed,
        "samples": result.samples,
        **_uncertainty_fields(finished, encoded),
        "model_version": manifest.version,
        "stage_ms": {stage: round(ms, 3) for stage, ms in stage_ms.items()},
        "input_conversion": answered.decoded.conversion,
        "batch_samples": answered.job_result.batch_samples,
        "consistency": fidelity.mode,
        "lr_consistency_psnr": fidelity.psnr_db,
        "lr_consistency_low": fidelity.low,
        "bicubic_png_base64": base64.b64encode(encoded.bicubic_png).decode("ascii"),
        "software": f"xraysr {__version__}",
        "disclaimer": DISCLAIMER,
    }


def _uncertainty_fields(finished: Finished, encoded: Encoded) -> dict[str, Any]:
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
    if finished.uncertainty is not None and encoded.uncertainty_png is not None:
        fields.update(
            uncertainty_png_base64=base64.b64encode(encoded.uncertainty_png).decode(),
            uncertainty_scale=UNCERTAINTY_SCALE,
            uncertainty_mean=round(float(finished.uncertainty.grey_levels.mean()), 4),
            uncertainty_coverage=finished.uncertainty.coverage,
        )
    if encoded.samples_png is not None:
        fields["samples_png_base64"] = [base64.b64encode(png).decode("ascii") for png in encoded.samples_png]
    return fields

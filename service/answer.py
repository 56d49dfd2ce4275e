"""After the engines: one image's answer finished the same way on every surface — the /upscale route
(api/upscale.py), `xraysr upscale` (file_commands.py) and the Python API (python_api.py).

``finish`` takes what the pipeline made of one input and
1. runs the fidelity guard (service/consistency.py): the answer shrunk back is compared with its input, and for
   ``consistency="enforce"`` the answer is projected onto it first (the "consistency" stage);
2. when asked, makes the uncertainty map of the answer actually given (service/uncertainty.py): the calibrated
   interval's half-width at a coverage, measured against the bicubic baseline made here with it (the "interval"
   stage), or, for a model without an interval, the spread of its samples.

``answer_png`` and ``answer_dicom`` write the finished image as a file says it was made (provenance, and the
projection when enforced), so the route's PNG and the CLI's file are the same bytes.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

import numpy as np

from xraysr.service.consistency import (
    BACK_PROJECTION_ITERATIONS,
    ConsistencyMode,
    FidelityReport,
    bicubic_upscale,
    guard,
)
from xraysr.service.imaging import encode_png
from xraysr.service.provenance import provenance
from xraysr.service.uncertainty import UncertaintyMap, uncertainty_map

if TYPE_CHECKING:
    from xraysr.service.dicom_out import DicomSource
    from xraysr.service.manifest import Manifest
    from xraysr.service.pipeline import UpscaleResult

# The stages an answer reports, in this order (Server-Timing, the JSON's stage_ms, the Python API's stage_ms);
# any other (a GPU runtime's "denoise_gpu", …, a DICOM answer's "dicom") follows in the order it was timed.
STAGES = ("decode", "queue", "encode", "denoise", "vae_decode", "png", "interval", "consistency", "total")
ENFORCED = f"{BACK_PROJECTION_ITERATIONS} back-projection iterations"


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: comparing ndarrays field-wise has no single truth value
class Finished:
    """One answer, checked against its input; what every surface sends on."""

    lr: np.ndarray  # uint8 (lr, lr): the input it was checked against
    result: UpscaleResult  # image projected for consistency=enforce; stage_seconds with "consistency" (+ "interval")
    fidelity: FidelityReport  # the guard's report on ``result.image``
    uncertainty: UncertaintyMap | None  # asked for, and the model has one (an interval, or K ≥ 2 samples)
    bicubic: np.ndarray | None  # uint8 (hr, hr): the baseline the interval is measured against, made with the map


def finish(
    lr: np.ndarray,
    result: UpscaleResult,
    manifest: Manifest,
    *,
    consistency: ConsistencyMode,
    low_db: float,
    coverage: float | None,
) -> Finished:
    """``result`` (the pipeline's answer to ``lr``) through the fidelity guard, with ``low_db`` the consistency
    below which it is flagged low; and its uncertainty map at ``coverage`` (None: no map, as a PNG or DICOM
    answer has none). ``result`` itself is left as it was: the finished one is a copy."""
    stage_seconds = dict(result.stage_seconds)
    started = time.perf_counter()
    image, fidelity = guard(lr, result.image, consistency, low_db)
    stage_seconds["consistency"] = time.perf_counter() - started
    result = dataclasses.replace(result, image=image, stage_seconds=stage_seconds)

    uncertainty, bicubic = None, None
    if coverage is not None:
        started = time.perf_counter()
        bicubic = bicubic_upscale(lr, manifest.image.hr_size)
        uncertainty = uncertainty_map(result, bicubic, manifest, coverage)
        if manifest.interval is not None:
            stage_seconds["interval"] = time.perf_counter() - started
    return Finished(lr, result, fidelity, uncertainty, bicubic)


def baseline(finished: Finished, manifest: Manifest) -> np.ndarray:
    """The bicubic baseline of the answer's input: the one ``finish`` made with the map, else made now."""
    if finished.bicubic is not None:
        return finished.bicubic
    return bicubic_upscale(finished.lr, manifest.image.hr_size)


def answer_png(finished: Finished, manifest: Manifest) -> bytes:
    """The answer as an 8-bit PNG whose text chunks say what made it (service/provenance.py)."""
    text = provenance(manifest, finished.result)
    if finished.fidelity.mode == "enforce":
        text["xraysr-consistency"] = f"enforce: {ENFORCED}"
    return encode_png(finished.result.image, text)


def answer_dicom(finished: Finished, source: DicomSource, manifest: Manifest, uid_root: str | None) -> bytes:
    """The answer as a DICOM Secondary Capture in the study of ``source`` (service/dicom_out.py)."""
    from xraysr.service.dicom_out import secondary_capture

    note = f"projected onto its input, {ENFORCED}" if finished.fidelity.mode == "enforce" else None
    return secondary_capture(source, finished.result, manifest, uid_root, note)


def stage_milliseconds(stage_seconds: dict[str, float]) -> dict[str, float]:
    """Stage times in milliseconds, in the order ``STAGES`` gives, then the others as they were timed."""
    order = (*(s for s in STAGES if s in stage_seconds), *(s for s in stage_seconds if s not in STAGES))
    return {stage: 1000 * stage_seconds[stage] for stage in order}

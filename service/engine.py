"""engines/<model> → a warmed-up SRPipeline, shared by the server's lifespan and `xraysr upscale`."""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from xraysr.service.interval import check_coverage
from xraysr.service.manifest import MAX_SAMPLES, Manifest, load_manifest, manifest_name
from xraysr.service.pipeline import SRPipeline, choose_answer
from xraysr.service.runtimes import load_runtime
from xraysr.service.settings import Settings

logger = logging.getLogger(__name__)


def check_manifest(settings: Settings) -> Manifest:
    """Reads and verifies the manifest of the precision asked for (checksums included).

    fp32 reads manifest.json, int8 manifest.int8.json; fp16 also reads manifest.json, because TensorRT builds
    FP16 engines from the FP32 ONNX (Settings refuses fp16 on onnxruntime before this runs).
    """
    manifest = load_manifest(settings.model_dir, settings.served_precision)
    accepted = ("fp32", "fp16") if settings.precision == "fp16" else (settings.precision,)
    if manifest.precision not in accepted:
        raise ValueError(
            f"{settings.model_dir / manifest_name(settings.served_precision)} says precision {manifest.precision}; "
            f"--precision {settings.precision} needs {' or '.join(accepted)}: re-export (`xraysr export`) or "
            "re-quantize (`xraysr quantize`) the model"
        )
    if manifest.interval is not None:
        try:
            check_coverage(manifest.interval, settings.uncertainty_coverage)
        except ValueError as error:
            raise ValueError(f"uncertainty_coverage: {error} ({manifest.version}'s interval)") from None
    return manifest


def engine_max_batch(settings: Settings) -> int:
    """The largest batch the engines must take: the batcher runs up to max_batch samples, or one request's samples
    when that is more. `build-engines` builds for the same, so that serve finds its plans in the cache."""
    return max(settings.max_batch, MAX_SAMPLES)


def load_pipeline(settings: Settings, warm_up: bool = True) -> SRPipeline:
    """Loads the model once; the warm-up pays ONNX Runtime's first-run allocations before any request does."""
    manifest = check_manifest(settings)
    max_batch = engine_max_batch(settings)
    runtime = load_runtime(
        settings.backend,
        manifest,
        settings.model_dir,
        settings.threads,
        settings.served_precision,
        settings.trt_cache_dir,
        max_batch,
    )
    pipeline = SRPipeline(manifest, runtime)
    if warm_up:
        started = time.perf_counter()
        size = manifest.image.lr_size
        # The default answer's shape: ONNX Runtime allocates per input shape, and most requests have that one.
        plan = choose_answer(manifest.sampler)
        if plan.answer == "samples":  # the loop's shapes are the same at any step count: its fewest will do
            plan = dataclasses.replace(plan, steps=manifest.sampler.min_steps)
        pipeline.answer(np.zeros((size, size), np.uint8), plan, seed=0)
        logger.info("warm-up upscale took %.0f ms", 1000 * (time.perf_counter() - started))
    logger.info(
        "loaded %s %s (%s, %s; precision %s; default answer: %s) from %s",
        manifest.model,
        manifest.version,
        runtime.backend,
        manifest.precision,
        settings.precision_choice,
        manifest.sampler.default_answer,
        settings.model_dir,
    )
    return pipeline

"""engines/<model> → a warmed-up SRPipeline, shared by the server's lifespan and `xraysr upscale`."""

from __future__ import annotations

import logging
import time

import numpy as np

from service.manifest import Manifest, load_manifest
from service.pipeline import SRPipeline
from service.runtimes import load_runtime
from service.settings import Settings

logger = logging.getLogger(__name__)


def check_manifest(settings: Settings) -> Manifest:
    """Reads and verifies the manifest (checksums included) and that it is the precision asked for."""
    manifest = load_manifest(settings.model_dir)
    if manifest.precision != settings.precision:
        raise ValueError(
            f"{settings.model_dir} holds {manifest.precision} files; --precision {settings.precision} needs "
            f"{settings.precision} files: export or quantize the model into its own engines/<model> folder and "
            f"select it with --model, or leave --precision/XRAYSR_PRECISION at {manifest.precision}"
        )
    return manifest


def load_pipeline(settings: Settings, warm_up: bool = True) -> SRPipeline:
    """Loads the model once; the warm-up pays ONNX Runtime's first-run allocations before any request does."""
    manifest = check_manifest(settings)
    runtime = load_runtime(settings.backend, manifest, settings.model_dir, settings.threads)
    pipeline = SRPipeline(manifest, runtime)
    if warm_up:
        started = time.perf_counter()
        size = manifest.image.lr_size
        pipeline.upscale(np.zeros((size, size), np.uint8), steps=manifest.sampler.min_steps, seed=0)
        logger.info("warm-up upscale took %.0f ms", 1000 * (time.perf_counter() - started))
    logger.info(
        "loaded %s %s (%s, %s) from %s", manifest.model, manifest.version, runtime.backend, manifest.precision,
        settings.model_dir,
    )
    return pipeline

"""The uncertainty an answer carries: the calibrated per-pixel interval (service/interval.py), or, for models
calibrated before it existed, the spread of K diffusion samples.

K samples of one X-ray → their posterior mean (the answer) and per-pixel spread. For PSNR the best estimate is
the posterior mean: one sample trades fidelity for detail the model invents, and the mean of K samples averages
the invented part away. Their spread measures the sampler, not the error (four samples that stop at t = 400
agree with each other far more than with the truth: 0.38 grey levels against a mean error of 3.6), so a model
with a calibrated interval answers that instead, for the estimate and the loop alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from xraysr.service.imaging import encode_png
from xraysr.service.interval import half_width

if TYPE_CHECKING:
    from xraysr.service.manifest import Manifest
    from xraysr.service.pipeline import UpscaleResult

# Grey levels per level of the uncertainty PNG. Fixed, not scaled to each map's own maximum, so that maps of
# different requests compare level for level; 255 levels cover 0–127.5 grey levels of half-width.
UNCERTAINTY_SCALE = 0.5
# The model's [-1, 1] spans 255 grey levels (pipeline.to_pixels): one model unit is 127.5 levels.
GREY_LEVELS_PER_UNIT = 127.5


def mean_and_spread(decoded: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(K, H, W) decoded images on the model's [-1, 1] scale → (their mean on that scale, float32; the
    population standard deviation (ddof = 0) across the K in grey levels, float32, or None when K is 1).

    Each sample is clipped to [-1, 1] first, as ``to_pixels`` would show it on its own.
    """
    if decoded.ndim != 3 or decoded.shape[0] < 1:
        raise ValueError(f"expected K ≥ 1 images as a (K, H, W) array, got shape {decoded.shape}")
    # float64: K identical float32 values sum exactly there, so K identical samples average to exactly
    # that sample, and one sample is its own mean: samples=1 keeps the bytes of a single run.
    values = np.clip(decoded.astype(np.float64), -1.0, 1.0)
    mean = values.mean(axis=0).astype(np.float32)
    if len(values) == 1:
        return mean, None
    spread = (values * GREY_LEVELS_PER_UNIT).std(axis=0).astype(np.float32)
    return mean, spread


def uncertainty_levels(spread: np.ndarray) -> np.ndarray:
    """Standard deviation in grey levels → the uint8 levels of the uncertainty PNG:
    ``clip(round(spread / UNCERTAINTY_SCALE), 0, 255)``."""
    return np.clip(np.round(spread / UNCERTAINTY_SCALE), 0, 255).astype(np.uint8)


def uncertainty_png(spread: np.ndarray) -> bytes:
    """The spread as an 8-bit grayscale PNG of ``uncertainty_levels``: 0 where every sample agrees."""
    return encode_png(uncertainty_levels(spread))


@dataclass(frozen=True)
class UncertaintyMap:
    grey_levels: np.ndarray  # float32 H x W: the interval's half-width, or the samples' spread
    coverage: float | None  # the interval's probability; None for a spread, which promises none


def uncertainty_map(
    result: UpscaleResult, bicubic: np.ndarray, manifest: Manifest, coverage: float
) -> UncertaintyMap | None:
    """The calibrated interval's half-width when the model has one; else the samples' spread (None for one)."""
    if manifest.interval is not None:
        widths = half_width(result.image, bicubic, manifest.interval, result.answer, coverage)
        return UncertaintyMap(widths, coverage)
    if result.uncertainty is not None:
        return UncertaintyMap(result.uncertainty, None)
    return None

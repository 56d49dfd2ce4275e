"""The fidelity guard: does the 256×256 answer, shrunk back the way the training pairs were made, give the input?

The training LR of every pair is ``cv2.resize(hr, (64, 64), INTER_CUBIC)`` (training/prepare.py), so a faithful
super-resolution ``sr`` of an input ``lr`` satisfies ``shrink(sr) ≈ lr``. A diffusion model can paint detail that
breaks this: anatomy the input does not support. Every /upscale answer therefore reports

    lr_consistency_psnr = PSNR(shrink(sr), lr)   in dB, 8-bit peak 255, on the 64×64 grid,

with ``shrink`` the bit-exact INTER_CUBIC of service/resize.py and PSNR the project's one definition
(service/fidelity.py). Identical images have an infinite PSNR; the answer caps it at ``PSNR_CAP_DB`` = 99.99 dB
(JSON has no infinity), which is unambiguous: the smallest non-zero error on 64×64 8-bit images, one grey level at
one pixel, gives 10·log10(255² · 4096) = 84.25 dB.

``consistency=enforce`` projects the answer onto the images that shrink back to the input, by iterative
back-projection (Irani & Peleg 1991): ``x ← x + up(lr − down(x))``, ``BACK_PROJECTION_ITERATIONS`` times. ``x``
stays in float and is rounded and clipped to 8 bits once, at the end; ``up`` is INTER_CUBIC 64 → 256 with float
weights (service/resize.resize_cubic_float); ``down(x)`` is the guard's own measurement, the bit-exact 8-bit
shrink of ``x`` rounded, so an answer that already shrinks back to its input is left exactly as it is (a float
``down`` would move it by the fixed-point kernel's rounding and lower its consistency from 99.99 to about 65 dB).
docs/RESULTS.md ("Fidelity guard") measures what it does to PSNR/SSIM against the real high-resolution images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from xraysr.service.fidelity import psnr
from xraysr.service.resize import resize_cubic, resize_cubic_float

ConsistencyMode = Literal["report", "enforce"]
CONSISTENCY_MODES: tuple[ConsistencyMode, ...] = ("report", "enforce")
PSNR_CAP_DB = 99.99
PEAK = 255.0
# Chosen on the 185 adult validation images (docs/RESULTS.md, "Fidelity guard"): one iteration takes the shipped
# model's answers from 49.7 to 60.2 dB, the gain ends at four (61.09 dB; five and six: 61.07, 61.09, the final
# 8-bit rounding's noise).
BACK_PROJECTION_ITERATIONS = 4


def shrink_output(sr: np.ndarray, lr_size: int) -> np.ndarray:
    """The answer shrunk exactly as the training LR was made from the HR: INTER_CUBIC, uint8."""
    return resize_cubic(sr, lr_size, lr_size)


def lr_consistency_psnr(lr: np.ndarray, sr: np.ndarray) -> float:
    """PSNR(shrink(sr), lr) in dB (peak 255), capped at ``PSNR_CAP_DB``; ``lr`` is the 64×64 input, ``sr`` the
    answer, both 2-D uint8 images (range [0, 255]; ``shrink`` checks ``sr``)."""
    if lr.dtype != np.uint8 or lr.ndim != 2:
        raise ValueError(f"lr must be a 2-D uint8 image, got {lr.dtype} with shape {lr.shape}")
    return psnr(shrink_output(sr, lr.shape[0]), lr, data_range=PEAK, cap=PSNR_CAP_DB)


def bicubic_upscale(lr: np.ndarray, hr_size: int) -> np.ndarray:
    """The baseline a user already has: OpenCV's INTER_CUBIC of the input, bit-exact (service/resize.py)."""
    return resize_cubic(lr, hr_size, hr_size)


def enforce_consistency(lr: np.ndarray, sr: np.ndarray, iterations: int = BACK_PROJECTION_ITERATIONS) -> np.ndarray:
    """``sr`` projected by ``iterations`` of back-projection so that shrinking it gives ``lr`` back; uint8."""
    if lr.dtype != np.uint8 or sr.dtype != np.uint8 or lr.ndim != 2 or sr.ndim != 2:
        raise ValueError(
            f"enforce_consistency takes 2-D uint8 images, got {lr.dtype} {lr.shape}, {sr.dtype} {sr.shape}"
        )
    if iterations < 0:
        raise ValueError(f"iterations must be 0 or more, got {iterations}")
    hr_size = sr.shape[0]
    target = lr.astype(np.float64)
    estimate = sr.astype(np.float64)
    for _ in range(iterations):
        answered = np.clip(np.rint(estimate), 0, 255).astype(np.uint8)
        residual = target - shrink_output(answered, lr.shape[0])  # on the 64×64 grid, in grey levels
        if not residual.any():
            break  # consistent already: nothing left to project
        estimate = estimate + resize_cubic_float(residual, hr_size, hr_size)
    return np.clip(np.rint(estimate), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class FidelityReport:
    """What the guard says about one answer."""

    mode: ConsistencyMode
    psnr_db: float  # of the image actually answered (after enforcing, when enforced)
    low: bool  # psnr_db below the server's lr_consistency_low_db

    def headers(self) -> dict[str, str]:
        headers = {"X-LR-Consistency-PSNR": f"{self.psnr_db:.2f}"}
        if self.low:
            headers["X-LR-Consistency-Low"] = "1"
        return headers


def guard(lr: np.ndarray, sr: np.ndarray, mode: ConsistencyMode, low_db: float) -> tuple[np.ndarray, FidelityReport]:
    """The image to answer (``sr`` itself, or projected for ``enforce``) and its consistency report."""
    if mode not in CONSISTENCY_MODES:
        raise ValueError(f"consistency must be one of {', '.join(CONSISTENCY_MODES)}, got {mode!r}")
    answered = enforce_consistency(lr, sr) if mode == "enforce" else sr
    psnr_db = round(lr_consistency_psnr(lr, answered), 2)
    return answered, FidelityReport(mode=mode, psnr_db=psnr_db, low=psnr_db < low_db)

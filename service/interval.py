"""A calibrated per-pixel interval on every answer: ``answer ± half_width`` holds the true pixel with the stated
probability, on images like the calibration ones.

Two parts, both written into the manifest by training/interval.py (``xraysr calibrate-interval``):
1. A scale σ(x) per pixel, in grey levels: a log-linear model of ``FEATURES``, which describe how much detail
   the answer holds around the pixel and how far it departs from bicubic there (where the model invented or
   restored detail, it can be wrong by more). Its weights are fitted on the training split by maximum
   likelihood of |answer − truth| under a Laplace distribution of scale σ (a heteroscedastic model; the
   likelihood is convex in the weights). numpy only: a few milliseconds per image, on any device.
2. A factor λ(coverage) per kind of answer, chosen on the validation split by conformal risk control
   (Angelopoulos et al., "Conformal Risk Control", 2022; for images, "Image-to-image regression with
   distribution-free uncertainty quantification", 2022): the smallest λ whose expected fraction of pixels
   outside ``answer ± λσ`` is at most 1 − coverage, with the finite-sample correction, over the validation
   images taken as exchangeable with the ones served. The half-width is λσ.
"""

from __future__ import annotations

import numpy as np

from xraysr.service.manifest import AnswerKind, IntervalSpec

FEATURES = (
    "bias",
    "log_departure",  # log1p |answer − bicubic|: where the model added or removed detail
    "log_departure_5",  # … its 5×5 mean
    "log_departure_11",  # … its 11×11 mean
    "log_departure_detail_5",  # log1p of the 5×5 standard deviation of answer − bicubic
    "log_gradient",  # log1p of the answer's gradient magnitude
    "log_gradient_5",  # … its 5×5 mean
    "log_laplacian",  # log1p |4-neighbour Laplacian of the answer|
    "log_laplacian_5",  # … its 5×5 mean
    "log_detail_3",  # log1p of the answer's 3×3 standard deviation
    "log_detail_5",  # … 5×5
    "log_detail_11",  # … 11×11
    "log_input_detail_3",  # log1p of bicubic's 3×3 standard deviation
    "log_input_detail_5",  # … 5×5
    "brightness",  # answer / 255: noise and clipping differ between lung and bone
    "brightness_squared",
    "brightness_detail_5",  # brightness × log_detail_5
)


def features(answer: np.ndarray, bicubic: np.ndarray) -> np.ndarray:
    """(len(FEATURES), H, W) float32 of two H×W images in grey levels (uint8 or float)."""
    answer = answer.astype(np.float32)
    bicubic = bicubic.astype(np.float32)
    difference = answer - bicubic
    departure = np.abs(difference)
    rows, columns = np.gradient(answer)
    gradient = np.hypot(rows, columns)
    padded = np.pad(answer, 1, mode="edge")
    laplacian = np.abs(4 * answer - padded[:-2, 1:-1] - padded[2:, 1:-1] - padded[1:-1, :-2] - padded[1:-1, 2:])
    brightness = answer / 255.0
    detail_5 = np.log1p(local_std(answer, 2))
    return np.stack(
        [
            np.ones_like(answer),
            np.log1p(departure),
            np.log1p(box_mean(departure, 2)),
            np.log1p(box_mean(departure, 5)),
            np.log1p(local_std(difference, 2)),
            np.log1p(gradient),
            np.log1p(box_mean(gradient, 2)),
            np.log1p(laplacian),
            np.log1p(box_mean(laplacian, 2)),
            np.log1p(local_std(answer, 1)),
            detail_5,
            np.log1p(local_std(answer, 5)),
            np.log1p(local_std(bicubic, 1)),
            np.log1p(local_std(bicubic, 2)),
            brightness,
            brightness**2,
            brightness * detail_5,
        ]
    ).astype(np.float32)


def scale(answer: np.ndarray, bicubic: np.ndarray, weights: tuple[float, ...]) -> np.ndarray:
    """σ per pixel, in grey levels (float32): exp(weights · features)."""
    if len(weights) != len(FEATURES):
        raise ValueError(f"expected {len(FEATURES)} weights ({', '.join(FEATURES)}), got {len(weights)}")
    log_scale = np.tensordot(np.asarray(weights, dtype=np.float32), features(answer, bicubic), axes=1)
    return np.exp(np.clip(log_scale, -10.0, 10.0)).astype(np.float32)


def check_coverage(spec: IntervalSpec, coverage: float) -> None:
    """A ValueError unless ``coverage`` lies within the coverages the interval was calibrated at."""
    if not spec.coverages[0] <= coverage <= spec.coverages[-1]:
        raise ValueError(f"coverage {coverage} is outside the calibrated {spec.coverages[0]}..{spec.coverages[-1]}")


def factor(spec: IntervalSpec, answer_kind: AnswerKind, coverage: float) -> float:
    """λ for this kind of answer at ``coverage``, interpolated between the calibrated coverages (λ rises with
    coverage, so the interpolation keeps a wider coverage's interval wider at every pixel)."""
    table = spec.factors.get(answer_kind)
    if table is None:
        raise ValueError(f"the interval is not calibrated for {answer_kind!r} answers ({', '.join(spec.factors)})")
    check_coverage(spec, coverage)
    return float(np.interp(coverage, np.asarray(spec.coverages), np.asarray(table)))


def half_width(
    answer: np.ndarray, bicubic: np.ndarray, spec: IntervalSpec, answer_kind: AnswerKind, coverage: float
) -> np.ndarray:
    """The interval's half-width per pixel, in grey levels (float32)."""
    return (factor(spec, answer_kind, coverage) * scale(answer, bicubic, spec.weights)).astype(np.float32)


def box_mean(values: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r + 1)² window, the border replicated: shifted sums along each axis, float32."""
    size = 2 * radius + 1
    padded = np.pad(values.astype(np.float32), radius, mode="edge")
    height, width = values.shape
    rows = padded[0:height].copy()
    for shift in range(1, size):
        rows += padded[shift : shift + height]
    window = rows[:, 0:width].copy()
    for shift in range(1, size):
        window += rows[:, shift : shift + width]
    return window / np.float32(size * size)


def local_std(values: np.ndarray, radius: int) -> np.ndarray:
    values = values.astype(np.float32)
    mean = box_mean(values, radius)
    return np.sqrt(np.maximum(box_mean(values * values, radius) - mean * mean, 0.0))

"""PSNR, the one definition every number in the project uses: 10·log10(data_range² / MSE), in dB.

Callers differ only in the arguments they pass, never in the formula:

- the fidelity guard (service/consistency.py): 8-bit images, ``data_range=255``, capped at 99.99 dB because JSON
  has no infinity;
- training/metrics.py's ``psnr``: 8-bit images, ``data_range=255``, ``inf`` for identical images (scikit-image's
  ``peak_signal_noise_ratio``, the definition of every PSNR in docs/RESULTS.md);
- training/quantize_qdq.py: float ONNX outputs, ``data_range`` = the FP32 outputs' max − min, through
  ``psnr_from_mse`` (its error is accumulated feed by feed).
"""

from __future__ import annotations

import numpy as np


def psnr_from_mse(mse: float, data_range: float, cap: float | None = None) -> float:
    """PSNR in dB of a mean squared error ``mse`` (≥ 0) on values spanning ``data_range``.

    Args:
        mse: the mean of the squared differences, in the images' units.
        data_range: the peak-to-peak range of the values: 255 for 8-bit images ([0, 255]), 1 for float images in
            [0, 1], max − min of a float reference.
        cap: the largest value returned; ``None`` returns ``inf`` for ``mse == 0``.

    Returns:
        ``10·log10(data_range² / mse)``, ``min``-ed with ``cap``; ``cap`` (or ``inf``) when ``mse`` is 0.

    Raises:
        ValueError: ``mse`` is NaN (an output held NaN). Counted as a perfect score, as the quantize report once
            did, a broken INT8 file would have passed its acceptance check.
    """
    if np.isnan(mse):
        raise ValueError("the mean squared error is NaN: an image or output holds NaN")
    if mse > 0:
        decibels = float(10 * np.log10(float(data_range) ** 2 / mse))
        return decibels if cap is None else min(cap, decibels)
    return float("inf") if cap is None else cap


def psnr(image: np.ndarray, reference: np.ndarray, data_range: float, cap: float | None = None) -> float:
    """PSNR in dB of ``image`` against ``reference``, as scikit-image's ``peak_signal_noise_ratio`` computes it.

    Args:
        image, reference: arrays of the same shape and dtype, any layout (H×W, C×H×W, a batch); uint8 images
            have the range [0, 255], float images whatever ``data_range`` says. The difference is taken in
            float64, so uint8 never wraps around.
        data_range: the peak-to-peak range of the values (255 for uint8 images), see ``psnr_from_mse``.
        cap: the largest value returned; ``None`` returns ``inf`` for identical images.

    Raises:
        ValueError: the shapes or the dtypes differ.
    """
    if image.shape != reference.shape:
        raise ValueError(f"shapes differ: image {image.shape}, reference {reference.shape}")
    if image.dtype != reference.dtype:
        raise ValueError(f"dtypes differ: image {image.dtype}, reference {reference.dtype}")
    mse = float(np.mean((image.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return psnr_from_mse(mse, data_range, cap)

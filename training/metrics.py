"""Image-quality metrics on 8-bit images, with scikit-image's definitions so every number is comparable.

All functions take ``uint8`` arrays of shape ``H×W`` (range [0, 255]) and use ``data_range=255``, the
convention of ../shared/data/cxr/README.md's bicubic baseline (32.4 dB, 0.894). PSNR is the service's one
definition (service/fidelity.py, scikit-image's formula); SSIM is scikit-image's.
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.metrics import structural_similarity

from xraysr.service import fidelity


def _check_pair(prediction: np.ndarray, reference: np.ndarray) -> None:
    for name, image in (("prediction", prediction), ("reference", reference)):
        if image.dtype != np.uint8 or image.ndim != 2:
            raise ValueError(f"{name} must be a 2-D uint8 image, got {image.dtype} with shape {image.shape}")
    if prediction.shape != reference.shape:
        raise ValueError(f"shapes differ: prediction {prediction.shape}, reference {reference.shape}")


def psnr(prediction: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB (peak 255); ``inf`` for identical images."""
    _check_pair(prediction, reference)
    return fidelity.psnr(prediction, reference, data_range=255)


def ssim(prediction: np.ndarray, reference: np.ndarray) -> float:
    """SSIM with scikit-image's defaults (7×7 uniform window), in [-1, 1]."""
    _check_pair(prediction, reference)
    return float(structural_similarity(reference, prediction, data_range=255))


def bicubic_upscale(lr_image: np.ndarray, size: int) -> np.ndarray:
    """The baseline every number is measured against: cv2.INTER_CUBIC on the 8-bit LR image."""
    if lr_image.dtype != np.uint8 or lr_image.ndim != 2:
        raise ValueError(f"lr_image must be a 2-D uint8 image, got {lr_image.dtype} with shape {lr_image.shape}")
    return cv2.resize(lr_image, (size, size), interpolation=cv2.INTER_CUBIC)

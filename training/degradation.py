"""How a 64×64 input is made from a 256×256 X-ray: the degradations the model trains on and is scored on.

The shared data's LR is ``cv2.INTER_CUBIC`` of the HR, which does not antialias (it samples a 4-tap cubic at
sparse points, so fine texture aliases). A PACS thumbnail, a browser or any careful downscaler averages
instead. A model trained on one alone loses to bicubic on the other, so training draws a degradation per
pair and every evaluation names the one it used.

- ``cubic``: ``cv2.INTER_CUBIC`` (a = -0.75, no antialiasing); the primary protocol, the shared data's LR.
- ``area``: ``cv2.INTER_AREA``; on an integer factor, the mean of each 4×4 block.
- ``cubic_aa``: antialiased bicubic (the kernel widened by the factor, a = -0.5), Pillow's ``BICUBIC``.

Each has a numpy form (`make_lr`, for evaluation on 8-bit images) and a torch form (`degrade`, on the
[-1, 1] training scale, inside the training loop); tests/training/test_degradation.py pins them together.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import get_args

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from xraysr.training.config import Degradation

DEGRADATIONS: tuple[Degradation, ...] = get_args(Degradation)


def make_lr(hr: np.ndarray, size: int, degradation: Degradation) -> np.ndarray:
    """An 8-bit ``size²`` LR image of the 8-bit square HR image ``hr``, made the way ``degradation`` says."""
    if hr.dtype != np.uint8 or hr.ndim != 2 or hr.shape[0] != hr.shape[1]:
        raise ValueError(f"hr must be a square 2-D uint8 image, got {hr.dtype} with shape {hr.shape}")
    match degradation:
        case "cubic":
            return cv2.resize(hr, (size, size), interpolation=cv2.INTER_CUBIC)
        case "area":
            return cv2.resize(hr, (size, size), interpolation=cv2.INTER_AREA)
        case "cubic_aa":
            return np.asarray(Image.fromarray(hr).resize((size, size), Image.Resampling.BICUBIC))
    raise ValueError(f"unknown degradation {degradation!r}; expected one of {DEGRADATIONS}")


def degrade(hr: torch.Tensor, lr_size: int, degradation: Degradation = "cubic") -> torch.Tensor:
    """`make_lr` on a ``B×1×H×W`` batch on the [-1, 1] scale, quantised to 8 bits as a PNG would be."""
    match degradation:
        case "cubic":
            # torch's bicubic without antialiasing is cv2.INTER_CUBIC: a = -0.75, half-pixel centres.
            lr = F.interpolate(hr, size=(lr_size, lr_size), mode="bicubic", align_corners=False, antialias=False)
        case "area":
            lr = F.adaptive_avg_pool2d(hr, lr_size)
        case "cubic_aa":
            lr = F.interpolate(hr, size=(lr_size, lr_size), mode="bicubic", align_corners=False, antialias=True)
        case _:
            raise ValueError(f"unknown degradation {degradation!r}; expected one of {DEGRADATIONS}")
    # The same rounding as data.to_uint8 / to_unit_range, inlined to keep this module free of data.py.
    return ((lr.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1.0


def draw_degradations(
    batch_size: int, weights: Mapping[Degradation, float], generator: torch.Generator
) -> list[Degradation]:
    """One degradation per sample, drawn with probabilities proportional to ``weights``."""
    names = [name for name, weight in weights.items() if weight > 0]
    if not names:
        raise ValueError(f"no degradation has a positive weight: {dict(weights)}")
    probabilities = torch.tensor([float(weights[name]) for name in names], dtype=torch.float64)
    drawn = torch.multinomial(probabilities, batch_size, replacement=True, generator=generator)
    return [names[int(index)] for index in drawn]


def degrade_mixed(hr: torch.Tensor, lr_size: int, degradations: list[Degradation]) -> torch.Tensor:
    """`degrade` with a degradation per sample of the batch (``len(degradations) == B``)."""
    if len(degradations) != hr.shape[0]:
        raise ValueError(f"{len(degradations)} degradations for a batch of {hr.shape[0]}")
    lr = torch.empty(hr.shape[0], hr.shape[1], lr_size, lr_size, dtype=hr.dtype, device=hr.device)
    for name in set(degradations):
        chosen = torch.tensor([kind == name for kind in degradations], device=hr.device)
        lr[chosen] = degrade(hr[chosen], lr_size, name)
    return lr

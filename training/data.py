"""Paired LR/HR chest X-rays in memory, seeded paired augmentation, and step-addressed batches.

The folder contract is the one `xraysr prepare` writes: ``HR_256/<name>.png``, ``LR_64/<name>.png`` (8-bit
grayscale, same name in both) and ``splits.csv`` (filename, patient_id, view, split). Pixels live on the
[-1, 1] scale while training; `to_uint8` is the exact way back that evaluation uses.

Randomness never lives in hidden global state: the batch for optimiser step k and its augmentation are
pure functions of (seed, k), so a resumed run sees exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from xraysr.training.config import AugmentConfig, DataConfig, Split
from xraysr.training.splits import read_splits

logger = logging.getLogger(__name__)

def to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float32 [-1, 1]; 0 and 255 land exactly on -1 and 1."""
    return pixels.to(torch.float32) / 127.5 - 1.0


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] → uint8, rounded and clamped; the exact inverse of `to_unit_range` on its outputs."""
    return ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _read_grayscale(path: Path, size: int) -> torch.Tensor:
    if not path.is_file():
        raise ValueError(f"{path} is missing: every HR image needs an LR image of the same name")
    with Image.open(path) as image:
        if image.mode != "L":
            raise ValueError(f"{path} is mode {image.mode!r}, expected 8-bit grayscale 'L'")
        if image.size != (size, size):
            raise ValueError(f"{path} is {image.size[0]}x{image.size[1]}, expected {size}x{size}")
        return torch.from_numpy(np.array(image, dtype=np.uint8)).unsqueeze(0)


class PairDataset(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """All LR/HR pairs of one split, decoded once and kept as uint8 (340 pairs ≈ 24 MB)."""

    def __init__(self, config: DataConfig, split: Split) -> None:
        root = Path(config.root)
        self.split = split
        rows = [row for row in read_splits(root) if row.split == split]
        if config.sources is not None:
            unknown = set(config.sources) - {row.source for row in rows}
            if unknown:
                raise ValueError(f"split {split!r} of {root / 'splits.csv'} has no images of sources {sorted(unknown)}")
            rows = [row for row in rows if row.source in config.sources]
        self._filenames = [row.filename for row in rows]
        if not self._filenames:
            raise ValueError(f"split {split!r} of {root / 'splits.csv'} has no images")
        lr_images, hr_images = [], []
        for name in self._filenames:
            hr_images.append(_read_grayscale(root / "HR_256" / name, config.hr_size))
            lr_images.append(_read_grayscale(root / "LR_64" / name, config.lr_size))
        self._lr_pixels = torch.stack(lr_images)
        self._hr_pixels = torch.stack(hr_images)
        logger.info("loaded %d %s pairs from %s", len(self._filenames), split, root)

    @property
    def filenames(self) -> list[str]:
        return list(self._filenames)

    def __len__(self) -> int:
        return len(self._filenames)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(lr 1×64×64, hr 1×256×256), float32 on [-1, 1]."""
        return to_unit_range(self._lr_pixels[index]), to_unit_range(self._hr_pixels[index])

    def pairs(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(lr B×1×64×64, hr B×1×256×256), float32 on [-1, 1]; one gather instead of B `__getitem__` calls."""
        return to_unit_range(self._lr_pixels[indices]), to_unit_range(self._hr_pixels[indices])


@dataclass(frozen=True)
class AugmentParameters:
    """One draw per sample of a batch; the same draw is applied to the LR and the HR of a pair."""

    flip: torch.Tensor  # bool, B
    rotation_degrees: torch.Tensor  # float32, B
    brightness_shift: torch.Tensor  # float32, B, on the [-1, 1] scale


def draw_augmentation(batch_size: int, config: AugmentConfig, generator: torch.Generator) -> AugmentParameters:
    # All three draws happen whatever the config says, so switching one augmentation off does not
    # reshuffle the random numbers the others receive.
    flip_draw = torch.rand(batch_size, generator=generator)
    rotation_draw = torch.rand(batch_size, generator=generator)
    brightness_draw = torch.rand(batch_size, generator=generator)
    return AugmentParameters(
        flip=flip_draw < config.hflip_probability,
        rotation_degrees=(2 * rotation_draw - 1) * config.max_rotation_degrees,
        brightness_shift=(2 * brightness_draw - 1) * config.brightness_jitter,
    )


def _rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    # The angle is defined on normalised coordinates with align_corners=False, where [-1, 1] spans the
    # outer pixel edges at every resolution; the same theta therefore describes the same continuous
    # motion of the film at 64 and at 256 px, which keeps the LR and HR of a pair aligned. Square images
    # only: on a non-square one a rotation in normalised coordinates would shear.
    radians = degrees.to(images.device, images.dtype) * (math.pi / 180)
    cos, sin = torch.cos(radians), torch.sin(radians)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # "border" repeats the outermost pixels into the corners the rotation uncovers. "zeros" would paint
    # them mid-grey (0 on the [-1, 1] scale) with a hard edge no radiograph has, and "reflection" would
    # mirror anatomy (a second clavicle); film edges are background or collimation, which border extends.
    # Bicubic, not bilinear: a bilinear resample low-passes the HR target, and a model trained on blurred
    # targets learns to blur.
    return F.grid_sample(images, grid, mode="bicubic", padding_mode="border", align_corners=False).clamp(-1, 1)


def apply_augmentation(
    lr: torch.Tensor, hr: torch.Tensor, parameters: AugmentParameters
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip, then rotate, then shift brightness and clamp to [-1, 1]; lr B×1×h×w and hr B×1×H×W."""
    if lr.shape[0] != hr.shape[0] or lr.shape[0] != parameters.flip.shape[0]:
        raise ValueError(f"batch sizes differ: lr {lr.shape[0]}, hr {hr.shape[0]}, draws {parameters.flip.shape[0]}")
    per_sample = (-1, 1, 1, 1)
    augmented = []
    for images in (lr, hr):
        # torch.flip is exact; flipping through the sampling grid would add float rounding for nothing.
        flip = parameters.flip.to(images.device).view(per_sample)
        images = torch.where(flip, images.flip(-1), images)
        if bool((parameters.rotation_degrees != 0).any()):
            images = _rotate(images, parameters.rotation_degrees)
        shift = parameters.brightness_shift.to(images.device, images.dtype).view(per_sample)
        augmented.append((images + shift).clamp(-1, 1))
    return augmented[0], augmented[1]


def augment_pair(
    lr: torch.Tensor, hr: torch.Tensor, config: AugmentConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random paired flip, rotation and brightness of a batch; all randomness from `generator` (CPU)."""
    return apply_augmentation(lr, hr, draw_augmentation(lr.shape[0], config, generator))


def _batch_order_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def augmentation_generator(seed: int, step: int) -> torch.Generator:
    # XOR with the 64-bit golden-ratio constant keeps this stream apart from the batch-order stream
    # (which would otherwise reuse seed * 1_000_003 + k for epoch k) for any realistic seed and step.
    mixed = (_batch_order_seed(seed, step) & 0xFFFF_FFFF_FFFF_FFFF) ^ 0x9E37_79B9_7F4A_7C15
    return torch.Generator().manual_seed(mixed)


def batch_at_step(
    dataset: PairDataset, step: int, batch_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lr, hr, indices) of global optimiser step `step`; depends on (seed, step) only, never on history.

    An epoch is one random permutation cut into len // batch_size batches, the incomplete tail dropped.
    A set smaller than one batch gives one batch per epoch, drawn with replacement from that permutation.
    """
    if step < 0 or batch_size < 1:
        raise ValueError(f"need step >= 0 and batch_size >= 1, got step={step}, batch_size={batch_size}")
    size = len(dataset)
    steps_per_epoch = max(size // batch_size, 1)
    epoch, position = divmod(step, steps_per_epoch)
    generator = torch.Generator().manual_seed(_batch_order_seed(seed, epoch))
    order = torch.randperm(size, generator=generator)
    if size >= batch_size:
        indices = order[position * batch_size : (position + 1) * batch_size]
    else:
        indices = order[torch.randint(size, (batch_size,), generator=generator)]
    lr, hr = dataset.pairs(indices)
    return lr, hr, indices

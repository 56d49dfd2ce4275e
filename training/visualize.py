"""Comparison grids (LR | bicubic | SR | HR) for TensorBoard, the evaluation report and the README."""

from __future__ import annotations

import cv2
import numpy as np

COLUMNS = ("LR (nearest)", "bicubic", "SR", "HR")


def comparison_grid(rows: list[list[np.ndarray]], gap: int = 4) -> np.ndarray:
    """Tiles rows of uint8 images into one uint8 image; smaller images are nearest-upscaled to the largest.

    Nearest upscaling shows the LR pixels as they are, so the viewer sees what the model was given.
    """
    if not rows or not rows[0]:
        raise ValueError("comparison_grid needs at least one row with one image")
    size = max(image.shape[0] for row in rows for image in row)
    columns = len(rows[0])
    grid = np.full((len(rows) * (size + gap) - gap, columns * (size + gap) - gap), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        if len(row) != columns:
            raise ValueError(f"row {r} has {len(row)} images, expected {columns}")
        for c, image in enumerate(row):
            if image.dtype != np.uint8 or image.ndim != 2 or image.shape[0] != image.shape[1]:
                raise ValueError(f"grid images must be square 2-D uint8, got {image.dtype} {image.shape}")
            tile = cv2.resize(image, (size, size), interpolation=cv2.INTER_NEAREST) if image.shape[0] != size else image
            grid[r * (size + gap) : r * (size + gap) + size, c * (size + gap) : c * (size + gap) + size] = tile
    return grid

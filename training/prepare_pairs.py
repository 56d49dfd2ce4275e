"""How `xraysr prepare` makes its pairs: one image → an HR and an LR file (the resize recipe, written atomically),
and every image through a process pool."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from xraysr.training.prepare_images import DroppedImage, center_square, check_shape, load_grayscale

logger = logging.getLogger(__name__)

Interpolation = Literal["area", "cubic", "lanczos"]
CV2_INTERPOLATION = {"area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4}


@dataclass(frozen=True)
class PairTask:
    source: Path
    hr_path: Path
    lr_path: Path
    hr_size: int
    lr_size: int
    hr_interpolation: Interpolation


def make_pair(task: PairTask) -> tuple[str | None, str | None]:
    """One image → its HR and LR files, in a worker (top level, so the pool can pickle it). Returns (drop
    reason, conversion)."""
    # 1. decode to 8-bit grayscale and check quality: unreadable, colour, blank, too_small, not_squareable
    try:
        pixels, conversion = load_grayscale(task.source)
        check_shape(pixels.shape[0], pixels.shape[1], task.hr_size)
    except DroppedImage as dropped:
        logger.debug("dropped %s", dropped)
        return dropped.reason, None
    # 2. HR: the centre square resized to hr_size; LR: bicubic of the HR, as shared/data/cxr was made
    hr = cv2.resize(
        np.ascontiguousarray(center_square(pixels)),
        (task.hr_size, task.hr_size),
        interpolation=CV2_INTERPOLATION[task.hr_interpolation],
    )
    lr = cv2.resize(hr, (task.lr_size, task.lr_size), interpolation=cv2.INTER_CUBIC)
    # 3. HR then LR, each renamed into place whole. A pair counts as finished only when both exist, so an
    #    interrupted run leaves at worst an HR without its LR, which the next run redoes.
    write_atomically(task.hr_path, lambda temporary: Image.fromarray(hr).save(temporary, format="PNG"))
    write_atomically(task.lr_path, lambda temporary: Image.fromarray(lr).save(temporary, format="PNG"))
    return None, conversion


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    # Same folder as the target, so os.replace is a rename: a reader sees the old file or the new, never half.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(temporary)
    os.replace(temporary, path)


def _init_worker() -> None:
    cv2.setNumThreads(1)  # the pool already fills the cores; OpenCV's own threads would oversubscribe them


def run_tasks(tasks: list[PairTask], workers: int, show_progress: bool) -> list[tuple[str | None, str | None]]:
    workers = min(workers, max(len(tasks), 1))
    # One worker runs in-process: no pool start-up, and a debugger can step into make_pair.
    with ProcessPoolExecutor(workers, initializer=_init_worker) if workers > 1 else nullcontext() as pool:
        chunksize = max(1, min(64, len(tasks) // (workers * 8)))
        outcomes = pool.map(make_pair, tasks, chunksize=chunksize) if pool else map(make_pair, tasks)
        return list(tqdm(outcomes, total=len(tasks), desc="prepare", unit="image", disable=not show_progress))

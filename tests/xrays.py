"""The suite's own chest X-rays: synthetic radiographs, so that the tests of the code (not of the real data) run in
a clone that has no ../shared beside it.

A phantom has what the code meets in a chest film: a bright body on a dark background, two dark lung fields, a
bright mediastinum and diaphragm, ribs, soft texture and quantum noise, each placed with a little per-seed
jitter. It is not a model of anatomy and says nothing about how the model does on patients (that is what the
tests under ../shared measure). `tests/data/xrays/` holds eight pairs made by ``python -m tests.xrays`` with the
service's own recipe (``xraysr.service.shrink``: centre square, area to 256, cubic to 64, as `xraysr prepare`
makes pairs); raw 1024² films are made on demand, as NIH releases them (8-bit grayscale PNG).
"""

from __future__ import annotations

import atexit
import functools
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

XRAYS = Path(__file__).resolve().parent / "data" / "xrays"
PAIRS = 8
RAW_SIZE = 1024


def phantom(seed: int, size: int = RAW_SIZE) -> np.ndarray:
    """A (size, size) uint8 synthetic chest radiograph, the same for the same seed."""
    rng = np.random.default_rng(seed)
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size
    jitter = rng.uniform(-0.03, 0.03, size=6)
    body = np.exp(-(((x - 0.5) / 0.44) ** 8) - (((y - 0.58) / 0.52) ** 8))
    lungs = np.zeros_like(x)
    for side in (-1, 1):
        cx, cy = 0.5 + side * (0.17 + jitter[0]), 0.45 + jitter[1]
        lungs += np.exp(-(((x - cx) / (0.13 + jitter[2])) ** 4) - (((y - cy) / (0.27 + jitter[3])) ** 4))
    mediastinum = np.exp(-(((x - 0.5 - jitter[4]) / 0.07) ** 2)) * (y > 0.2)
    diaphragm = 1 / (1 + np.exp(-(y - 0.74 - jitter[5] - 0.25 * (x - 0.5) ** 2) * 40))
    rib_phase = (y - 0.6 * (x - 0.5) ** 2) * 22 + rng.uniform(0, 2 * np.pi)
    ribs = np.clip(np.sin(rib_phase), 0, None) ** 3 * lungs
    texture = _smooth_noise(rng, size, 32) * 0.06 + _smooth_noise(rng, size, 128) * 0.03
    density = 0.08 + body * (0.62 - 0.38 * lungs + 0.22 * mediastinum + 0.18 * diaphragm + 0.12 * ribs + texture)
    film = density + rng.normal(0, 0.012, size=(size, size))
    return np.clip(np.rint(film * 255), 0, 255).astype(np.uint8)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean noise smooth over size/cells pixels: a coarse random grid enlarged bilinearly."""
    grid = rng.normal(0, 1, size=(cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((size, size), Image.Resampling.BILINEAR))


def pair_names() -> list[str]:
    return [f"phantom_{seed}.png" for seed in range(PAIRS)]


def hr_paths() -> list[Path]:
    return [XRAYS / "HR_256" / name for name in pair_names()]


def lr_paths() -> list[Path]:
    return [XRAYS / "LR_64" / name for name in pair_names()]


def pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """(LR 64², HR 256²) uint8 of every checked-in phantom."""
    return [
        (np.asarray(Image.open(lr)), np.asarray(Image.open(hr))) for lr, hr in zip(lr_paths(), hr_paths(), strict=True)
    ]


@functools.cache
def _raw_folder() -> Path:
    folder = tempfile.TemporaryDirectory(prefix="xraysr-raw-xrays-")
    atexit.register(folder.cleanup)
    return Path(folder.name)


@functools.cache
def raw_path(seed: int) -> Path:
    """Phantom ``seed`` as a raw 1024² 8-bit grayscale PNG, named as NIH names its files (seed 0:
    00000001_000.png), made once per test session; its pair in tests/data/xrays is phantom_<seed>.png."""
    path = _raw_folder() / f"{seed + 1:08d}_000.png"
    Image.fromarray(phantom(seed)).save(path)
    return path


def raw_paths(count: int = 3) -> list[Path]:
    return [raw_path(seed) for seed in range(count)]


def main() -> None:
    """Writes tests/data/xrays/{HR_256,LR_64}/phantom_<seed>.png with the service's shrink recipe."""
    from xraysr.service.resize import resize_area
    from xraysr.service.shrink import shrink

    for folder in ("HR_256", "LR_64"):
        (XRAYS / folder).mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(pair_names()):
        raw = phantom(seed)
        Image.fromarray(resize_area(raw, 256, 256)).save(XRAYS / "HR_256" / name, optimize=True)
        Image.fromarray(shrink(raw)).save(XRAYS / "LR_64" / name, optimize=True)


if __name__ == "__main__":
    main()

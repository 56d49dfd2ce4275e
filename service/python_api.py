"""The Python API: numpy in, numpy out, in this process (no server), as OpenCV's ``dnn_superres`` ``upsample``
or Real-ESRGAN's ``RealESRGANer.enhance`` are used.

    import xraysr

    upscaler = xraysr.load()                     # the shipped model, at the precision `auto` picks
    result = upscaler.upscale(lr)                # (64, 64) uint8 → result.image, (256, 256) uint8
    result.interval, result.coverage             # the calibrated ± half-width map (grey levels), and its probability
    results = upscaler.upscale_batch(images)     # several at once, one engine batch

The answers are the server's for the same options, byte for byte: the same pipeline, the same seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xraysr.service.consistency import bicubic_upscale
from xraysr.service.imaging import rescale_16bit
from xraysr.service.pipeline import AnswerPlan, SRPipeline, choose_answer
from xraysr.service.sampler import SEED_MAX, sample_seeds
from xraysr.service.settings import Settings, load_settings
from xraysr.service.uncertainty import uncertainty_map


@dataclass(frozen=True, eq=False)
class Upscaled:
    image: np.ndarray  # uint8 (hr, hr): the answer
    interval: np.ndarray | None  # float32 (hr, hr): half-width in grey levels of answer ± interval, or None
    coverage: float | None  # the probability the interval holds (None: a spread, or no map)
    samples: np.ndarray | None  # uint8 (K, hr, hr): each diffusion sample, for K ≥ 2
    answer: str  # "estimate" or "samples"
    steps: int
    seed: int | None


class Upscaler:
    """A loaded model; ``upscale`` and ``upscale_batch`` may be called from one thread at a time."""

    def __init__(self, pipeline: SRPipeline, settings: Settings) -> None:
        self.pipeline, self.settings = pipeline, settings
        self.manifest = pipeline.manifest

    def plan(self, steps: int | None = None, samples: int | None = None) -> AnswerPlan:
        """The answer the options ask for, as /upscale decides it: neither gives the model's default answer."""
        return choose_answer(self.manifest.sampler, steps, samples, f"{self.manifest.model} {self.manifest.version}")

    def upscale(
        self,
        image: np.ndarray,
        *,
        steps: int | None = None,
        samples: int | None = None,
        seed: int = 0,
        coverage: float | None = None,
    ) -> Upscaled:
        return self.upscale_batch([image], steps=steps, samples=samples, seeds=[seed], coverage=coverage)[0]

    def upscale_batch(
        self,
        images: Sequence[np.ndarray] | np.ndarray,
        *,
        steps: int | None = None,
        samples: int | None = None,
        seeds: Sequence[int] | None = None,
        coverage: float | None = None,
    ) -> list[Upscaled]:
        """Each image's answer, run as one engine batch; image i's loop uses ``seeds[i]`` (default 0), so an
        image's result does not depend on what it was batched with."""
        plan = self.plan(steps, samples)
        lr_images = [self.check_image(image) for image in images]
        seeds = list(seeds) if seeds is not None else [0] * len(lr_images)
        if len(seeds) != len(lr_images) or not all(0 <= seed <= SEED_MAX for seed in seeds):
            raise ValueError(f"need one seed in 0..{SEED_MAX} per image: {len(lr_images)} images, seeds {seeds}")
        if plan.answer == "estimate":
            results = self.pipeline.estimate_batch(lr_images)
        else:
            items = [(image, sample_seeds(seed, plan.samples)) for image, seed in zip(lr_images, seeds, strict=True)]
            results = self.pipeline.upscale_batch(items, plan.steps)
        wanted = self.settings.uncertainty_coverage if coverage is None else coverage
        answered = []
        for lr, result in zip(lr_images, results, strict=True):
            bicubic = bicubic_upscale(lr, self.manifest.image.hr_size)
            found = uncertainty_map(result, bicubic, self.manifest, wanted)
            answered.append(
                Upscaled(
                    image=result.image,
                    interval=None if found is None else found.grey_levels,
                    coverage=None if found is None else found.coverage,
                    samples=result.sample_images,
                    answer=result.answer,
                    steps=result.steps,
                    seed=result.seed,
                )
            )
        return answered

    def check_image(self, image: np.ndarray) -> np.ndarray:
        """A (lr, lr) uint8 array as is; uint16 mapped over the full 16-bit range, as a 16-bit PNG is."""
        size = self.manifest.image.lr_size
        array = np.asarray(image)
        if array.shape != (size, size) or array.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"expected a ({size}, {size}) uint8 or uint16 array, got {array.dtype} {array.shape}")
        if array.dtype == np.uint16:
            return rescale_16bit(array)
        return np.ascontiguousarray(array)


def load(
    model: str = "cxr-default",
    engines_dir: Path | str | None = None,
    precision: str = "auto",
    threads: int | None = None,
    warm_up: bool = False,
) -> Upscaler:
    """The model ``engines_dir/model`` (default: the packaged one), loaded once, ready for ``upscale``."""
    from xraysr.service.engine import load_pipeline

    engines = None if engines_dir is None else Path(engines_dir)
    settings = load_settings(model=model, precision=precision, threads=threads, engines_dir=engines)
    return Upscaler(load_pipeline(settings, warm_up=warm_up), settings)

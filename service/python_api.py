"""The Python API: images in, numpy out, in this process (no server), as OpenCV's ``dnn_superres`` ``upsample``
or Real-ESRGAN's ``RealESRGANer.enhance`` are used.

    import xraysr

    upscaler = xraysr.load()                     # the shipped model, at the precision `auto` picks
    result = upscaler.upscale(lr)                # a (64, 64) uint8/uint16 array, a .png/.dcm path or a PIL image
    result.image                                 # (256, 256) uint8: the answer
    result.uncertainty, result.coverage          # the calibrated ± half-width map (grey levels), and its probability
    result.consistency.psnr_db                   # the fidelity guard's report (consistency="enforce" projects)
    results = upscaler.upscale_batch(images, seeds=[1, 2, 3])   # several at once, one engine batch

It is the pipeline with a friendly front, not a third implementation: the answer is finished by the function
/upscale and `xraysr upscale` finish theirs with (service/answer.py), so for the same image and options
``result.image`` is the pixels of the server's PNG and of the CLI's file.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Union

import numpy as np

from xraysr.service.answer import finish, stage_milliseconds
from xraysr.service.consistency import ConsistencyMode, FidelityReport
from xraysr.service.file_commands import INPUT_TYPES, read_input
from xraysr.service.imaging import decode_image, rescale_16bit
from xraysr.service.interval import check_coverage
from xraysr.service.pipeline import AnswerPlan, SRPipeline, UpscaleResult, choose_answer
from xraysr.service.sampler import SEED_MAX, sample_seeds
from xraysr.service.settings import Settings, load_settings

if TYPE_CHECKING:
    from PIL import Image

# What ``upscale`` takes: a (lr, lr) uint8 or uint16 array, a .png or .dcm file's path, or a PIL image.
ImageInput = Union[np.ndarray, str, "os.PathLike[str]", "Image.Image"]


@dataclass(frozen=True, eq=False)  # eq=False: comparing ndarrays field-wise has no single truth value
class Upscaled:
    """One image's answer: what the /upscale JSON answer carries, as arrays."""

    image: np.ndarray  # uint8 (hr, hr): the answer (projected onto the input for consistency="enforce")
    uncertainty: np.ndarray | None  # float32 (hr, hr) grey levels: the JSON answer's uncertainty map, or None
    coverage: float | None  # the probability the interval holds (None: the map is a spread, or there is none)
    samples: np.ndarray | None  # uint8 (K, hr, hr): each diffusion sample, for K ≥ 2
    answer: str  # "estimate" or "samples"
    steps: int  # network passes: 1 for the estimate
    seed: int | None  # the loop's first sample's seed; None for the estimate, which draws no noise
    consistency: FidelityReport  # .mode, .psnr_db (the JSON's lr_consistency_psnr), .low
    stage_ms: dict[str, float]  # milliseconds per stage, in the route's order; a batch's engine stages are shared


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
        image: ImageInput,
        *,
        steps: int | None = None,
        samples: int | None = None,
        seed: int = 0,
        consistency: ConsistencyMode = "report",
        coverage: float | None = None,
        uncertainty: bool = True,
    ) -> Upscaled:
        """One image's answer, with /upscale's query options: ``steps`` and ``samples`` (neither: the model's
        default answer), ``seed`` (the loop's; default 0, where the server draws one), ``consistency`` ("report"
        or "enforce"); ``coverage`` is the uncertainty map's probability (default: the settings'
        ``uncertainty_coverage``, the server's); ``uncertainty=False`` skips the map (as a PNG answer does: the
        interval costs ~18 ms an image, docs/BENCHMARKS.md)."""
        return self.upscale_batch(
            [image],
            steps=steps,
            samples=samples,
            seeds=[seed],
            coverage=coverage,
            consistency=consistency,
            uncertainty=uncertainty,
        )[0]

    def upscale_batch(
        self,
        images: Sequence[ImageInput] | np.ndarray,
        *,
        steps: int | None = None,
        samples: int | None = None,
        seeds: Sequence[int] | None = None,
        coverage: float | None = None,
        consistency: ConsistencyMode = "report",
        uncertainty: bool = True,
    ) -> list[Upscaled]:
        """Each image's answer, in order, run as one engine batch: ``images`` as ``upscale`` takes them (or one
        (N, lr, lr) array); image i's loop uses ``seeds[i]`` (default 0 for every image), so an image's answer
        does not depend on what it was batched with. The other options are ``upscale``'s, for every image.

        A stable entry point: batch processing of archives is this call fed by a reader and a writer. Raises
        ValueError (an ``ImageError`` for a file the server would refuse) before anything runs."""
        started = time.perf_counter()
        plan = self.plan(steps, samples)
        decoded = [self._read(image) for image in images]
        seeds = list(seeds) if seeds is not None else [0] * len(decoded)
        if len(seeds) != len(decoded) or not all(0 <= seed <= SEED_MAX for seed in seeds):
            raise ValueError(f"need one seed in 0..{SEED_MAX} per image: {len(decoded)} images, seeds {seeds}")
        wanted = self.settings.uncertainty_coverage if coverage is None else coverage
        if uncertainty and self.manifest.interval is not None:
            check_coverage(self.manifest.interval, wanted)
        results = self._run([lr for lr, _ in decoded], plan, seeds) if decoded else []
        answered = []
        for (lr, decode_seconds), result in zip(decoded, results, strict=True):
            finished = finish(
                lr,
                result,
                self.manifest,
                consistency=consistency,
                low_db=self.settings.lr_consistency_low_db,
                coverage=wanted if uncertainty else None,
            )
            stage_seconds = {"decode": decode_seconds, **finished.result.stage_seconds}
            stage_seconds["total"] = time.perf_counter() - started  # from the call: the batch's, to this image
            found = finished.uncertainty
            answered.append(
                Upscaled(
                    image=finished.result.image,
                    uncertainty=None if found is None else found.grey_levels,
                    coverage=None if found is None else found.coverage,
                    samples=finished.result.sample_images,
                    answer=finished.result.answer,
                    steps=finished.result.steps,
                    seed=finished.result.seed,
                    consistency=finished.fidelity,
                    stage_ms=stage_milliseconds(stage_seconds),
                )
            )
        return answered

    def _run(self, lr_images: list[np.ndarray], plan: AnswerPlan, seeds: list[int]) -> list[UpscaleResult]:
        items = [(image, sample_seeds(seed, plan.samples)) for image, seed in zip(lr_images, seeds, strict=True)]
        return self.pipeline.answer_batch(items, plan.answer, plan.steps)

    def _read(self, image: ImageInput) -> tuple[np.ndarray, float]:
        """The input's (lr, lr) uint8 pixels and the seconds it took to make them (the "decode" stage)."""
        started = time.perf_counter()
        if isinstance(image, np.ndarray):
            pixels = self.check_image(image)
        elif isinstance(image, (str, os.PathLike)):
            path = Path(image)
            pixels = decode_image(read_input(path), INPUT_TYPES.get(path.suffix.lower()), self._lr_size).pixels
        elif _is_pil_image(image):
            pixels = self._decode_pil(image)
        else:
            raise TypeError(f"expected a numpy array, a path or a PIL image, got {type(image).__name__}")
        return pixels, time.perf_counter() - started

    @property
    def _lr_size(self) -> int:
        return self.manifest.image.lr_size

    def check_image(self, image: np.ndarray) -> np.ndarray:
        """A (lr, lr) uint8 array as is; uint16 mapped over the full 16-bit range, as a 16-bit PNG is."""
        size = self._lr_size
        array = np.asarray(image)
        if array.shape != (size, size) or array.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"expected a ({size}, {size}) uint8 or uint16 array, got {array.dtype} {array.shape}")
        if array.dtype == np.uint16:
            return rescale_16bit(array)
        return np.ascontiguousarray(array)

    def _decode_pil(self, image: Image.Image) -> np.ndarray:
        """A PIL image saved as the PNG a client would upload, and decoded as /upscale decodes it (colour stored
        grey, 16-bit, alpha: service/imaging.py's rules)."""
        buffer = io.BytesIO()
        try:
            image.save(buffer, format="PNG")
        except (OSError, ValueError) as error:  # a mode PNG cannot hold: F (float), CMYK, …
            raise ValueError(f"a PIL image of mode {image.mode}: xraysr takes 8- or 16-bit grayscale") from error
        return decode_image(buffer.getvalue(), "image/png", self._lr_size).pixels


def _is_pil_image(image: object) -> bool:
    from PIL import Image

    return isinstance(image, Image.Image)


def load(
    model: str = "cxr-default",
    engines_dir: Path | str | None = None,
    precision: Literal["auto", "fp32", "fp16", "int8"] = "auto",
    backend: Literal["onnxruntime", "tensorrt"] | None = None,
    threads: int | None = None,
    warm_up: bool = False,
) -> Upscaler:
    """The model ``engines_dir/model`` (default: the packaged one), loaded once, ready for ``upscale``;
    ``backend`` and ``precision`` as `xraysr serve` takes them (default: XRAYSR_BACKEND, else onnxruntime)."""
    from xraysr.service.engine import load_pipeline

    engines = None if engines_dir is None else Path(engines_dir)
    settings = load_settings(model=model, precision=precision, backend=backend, threads=threads, engines_dir=engines)
    return Upscaler(load_pipeline(settings, warm_up=warm_up), settings)

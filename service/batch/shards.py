"""One shard of an archive through the Python API's batch call: what every worker runs, local or on Ray.

A shard is a run of consecutive images of one image array (``key``, images ``start``..``stop``). Its answer
does not depend on which worker ran it, how the work was split or what it was batched with: the engines treat
each batch row independently (tests/service/test_python_api.py pins batched = alone), and each image's seed is
derived from the run's ``--seed``, the array's key and the image's index alone (``image_seed``).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xraysr.service.batch.arrays import ArrayFile
from xraysr.service.consistency import ConsistencyMode
from xraysr.service.python_api import Upscaler
from xraysr.service.sampler import SEED_MAX
from xraysr.service.uncertainty import uncertainty_levels

if TYPE_CHECKING:
    from xraysr.service.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchOptions:
    """The /upscale options of a run, the same for every image."""

    steps: int | None = None
    samples: int | None = None
    seed: int = 0  # the base seed: image i of array key runs from image_seed(seed, key, i)
    consistency: ConsistencyMode = "report"
    uncertainty: bool = False  # also answer each image's uncertainty map (levels of UNCERTAINTY_SCALE)


@dataclass(frozen=True)
class Shard:
    index: int  # its place in the run: its part file's number
    key: str
    start: int
    stop: int

    @property
    def images(self) -> int:
        return self.stop - self.start


@dataclass(eq=False)
class ShardResult:
    index: int
    images: np.ndarray  # uint8 (n, hr, hr); a failed image's rows are 0
    uncertainty: np.ndarray | None  # uint8 (n, hr, hr) levels of UNCERTAINTY_SCALE grey levels, when asked
    failures: dict[int, str] = field(default_factory=dict)  # image index in its array → what went wrong


class ShardFailed(ValueError):
    """Every image of a shard failed: not a bad image but a broken setup, so the run stops (its finished shards
    stay in OUT.parts for ``--resume``)."""


def image_seed(seed: int, key: str, index: int) -> int:
    """The seed image ``index`` of array ``key`` runs the loop from: a hash of the three into 0..SEED_MAX.

    A hash, not ``seed + index``: sample k of an image uses its seed + k (sampler.sample_seeds), so consecutive
    seeds would give image i's second sample the noise of image i + 1's first. ``xraysr.load().upscale(image,
    seed=image_seed(seed, key, index))`` (or /upscale?seed=…) gives that image's answer alone.
    """
    digest = hashlib.blake2b(f"{seed}/{key}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % (SEED_MAX + 1)


def plan_shards(counts: dict[str, int], shard_size: int) -> list[Shard]:
    """Each image array's images in runs of ``shard_size`` (a shard never spans two arrays), in file order."""
    if shard_size < 1:
        raise ValueError(f"--shard-size must be 1 or more, got {shard_size}")
    shards: list[Shard] = []
    for key, count in counts.items():
        for start in range(0, count, shard_size):
            shards.append(Shard(len(shards), key, start, min(start + shard_size, count)))
    return shards


@dataclass(frozen=True)
class Answer:
    image: np.ndarray  # uint8 (hr, hr)
    uncertainty: np.ndarray | None  # uint8 levels (hr, hr), when asked


def answer_images(upscaler: Upscaler, lr: np.ndarray, seeds: list[int], options: BatchOptions) -> list[Answer]:
    """The one place batch work calls the Python API: ``upscale_batch``, which finishes each answer as the
    route does (the fidelity guard, and the uncertainty map only when asked)."""
    results = upscaler.upscale_batch(
        list(lr),
        steps=options.steps,
        samples=options.samples,
        seeds=seeds,
        consistency=options.consistency,
        uncertainty=options.uncertainty,
    )
    answers = []
    for result in results:
        if options.uncertainty and result.uncertainty is None:
            raise ValueError(f"{upscaler.manifest.version} answers no uncertainty map for one sample")
        levels = uncertainty_levels(result.uncertainty) if result.uncertainty is not None else None
        answers.append(Answer(result.image, levels))
    return answers


class ShardWorker:
    """What each worker holds, loaded once: the model (the Python API) and the open input file."""

    def __init__(self, settings: Settings, source: Path, options: BatchOptions) -> None:
        from xraysr.service.engine import load_pipeline

        self.upscaler = Upscaler(load_pipeline(settings, warm_up=False), settings)
        self.source = ArrayFile(source)
        self.options = options
        plan = self.upscaler.plan(options.steps, options.samples)
        # The server's engine batch: up to max_batch rows, an image of the loop being `samples` rows.
        self.images_per_batch = max(1, settings.max_batch // max(1, plan.samples))

    def __call__(self, shard: Shard) -> ShardResult:
        lr = self.source.read_images(shard.key, shard.start, shard.stop)
        seeds = [image_seed(self.options.seed, shard.key, index) for index in range(shard.start, shard.stop)]
        hr = self.upscaler.manifest.image.hr_size
        images = np.zeros((shard.images, hr, hr), np.uint8)
        maps = np.zeros((shard.images, hr, hr), np.uint8) if self.options.uncertainty else None
        failures: dict[int, str] = {}
        for first in range(0, shard.images, self.images_per_batch):
            batch = slice(first, first + self.images_per_batch)
            for offset, answer in enumerate(self._answer(lr[batch], seeds[batch], shard.start + first, failures)):
                if answer is not None:
                    images[first + offset] = answer.image
                    if maps is not None and answer.uncertainty is not None:
                        maps[first + offset] = answer.uncertainty
        if shard.images > 1 and len(failures) == shard.images:
            index, error = next(iter(failures.items()))
            raise ShardFailed(
                f"every image of {shard.key or 'the array'}[{shard.start}:{shard.stop}] failed: image {index}: {error}"
            )
        return ShardResult(shard.index, images, maps, failures)

    def _answer(self, lr: np.ndarray, seeds: list[int], first: int, failures: dict[int, str]) -> list[Answer | None]:
        """One engine batch; when it fails, each image alone, so that one bad image costs only itself."""
        try:
            return list(answer_images(self.upscaler, lr, seeds, self.options))
        except Exception as error:  # noqa: BLE001 - narrowed below to the image(s) it belongs to, then reported
            if len(lr) == 1:
                failures[first] = f"{type(error).__name__}: {error}"
                logger.debug("image %d failed", first, exc_info=True)
                return [None]
        answers: list[Answer | None] = []
        for offset in range(len(lr)):
            answers += self._answer(lr[offset : offset + 1], seeds[offset : offset + 1], first + offset, failures)
        return answers

    def close(self) -> None:
        self.source.close()

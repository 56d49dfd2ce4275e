"""A whole archive: ``IN.npz`` → ``OUT.npz`` (or ``.npy`` → ``.npy``), in shards that survive a killed run.

1. read the input's headers: which arrays are images, refuse what cannot be upscaled before any work;
2. cut the image arrays into shards and record the plan in ``OUT.parts/`` (or, with ``resume``, check it);
3. run the shards not yet finished, here, in worker processes or on Ray, writing each one's part as it lands;
4. assemble ``OUT`` from the parts and the input's other arrays, in one rename; remove the parts (kept when an
   image failed, so that ``--resume`` retries just those shards).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from xraysr.service.batch.arrays import ARRAY_SUFFIXES, IMAGE_DTYPES, ArrayFile, ArrayWriter, Member
from xraysr.service.batch.parts import Parts, describe_input, encode_part
from xraysr.service.batch.pool import run_in_process, run_in_processes, threads_per_worker, usable_cores
from xraysr.service.batch.shards import BatchOptions, Shard, ShardResult, plan_shards
from xraysr.service.pipeline import choose_answer

if TYPE_CHECKING:
    from xraysr.service.manifest import Manifest
    from xraysr.service.settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 256
UNCERTAINTY_SUFFIX = "_uncertainty"
FAILED_SUFFIX = "_failed"


@dataclass(frozen=True)
class ArrayJob:
    source: Path  # .npz or .npy
    output: Path  # the same suffix
    options: BatchOptions
    settings: Settings  # the model, precision, threads, max_batch (the engine batch) and uncertainty coverage
    shard_size: int = DEFAULT_SHARD_SIZE
    workers: int = 1
    resume: bool = False
    ray_address: str | None = None  # None: not on Ray; "": a local Ray instance; else the cluster's address
    uncertainty_output: Path | None = None  # a .npy input's maps (a .npz's go into OUT as <key>_uncertainty)

    @property
    def on_ray(self) -> bool:
        return self.ray_address is not None


@dataclass
class RunReport:
    images: int  # in the input's image arrays
    ran: int  # upscaled by this run (the rest were finished by an earlier one)
    seconds: float
    failures: list[tuple[str, int, str]] = field(default_factory=list)  # (key, index, error)


def run_arrays(job: ArrayJob) -> RunReport:
    from xraysr.service.engine import check_manifest

    started = time.perf_counter()
    _check_paths(job)
    manifest = check_manifest(job.settings)
    with ArrayFile(job.source) as source:
        # 1. which arrays are images, and whether every one can be upscaled, from the headers alone
        image_arrays = _image_arrays(source, job, manifest)
        _check_options(job.options, manifest)
        # 2. the shards, and the parts folder that records them
        counts = {member.key: member.images for member in image_arrays}
        shards = plan_shards(counts, job.shard_size)
        parts = Parts(job.output)
        parts.start(_plan(job, manifest, len(shards)), job.resume)
        finished = parts.finished() if job.resume else set()
        remaining = [shard for shard in shards if shard.index not in finished]
        total = sum(counts.values())
        if finished:
            done = sum(shard.images for shard in shards if shard.index in finished)
            logger.info(
                "resuming: %d of %d shards (%d of %d images) already done", len(finished), len(shards), done, total
            )
        # 3. the shards left, each part written as it arrives
        ran = sum(shard.images for shard in remaining)
        try:
            with tqdm(total=total, initial=total - ran, desc="upscale", unit="image", smoothing=0.1) as progress:
                for result in _execute(job, remaining):
                    parts.save(result.index, encode_part(result))
                    for index, error in sorted(result.failures.items()):
                        shard = shards[result.index]
                        # As a folder run reports a bad file: above the bar, and the run goes on.
                        progress.write(f"xraysr upscale: error: {_name(shard.key)} image {index}: {error}", sys.stderr)
                    progress.update(len(result.images))
        except BaseException:
            logger.warning("stopped: the finished shards are in %s; --resume continues from them", parts.folder)
            raise
        # 4. the output, whole, in one rename
        failures = _assemble(job, source, image_arrays, shards, parts, manifest.image.hr_size)
    if not failures:
        parts.remove()
    return RunReport(total, ran, time.perf_counter() - started, failures)


def _name(key: str) -> str:
    return key or "the array"


def _check_paths(job: ArrayJob) -> None:
    if not job.source.is_file():
        raise FileNotFoundError(f"input {job.source} does not exist")
    suffix = job.source.suffix.lower()
    if suffix not in ARRAY_SUFFIXES or job.output.suffix.lower() != suffix:
        raise ValueError(f"-o {job.output}: arrays in a {suffix} give arrays in a {suffix}; name the output so")
    for output in (job.output, job.uncertainty_output):
        if output is not None and output.resolve() == job.source.resolve():
            raise ValueError(f"-o {output} would write over the input: choose another file")
    if job.uncertainty_output is not None and job.uncertainty_output.suffix.lower() != ".npy":
        raise ValueError(f"--uncertainty {job.uncertainty_output}: a .npy input's maps go to a .npy file")
    if job.workers < 1:
        raise ValueError(f"--workers must be 1 or more, got {job.workers}")
    job.output.parent.mkdir(parents=True, exist_ok=True)


def _image_arrays(source: ArrayFile, job: ArrayJob, manifest: Manifest) -> list[Member]:
    """The (N, lr, lr) and (lr, lr) arrays; an image-shaped array of a dtype the model cannot take is refused here,
    for the whole file, before any work (a float array may hold anything: converting it is the caller's call)."""
    lr = manifest.image.lr_size
    images = [member for member in source.members if member.is_image_array(lr)]
    for member in images:
        if member.dtype not in IMAGE_DTYPES:
            raise ValueError(
                f"{job.source}: {_name(member.key)} {member.shape} is {member.dtype}; image arrays must be uint8 or "
                "uint16 (8-bit: arr.astype(np.uint8) after scaling to 0..255)"
            )
        if member.fortran_order:
            raise ValueError(f"{job.source}: {_name(member.key)} is in Fortran order; save np.ascontiguousarray(it)")
    if not images:
        found = ", ".join(f"{_name(member.key)} {member.shape} {member.dtype}" for member in source.members)
        raise ValueError(f"{job.source} holds no (N, {lr}, {lr}) or ({lr}, {lr}) image array (found: {found})")
    if job.options.uncertainty:
        if source.is_npz:
            keys = {member.key for member in source.members}
            clashes = [m.key + UNCERTAINTY_SUFFIX for m in images if m.key + UNCERTAINTY_SUFFIX in keys]
            if clashes:
                raise ValueError(f"{job.source} already holds {', '.join(clashes)}: the maps would replace it")
        elif job.uncertainty_output is None:
            raise ValueError("--uncertainty PATH.npy: a .npy input's maps need a file of their own")
    return images


def _check_options(options: BatchOptions, manifest: Manifest) -> None:
    try:
        plan = choose_answer(manifest.sampler, options.steps, options.samples, f"{manifest.model} {manifest.version}")
    except ValueError as error:
        raise ValueError(f"--{error}") from error
    if options.uncertainty and manifest.interval is None and plan.samples < 2:
        raise ValueError(
            f"--uncertainty: {manifest.version} has no calibrated interval, and one sample has no spread: "
            "give --samples 2 or more"
        )


def _plan(job: ArrayJob, manifest: Manifest, shards: int) -> dict[str, object]:
    """What the parts depend on; the worker count and Ray do not change a byte, so they are not in it."""
    return {
        "input": describe_input(job.source),
        "options": asdict(job.options),
        "model": {
            "version": manifest.version,
            "precision": job.settings.served_precision,
            "backend": job.settings.backend,
            "uncertainty_coverage": job.settings.uncertainty_coverage,
        },
        "shard_size": job.shard_size,
        "shards": shards,
    }


def _execute(job: ArrayJob, shards: list[Shard]) -> Iterator[ShardResult]:
    if not shards:
        return iter(())
    if job.on_ray:
        from xraysr.service.batch.ray_adapter import run_on_ray

        threads = threads_per_worker(job.settings, job.workers) or usable_cores()  # Ray needs a number of CPUs
        return run_on_ray(job.ray_address or None, job.settings, job.source, job.options, shards, job.workers, threads)
    if job.workers == 1:
        return run_in_process(job.settings, job.source, job.options, shards)
    logger.info("%d workers, %s threads each", job.workers, threads_per_worker(job.settings, job.workers))
    return run_in_processes(job.settings, job.source, job.options, shards, job.workers)


def _assemble(
    job: ArrayJob, source: ArrayFile, image_arrays: list[Member], shards: list[Shard], parts: Parts, hr: int
) -> list[tuple[str, int, str]]:
    """OUT from the parts, in the input's member order; each image array's maps and failed indices after it."""
    by_key: dict[str, list[Shard]] = {}
    for shard in shards:
        by_key.setdefault(shard.key, []).append(shard)
    images = {member.key: member for member in image_arrays}
    failures: list[tuple[str, int, str]] = []
    writer = ArrayWriter(job.output, parts.folder / "output.tmp", source.compressed)
    maps_writer = None
    try:
        for member in source.members:
            if member.key not in images:
                assert writer.archive is not None  # a .npy holds one array, an image array
                source.copy_member(member, writer.archive)
                continue
            assert member.shape is not None
            shape = (*member.shape[:-2], hr, hr)
            failed = _write_images(writer, member.key, shape, by_key[member.key], parts, "images")
            failures += [(member.key, index, error) for index, error in failed]
            if job.options.uncertainty:
                if writer.archive is not None:
                    _write_images(
                        writer, member.key + UNCERTAINTY_SUFFIX, shape, by_key[member.key], parts, "uncertainty"
                    )
                else:
                    assert job.uncertainty_output is not None
                    maps_writer = ArrayWriter(job.uncertainty_output, parts.folder / "maps.tmp", compressed=False)
                    _write_images(maps_writer, "", shape, by_key[member.key], parts, "uncertainty")
            if failed and writer.archive is not None:
                with writer.array(member.key + FAILED_SUFFIX, (len(failed),), np.dtype(np.int64)) as stream:
                    stream.write(np.array([index for index, _ in failed], np.int64).tobytes())
    except BaseException:
        writer.abort()
        if maps_writer is not None:
            maps_writer.abort()
        raise
    if maps_writer is not None:
        maps_writer.commit()
    writer.commit()
    return failures


def _write_images(
    writer: ArrayWriter, key: str, shape: tuple[int, ...], shards: list[Shard], parts: Parts, name: str
) -> list[tuple[int, str]]:
    """One output array from its shards' parts, one part in memory at a time; returns the failed images."""
    failed: list[tuple[int, str]] = []
    with writer.array(key, shape, np.dtype(np.uint8)) as stream:
        for shard in shards:
            with np.load(parts.path(shard.index)) as part:
                stream.write(np.ascontiguousarray(part[name], np.uint8).tobytes())
                failed += list(zip(part["failed"].tolist(), part["errors"].tolist(), strict=True))
    return failed

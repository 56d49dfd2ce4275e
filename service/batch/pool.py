"""Where the shards run on this machine: in this process, or in ``--workers N`` processes that split the cores.

Each worker process loads the model once (``ShardWorker``) with ``cores // N`` intra-op threads: ONNX Runtime
scales sub-linearly with threads on small images, so N processes of fewer threads each usually beat one of all
of them (docs/BENCHMARKS.md, "Many images"). At most two shards per worker are in flight, so memory is bounded
by the shard size and the worker count, not by the archive.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING

from xraysr.service.batch.shards import BatchOptions, Shard, ShardResult, ShardWorker

if TYPE_CHECKING:
    from xraysr.service.settings import Settings

IN_FLIGHT_PER_WORKER = 2  # one running, one waiting: a worker never idles between shards

_worker: ShardWorker | None = None  # each pool process's own, made by _start_worker


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_worker(settings: Settings, workers: int) -> int | None:
    """``--threads`` when given; else the cores split between the workers (one worker: the runtime's default)."""
    if settings.threads is not None or workers == 1:
        return settings.threads
    return max(1, usable_cores() // workers)


def run_in_process(
    settings: Settings, source: Path, options: BatchOptions, shards: Iterable[Shard]
) -> Iterator[ShardResult]:
    worker = ShardWorker(settings, source, options)
    try:
        for shard in shards:
            yield worker(shard)
    finally:
        worker.close()


def _start_worker(settings: Settings, source: Path, options: BatchOptions) -> None:
    global _worker
    _worker = ShardWorker(settings, source, options)


def _run_shard(shard: Shard) -> ShardResult:
    assert _worker is not None, "the pool's initializer loads the worker"
    return _worker(shard)


def run_in_processes(
    settings: Settings, source: Path, options: BatchOptions, shards: Iterable[Shard], workers: int
) -> Iterator[ShardResult]:
    """Each shard's result as it finishes (not in order). ``spawn``: a fresh interpreter per worker, so no
    ONNX Runtime thread pool is inherited half-initialised through fork."""
    worker_settings = settings.model_copy(update={"threads": threads_per_worker(settings, workers)})
    context = multiprocessing.get_context("spawn")
    pending: set[Future[ShardResult]] = set()
    queue = iter(shards)
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start_worker, initargs=(worker_settings, source, options)
    ) as pool:
        try:
            while True:
                for shard in queue:
                    pending.add(pool.submit(_run_shard, shard))
                    if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                        break
                if not pending:
                    return
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        finally:
            for future in pending:
                future.cancel()

"""``--ray [ADDRESS]``: the same shards, scheduled by Ray Data instead of a local process pool.

Ray only schedules: the dataset is the run's shard list (``from_items``), ``map_batches`` hands each shard to
one of ``workers`` actors, and each actor is a ``ShardWorker`` (the Python API's batch call with a loaded model,
exactly what a local worker runs). The results come back to this process, which writes the parts and the output
as a local run does, so the bytes are the same.

Every node reads the input itself, by the path given here: on a cluster, IN must be on storage each node sees
at the same path, as for Ray Data's own readers; OUT is written only here. Each actor reserves ``threads`` CPUs,
so Ray places as many on a node as its cores hold. Ray is the optional extra ``xraysr[ray]``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xraysr.service.batch.parts import decode_part, encode_part
from xraysr.service.batch.shards import BatchOptions, Shard, ShardResult, ShardWorker
from xraysr.service.extras import INSTALL_HINT, MissingDependencyError

if TYPE_CHECKING:
    from xraysr.service.settings import Settings


class ShardActor:
    """A Ray Data actor: a ShardWorker fed one shard per batch, answering the shard's part file bytes."""

    def __init__(self, settings: Settings, source: str, options: BatchOptions) -> None:
        self.worker = ShardWorker(settings, Path(source), options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        parts = []
        for index, key, start, stop in zip(batch["index"], batch["key"], batch["start"], batch["stop"], strict=True):
            shard = Shard(int(index), str(key), int(start), int(stop))
            parts.append(encode_part(self.worker(shard)))
        return {"index": batch["index"], "part": np.array(parts, dtype=object)}


def run_on_ray(
    address: str | None,
    settings: Settings,
    source: Path,
    options: BatchOptions,
    shards: Iterable[Shard],
    workers: int,
    threads: int,
) -> Iterator[ShardResult]:
    """Each shard's result as Ray finishes it; ``address`` None starts a local Ray instance (unless this process
    is already connected to one, which is then used and left running)."""
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise MissingDependencyError(f"--ray needs Ray, which is not installed: {INSTALL_HINT['ray']}") from error

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False  # the run's own bar says the same
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        items: list[dict[str, Any]] = [
            {"index": shard.index, "key": shard.key, "start": shard.start, "stop": shard.stop} for shard in shards
        ]
        if not items:
            return
        answered = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            ShardActor,
            fn_constructor_kwargs={
                "settings": settings.model_copy(update={"threads": threads}),
                "source": str(source.resolve()),
                "options": options,
            },
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=threads,
        )
        for row in answered.iter_rows():
            yield decode_part(bytes(row["part"]))
    finally:
        if started_here:
            ray.shutdown()

"""Dynamic batching, as Triton does it: concurrent upscales of the same kind run as one engine batch.

Every engine has a dynamic batch axis, and on a GPU a batch of 8 samples costs little more than one; on a CPU
it still saves the per-call overhead. The batcher takes the oldest waiting job, waits up to ``max_delay_s``
for others of its kind (the one-pass estimate, or the loop at its step count) to join, and runs up to
``max_batch`` rows together (``SRPipeline.estimate_batch`` or ``upscale_batch``; an estimate is one row, a loop
of K samples K rows). A job is never split, so a job of more samples than ``max_batch`` runs alone.

Each job keeps its own seeds, so its answer is byte-for-byte what it would have been alone. A job whose client
has gone (disconnected, past its deadline) is dropped while it waits; a running batch stops between denoising
steps once none of its clients is waiting, or when the server's shutdown grace runs out.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio
import anyio.to_thread
import numpy as np

from xraysr.service.pipeline import Answer, SRPipeline, Stopped, UpscaleResult


class ShuttingDown(Exception):
    """The server's shutdown grace period ended before this job could finish."""


@dataclass(eq=False)
class Job:
    pixels: np.ndarray
    steps: int  # the loop's; 1 for an estimate
    seeds: Sequence[int]  # one per sample; empty for an estimate
    answer: Answer = "samples"
    enqueued: float = field(default_factory=time.perf_counter)
    abandoned: threading.Event = field(default_factory=threading.Event)  # read by the worker thread

    @property
    def samples(self) -> int:
        """Engine rows: one per sample, one for an estimate."""
        return 1 if self.answer == "estimate" else len(self.seeds)

    @property
    def kind(self) -> tuple[Answer, int]:
        """Jobs of one kind can share a batch: the same answer and step count."""
        return self.answer, self.steps


@dataclass
class JobResult:
    result: UpscaleResult
    batch_samples: int  # the engine batch this job ran in

    @property
    def stage_seconds(self) -> dict[str, float]:
        return self.result.stage_seconds


BatchObserver = Callable[[int, int], None]  # (requests, samples) of each batch run


class Batcher:
    def __init__(
        self,
        pipeline: SRPipeline,
        max_batch: int,
        max_delay_s: float,
        max_concurrent: int,
        on_batch: BatchObserver | None = None,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self.pipeline, self.max_batch, self.max_delay_s = pipeline, max_batch, max_delay_s
        self.on_batch, self.on_stop = on_batch, on_stop
        self._pending: list[tuple[Job, asyncio.Future[JobResult]]] = []
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(max_concurrent)
        self._running: set[asyncio.Task[None]] = set()
        self.stopping = False  # set when the shutdown grace ends: queued jobs fail, running batches stop

    async def submit(self, job: Job) -> JobResult:
        """Waits for ``job``'s answer. Cancelling the wait abandons the job: dropped if it has not started, and
        its batch stops between steps if no other client is waiting for it."""
        if self.stopping:
            raise ShuttingDown("the server is shutting down")
        future: asyncio.Future[JobResult] = asyncio.get_running_loop().create_future()
        self._pending.append((job, future))
        self._wake.set()
        try:
            return await future
        except asyncio.CancelledError:
            job.abandoned.set()
            self._pending = [(other, waiting) for other, waiting in self._pending if other is not job]
            raise

    def shut_down(self) -> None:
        """The grace period is over: every waiting job fails now, every running batch at its next step."""
        self.stopping = True
        for _, future in self._pending:
            if not future.done():
                future.set_exception(ShuttingDown("the server is shutting down"))
        self._pending.clear()
        self._wake.set()

    @property
    def busy(self) -> bool:
        return bool(self._pending or self._running)

    async def run(self) -> None:
        """The batching loop: runs until cancelled (the app's shutdown)."""
        try:
            while True:
                await self._slots.acquire()
                try:
                    batch = await self._next_batch()
                except BaseException:
                    self._slots.release()
                    raise
                task = asyncio.create_task(self._run_batch(batch))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
        finally:
            for task in list(self._running):
                task.cancel()

    async def _next_batch(self) -> list[tuple[Job, asyncio.Future[JobResult]]]:
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            first, _ = self._pending[0]
            wait_until = first.enqueued + self.max_delay_s
            while self._samples_waiting(first.kind) < self.max_batch and first in self._jobs():
                remaining = wait_until - time.perf_counter()
                if remaining <= 0:
                    break
                self._wake.clear()
                with anyio.move_on_after(remaining):
                    await self._wake.wait()
            if first not in self._jobs():
                continue  # its client left while it waited for company: start over with the next one
            return self._take(first.kind)

    def _jobs(self) -> list[Job]:
        return [job for job, _ in self._pending]

    def _samples_waiting(self, kind: tuple[Answer, int]) -> int:
        return sum(job.samples for job, _ in self._pending if job.kind == kind)

    def _take(self, kind: tuple[Answer, int]) -> list[tuple[Job, asyncio.Future[JobResult]]]:
        """The oldest job and, in arrival order, every later one of its kind that still fits."""
        batch: list[tuple[Job, asyncio.Future[JobResult]]] = []
        total = 0
        for entry in list(self._pending):
            job, _ = entry
            if job.kind == kind and (not batch or total + job.samples <= self.max_batch):
                batch.append(entry)
                total += job.samples
                self._pending.remove(entry)
        return batch

    async def _run_batch(self, batch: list[tuple[Job, asyncio.Future[JobResult]]]) -> None:
        try:
            jobs = [job for job, _ in batch]
            if self.on_batch is not None:
                self.on_batch(len(jobs), sum(job.samples for job in jobs))
            try:
                outcomes: list[JobResult] | BaseException = await anyio.to_thread.run_sync(self._compute, jobs)
            except Stopped as error:
                if self.on_stop is not None:
                    self.on_stop()
                outcomes = error
            except Exception as error:  # noqa: BLE001 - handed to every waiting request, which reports it
                outcomes = error
            for index, (_, future) in enumerate(batch):
                if future.done():
                    continue  # its client left
                if isinstance(outcomes, BaseException):
                    future.set_exception(outcomes)
                else:
                    future.set_result(outcomes[index])
        finally:
            self._slots.release()

    def _compute(self, jobs: list[Job]) -> list[JobResult]:
        """In a worker thread: the batch through the engines."""
        started = time.perf_counter()

        def should_stop() -> bool:
            return self.stopping or all(job.abandoned.is_set() for job in jobs)

        try:
            results = self.pipeline.answer_batch(
                [(job.pixels, job.seeds) for job in jobs], jobs[0].answer, jobs[0].steps, should_stop
            )
        except Stopped:
            if self.stopping:
                raise ShuttingDown("the server is shutting down") from None
            raise
        samples = sum(job.samples for job in jobs)
        # Encoding is each request's own work, after its fidelity guard (api/upscale.py): the batch's other
        # clients do not wait for it, and an answer is encoded once, in the form it is sent.
        outcomes = []
        for job, result in zip(jobs, results, strict=True):
            result.stage_seconds = {"queue": started - job.enqueued, **result.stage_seconds}
            outcomes.append(JobResult(result=result, batch_samples=samples))
        return outcomes

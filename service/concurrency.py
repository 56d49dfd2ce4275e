"""Admission control for inference: N upscales run at once, M wait their turn, the rest are turned away.

A diffusion upscale holds the CPU (or the Jetson's GPU) for its whole duration, so running more than a
few at once only makes every one of them slower; a short queue absorbs bursts, and refusing beyond it
(503 + Retry-After) keeps latency bounded instead of letting requests pile up until clients time out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")


class Overloaded(Exception):
    """Every running slot and every queue place is taken."""


class Admission:
    def __init__(self, max_concurrent: int, max_queued: int) -> None:
        if max_concurrent < 1 or max_queued < 0:
            raise ValueError(f"need max_concurrent >= 1 and max_queued >= 0, got {max_concurrent}, {max_queued}")
        self.max_concurrent, self.max_queued = max_concurrent, max_queued
        # The limiter bounds the worker threads; admitted counts running + waiting (all on the event loop thread).
        self._limiter = anyio.CapacityLimiter(max_concurrent)
        self.admitted = 0

    async def run(self, work: Callable[[], T]) -> T:
        """Runs ``work`` in a worker thread once a slot is free; raises Overloaded if the queue is full."""
        if self.admitted >= self.max_concurrent + self.max_queued:
            raise Overloaded(
                f"the server is busy: {self.max_concurrent} upscale(s) running and {self.max_queued} queued; "
                "retry shortly"
            )
        self.admitted += 1
        try:
            return await anyio.to_thread.run_sync(work, limiter=self._limiter)
        finally:
            self.admitted -= 1

"""Admission control: a request is admitted or refused at the door, before its body is read or decoded.

A diffusion upscale holds the CPU (or the Jetson's GPU) for its whole duration, so running more than a
few at once only makes every one of them slower; a short queue absorbs bursts, and refusing beyond it
(503 + Retry-After) keeps latency bounded instead of letting requests pile up until clients time out.
Refusing before the body is read is what keeps a 503 storm cheap: a refused request costs no decode.

Capacity, in requests: ``max_concurrent × max_batch`` (what the running batches can hold) plus ``max_queued``.
Decoding has its own small limiter, so bodies admitted at once cannot add their decoders' memory up.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import anyio


class Overloaded(Exception):
    """Every running place and every queue place is taken."""


class Admission:
    def __init__(self, max_concurrent: int, max_queued: int, max_batch: int = 1, max_decoding: int = 1) -> None:
        if min(max_concurrent, max_batch, max_decoding) < 1 or max_queued < 0:
            raise ValueError(
                "need max_concurrent, max_batch and max_decoding >= 1 and max_queued >= 0, got "
                f"{max_concurrent}, {max_batch}, {max_decoding}, {max_queued}"
            )
        self.max_concurrent, self.max_queued, self.max_batch = max_concurrent, max_queued, max_batch
        self.capacity = max_concurrent * max_batch + max_queued
        self.decoding = anyio.CapacityLimiter(max_decoding)
        self.admitted = 0  # only touched on the event loop thread

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Holds a place for the request's whole life; raises Overloaded when there is none."""
        if self.admitted >= self.capacity:
            raise Overloaded(
                f"the server is busy: {self.admitted} upscale(s) admitted, its capacity "
                f"({self.max_concurrent} batch(es) of up to {self.max_batch} plus {self.max_queued} queued); "
                "retry shortly"
            )
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

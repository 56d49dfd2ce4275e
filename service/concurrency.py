"""Admission control: a request is admitted or refused once its body has arrived, before it is decoded.

A diffusion upscale holds the CPU (or the Jetson's GPU) for its whole duration, so running more than a
few at once only makes every one of them slower; a short queue absorbs bursts, and refusing beyond it
(503 + Retry-After) keeps latency bounded instead of letting requests pile up until clients time out.
Admitting after the body, not before, is what keeps slow uploaders from taking the places: 20 clients sending
a byte a second would otherwise hold them all for the body timeout. A body costs at most ``max_body_bytes``
while it arrives, and the connection cap bounds how many arrive at once; a refused request costs no decode.

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
        self.receiving = 0  # bodies arriving, not yet admitted: shutdown waits for them too

    @contextmanager
    def receive(self) -> Iterator[None]:
        """Counts a request whose body is arriving; never refuses (the connection cap bounds them)."""
        self.receiving += 1
        try:
            yield
        finally:
            self.receiving -= 1

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


class ByteBudget:
    """Bytes that concurrent uploads may hold in memory together; an upload that does not fit is refused
    (Overloaded, 503) before its body is read. Each holds what it declares, or the route's cap when it
    declares nothing (chunked)."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"a byte budget needs max_bytes >= 1, got {max_bytes}")
        self.max_bytes, self.held = max_bytes, 0  # only touched on the event loop thread

    @contextmanager
    def hold(self, size: int) -> Iterator[None]:
        if self.held + size > self.max_bytes:
            raise Overloaded(
                f"the server is busy: uploads in progress hold {self.held} of the {self.max_bytes} bytes they may "
                f"hold together, and this one needs {size}; retry shortly"
            )
        self.held += size
        try:
            yield
        finally:
            self.held -= size

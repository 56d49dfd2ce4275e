"""Where the app is in its life — loading, ready, draining, failed — and the requests a shutdown may cut short.

The server listens before the model is loaded, so probes can tell "starting" from "dead": /readyz is 503
while loading, 200 when ready, and 503 again the moment SIGTERM arrives, while the port still answers.
When the shutdown grace period ends, every request still being handled is cancelled and answered 503.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import anyio

State = Literal["loading", "ready", "draining", "failed"]


class Lifecycle:
    def __init__(self) -> None:
        self.state: State = "loading"
        self.load_error: str | None = None
        self.grace_over = False
        self._scopes: set[anyio.CancelScope] = set()

    def fail(self, error: str) -> None:
        self.state, self.load_error = "failed", error

    def begin_drain(self) -> None:
        """SIGTERM: stop taking work (readiness 503) and let what was admitted finish."""
        if self.state != "failed":
            self.state = "draining"

    def end_grace(self) -> None:
        """The grace period is over: cancel every request still in hand (each answers 503)."""
        self.grace_over = True
        for scope in list(self._scopes):
            scope.cancel()

    @contextmanager
    def request_scope(self) -> Iterator[anyio.CancelScope]:
        """A cancel scope for one request's work, cancelled by ``end_grace``; check ``cancelled_caught``."""
        with anyio.CancelScope() as scope:
            if self.grace_over:
                scope.cancel()
            self._scopes.add(scope)
            try:
                yield scope
            finally:
                self._scopes.discard(scope)

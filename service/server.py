"""uvicorn, with the edges an appliance needs: a bounded, graceful shutdown and connection hygiene.

Shutdown (uvicorn alone closes the port at once, then waits without limit for every connection): on the
first SIGTERM or SIGINT the app stops taking work (/readyz 503) while the port still answers; admitted work
runs for up to ``shutdown_grace_s``; what is still in hand then is answered 503; the process exits 0. A second
signal exits at once. A model that fails to load in the background exits 1.

Connections: the number open is capped. At the cap, a new connection first closes the longest-idle one (no
request in progress: an idle keep-alive, or headers still arriving); when every one is busy, up to
``PROBE_SLOTS`` more are let in for the probes alone (anything else on them is 503), so that an orchestrator
never restarts a healthy server because idle or slow clients took every connection; beyond, a new connection
is closed as it is accepted. A request's headers must arrive within ``header_timeout_s`` (slowloris), idle
keep-alive connections close after ``keep_alive_s``; the body's own time limit is the route's (408).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from xraysr.service.api.probes import PROBES
from xraysr.service.app_state import state_of
from xraysr.service.settings import Settings

logger = logging.getLogger(__name__)

# Once the app has drained, uvicorn still waits for open connections; this bounds that last wait.
_CLOSE_CONNECTIONS_S = 0.5


PROBE_SLOTS = 4
PROBE_ONLY = "xraysr.probe_only"  # the scope's extensions key marking a request on a probe-only connection


class GuardedH11Protocol(H11Protocol):
    """h11 with a connection cap that keeps room for the probes, and a deadline for each request's headers
    (class attributes, set per server)."""

    max_connections = 64
    header_timeout_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._seen_cycle: object | None = None
        self._idle_since = 0.0
        self.probe_only = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._idle_since = self.loop.time()
        others = [c for c in self.connections if c is not self and not c.transport.is_closing()]
        if len(others) >= self.max_connections and not self._make_room(others):
            transport.close()  # over the cap: closed before a byte is read, costing nothing
            return
        self._arm_header_timer()

    def _make_room(self, others: list[Any]) -> bool:
        """At the cap: close the longest-idle connection, or else take a probe-only slot; False when neither."""
        idle = [c for c in others if isinstance(c, GuardedH11Protocol) and c.is_idle()]
        if idle:
            min(idle, key=lambda connection: connection._idle_since).transport.close()
            return True
        if sum(getattr(connection, "probe_only", False) for connection in others) < PROBE_SLOTS:
            self.probe_only = True
            return True
        return False

    def is_idle(self) -> bool:
        """No request in progress: before the first one's headers are complete, or after an answer."""
        return self.cycle is None or self.cycle.response_complete

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and self.cycle is not self._seen_cycle:
            self._seen_cycle = self.cycle  # a request's headers are complete: its body has its own limit
            self._disarm_header_timer()
            if self.probe_only:  # the app has not run yet: ProbeOnlyGate reads the mark
                self.cycle.scope.setdefault("extensions", {})[PROBE_ONLY] = True
                self.cycle.keep_alive = False

    def on_response_complete(self) -> None:
        self._idle_since = self.loop.time()
        # Armed before uvicorn looks for a pipelined request, which disarms it again if it is already complete.
        self._arm_header_timer()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()


class ProbeOnlyGate:
    """ASGI: a request on a probe-only connection (GuardedH11Protocol) reaches the probes and nothing else."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("extensions", {}).get(PROBE_ONLY) and scope["path"] not in PROBES:
            refusal = JSONResponse(
                {"detail": "every connection is taken: this one may only reach /healthz and /readyz; retry"},
                status_code=503,
                headers={"Retry-After": "1"},
            )
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, grace_s: float) -> None:
        super().__init__(config)
        self.app, self.grace_s = app, grace_s
        self.draining_since: float | None = None
        self.exit_code = 0

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.draining_since is not None:
            logger.warning("second signal %s: exiting now, abandoning the work in hand", signal.Signals(sig).name)
            os._exit(128 + sig)
        # Not uvicorn's: it would close the port now and re-raise the signal on exit (status 143, not 0).
        self.draining_since = time.monotonic()
        state_of(self.app).lifecycle.begin_drain()
        logger.info("%s: draining for up to %.1f s", signal.Signals(sig).name, self.grace_s)

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        state = state_of(self.app)
        if state.lifecycle.state == "failed":
            logger.error("exiting: the model did not load (%s)", state.lifecycle.load_error)
            self.exit_code = 1
            return True
        if self.draining_since is None:
            return False
        admission, batcher = state.admission, state.batcher
        in_hand = (admission is not None and (admission.admitted or admission.receiving)) or (
            batcher is not None and batcher.busy
        )
        if not in_hand:
            return True
        if time.monotonic() - self.draining_since >= self.grace_s and not state.lifecycle.grace_over:
            unfinished = admission.admitted if admission is not None else 0
            logger.warning("grace period over: answering %d unfinished upscale(s) with 503", unfinished)
            state.lifecycle.end_grace()
            if batcher is not None:
                batcher.shut_down()
        # Past the grace period every request was cancelled; give their answers a moment, then go regardless.
        return time.monotonic() - self.draining_since >= self.grace_s + _CLOSE_CONNECTIONS_S


def serve(settings: Settings) -> int:
    """Runs the server until it is stopped; returns the process exit status."""
    from xraysr.service.app import create_app

    app = create_app(settings, load_in_background=True)
    protocol = type(
        "XraysrH11Protocol",
        (GuardedH11Protocol,),
        {"max_connections": settings.max_connections, "header_timeout_s": settings.header_timeout_s},
    )
    config = uvicorn.Config(
        ProbeOnlyGate(app),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        http=protocol,
        timeout_keep_alive=int(max(1, round(settings.keep_alive_s))),
        # Typed int by uvicorn, used as asyncio.wait_for's timeout, which takes any float.
        timeout_graceful_shutdown=_CLOSE_CONNECTIONS_S,  # type: ignore[arg-type]
        access_log=False,  # uvicorn's access line carries the query string; api/upscale.py logs what it needs
    )
    server = GracefulServer(config, app, settings.shutdown_grace_s)
    server.run()
    return server.exit_code

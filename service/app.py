"""create_app(): the routes wired, and a lifespan that loads the engines and runs the batcher.

Importing this module loads nothing; `create_app(settings)` builds the app, and the model is loaded when
the server (or a test client) starts it. `xraysr serve` loads in the background, so the port answers (and
/readyz says "loading") while the engines load; a test client waits for the model before its first request.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from xraysr.service import __version__
from xraysr.service.api import metrics, probes, shrink, ui, upscale
from xraysr.service.api.browser import BrowserGuard
from xraysr.service.api.docs import add_offline_docs
from xraysr.service.api.errors import add_error_handlers
from xraysr.service.app_state import AppState, state_of
from xraysr.service.batching import Batcher
from xraysr.service.concurrency import Admission, ByteBudget
from xraysr.service.engine import load_pipeline
from xraysr.service.lifecycle import Lifecycle
from xraysr.service.metrics import RequestMetricsMiddleware, ServiceMetrics
from xraysr.service.pipeline import SRPipeline
from xraysr.service.settings import Settings
from xraysr.service.tegrastats import start_from_environment as start_tegrastats

logger = logging.getLogger(__name__)


def create_app(settings: Settings, load_in_background: bool = False) -> FastAPI:
    def install(app: FastAPI, pipeline: SRPipeline) -> Batcher:
        manifest, state = pipeline.manifest, state_of(app)
        state.metrics.set_model(manifest.model, manifest.version, pipeline.runtime.backend, manifest.precision)
        state.admission = Admission(
            settings.max_concurrent_requests, settings.max_queued_requests, settings.max_batch, settings.max_decoding
        )
        batcher = Batcher(
            pipeline,
            settings.max_batch,
            settings.max_batch_delay_ms / 1000,
            settings.max_concurrent_requests,
            on_batch=state.metrics.observe_batch,
            on_stop=state.metrics.batches_stopped.inc,
        )
        state.batcher, state.pipeline = batcher, pipeline
        if state.lifecycle.state == "loading":
            state.lifecycle.state = "ready"
        return batcher

    async def load_then_batch(app: FastAPI) -> None:
        try:
            pipeline = await anyio.to_thread.run_sync(load_pipeline, settings)
        except Exception as error:  # noqa: BLE001 - reported by /readyz and turned into the exit status
            logger.exception("the model could not be loaded")
            state_of(app).lifecycle.fail(f"{type(error).__name__}: {error}")
            return
        await install(app, pipeline).run()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # A test client's first request needs the model: load it before the app reports started.
        batcher = None if load_in_background else install(app, await anyio.to_thread.run_sync(load_pipeline, settings))
        state = state_of(app)
        tegrastats = start_tegrastats(state.metrics.registry)  # None unless XRAYSR_TEGRASTATS=1 on a Jetson
        async with anyio.create_task_group() as tasks:
            if batcher is None:
                tasks.start_soon(load_then_batch, app)
            else:
                tasks.start_soon(batcher.run)
            yield
            pipeline, state.pipeline = state.pipeline, None
            tasks.cancel_scope.cancel()
        # The batcher has stopped and no batch is running: a GPU runtime (TensorRT) frees its engines and
        # buffers now, with its CUDA context current, rather than at interpreter exit with none.
        if pipeline is not None:
            pipeline.runtime.close()
        if tegrastats is not None:
            tegrastats.stop()

    app = FastAPI(
        title="xraysr",
        version=__version__,
        summary="4x super-resolution of chest X-rays",
        lifespan=lifespan,
        docs_url=None,  # served from local assets by add_offline_docs: FastAPI's default loads them from a CDN
        redoc_url=None,
    )
    app.state.xraysr = AppState(
        settings=settings,
        metrics=ServiceMetrics(),
        lifecycle=Lifecycle(),
        shrink_uploads=ByteBudget(settings.shrink_upload_budget_bytes),
    )
    for module in (upscale, shrink, probes, metrics, ui):
        app.include_router(module.router)
    add_error_handlers(app)
    add_offline_docs(app)
    # Added innermost first: metrics (outermost) count what the guard refuses; CORS answers listed origins' preflights.
    if settings.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.allowed_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Accept", "X-Request-Timeout"],
            expose_headers=["*"],
        )
    app.add_middleware(BrowserGuard, trusted_hosts=settings.trusted_hosts, allowed_origins=settings.allowed_origins)
    app.add_middleware(
        RequestMetricsMiddleware,
        metrics=state_of(app).metrics,
        endpoints=frozenset(
            route.path for module in (upscale, shrink, probes, metrics, ui) for route in module.router.routes
        ),
        inflight=upscale.ENDPOINT,
    )
    return app

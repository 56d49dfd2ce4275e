"""create_app(): the routes wired, and a lifespan that loads the engines once before the app reports ready.

Importing this module loads nothing; `create_app(settings)` builds the app, and the model is loaded when
the server (or a test client) starts it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI

from service import __version__
from service.api import metrics, probes, upscale
from service.api.errors import add_error_handlers
from service.concurrency import Admission
from service.engine import load_pipeline
from service.metrics import RequestMetricsMiddleware, ServiceMetrics
from service.settings import Settings
from service.tegrastats import start_from_environment as start_tegrastats


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pipeline = await anyio.to_thread.run_sync(load_pipeline, settings)
        manifest = pipeline.manifest
        app.state.metrics.set_model(manifest.model, manifest.version, pipeline.runtime.backend, manifest.precision)
        app.state.admission = Admission(settings.max_concurrent_requests, settings.max_queued_requests)
        app.state.pipeline = pipeline
        tegrastats = start_tegrastats(app.state.metrics.registry)  # None unless XRAYSR_TEGRASTATS=1 on a Jetson
        yield
        app.state.pipeline = None
        if tegrastats is not None:
            tegrastats.stop()

    app = FastAPI(title="xraysr", version=__version__, summary="4x super-resolution of chest X-rays", lifespan=lifespan)
    app.state.settings, app.state.metrics, app.state.pipeline = settings, ServiceMetrics(), None
    for module in (upscale, probes, metrics):
        app.include_router(module.router)
    add_error_handlers(app)
    app.add_middleware(
        RequestMetricsMiddleware,
        metrics=app.state.metrics,
        endpoints=frozenset(route.path for module in (upscale, probes, metrics) for route in module.router.routes),
        inflight=upscale.ENDPOINT,
    )
    return app

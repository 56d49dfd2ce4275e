"""What the app holds between requests, typed: one ``AppState`` on ``app.state.xraysr``, read with ``state_of``.

Set up by create_app (service/app.py); the model's parts (pipeline, admission, batcher) are None until the model
is loaded, and the pipeline is None again once shutdown has begun.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import anyio
    from starlette.applications import Starlette

    from xraysr.service.batching import Batcher
    from xraysr.service.concurrency import Admission, ByteBudget
    from xraysr.service.lifecycle import Lifecycle
    from xraysr.service.metrics import ServiceMetrics
    from xraysr.service.pipeline import SRPipeline
    from xraysr.service.settings import Settings


@dataclass
class AppState:
    settings: Settings
    metrics: ServiceMetrics
    lifecycle: Lifecycle
    shrink_uploads: ByteBudget  # the bytes /shrink uploads in progress may hold together
    pipeline: SRPipeline | None = None
    admission: Admission | None = None
    batcher: Batcher | None = None
    shrink_decoding: anyio.CapacityLimiter | None = None  # made on first use, inside the event loop


def state_of(app: Starlette) -> AppState:
    state: AppState = app.state.xraysr
    return state

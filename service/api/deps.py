"""What routes receive from the app: ``Annotated[..., Depends(...)]`` aliases over ``app.state``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from service.concurrency import Admission
from service.metrics import ServiceMetrics
from service.pipeline import SRPipeline
from service.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_metrics(request: Request) -> ServiceMetrics:
    metrics: ServiceMetrics = request.app.state.metrics
    return metrics


def get_pipeline(request: Request) -> SRPipeline:
    """The loaded pipeline; 503 until the lifespan has loaded and warmed it up, and again once shutdown began."""
    pipeline: SRPipeline | None = request.app.state.pipeline
    if pipeline is None:
        raise HTTPException(503, "the model is not loaded yet; retry shortly", headers={"Retry-After": "1"})
    return pipeline


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
PipelineDep = Annotated[SRPipeline, Depends(get_pipeline)]


def get_admission(request: Request, pipeline: PipelineDep) -> Admission:
    # Depends on the pipeline so that a request before start-up finished gets its 503, not an AttributeError.
    admission: Admission = request.app.state.admission
    return admission


AdmissionDep = Annotated[Admission, Depends(get_admission)]

"""What routes receive from the app: ``Annotated[..., Depends(...)]`` aliases over ``app.state``, and the
checks every upscale passes before anything is read: readiness, the bearer token, known query parameters."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from xraysr.service.app_state import state_of
from xraysr.service.batching import Batcher
from xraysr.service.concurrency import Admission
from xraysr.service.lifecycle import Lifecycle
from xraysr.service.metrics import ServiceMetrics
from xraysr.service.pipeline import SRPipeline
from xraysr.service.settings import Settings


def get_settings(request: Request) -> Settings:
    return state_of(request.app).settings


def get_metrics(request: Request) -> ServiceMetrics:
    return state_of(request.app).metrics


def get_lifecycle(request: Request) -> Lifecycle:
    return state_of(request.app).lifecycle


def get_pipeline(request: Request) -> SRPipeline:
    """The loaded pipeline; 503 until the model is loaded, and again once shutdown began."""
    state = state_of(request.app)
    lifecycle, pipeline = state.lifecycle, state.pipeline
    if lifecycle.state == "draining":
        raise HTTPException(503, "the server is shutting down; retry on another instance", {"Retry-After": "1"})
    if pipeline is None or lifecycle.state != "ready":
        raise HTTPException(503, "the model is not loaded yet; retry shortly", headers={"Retry-After": "1"})
    return pipeline


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
LifecycleDep = Annotated[Lifecycle, Depends(get_lifecycle)]
PipelineDep = Annotated[SRPipeline, Depends(get_pipeline)]


def get_admission(request: Request, pipeline: PipelineDep) -> Admission:
    # Depends on the pipeline so that a request before start-up finished gets its 503, not an AttributeError.
    admission = state_of(request.app).admission
    assert admission is not None  # set with the pipeline, which the dependency above required
    return admission


def get_batcher(request: Request, pipeline: PipelineDep) -> Batcher:
    batcher = state_of(request.app).batcher
    assert batcher is not None  # set with the pipeline, which the dependency above required
    return batcher


AdmissionDep = Annotated[Admission, Depends(get_admission)]
BatcherDep = Annotated[Batcher, Depends(get_batcher)]


def require_token(request: Request) -> None:
    """With ``api_key`` set: 'Authorization: Bearer <api_key>', compared in constant time. The 401 does not say
    whether the token was missing or wrong."""
    settings = state_of(request.app).settings
    if settings.api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expected = settings.api_key.get_secret_value().encode()
    valid = hmac.compare_digest(token.strip().encode(), expected)
    if not (valid and scheme.lower() == "bearer"):
        raise HTTPException(
            401, "this server needs a valid bearer token", headers={"WWW-Authenticate": 'Bearer realm="xraysr"'}
        )


def require_token_for_metrics(request: Request) -> None:
    if state_of(request.app).settings.protect_metrics:
        require_token(request)


def reject_unknown_query(request: Request) -> None:
    """A misspelt parameter (``step=10``) is a 422 naming it, not a request silently run with the defaults; so is
    a repeated one (``steps=10&steps=50``), which would otherwise run with whichever came last."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    known = _query_names(route.dependant)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        takes = ", ".join(sorted(known)) or "none"
        raise HTTPException(422, f"unknown query parameter(s): {', '.join(unknown)}; {route.path} takes {takes}")
    repeated = sorted(name for name in set(request.query_params) if len(request.query_params.getlist(name)) > 1)
    if repeated:
        raise HTTPException(422, f"query parameter(s) given more than once: {', '.join(repeated)}; give each once")


def _query_names(dependant: Dependant) -> set[str]:
    names = {parameter.alias for parameter in dependant.query_params}
    for dependency in dependant.dependencies:
        names |= _query_names(dependency)
    return names

"""Liveness and readiness, for Docker HEALTHCHECK, Kubernetes probes and load balancers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["probes"])


@router.get("/healthz", summary="The process answers (it may still be loading the model).")
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get(
    "/readyz",
    summary="The model is loaded and warmed up: 200 with what is served, else 503.",
    responses={503: {"description": "Still loading, or shutting down."}},
)
async def readyz(request: Request) -> Any:
    pipeline = request.app.state.pipeline
    if pipeline is None:
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "1"})
    manifest = pipeline.manifest
    return {
        "status": "ready",
        "model": manifest.model,
        "version": manifest.version,
        "backend": pipeline.runtime.backend,
        "precision": manifest.precision,
    }

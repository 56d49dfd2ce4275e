"""Liveness and readiness, for Docker HEALTHCHECK, Kubernetes probes and load balancers (GET and HEAD)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from xraysr.service.app_state import state_of

router = APIRouter(tags=["probes"])
# What a load balancer or orchestrator calls: exempt from the Host check (api/browser.py) and served on the
# probe-only connections past the connection cap (server.py).
PROBES = frozenset(("/healthz", "/readyz"))


# One route per method (not api_route with both): each gets its own OpenAPI operation id.
HEALTHZ = "The process answers (it may still be loading the model)."
READYZ = "The model is loaded and the server takes work: 200 with what is served, else 503 and why."
READYZ_503: dict[int | str, dict[str, Any]] = {
    503: {"description": "loading, draining (shutting down), or failed (the model did not load)."}
}


@router.get("/healthz", summary=HEALTHZ)
@router.head("/healthz", summary=HEALTHZ)
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/readyz", summary=READYZ, responses=READYZ_503)
@router.head("/readyz", summary=READYZ, responses=READYZ_503)
async def readyz(request: Request) -> Any:
    state = state_of(request.app)
    lifecycle, pipeline = state.lifecycle, state.pipeline
    if lifecycle.state != "ready" or pipeline is None:
        body: dict[str, str] = {"status": lifecycle.state if lifecycle.state != "ready" else "draining"}
        if lifecycle.load_error is not None:
            body["detail"] = lifecycle.load_error
        return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
    manifest = pipeline.manifest
    return {
        "status": "ready",
        "model": manifest.model,
        "version": manifest.version,
        "backend": pipeline.runtime.backend,
        "precision": manifest.precision,
        "precision_choice": state.settings.precision_choice,
        "default_answer": manifest.sampler.default_answer,
    }

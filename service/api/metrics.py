"""GET /metrics: the Prometheus text format of this app's own registry."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from xraysr.service.api.deps import MetricsDep, require_token_for_metrics

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    summary="Prometheus metrics (with protect_metrics, behind the bearer token).",
    response_class=Response,
    dependencies=[Depends(require_token_for_metrics)],
)
async def prometheus_metrics(metrics: MetricsDep) -> Response:
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)

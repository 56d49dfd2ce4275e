"""GET /metrics: the Prometheus text format of this app's own registry."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.api.deps import MetricsDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", summary="Prometheus metrics.", response_class=Response)
async def prometheus_metrics(metrics: MetricsDep) -> Response:
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)

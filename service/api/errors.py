"""Every error leaves as ``{"detail": "<one sentence>"}``, including FastAPI's own parameter validation."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from xraysr.service.metrics import ServiceMetrics

logger = logging.getLogger(__name__)


def describe_request_error(error: RequestValidationError) -> str:
    """``steps: Input should be a valid integer, unable to parse string as an integer (got 'abc')``."""
    problems = []
    for issue in error.errors():
        # loc is ("query", "steps"): the parameter's name is what a client can act on.
        where = ".".join(str(part) for part in issue["loc"][1:]) or str(issue["loc"][0])
        got = f" (got {issue['input']!r})" if issue.get("input") is not None else ""
        problems.append(f"{where}: {issue['msg']}{got}")
    return "; ".join(problems)


async def _request_validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    return JSONResponse({"detail": describe_request_error(error)}, status_code=422)


def abandoned(metrics: ServiceMetrics, reason: str, deadline_s: float = 0.0) -> JSONResponse:
    """The answer to an upscale given up: 504 past its deadline, 503 at shutdown, 499 when its client left
    (nobody reads that one); /metrics counts each in xraysr_upscale_abandoned_total."""
    metrics.abandoned.labels(reason=reason).inc()
    if reason == "deadline":
        detail, status = f"the upscale did not finish within its deadline of {deadline_s:g} s", 504
    elif reason == "shutdown":
        detail, status = "the server is shutting down and this upscale could not finish in time; retry", 503
    else:
        detail, status = "the client disconnected before its answer", 499
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _client_disconnect(request: Request, error: Exception) -> JSONResponse:
    # A client that leaves mid-upload (/shrink, /ui/inspect) is a 499 in xraysr_requests_total, not a server
    # error; /upscale answers its own, which xraysr_upscale_abandoned_total counts too.
    logger.info("client disconnected before its answer (%s)", request.url.path)
    return JSONResponse({"detail": "the client disconnected before its answer"}, status_code=499)


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _request_validation_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnect)

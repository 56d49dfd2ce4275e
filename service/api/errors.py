"""Every error leaves as ``{"detail": "<one sentence>"}``, including FastAPI's own parameter validation."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


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


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _request_validation_error)

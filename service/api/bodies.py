"""Request bodies and content negotiation shared by the image routes (/upscale, /shrink, the page's /ui/inspect):
the body read under a size cap and a time limit, the image taken from it or from a multipart form, and what the
client's Accept header asks for."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import HTTPException, Request
from starlette.datastructures import UploadFile

from xraysr.service.imaging import BodyTimeout, BodyTooLarge, check_body_size


def image_request_body(description: str) -> dict[str, Any]:
    """The OpenAPI requestBody of a route that takes an image as the body or as a form's ``file`` field."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        "required": True,
        "description": description,
        "content": {
            "image/png": binary,
            "application/dicom": binary,
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
        },
    }


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``max_bytes``, and with 408 if it has
    not all arrived within ``timeout_s`` (a stalled upload must not hold its place and its memory forever)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit():
        check_body_size(int(declared), max_bytes)
    chunks, received = [], 0
    with anyio.move_on_after(timeout_s) as timer:
        # A missing or understated Content-Length (chunked uploads) is caught while reading, before it is all in.
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise BodyTooLarge(
                    f"the request body is over {max_bytes} bytes, this server's limit; nothing was decoded"
                )
            chunks.append(chunk)
    if timer.cancelled_caught:
        raise BodyTimeout(f"the request body did not arrive within {timeout_s:g} s ({received} bytes came)")
    return b"".join(chunks)


async def image_from_request(request: Request, body: bytes) -> tuple[bytes, str | None]:
    """The image's bytes and declared type: the body itself, or the ``file`` field of a multipart form."""
    content_type = request.headers.get("content-type")
    if content_type is None or content_type.split(";")[0].strip().lower() != "multipart/form-data":
        return body, content_type

    async def replay_body() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    # The body was already read under the size cap; Starlette's parser reads it again from this replay.
    form = await Request(request.scope, replay_body).form(max_files=1, max_fields=8)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise HTTPException(422, "a multipart/form-data body needs a file field named 'file' holding the image")
    return await upload.read(), upload.content_type


def wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "").lower()


def wants_dicom(request: Request) -> bool:
    """Accept names application/dicom (it wins over application/json when both are named)."""
    return "application/dicom" in request.headers.get("accept", "").lower()

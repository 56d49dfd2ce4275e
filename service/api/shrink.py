"""POST /shrink: a full-size chest X-ray (PNG or DICOM) in, the 64×64 input xraysr upscales out, made by the
training data's recipe (service/shrink.py). It needs no model, so it answers while the model loads too.

  401  no valid bearer token, when the server has an api_key (the same check as /upscale)
  413/408  the body is over max_shrink_body_bytes, or did not arrive within body_timeout_s
  503  the uploads in progress hold shrink_upload_budget_bytes between them (Retry-After: 1): decided from
       Content-Length (or max_shrink_body_bytes when chunked) before the body is read
  400/415/422  not a usable image (service/imaging.py), over 4096x4096 pixels, or a short side under 256
  200  image/png, 64x64 8-bit grayscale, with X-Shrink-Recipe and X-Original-Size
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from xraysr.service.api.bodies import image_from_request, image_request_body, read_body
from xraysr.service.api.deps import SettingsDep, reject_unknown_query, require_token
from xraysr.service.app_state import state_of
from xraysr.service.concurrency import Overloaded
from xraysr.service.imaging import ImageError, check_body_size
from xraysr.service.shrink import HR_SIZE, LR_SIZE, RECIPE, shrink_file

router = APIRouter(tags=["shrink"])

ENDPOINT = "/shrink"

_REQUEST_BODY = image_request_body(
    "A chest X-ray of any size from 256x256 to 4096x4096 pixels: the file itself, or a multipart form with a "
    "`file` field."
)
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"image/png": {}},
        "description": f"The {LR_SIZE}x{LR_SIZE} 8-bit grayscale PNG to send to /upscale; X-Shrink-Recipe names the "
        "recipe, X-Original-Size the size received (WIDTHxHEIGHT).",
    },
    400: {"description": "Empty body, or a malformed multipart form."},
    401: {"description": "The server has an api_key and the request has no valid bearer token."},
    408: {"description": "The body did not arrive within body_timeout_s."},
    413: {"description": "The body is larger than max_shrink_body_bytes."},
    503: {"description": "Uploads in progress hold shrink_upload_budget_bytes between them (Retry-After: 1)."},
    415: {"description": "Neither image/png, application/dicom nor multipart/form-data."},
    422: {
        "description": f"Not a decodable image, over 4096x4096 pixels, a short side under {HR_SIZE} (the recipe never "
        "enlarges), or an unknown query parameter."
    },
}


def _limiter(request: Request, settings: SettingsDep) -> anyio.CapacityLimiter:
    # Made on first use, inside the event loop; decoding a full-size image costs memory, so few run at once.
    state = state_of(request.app)
    if state.shrink_decoding is None:
        state.shrink_decoding = anyio.CapacityLimiter(settings.max_decoding)
    return state.shrink_decoding


@router.post(
    ENDPOINT,
    summary=f"Make the {LR_SIZE}x{LR_SIZE} input of /upscale from a full-size chest X-ray, by the training recipe.",
    response_class=Response,
    responses=_RESPONSES,
    openapi_extra={"requestBody": _REQUEST_BODY},
    dependencies=[Depends(require_token), Depends(reject_unknown_query)],
)
async def shrink_image(request: Request, settings: SettingsDep) -> Response:
    cap = settings.max_shrink_body_bytes
    declared = request.headers.get("content-length", "")
    budget = state_of(request.app).shrink_uploads
    try:
        size = int(declared) if declared.isdigit() else cap  # a chunked upload may grow to the cap
        check_body_size(size, cap)
        # The body is held from its first byte until its 64x64 is made: those bytes are what the budget bounds.
        with budget.hold(size):
            body = await read_body(request, cap, settings.body_timeout_s)
            data, content_type = await image_from_request(request, body)
            shrunk = await anyio.to_thread.run_sync(
                shrink_file, data, content_type, limiter=_limiter(request, settings)
            )
    except ImageError as error:
        return JSONResponse({"detail": error.message}, status_code=error.status_code)
    except Overloaded as error:
        return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": "1"})
    headers = {"X-Shrink-Recipe": RECIPE, "X-Original-Size": f"{shrunk.original_width}x{shrunk.original_height}"}
    if shrunk.conversion:
        headers["X-Input-Conversion"] = shrunk.conversion
    return Response(shrunk.png, media_type="image/png", headers=headers)

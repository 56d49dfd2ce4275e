"""The web page at ``/``: hand-written static assets (service/web/: HTML, CSS, JavaScript modules; no CDN, no
build step) and the two small JSON helpers the page calls besides /upscale and /shrink.

  GET  /                 the page
  GET  /ui/app.js, /ui/panels.js, /ui/style.css
  GET  /ui/config        what the page's controls need: the manifest's steps range, samples, lr_size, auth
  POST /ui/inspect       the body as the model would see it: a 64×64 input comes back as the 8-bit PNG that
                         /upscale decodes it to (DICOM windowing, 16-bit rescaling applied), so the page can show
                         exactly what was sent; any other size answers ``fits: false`` and the page sends it to
                         /shrink first. It takes what /upscale takes — its body cap (a larger file is 413, and the
                         page sends that to /shrink), its admission (503 when busy) — and decodes in its slots.

Everything the page loads comes from this process, so it works on a hospital LAN with no internet.
"""

from __future__ import annotations

import base64
import functools
from importlib.resources import files
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from xraysr.service.api.bodies import read_body
from xraysr.service.api.deps import AdmissionDep, PipelineDep, SettingsDep, reject_unknown_query, require_token
from xraysr.service.concurrency import Overloaded
from xraysr.service.imaging import ImageError, WrongSize, decode_image, encode_png
from xraysr.service.manifest import MAX_SAMPLES

router = APIRouter(tags=["ui"])

WEB = files("xraysr.service") / "web"
# The page's assets, each with its media type: a fixed list, so no request path ever reaches the file system.
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "panels.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The page changes with the package; revalidating costs one small request, a stale app.js a confusing page.
NO_CACHE = {"Cache-Control": "no-cache"}


@functools.cache
def _read(name: str) -> bytes:
    """A page file, read from the package once: it cannot change while the process runs."""
    return (WEB / name).read_bytes()


@router.get("/", include_in_schema=False)
async def page() -> HTMLResponse:
    return HTMLResponse(_read("index.html").decode("utf-8"), headers=NO_CACHE)


@router.get("/ui/config", summary="What the web page's controls need: the served model's steps and samples ranges.")
async def config(pipeline: PipelineDep, settings: SettingsDep) -> dict[str, Any]:
    manifest = pipeline.manifest
    return {
        "model": manifest.model,
        "model_version": manifest.version,
        "min_steps": manifest.sampler.min_steps,
        "max_steps": manifest.sampler.max_steps,
        "default_steps": manifest.sampler.default_steps,
        "default_samples": manifest.sampler.default_samples,
        "default_answer": manifest.sampler.default_answer,
        "max_samples": MAX_SAMPLES,
        "lr_size": manifest.image.lr_size,
        "hr_size": manifest.image.hr_size,
        "auth_required": settings.api_key is not None,
        "max_body_bytes": settings.max_body_bytes,
    }


# After /ui/config: routes match in order, and this one would take any name.
@router.get("/ui/{name}", include_in_schema=False)
async def asset(name: str) -> Response:
    if name not in ASSETS:
        return JSONResponse({"detail": f"no page asset named {name!r}"}, status_code=404)
    return Response(_read(name), media_type=ASSETS[name], headers=NO_CACHE)


@router.post(
    "/ui/inspect",
    summary="For the web page: whether an image is already the model's input size, and its 8-bit pixels if so.",
    dependencies=[Depends(require_token), Depends(reject_unknown_query)],
)
async def inspect(request: Request, pipeline: PipelineDep, admission: AdmissionDep, settings: SettingsDep) -> Any:
    lr_size = pipeline.manifest.image.lr_size
    try:
        with admission.receive():
            body = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
        content_type = request.headers.get("content-type")
        with admission.admit():
            decoded = await anyio.to_thread.run_sync(
                lambda: decode_image(body, content_type, expected_size=lr_size), limiter=admission.decoding
            )
    except WrongSize as error:
        return {"fits": False, "size": list(error.size), "detail": error.message}
    except ImageError as error:
        return JSONResponse({"detail": error.message}, status_code=error.status_code)
    except Overloaded as error:
        return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": "1"})
    return {
        "fits": True,
        "size": [lr_size, lr_size],
        "format": decoded.source_format,
        "input_conversion": decoded.conversion,
        "preview_png_base64": base64.b64encode(encode_png(decoded.pixels)).decode("ascii"),
    }

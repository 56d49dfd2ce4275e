"""What a web browser may do with this server, whichever page it is showing.

A browser sends a cross-site ``multipart/form-data`` POST without asking first (no CORS preflight), and a page
on a rebound DNS name reaches a loopback server as if it were its own. So, before any route runs:
- ``Host`` must be one the server answers to (``Settings.trusted_hosts``), else 400: a rebound name is not.
  The probes are exempt (an orchestrator's Host is the pod's address), and they change nothing.
- A state-changing request (anything but GET, HEAD, OPTIONS) from a browser page of another origin is 403:
  its ``Origin`` must be this server's own (same host and port) or listed in ``allowed_origins``; without an
  ``Origin``, ``Sec-Fetch-Site: cross-site`` or ``same-site`` is refused too. Clients that are not browsers
  (curl, Python, PACS gateways) send neither header and are not affected.
- Every response carries headers that stop the page from being framed (it holds an API-key field) and its
  answers from being sniffed as another type: ``Content-Security-Policy`` (a route may set its own, as /docs
  does), ``X-Frame-Options``, ``X-Content-Type-Options``, ``Referrer-Policy``.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from xraysr.service.api.probes import PROBES

SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
# The page loads only its own files; previews and downloads are data: and blob: URLs it makes itself.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; connect-src 'self' blob:; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": PAGE_CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def host_name(host_header: str) -> str:
    """The name or address of a Host header, without its port: ``[::1]:8000`` → ``::1``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_is_trusted(host_header: str, trusted: Iterable[str]) -> bool:
    name = host_name(host_header)
    for pattern in trusted:
        if pattern == "*" or name == pattern.lower():
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:].lower()):
            return True
    return False


def cross_site_refusal(method: str, headers: Headers, allowed_origins: Iterable[str]) -> str | None:
    """Why a browser's state-changing request from another site is refused, or None when it is not."""
    if method in SAFE_METHODS:
        return None
    origin = headers.get("origin")
    if origin is not None:
        if origin.lower() in allowed_origins or urlsplit(origin.lower()).netloc == headers.get("host", "").lower():
            return None
        return (
            f"a {method} from a page of {origin[:100]!r} is refused: browsers may only post here from this "
            "server's own page or an origin in XRAYSR_ALLOWED_ORIGINS"
        )
    if headers.get("sec-fetch-site") in ("cross-site", "same-site"):
        return (
            f"a cross-site {method} is refused (Sec-Fetch-Site: {headers['sec-fetch-site']}): browsers may only "
            "post here from this server's own page or an origin in XRAYSR_ALLOWED_ORIGINS"
        )
    return None


class BrowserGuard:
    """Pure ASGI middleware: the Host allow-list, the cross-site refusal and the security headers."""

    def __init__(self, app: ASGIApp, trusted_hosts: tuple[str, ...], allowed_origins: tuple[str, ...]) -> None:
        self.app, self.trusted_hosts, self.allowed_origins = app, trusted_hosts, frozenset(allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        refusal = self._refusal(scope)
        if refusal is not None:
            status, detail = refusal
            await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _refusal(self, scope: Scope) -> tuple[int, str] | None:
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if scope["path"] not in PROBES and not host_is_trusted(host, self.trusted_hosts):
            return 400, (
                f"this server does not answer to the Host {host[:100]!r}: address it by a name in "
                "XRAYSR_ALLOWED_HOSTS (README: Exposing xraysr)"
            )
        why = cross_site_refusal(scope["method"], headers, self.allowed_origins)
        return (403, why) if why is not None else None

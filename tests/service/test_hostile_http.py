"""Hostile HTTP on a real server: cross-site pages, rebound host names, repeated parameters, chunk floods,
held uploads, idle and trickling connections, clients that leave mid-upload. Each test reproduces a finding of
the issue "Hostile input, round 3"; servers that could run out of memory run under an address-space limit."""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.service.serving import DEFAULT_ENGINES, is_closed, memory_mb, metric
from xraysr.service.codec_limits import MAX_PNG_ANCILLARY_CHUNKS
from xraysr.service.tools.local_server import local_server_process

ADDRESS_SPACE = 2 << 30
PNG = {"content-type": "image/png"}


def _png(size: int = 64) -> bytes:
    ramp = np.rint(np.add.outer(np.arange(size), np.arange(size)) * (255 / (2 * size - 2))).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    return buffer.getvalue()


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=5)


def _start_upload(url: str, path: str, declared: int, sent: bytes, content_type: str = "image/png") -> socket.socket:
    """Headers declaring ``declared`` bytes, then only ``sent``: an upload that is still arriving."""
    connection = _connect(url)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\nContent-Length: {declared}\r\n\r\n"
    )
    connection.sendall(head.encode() + sent)
    return connection


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, Path]]:
    log = tmp_path_factory.mktemp("hostile-http") / "server.log"
    env = {"XRAYSR_MAX_SHRINK_BODY_BYTES": str(4 << 20), "XRAYSR_SHRINK_UPLOAD_BUDGET_BYTES": str(10 << 20)}
    with local_server_process(DEFAULT_ENGINES, "cxr-default", env=env, log=log, address_space_bytes=ADDRESS_SPACE) as (
        url,
        process,
    ):
        yield url, process.pid, log


# --- browsers ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/docs", "/upscale", "/readyz"])
def test_every_answer_carries_the_security_headers(server: tuple[str, int, Path], path: str) -> None:
    url, _, _ = server
    response = httpx.get(f"{url}{path}")
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    policy = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "default-src 'self'" in policy
    assert "unsafe-inline" not in policy.split("script-src", 1)[-1].split(";")[0]  # no inline script but by hash


@pytest.mark.parametrize("route", ["/upscale", "/shrink", "/ui/inspect"])
@pytest.mark.parametrize(
    "headers",
    [{"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}],
    ids=["origin", "null-origin", "fetch-metadata"],
)
def test_a_cross_site_post_is_403_and_costs_nothing(
    server: tuple[str, int, Path], route: str, headers: dict[str, str]
) -> None:
    url, _, _ = server
    form = {"file": ("x.png", _png(256 if route == "/shrink" else 64), "image/png")}
    response = httpx.post(f"{url}{route}", files=form, headers=headers)
    assert response.status_code == 403, response.text
    assert "XRAYSR_ALLOWED_ORIGINS" in response.json()["detail"]


def test_the_servers_own_page_and_non_browser_clients_may_post(server: tuple[str, int, Path]) -> None:
    url, _, _ = server
    own = {"Origin": url, "Sec-Fetch-Site": "same-origin", **PNG}
    assert httpx.post(f"{url}/upscale", content=_png(), headers=own).status_code == 200
    assert httpx.post(f"{url}/upscale", content=_png(), headers=PNG).status_code == 200  # curl sends no Origin


def test_a_listed_origin_may_post_with_cors(tmp_path: Path) -> None:
    env = {"XRAYSR_ALLOWED_ORIGINS": "https://viewer.example.org"}
    with local_server_process(DEFAULT_ENGINES, "cxr-default", env=env, log=tmp_path / "log") as (url, _):
        origin = {"Origin": "https://viewer.example.org"}
        preflight = httpx.options(
            f"{url}/upscale",
            headers={
                **origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://viewer.example.org"
        response = httpx.post(f"{url}/upscale", content=_png(), headers={**origin, **PNG})
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "https://viewer.example.org"
        other = httpx.post(f"{url}/upscale", content=_png(), headers={"Origin": "https://other.example.org", **PNG})
        assert other.status_code == 403


def test_a_rebound_host_name_is_400_but_the_probes_answer(server: tuple[str, int, Path]) -> None:
    url, _, _ = server
    rebound = {"Host": "attacker.example:8000"}
    response = httpx.post(f"{url}/upscale", content=_png(), headers={**rebound, **PNG})
    assert response.status_code == 400
    assert "XRAYSR_ALLOWED_HOSTS" in response.json()["detail"]
    assert httpx.get(f"{url}/", headers=rebound).status_code == 400
    assert httpx.get(f"{url}/readyz", headers=rebound).status_code == 200
    for host in ("localhost:1234", "[::1]:8000", "127.0.0.1"):
        assert httpx.get(f"{url}/ui/config", headers={"Host": host}).status_code == 200, host


def test_a_repeated_query_parameter_is_422(server: tuple[str, int, Path]) -> None:
    url, _, _ = server
    response = httpx.post(f"{url}/upscale?steps=10&steps=50", content=_png(), headers=PNG)
    assert response.status_code == 422
    assert "steps" in response.json()["detail"] and "more than once" in response.json()["detail"]


# --- decoding work -----------------------------------------------------------------------------------------------


def _chunk_flood(chunks: int) -> bytes:
    """A 64x64 PNG with ``chunks`` empty private ancillary chunks before IEND."""
    png = _png()
    empty = struct.pack(">I", 0) + b"prIv" + struct.pack(">I", zlib.crc32(b"prIv"))
    return png[:-12] + empty * chunks + png[-12:]


def test_a_png_chunk_flood_is_refused_at_once_and_upscales_go_on(server: tuple[str, int, Path]) -> None:
    url, _, _ = server
    flood = _chunk_flood(80_000)  # under the 1 MiB cap: 960 kB of empty chunks
    outcome: dict[str, float] = {}

    def normal() -> None:
        started = time.monotonic()
        assert httpx.post(f"{url}/upscale", content=_png(), headers=PNG, timeout=60).status_code == 200
        outcome["normal_s"] = time.monotonic() - started

    started = time.monotonic()
    floods = [
        threading.Thread(
            target=lambda: outcome.setdefault(
                "status", httpx.post(f"{url}/ui/inspect", content=flood, headers=PNG, timeout=60).status_code
            )
        )
        for _ in range(2)
    ]
    for thread in floods:
        thread.start()
    normal()
    for thread in floods:
        thread.join()
    assert outcome["status"] == 422
    assert time.monotonic() - started < 5.0
    response = httpx.post(f"{url}/upscale", content=flood, headers=PNG)
    assert f"more than {MAX_PNG_ANCILLARY_CHUNKS} other chunks" in response.json()["detail"]


def test_inspect_takes_what_upscale_takes(server: tuple[str, int, Path]) -> None:
    url, _, _ = server
    full_size = _png(1024) + b"\0" * (2 << 20)  # a 3 MB body: over /upscale's 1 MiB
    response = httpx.post(f"{url}/ui/inspect", content=full_size, headers=PNG)
    assert response.status_code == 413
    assert httpx.post(f"{url}/ui/inspect?x=1", content=_png(), headers=PNG).status_code == 422


def test_inspect_waits_its_turn_with_the_upscales(tmp_path: Path) -> None:
    env = {"XRAYSR_MAX_QUEUED_REQUESTS": "0", "XRAYSR_MAX_BATCH": "1"}
    with local_server_process(DEFAULT_ENGINES, "cxr-default", env=env, log=tmp_path / "log") as (url, _):
        slow = threading.Thread(
            target=httpx.post,
            args=(f"{url}/upscale?steps=50&samples=8",),
            kwargs={"content": _png(), "headers": PNG, "timeout": 120},
        )
        slow.start()
        deadline = time.monotonic() + 10
        while metric(url, "xraysr_inflight_requests") < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # its 5 kB body read, it holds the one place
        response = httpx.post(f"{url}/ui/inspect", content=_png(), headers=PNG)
        slow.join()
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "1"


def test_held_shrink_uploads_are_bounded_by_the_byte_budget(server: tuple[str, int, Path]) -> None:
    """Finding 4: uploads that stop one byte short held 1.8 GB for 30 s; the budget (10 MiB here) refuses
    what does not fit before reading it."""
    url, pid, _ = server
    declared = 4 << 20
    before = memory_mb(pid)
    held = [_start_upload(url, "/shrink", declared, b"\0" * (declared - 1)) for _ in range(2)]
    time.sleep(0.5)
    refused = httpx.post(f"{url}/shrink", content=b"\0" * declared, headers=PNG)
    assert refused.status_code == 503, refused.text
    assert "bytes they may hold together" in refused.json()["detail"]
    assert memory_mb(pid) - before < 40  # two held uploads; the third never read
    small = httpx.post(f"{url}/shrink", content=_png(256), headers=PNG)
    assert small.status_code == 200  # what fits goes on
    for connection in held:
        connection.close()
    time.sleep(0.5)
    assert httpx.post(f"{url}/shrink", content=_png(1024), headers=PNG).status_code == 200  # the budget came back


@pytest.mark.parametrize("route", ["/shrink", "/ui/inspect", "/upscale"])
def test_a_client_leaving_mid_upload_is_499_not_500(server: tuple[str, int, Path], route: str) -> None:
    url, _, log = server
    before = metric(url, "xraysr_requests_total", 'status="499"')
    errors_before = metric(url, "xraysr_requests_total", 'status="500"')
    connection = _start_upload(url, route, 100_000, b"\0" * 1000)
    time.sleep(0.3)
    connection.close()
    deadline = time.monotonic() + 5
    while metric(url, "xraysr_requests_total", 'status="499"') == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(url, "xraysr_requests_total", 'status="499"') == before + 1
    assert metric(url, "xraysr_requests_total", 'status="500"') == errors_before
    assert "Traceback" not in log.read_text()


# --- connections -------------------------------------------------------------------------------------------------


def test_idle_connections_at_the_cap_do_not_lock_out_the_probes(tmp_path: Path) -> None:
    env = {"XRAYSR_MAX_CONNECTIONS": "8"}
    with local_server_process(DEFAULT_ENGINES, "cxr-default", env=env, log=tmp_path / "log") as (url, _):
        idle = [_connect(url) for _ in range(16)]  # connected, sending nothing
        time.sleep(0.2)
        for _ in range(5):
            assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
        assert httpx.post(f"{url}/upscale", content=_png(), headers=PNG, timeout=60).status_code == 200
        assert sum(is_closed(connection, 0.2) for connection in idle) >= 8  # the longest-idle made room
        for connection in idle:
            connection.close()


def test_busy_connections_at_the_cap_leave_slots_for_the_probes_only(tmp_path: Path) -> None:
    env = {"XRAYSR_MAX_CONNECTIONS": "4"}
    with local_server_process(DEFAULT_ENGINES, "cxr-default", env=env, log=tmp_path / "log") as (url, _):
        png = _png()
        uploading = [_start_upload(url, "/upscale", len(png), png[:10]) for _ in range(4)]  # every place busy
        time.sleep(0.3)
        assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        other = httpx.post(f"{url}/upscale", content=png, headers=PNG, timeout=5)
        assert other.status_code == 503 and "/readyz" in other.json()["detail"]
        for connection in uploading:
            connection.close()


def test_trickling_uploaders_do_not_starve_admission(tmp_path: Path) -> None:
    """Finding 5: 20 uploaders sending a byte a second held every admission place for the body timeout."""
    with local_server_process(DEFAULT_ENGINES, "cxr-default", log=tmp_path / "log") as (url, _):
        png = _png()
        trickling = [_start_upload(url, "/upscale", len(png), png[:1]) for _ in range(20)]
        time.sleep(0.5)
        statuses = [httpx.post(f"{url}/upscale", content=png, headers=PNG, timeout=60).status_code for _ in range(3)]
        assert statuses == [200, 200, 200]
        for connection in trickling:
            connection.close()

"""service/server.py on a real uvicorn server: bounded shutdown, the connection cap, slow senders."""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.service.serving import DEFAULT_ENGINES, is_closed, metric
from xraysr.service.tools.local_server import local_server_process


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=5)


def _slow_upload(url: str, body: bytes) -> socket.socket:
    """Headers and half the body of an upscale, then nothing: a stalled uploader."""
    connection = _connect(url)
    head = (
        "POST /upscale?samples=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    connection.sendall(head + body[: len(body) // 2])
    return connection


def _status_line(connection: socket.socket, wait_s: float) -> bytes:
    connection.settimeout(wait_s)
    try:
        return connection.recv(65536).split(b"\r\n", 1)[0]
    except OSError:
        return b""


def test_slowloris_connections_are_closed_and_the_cap_holds(tiny_engine_dir: Path, tmp_path: Path) -> None:
    env = {"XRAYSR_HEADER_TIMEOUT_S": "1", "XRAYSR_MAX_CONNECTIONS": "50"}
    with local_server_process(tiny_engine_dir.parent, tiny_engine_dir.name, env=env, log=tmp_path / "log") as (url, _):
        opened = time.monotonic()
        connections = []
        for _ in range(200):
            connection = _connect(url)
            connection.sendall(b"POST /upscale HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest of the headers
            connections.append(connection)
        over_cap = sum(is_closed(connection, 0.05) for connection in connections)
        assert over_cap >= 150  # only 50 may stay open, each refused at accept
        assert all(is_closed(connection, 3.0) for connection in connections)
        assert time.monotonic() - opened < 1.0 + 2.5  # the header timeout, plus this machine's slack
        for connection in connections:
            connection.close()
        assert httpx.get(f"{url}/healthz").status_code == 200


def test_a_stalled_upload_is_408_after_the_body_timeout(tiny_engine_dir: Path, lr_png: bytes, tmp_path: Path) -> None:
    env = {"XRAYSR_BODY_TIMEOUT_S": "1"}
    with local_server_process(tiny_engine_dir.parent, tiny_engine_dir.name, env=env, log=tmp_path / "log") as (url, _):
        started = time.monotonic()
        connection = _slow_upload(url, lr_png)
        assert _status_line(connection, 5.0) == b"HTTP/1.1 408 Request Timeout"
        assert 0.9 < time.monotonic() - started < 3.0
        connection.close()
        assert metric(url, "xraysr_requests_total", 'status="408"') == 1


@pytest.mark.slow
def test_sigterm_drains_answers_everyone_and_exits_0_within_the_grace(lr_png: bytes, tmp_path: Path) -> None:
    grace = 3.0
    env = {
        "XRAYSR_SHUTDOWN_GRACE_S": str(grace),
        "XRAYSR_MAX_BATCH": "1",
        "XRAYSR_MAX_QUEUED_REQUESTS": "32",
    }
    with local_server_process(DEFAULT_ENGINES, "cxr-default", env=env, log=tmp_path / "log") as (url, process):
        answers: dict[int, int | str] = {}

        def client(seed: int) -> None:
            try:
                response = httpx.post(
                    f"{url}/upscale",
                    params={"seed": seed, "samples": 1, "steps": 50},
                    content=lr_png,
                    headers={"content-type": "image/png"},
                    timeout=30,
                )
                answers[seed] = response.status_code
            except httpx.HTTPError as error:
                answers[seed] = repr(error)

        clients = [threading.Thread(target=client, args=(seed,)) for seed in range(16)]
        for thread in clients:
            thread.start()
        uploader = _slow_upload(url, lr_png)
        time.sleep(1.0)  # every request admitted; a few answered
        with httpx.Client(base_url=url, timeout=5) as probe:
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            # Every probe sent 100 ms or more after the signal must see 503 (a probe's own round trip on this
            # loaded machine is not the server's reaction time, so it is timed from when it was sent).
            polls = []
            while not polls or polls[-1][0] < signalled + 0.3:
                sent = time.monotonic()
                polls.append((sent, probe.get("/readyz").status_code))
        assert [status for sent, status in polls if sent >= signalled + 0.1] and all(
            status == 503 for sent, status in polls if sent >= signalled + 0.1
        ), [(round(sent - signalled, 3), status) for sent, status in polls]
        for thread in clients:
            thread.join(30)
        assert process.wait(timeout=grace + 5) == 0
        exited = time.monotonic() - signalled
        statuses = sorted(answers.values(), key=str)
        assert set(statuses) <= {200, 503}, statuses  # complete answers only: no resets, no 500s
        assert 200 in statuses and 503 in statuses  # 16 upscales of 50 steps take far longer than the grace
        assert _status_line(uploader, 1.0) == b"HTTP/1.1 503 Service Unavailable"
        assert exited < grace + 1.0

"""`xraysr serve` in a subprocess on a free loopback port, for the bench and for evaluation through HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def local_server(
    engines_dir: Path,
    model: str,
    threads: int | None = None,
    ready_timeout: float = 120.0,
    precision: str | None = None,
) -> Iterator[str]:
    """Yields the base URL once /readyz answers 200; stops the server on exit."""
    import httpx

    port = free_port()
    command = [
        sys.executable,
        "-m",
        "service.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--engines-dir",
        str(engines_dir),
        "--model",
        model,
    ]
    if threads:
        command += ["--threads", str(threads)]
    if precision:
        command += ["--precision", precision]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        with httpx.Client(base_url=base_url, timeout=5) as client:
            while True:
                if server.poll() is not None:
                    error_output = server.stderr.read().decode() if server.stderr else ""
                    raise RuntimeError(f"xraysr serve exited with {server.returncode}: {error_output[-2000:]}")
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"xraysr serve did not become ready within {ready_timeout:.0f} s")
                time.sleep(0.2)
        yield base_url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

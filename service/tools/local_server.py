"""`xraysr serve` in a subprocess on a free loopback port: for the bench, evaluation through HTTP and the
end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    """A loopback port nothing listens on now (the OS picks it; another process may still take it first)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_ready(base_url: str, server: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    """Returns once ``base_url``/readyz answers 200. RuntimeError if ``server`` exits first (with the end of
    ``log``, the file its output goes to) or if ``timeout`` seconds pass."""
    import httpx

    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base_url, timeout=5) as client:
        while True:
            if server.poll() is not None:
                output = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"xraysr serve exited with {server.returncode}: {output}")
            try:
                if client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"xraysr serve did not become ready within {timeout:.0f} s")
            time.sleep(0.1)


def _limit_address_space(size: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (size, size))


@contextmanager
def local_server(
    engines_dir: Path,
    model: str,
    threads: int | None = None,
    ready_timeout: float = 120.0,
    precision: str | None = None,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
) -> Iterator[str]:
    """Yields the base URL once /readyz answers 200; stops the server on exit.

    ``env`` adds ``XRAYSR_*`` settings; the server's output goes to ``log`` (a temporary file by default).
    It must go to a file: the server logs a line per request, and an unread pipe fills up and stalls it.
    """
    with local_server_process(engines_dir, model, threads, ready_timeout, precision, env, log) as (base_url, _):
        yield base_url


@contextmanager
def local_server_process(
    engines_dir: Path,
    model: str,
    threads: int | None = None,
    ready_timeout: float = 120.0,
    precision: str | None = None,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    address_space_bytes: int | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``local_server``, also yielding the process (to signal it, or to read its memory from /proc).

    ``address_space_bytes`` runs the server under that RLIMIT_AS (what ``prlimit --as`` sets): an allocation past
    it fails inside the server instead of exhausting the machine, so a test of a memory bound cannot take down
    the machine it runs on when the bound regresses."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "xraysr.service.cli",
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
    with tempfile.TemporaryDirectory() as scratch:
        log_path = log or Path(scratch) / "server.log"
        with log_path.open("wb") as log_file:
            server = subprocess.Popen(
                command,
                env={**os.environ, **(env or {})},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=None if address_space_bytes is None else lambda: _limit_address_space(address_space_bytes),
            )
        base_url = f"http://127.0.0.1:{port}"
        try:
            wait_until_ready(base_url, server, ready_timeout, log_path)
            yield base_url, server
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

"""Helpers for the tests that load a real server: its memory, its metrics, raw sockets."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import httpx

DEFAULT_ENGINES = Path(__file__).resolve().parents[2] / "engines"


def memory_mb(pid: int, field: str = "VmRSS") -> float:
    """VmRSS (now) or VmHWM (peak) of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def metric(url: str, name: str, labels: str = "") -> float:
    """One sample of the server's /metrics (0 when absent): ``metric(url, "xraysr_requests_total", 'status="200"')``."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? ([0-9.eE+-]+)$", line)
        if match and all(label in (match.group(1) or "") for label in labels.split(",") if label):
            total += float(match.group(2))
    return total


def is_closed(connection: socket.socket, wait_s: float) -> bool:
    """Whether the server has closed ``connection`` (EOF or reset) within ``wait_s``."""
    deadline = time.monotonic() + wait_s
    try:
        while (left := deadline - time.monotonic()) > 0:
            connection.settimeout(left)
            if connection.recv(65536) == b"":
                return True
    except TimeoutError:
        return False
    except OSError:
        return True  # reset
    return False

"""`xraysr loadtest`: N clients send /upscale requests to a running server and the answer is summarised.

Bounded on purpose: at most ``MAX_CLIENTS`` clients, ``MAX_REQUESTS`` requests or ``MAX_DURATION_S`` seconds,
and loopback only unless ``allow_remote`` (a load tool pointed at a hospital's server by mistake is an outage).
Standard library only (http.client, threads), so the base install has it. Server-side batch sizes come from
the difference of two /metrics scrapes, so they count only this run's batches if nothing else is calling.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

import numpy as np

from xraysr.service.settings import is_loopback_host

MAX_CLIENTS = 256
MAX_REQUESTS = 100_000
MAX_DURATION_S = 3600.0


@dataclass
class LoadReport:
    clients: int
    seconds: float
    statuses: Counter[int] = field(default_factory=Counter)  # 0: no answer (connection error or client timeout)
    latencies: list[float] = field(default_factory=list)  # seconds, every answered request
    ok_latencies: list[float] = field(default_factory=list)
    batch_requests: dict[str, float] = field(default_factory=dict)  # histogram bucket -> batches, this run
    batches: float = 0.0
    batched_requests: float = 0.0
    batched_samples: float = 0.0

    @property
    def answered(self) -> int:
        return sum(count for status, count in self.statuses.items() if status)

    def summary(self) -> str:
        ok = self.statuses.get(200, 0)
        lines = [
            f"{self.answered} answered of {sum(self.statuses.values())} sent by {self.clients} clients in "
            f"{self.seconds:.1f} s: {ok / self.seconds:.2f} images/s",
            "status counts: "
            + ", ".join(f"{status or 'no answer'}: {n}" for status, n in sorted(self.statuses.items())),
        ]
        if self.ok_latencies:
            p50, p95, p99 = np.percentile(self.ok_latencies, [50, 95, 99])
            lines.append(f"200 latency: p50 {1000 * p50:.0f} ms, p95 {1000 * p95:.0f} ms, p99 {1000 * p99:.0f} ms")
        if self.batches:
            lines.append(
                f"server batches: {self.batches:.0f}, mean {self.batched_requests / self.batches:.2f} requests and "
                f"{self.batched_samples / self.batches:.2f} samples per batch"
            )
        return "\n".join(lines)


def check_target(url: str, allow_remote: bool) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"--url must be http://host:port, got {url!r}")
    host = parts.hostname
    if not is_loopback_host(host) and not allow_remote:
        raise ValueError(f"{host} is not loopback: pass --allow-remote to load another machine on purpose")
    return host, parts.port or 80


def run_load(
    url: str,
    body: bytes,
    content_type: str = "image/png",
    clients: int = 8,
    requests: int | None = 100,
    duration_s: float | None = None,
    params: dict[str, int] | None = None,
    timeout_s: float = 120.0,
    api_key: str | None = None,
    allow_remote: bool = False,
) -> LoadReport:
    """Runs until ``requests`` have been sent (or ``duration_s`` has passed); each client waits for its answer
    before sending the next, as a workstation does."""
    if not 1 <= clients <= MAX_CLIENTS:
        raise ValueError(f"--clients must be between 1 and {MAX_CLIENTS}, got {clients}")
    if (requests is None) == (duration_s is None):
        raise ValueError("give one of --requests or --duration")
    if requests is not None and not 1 <= requests <= MAX_REQUESTS:
        raise ValueError(f"--requests must be between 1 and {MAX_REQUESTS}, got {requests}")
    if duration_s is not None and not 0 < duration_s <= MAX_DURATION_S:
        raise ValueError(f"--duration must be between 0 and {MAX_DURATION_S:g} s, got {duration_s}")
    host, port = check_target(url, allow_remote)
    path = "/upscale" + (f"?{urlencode(params)}" if params else "")
    headers = {"Content-Type": content_type}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    before = scrape_batches(host, port, api_key)
    report = LoadReport(clients=clients, seconds=0.0)
    lock = threading.Lock()
    remaining = [requests if requests is not None else MAX_REQUESTS]
    started = time.perf_counter()
    stop_at = started + (duration_s if duration_s is not None else MAX_DURATION_S)

    def take() -> bool:
        with lock:
            if remaining[0] <= 0 or time.perf_counter() >= stop_at:
                return False
            remaining[0] -= 1
            return True

    def client() -> None:
        connection: http.client.HTTPConnection | None = None
        while take():
            sent = time.perf_counter()
            status = 0
            try:
                connection = connection or http.client.HTTPConnection(host, port, timeout=timeout_s)
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                status = response.status
                if response.getheader("connection", "").lower() == "close":
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException):
                if connection is not None:
                    connection.close()
                connection = None
            elapsed = time.perf_counter() - sent
            with lock:
                report.statuses[status] += 1
                if status:
                    report.latencies.append(elapsed)
                if status == 200:
                    report.ok_latencies.append(elapsed)
        if connection is not None:
            connection.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report.seconds = time.perf_counter() - started
    after = scrape_batches(host, port, api_key)
    for name, value in after.items():
        delta = value - before.get(name, 0.0)
        if name.startswith("le="):
            report.batch_requests[name[3:]] = delta
    report.batches = after.get("count", 0.0) - before.get("count", 0.0)
    report.batched_requests = after.get("sum", 0.0) - before.get("sum", 0.0)
    report.batched_samples = after.get("samples_sum", 0.0) - before.get("samples_sum", 0.0)
    return report


_SAMPLE = re.compile(r'^xraysr_batch_(requests|samples)_(bucket|sum|count)(?:\{le="([^"]+)"\})? ([0-9.eE+-]+)$')


def scrape_batches(host: str, port: int, api_key: str | None = None) -> dict[str, float]:
    """The server's batch histograms: {"le=<bucket>": n, "count": batches, "sum": requests, "samples_sum": ...}."""
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        connection.request("GET", "/metrics", headers=headers)
        response = connection.getresponse()
        text = response.read().decode("utf-8", "replace")
        if response.status != 200:
            return {}
    except (OSError, http.client.HTTPException):
        return {}
    finally:
        connection.close()
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        histogram, kind, bucket, value = match.groups()
        if histogram == "requests":
            values[f"le={bucket}" if kind == "bucket" else kind] = float(value)
        elif kind == "sum":
            values["samples_sum"] = float(value)
    return values

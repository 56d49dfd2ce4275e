"""Prometheus metrics of one app, in a registry of its own so that two apps (or two tests) never share counts."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_logger = logging.getLogger("xraysr.access")

# 1 ms (a PNG encode) to 10 s (a long denoise on a Jetson Nano); Prometheus' defaults stop being useful below 5 ms.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
# dB of X-LR-Consistency-PSNR (service/consistency.py): the shipped model's answers sit around 50 (1st percentile
# near 42), bicubic and consistency=enforce near 61, identical ones at the 99.99 cap (docs/RESULTS.md).
CONSISTENCY_BUCKETS = (30.0, 35.0, 40.0, 42.5, 45.0, 47.5, 50.0, 52.5, 55.0, 57.5, 60.0, 62.5, 65.0, 70.0, 80.0, 99.0)
# Why an admitted upscale was answered without its image (counted beside, not as, the status codes).
ABANDON_REASONS = ("client_disconnected", "deadline", "shutdown")


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests_total = Counter(
            "xraysr_requests",
            "HTTP requests answered, by route and status code.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "xraysr_request_duration_seconds",
            "Time from request to response, by route.",
            ["endpoint"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.stage_duration = Histogram(
            "xraysr_stage_duration_seconds",
            "Time per stage of a successful upscale: decode (input), encode, denoise, vae_decode, png (output), total.",
            ["stage"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.inflight = Gauge(
            "xraysr_inflight_requests", "Upscale requests being handled, queued ones included.", registry=self.registry
        )
        self.batch_requests = Histogram(
            "xraysr_batch_requests",
            "Requests per engine batch run (dynamic batching).",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_samples = Histogram(
            "xraysr_batch_samples",
            "Samples (the engines' batch size) per batch run.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batches_stopped = Counter(
            "xraysr_batches_stopped",
            "Batches stopped between denoising steps because none of their clients was still waiting.",
            registry=self.registry,
        )
        self.abandoned = Counter(
            "xraysr_upscale_abandoned",
            "Admitted upscales answered without an image: client_disconnected (answered 499, never sent), "
            "deadline (504), shutdown (503 after the grace period).",
            ["reason"],
            registry=self.registry,
        )
        for reason in ABANDON_REASONS:
            self.abandoned.labels(reason=reason)
        self.lr_consistency = Histogram(
            "xraysr_lr_consistency_psnr_db",
            "X-LR-Consistency-PSNR of each upscale answered with an image: the PSNR (dB) between the 64x64 input "
            "and the answer shrunk back as the training pairs were made, by consistency mode (report, enforce).",
            ["mode"],
            buckets=CONSISTENCY_BUCKETS,
            registry=self.registry,
        )
        for mode in ("report", "enforce"):
            self.lr_consistency.labels(mode=mode)
        self.answers = Counter(
            "xraysr_upscale_answers",
            "Upscales answered with an image, by answer: estimate (the one-pass default) or samples (the "
            "reverse-diffusion loop, asked for with steps or samples).",
            ["answer"],
            registry=self.registry,
        )
        for answer in ("estimate", "samples"):
            self.answers.labels(answer=answer)
        self.model_info = Gauge(
            "xraysr_model_info",
            "The model being served (always 1).",
            ["model", "version", "backend", "precision"],
            registry=self.registry,
        )

    def set_model(self, model: str, version: str, backend: str, precision: str) -> None:
        self.model_info.clear()
        self.model_info.labels(model=model, version=version, backend=backend, precision=precision).set(1)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests_total.labels(endpoint=endpoint, status=str(status)).inc()
        self.request_duration.labels(endpoint=endpoint).observe(seconds)

    def observe_batch(self, requests: int, samples: int) -> None:
        self.batch_requests.observe(requests)
        self.batch_samples.observe(samples)

    def observe_stages(self, stage_seconds: Mapping[str, float]) -> None:
        for stage, seconds in stage_seconds.items():
            self.stage_duration.labels(stage=stage).observe(seconds)

    def observe_consistency(self, mode: str, psnr_db: float) -> None:
        self.lr_consistency.labels(mode=mode).observe(psnr_db)

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestMetricsMiddleware:
    """Counts, times and logs every request to ``endpoints``, whatever answered it: the route, a validation error
    raised before the route ran, or an unhandled exception (counted as 500). Pure ASGI, so responses are not
    buffered. Other paths (/docs, 404s) are not counted, which keeps the endpoint label's cardinality fixed.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, endpoints: frozenset[str], inflight: str) -> None:
        self.app, self.metrics, self.endpoints, self.inflight_endpoint = app, metrics, endpoints, inflight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = scope.get("path", "")
        if scope["type"] != "http" or endpoint not in self.endpoints:
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        counts_inflight = endpoint == self.inflight_endpoint
        if counts_inflight:
            self.metrics.inflight.inc()
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            if counts_inflight:
                self.metrics.inflight.dec()
            seconds = time.perf_counter() - started
            self.metrics.observe_request(endpoint, status, seconds)
            # Method, path, status and time only: query strings and bodies may carry patient data.
            access_logger.info("%s %s %d %.1f ms", scope.get("method"), endpoint, status, 1000 * seconds)

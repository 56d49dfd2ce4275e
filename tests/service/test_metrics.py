"""service/metrics.py: one registry per app, the names and buckets dashboards rely on."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from xraysr.service.metrics import DURATION_BUCKETS, ServiceMetrics


def _samples(metrics: ServiceMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = metrics.exposition()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def test_two_instances_never_share_counts() -> None:
    first, second = ServiceMetrics(), ServiceMetrics()
    first.observe_request("/upscale", 200, 0.02)
    first.observe_request("/upscale", 422, 0.001)
    first.observe_request("/upscale", 422, 0.001)
    assert _samples(first)[("xraysr_requests_total", (("endpoint", "/upscale"), ("status", "422")))] == 2
    assert ("xraysr_requests_total", (("endpoint", "/upscale"), ("status", "422"))) not in _samples(second)


def test_names_buckets_and_content_type() -> None:
    metrics = ServiceMetrics()
    metrics.observe_stages({"denoise": 0.3, "png": 0.0004})
    metrics.observe_request("/upscale", 200, 0.4)
    metrics.inflight.inc()
    samples = _samples(metrics)
    assert DURATION_BUCKETS == (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
    bucket = ("xraysr_stage_duration_seconds_bucket", (("le", "0.25"), ("stage", "denoise")))
    assert samples[bucket] == 0
    assert samples[("xraysr_stage_duration_seconds_bucket", (("le", "0.5"), ("stage", "denoise")))] == 1
    assert samples[("xraysr_stage_duration_seconds_bucket", (("le", "0.001"), ("stage", "png")))] == 1
    assert samples[("xraysr_request_duration_seconds_count", (("endpoint", "/upscale"),))] == 1
    assert samples[("xraysr_inflight_requests", ())] == 1
    assert metrics.exposition()[1] == CONTENT_TYPE_LATEST


def test_model_info_names_only_the_current_model() -> None:
    metrics = ServiceMetrics()
    metrics.set_model("cxr-default", "v1", "onnxruntime", "fp32")
    metrics.set_model("cxr-default", "v2", "onnxruntime", "fp32")
    info = {labels: value for (name, labels), value in _samples(metrics).items() if name == "xraysr_model_info"}
    assert info == {
        (("backend", "onnxruntime"), ("model", "cxr-default"), ("precision", "fp32"), ("version", "v2")): 1.0
    }

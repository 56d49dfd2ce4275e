"""service/pipeline.py: stage timings, including the device times a GPU runtime reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.api.upscale import server_timing
from service.manifest import load_manifest
from service.pipeline import SRPipeline
from service.runtimes import load_runtime


class _DeviceTimedRuntime:
    """ONNX Runtime plus the ``last_gpu_seconds`` a CUDA-event-timed runtime keeps (a fixed 2 ms per run)."""

    def __init__(self, inner) -> None:
        self.inner, self.backend, self.last_gpu_seconds = inner, "timed", {}

    def run(self, component: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        self.last_gpu_seconds[component] = 0.002
        return self.inner.run(component, inputs)


def test_device_times_are_reported_beside_host_times(tiny_engine_dir: Path) -> None:
    manifest = load_manifest(tiny_engine_dir)
    onnx = load_runtime("onnxruntime", manifest, tiny_engine_dir)
    lr = np.full((64, 64), 128, np.uint8)

    plain = SRPipeline(manifest, onnx).upscale(lr, steps=3, seed=0)
    assert set(plain.stage_seconds) == {"encode", "denoise", "vae_decode"}

    timed = SRPipeline(manifest, _DeviceTimedRuntime(onnx)).upscale(lr, steps=3, seed=0)
    assert np.array_equal(timed.image, plain.image)
    assert timed.stage_seconds["encode_gpu"] == 0.002
    assert abs(timed.stage_seconds["denoise_gpu"] - 3 * 0.002) < 1e-12  # one UNet run per step
    assert timed.stage_seconds["vae_decode_gpu"] == 0.002
    header = server_timing({"decode": 1.0, "denoise": 20.0, "denoise_gpu": 6.0})
    assert header == "decode;dur=1.000, denoise;dur=20.000, denoise_gpu;dur=6.000"

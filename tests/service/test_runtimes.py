"""service/runtimes: the whole Runtime protocol on ONNX Runtime (the TensorRT runtime's is tested against its
fakes in test_trt_runtime.py), so that the app and the pipeline call it without probing for attributes."""

from __future__ import annotations

import numpy as np
import pytest

from tests.service.serving import DEFAULT_ENGINES
from xraysr.service.manifest import load_manifest
from xraysr.service.pipeline import SRPipeline
from xraysr.service.runtimes import load_runtime


def test_onnxruntime_reports_no_device_time_and_closes() -> None:
    model = DEFAULT_ENGINES / "cxr-default"
    manifest = load_manifest(model)
    runtime = load_runtime("onnxruntime", manifest, model, threads=1)
    result = SRPipeline(manifest, runtime).estimate(np.full((64, 64), 100, np.uint8))
    assert dict(runtime.last_gpu_seconds) == {}
    assert set(result.stage_seconds) == {"encode", "denoise", "vae_decode"}  # host time only
    runtime.close()
    with pytest.raises(KeyError):
        runtime.run("encoder", {"lr": np.zeros((1, 1, 64, 64), np.float32)})

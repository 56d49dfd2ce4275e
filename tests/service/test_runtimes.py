"""service/runtimes: the whole Runtime protocol on ONNX Runtime (the TensorRT runtime's is tested against its
fakes in test_trt_runtime.py), so that the app and the pipeline call it without probing for attributes."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from tests.service.serving import DEFAULT_ENGINES
from xraysr.service.manifest import load_manifest
from xraysr.service.pipeline import SRPipeline
from xraysr.service.runtimes import load_runtime
from xraysr.service.runtimes.onnxruntime import OnnxRuntime, create_session


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


def test_create_session_sets_the_threads_asked_for_and_leaves_the_rest_to_onnx_runtime() -> None:
    model = DEFAULT_ENGINES / "cxr-default"
    served = create_session(model / "encoder.onnx", threads=2, inter_op_threads=1)
    options = served.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 1)
    assert served.get_providers() == ["CPUExecutionProvider"]
    plain = create_session(model / "encoder.onnx").get_session_options()
    assert (plain.intra_op_num_threads, plain.inter_op_num_threads) == (0, 0)  # 0: ONNX Runtime chooses
    every_optimization = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert plain.graph_optimization_level == options.graph_optimization_level == every_optimization


def test_the_onnxruntime_backend_runs_one_inter_op_thread_and_the_threads_setting() -> None:
    model = DEFAULT_ENGINES / "cxr-default"
    runtime = OnnxRuntime(load_manifest(model), model, threads=3)
    for session in runtime._sessions.values():
        options = session.get_session_options()
        assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 1)
    runtime.close()

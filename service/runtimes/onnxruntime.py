"""ONNX Runtime on the CPU: one InferenceSession per manifest component, created once at start-up."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from xraysr.service.manifest import Manifest, served_components
from xraysr.service.runtimes import NO_DEVICE_TIME

logger = logging.getLogger(__name__)


class OnnxRuntime:
    backend = "onnxruntime"

    def __init__(self, manifest: Manifest, model_dir: Path, threads: int | None = None) -> None:
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # One request at a time per session keeps latency predictable on a small box; concurrency is
        # bounded above this layer (settings.max_concurrent_requests).
        options.inter_op_num_threads = 1
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._output_names: dict[str, str] = {}
        for name in served_components(manifest, device_loop=False):
            component = manifest.components[name]
            path = Path(model_dir) / component.path
            self._sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self._output_names[name] = component.outputs[0].name
            logger.info("loaded %s from %s", name, path)

    @property
    def last_gpu_seconds(self) -> Mapping[str, float]:
        return NO_DEVICE_TIME  # a CPU runtime: host time is all there is

    def run(self, component: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        (output,) = self._sessions[component].run([self._output_names[component]], inputs)
        return output

    def close(self) -> None:
        self._sessions.clear()  # ONNX Runtime frees a session's memory when its last reference goes

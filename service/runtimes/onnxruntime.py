"""ONNX Runtime on the CPU: one InferenceSession per manifest component, created once at start-up.

``create_session`` is the one place the project makes a session; training/ (quantisation) uses it too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from xraysr.service.manifest import Manifest, served_components
from xraysr.service.runtimes import NO_DEVICE_TIME

logger = logging.getLogger(__name__)


def create_session(
    model: Path | bytes, threads: int | None = None, inter_op_threads: int | None = None
) -> ort.InferenceSession:
    """An ONNX Runtime CPU session for an ONNX model: the project's one place that makes them.

    Args:
        model: the .onnx file, or a serialized model (a graph edited in memory, as `xraysr bench --flops` does).
        threads: intra-op threads (within one operator); ``None`` or 0 leaves ONNX Runtime's default (one per
            physical core).
        inter_op_threads: threads across independent operators; ``None`` leaves ONNX Runtime's default.
    """
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if inter_op_threads is not None:
        options.inter_op_num_threads = inter_op_threads
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class OnnxRuntime:
    backend = "onnxruntime"

    def __init__(self, manifest: Manifest, model_dir: Path, threads: int | None = None) -> None:
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._output_names: dict[str, str] = {}
        for name in served_components(manifest, device_loop=False):
            component = manifest.components[name]
            path = Path(model_dir) / component.path
            # One request at a time per session keeps latency predictable on a small box; concurrency is
            # bounded above this layer (settings.max_concurrent_requests).
            self._sessions[name] = create_session(path, threads=threads, inter_op_threads=1)
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

"""Inference runtimes behind one small protocol: ONNX Runtime (any CPU, the default) and TensorRT (Jetson)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from service.manifest import Manifest

Backend = Literal["onnxruntime", "tensorrt"]


class Runtime(Protocol):
    """Runs one manifest component on named float32 inputs and returns its single output."""

    backend: str

    def run(self, component: str, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


def load_runtime(backend: Backend, manifest: Manifest, model_dir: Path, threads: int | None = None) -> Runtime:
    match backend:
        case "onnxruntime":
            from service.runtimes.onnxruntime import OnnxRuntime

            return OnnxRuntime(manifest, model_dir, threads)
        case "tensorrt":
            raise ValueError("the tensorrt backend is not available in this build; use --backend onnxruntime")

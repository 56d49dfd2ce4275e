"""Inference runtimes behind one small protocol: ONNX Runtime (any CPU, the default) and TensorRT (Jetson)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from xraysr.service.manifest import Manifest, Precision

Backend = Literal["onnxruntime", "tensorrt"]


class Runtime(Protocol):
    """Runs one manifest component on named float32 inputs and returns its single output."""

    backend: str

    @property
    def last_gpu_seconds(self) -> Mapping[str, float]:
        """Device time of this thread's latest run of each component (CUDA events); empty on a CPU runtime."""
        ...

    def run(self, component: str, inputs: dict[str, np.ndarray]) -> np.ndarray: ...

    def close(self) -> None:
        """Frees what the runtime holds (sessions, engines, device buffers); the runtime is unusable after."""
        ...


NO_DEVICE_TIME: Mapping[str, float] = MappingProxyType({})


@runtime_checkable
class DeviceLoop(Protocol):
    """A runtime that iterates the manifest's ``unet_step`` graph over all steps without a host round trip.

    ``sample`` and ``lr_latent`` are a batch of K (``samples=K``); every sample takes the same timesteps.
    ``alphas`` holds one (alpha_t, alpha_prev) row per timestep, from ``DDIMSampler.alphas``.
    """

    def denoise(
        self, sample: np.ndarray, lr_latent: np.ndarray, timesteps: np.ndarray, alphas: np.ndarray
    ) -> np.ndarray: ...


def load_runtime(
    backend: Backend,
    manifest: Manifest,
    model_dir: Path,
    threads: int | None = None,
    precision: Precision | None = None,
    trt_cache_dir: Path | None = None,
    max_batch: int | None = None,
) -> Runtime:
    """``precision`` (default: the manifest's), ``trt_cache_dir`` and ``max_batch`` matter to TensorRT only: it
    builds fp16 engines from fp32 files, caches the engines it builds, and fixes their largest batch."""
    match backend:
        case "onnxruntime":
            from xraysr.service.runtimes.onnxruntime import OnnxRuntime

            return OnnxRuntime(manifest, model_dir, threads)
        case "tensorrt":
            try:
                from xraysr.service.runtimes.tensorrt import TensorRTRuntime
            except ImportError as error:
                # The import error's own text says which: a missing module, or JetPack's TensorRT bindings
                # (built against NumPy 1.x) failing under NumPy 2 ("numpy.core.multiarray failed to import").
                raise ValueError(
                    "the tensorrt backend needs TensorRT and pycuda (JetPack ships TensorRT, whose bindings need "
                    f"numpy<2; build pycuda in the image): {error}; or use --backend onnxruntime"
                ) from error
            if max_batch is None:
                return TensorRTRuntime(manifest, model_dir, precision, trt_cache_dir)
            return TensorRTRuntime(manifest, model_dir, precision, trt_cache_dir, max_batch=max_batch)

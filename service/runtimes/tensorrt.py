"""TensorRT on a Jetson (or any NVIDIA GPU): one engine per manifest component, run on one CUDA stream.

Buffers are allocated once per engine at the maximum batch (MAX_SAMPLES: ``samples=K`` runs a batch of K):
pinned host memory (so copies are truly asynchronous) and device memory, freed together by
``DeviceBuffers.free()``; each run copies only its own batch's part. Every CUDA call that can fail
passes through ``cuda_call`` (the shape of TensorRT's samples/python/common_runtime.py), so a failure is one
``RuntimeError`` that says what was being done. CUDA events around each run give the GPU's own time per
component in ``last_gpu_seconds``. TensorRT 8.5+ runs by tensor name (``execute_async_v3``); older
TensorRT (JetPack 4.6 on the original Nano) by binding index (``execute_async_v2``).

tensorrt and pycuda come from JetPack, never from pip; importing this module imports both.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pycuda.driver as cuda
import tensorrt as trt

from xraysr.service.manifest import MAX_SAMPLES, Manifest
from xraysr.service.runtimes.trt_build import DEFAULT_WORKSPACE_MIB, Precision, build_all, current_device

logger = logging.getLogger(__name__)

T = TypeVar("T")

# TensorRT requires I/O tensor addresses aligned to 256 bytes; the on-GPU loop's per-step scalars get a slot
# each, holding the scalar once per batch item: a slot fits a batch of up to 64 float32 values.
SCALAR_ALIGNMENT = 256
SLOT_VALUES = SCALAR_ALIGNMENT // 4


def cuda_call(what: str, call: Callable[..., T], *args: Any) -> T:
    """Runs one CUDA (pycuda) call; any driver error becomes a RuntimeError naming what was being done."""
    try:
        return call(*args)
    except cuda.Error as error:
        raise RuntimeError(f"CUDA error while {what}: {error}") from error


@dataclass
class TensorBuffer:
    name: str
    is_input: bool
    host: np.ndarray  # pinned, flat, sized for the maximum batch
    device: Any  # pycuda DeviceAllocation
    shape: tuple[int, ...]  # per-sample shape, the batch axis left out


class DeviceBuffers:
    """Host and device memory for one engine's inputs and outputs, allocated once."""

    def __init__(self, engine: Any, max_batch: int) -> None:
        self.tensors: dict[str, TensorBuffer] = {}
        for name, is_input, dtype, shape in _io_tensors(engine):
            per_sample = tuple(int(size) for size in shape[1:])
            count = max_batch * int(np.prod(per_sample, dtype=np.int64))
            host = cuda_call(f"allocating pinned memory for {name}", cuda.pagelocked_empty, count, dtype)
            device = cuda_call(f"allocating device memory for {name}", cuda.mem_alloc, host.nbytes)
            self.tensors[name] = TensorBuffer(name, is_input, host, device, per_sample)

    def free(self) -> None:
        for tensor in self.tensors.values():
            tensor.device.free()
        self.tensors.clear()


def _io_tensors(engine: Any) -> list[tuple[str, bool, np.dtype, tuple[int, ...]]]:
    """(name, is_input, numpy dtype, shape) for each I/O tensor, across the TensorRT 8 and 10 APIs."""
    if hasattr(engine, "num_io_tensors"):
        names = [engine.get_tensor_name(index) for index in range(engine.num_io_tensors)]
        return [
            (
                name,
                engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                np.dtype(trt.nptype(engine.get_tensor_dtype(name))),
                tuple(engine.get_tensor_shape(name)),
            )
            for name in names
        ]
    return [
        (
            engine.get_binding_name(index),
            engine.binding_is_input(index),
            np.dtype(trt.nptype(engine.get_binding_dtype(index))),
            tuple(engine.get_binding_shape(index)),
        )
        for index in range(engine.num_bindings)
    ]


class _Engine:
    def __init__(self, runtime: Any, serialized: bytes, max_batch: int) -> None:
        self.engine = runtime.deserialize_cuda_engine(serialized)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine (see its log above)")
        self.context = self.engine.create_execution_context()
        self.buffers = DeviceBuffers(self.engine, max_batch)
        self.max_batch = max_batch
        self.names = [name for name, *_ in _io_tensors(self.engine)]


class TensorRTRuntime:
    backend = "tensorrt"

    def __init__(
        self,
        manifest: Manifest,
        model_dir: Path,
        precision: Precision | None = None,
        cache_dir: Path | None = None,
        workspace_mib: int = DEFAULT_WORKSPACE_MIB,
        max_batch: int = MAX_SAMPLES,
    ) -> None:
        """``max_batch`` bounds the engines' dynamic batch axis and sizes their buffers: ``samples=K`` runs a
        batch of K, so the default is MAX_SAMPLES, as is `xraysr build-engines`' (one cache key for both)."""
        if not 1 <= max_batch <= SLOT_VALUES:
            raise ValueError(f"max batch must be between 1 and {SLOT_VALUES}, got {max_batch}")
        cuda_call("initialising CUDA", cuda.init)
        # A context of our own, pushed for this object's life: the server runs inferences on worker threads.
        self._context = cuda_call("creating a CUDA context", cuda.Device(0).make_context)
        try:
            cache_dir = Path(cache_dir or Path(model_dir) / "tensorrt")
            # fp16 is served from the fp32 manifest, so the manifest alone cannot say what was asked for.
            requested = precision or manifest.precision
            serialized, reports = build_all(model_dir, cache_dir, requested, current_device(), workspace_mib, max_batch)
            for report in reports:
                logger.info("%s %s engine (%s) %s", report.action, report.component, report.precision, report.plan)
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            self._engines = {name: _Engine(self._runtime, plan, max_batch) for name, plan in serialized.items()}
            self._stream = cuda_call("creating a CUDA stream", cuda.Stream)
            self._started, self._finished = cuda.Event(), cuda.Event()
        finally:
            self._context.pop()
        self.last_gpu_seconds: dict[str, float] = {}
        # One stream and one set of buffers per engine: concurrent requests take turns on the GPU.
        self._lock = threading.Lock()

    def run(self, component: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        with self._lock:
            return self._in_context(self._run, self._engines[component], component, inputs)

    def _in_context(self, call: Callable[..., T], *args: Any) -> T:
        self._context.push()
        try:
            return call(*args)
        finally:
            self._context.pop()

    def _run(self, engine: _Engine, component: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        batch = _batch_of(engine, component, inputs.values())
        tensors, stream = engine.buffers.tensors, self._stream
        for name, values in inputs.items():
            tensor = tensors[name]
            flat = np.ascontiguousarray(values, dtype=tensor.host.dtype).ravel()
            tensor.host[: flat.size] = flat
            # Only this batch's part of the max-batch buffer: a batch of 1 copies no more than it did before.
            used = tensor.host[: flat.size]
            cuda_call(f"copying {name} to the GPU", cuda.memcpy_htod_async, tensor.device, used, stream)
            _set_input_shape(engine, name, (batch, *tensor.shape))
        self._started.record(stream)
        _enqueue(engine, component, {name: int(tensor.device) for name, tensor in tensors.items()}, stream)
        self._finished.record(stream)
        (output,) = [tensor for tensor in tensors.values() if not tensor.is_input]
        count = batch * int(np.prod(output.shape, dtype=np.int64))
        downloaded = output.host[:count]
        cuda_call(f"copying {output.name} from the GPU", cuda.memcpy_dtoh_async, downloaded, output.device, stream)
        cuda_call(f"running {component}", stream.synchronize)
        self.last_gpu_seconds[component] = self._finished.time_since(self._started) / 1000.0
        return downloaded.reshape(batch, *output.shape).astype(np.float32, copy=True)

    def denoise(
        self, sample: np.ndarray, lr_latent: np.ndarray, timesteps: np.ndarray, alphas: np.ndarray
    ) -> np.ndarray:
        """Every DDIM step of the ``unet_step`` engine enqueued at once: one upload, one download, one sync.

        The sample ping-pongs between the engine's input and output buffers; each step's timestep and alphas
        were uploaded beforehand, one per 256-byte slot because TensorRT wants aligned tensor addresses, the
        slot holding the value once per batch item (the graph takes them with shape (batch,)).
        """
        if "unet_step" not in self._engines:
            raise ValueError("this model has no unet_step component: export it with step_graph to loop on the GPU")
        with self._lock:
            return self._in_context(self._denoise, self._engines["unet_step"], sample, lr_latent, timesteps, alphas)

    def _denoise(
        self, engine: _Engine, sample: np.ndarray, lr_latent: np.ndarray, timesteps: np.ndarray, alphas: np.ndarray
    ) -> np.ndarray:
        batch = _batch_of(engine, "unet_step", (sample, lr_latent))
        tensors, stream, steps = engine.buffers.tensors, self._stream, len(timesteps)
        rows = np.stack([timesteps, alphas[:, 0], alphas[:, 1]]).astype(np.float32)  # timestep, alpha_t, alpha_prev
        schedule = np.repeat(rows[:, :, None], SLOT_VALUES, axis=2)
        scalars = cuda_call("allocating the step schedule", cuda.mem_alloc, schedule.nbytes)
        try:
            cuda_call("copying the step schedule to the GPU", cuda.memcpy_htod_async, scalars, schedule, stream)
            for name, values in (("sample", sample), ("lr_latent", lr_latent)):
                used = tensors[name].host[: values.size]
                used[:] = np.ascontiguousarray(values, dtype=np.float32).ravel()
                cuda_call(f"copying {name} to the GPU", cuda.memcpy_htod_async, tensors[name].device, used, stream)
            for name in ("sample", "timestep", "lr_latent", "alpha_t", "alpha_prev"):
                _set_input_shape(engine, name, (batch, *tensors[name].shape))
            buffers = [int(tensors["sample"].device), int(tensors["next_sample"].device)]
            self._started.record(stream)
            for step in range(steps):
                addresses = {
                    "sample": buffers[step % 2],
                    "next_sample": buffers[(step + 1) % 2],
                    "lr_latent": int(tensors["lr_latent"].device),
                }
                for row, name in enumerate(("timestep", "alpha_t", "alpha_prev")):
                    addresses[name] = int(scalars) + (row * steps + step) * SCALAR_ALIGNMENT
                _enqueue(engine, f"unet_step {step}", addresses, stream)
            self._finished.record(stream)
            final = tensors["sample"] if steps % 2 == 0 else tensors["next_sample"]
            downloaded = final.host[: sample.size]
            cuda_call("copying the sample from the GPU", cuda.memcpy_dtoh_async, downloaded, final.device, stream)
            cuda_call("running the denoising loop", stream.synchronize)
        finally:
            scalars.free()
        self.last_gpu_seconds["denoise"] = self._finished.time_since(self._started) / 1000.0
        return downloaded.reshape(sample.shape).astype(np.float32, copy=True)

    def close(self) -> None:
        self._context.push()
        try:
            for engine in self._engines.values():
                engine.buffers.free()
            self._engines.clear()  # TensorRT objects go while their CUDA context still exists
        finally:
            self._context.pop()
            self._context.detach()


def _enqueue(engine: _Engine, what: str, addresses: dict[str, int], stream: Any) -> None:
    """Queues one inference on ``stream`` with each I/O tensor at the given device address."""
    if hasattr(engine.context, "execute_async_v3"):
        for name, address in addresses.items():
            engine.context.set_tensor_address(name, address)
        ok = engine.context.execute_async_v3(stream.handle)
    else:  # TensorRT < 8.5: bindings in engine order
        ok = engine.context.execute_async_v2([addresses[name] for name in engine.names], stream.handle)
    if not ok:
        raise RuntimeError(f"TensorRT failed to enqueue {what}")


def _batch_of(engine: _Engine, what: str, inputs: Iterable[np.ndarray]) -> int:
    """The one batch size of ``inputs``, within the engine's 1..max_batch (its profile and its buffers)."""
    batches = {values.shape[0] for values in inputs}
    if len(batches) != 1:
        raise ValueError(f"{what}: inputs of different batch sizes {sorted(batches)}")
    (batch,) = batches
    if not 1 <= batch <= engine.max_batch:
        raise ValueError(f"{what}: batch {batch} is outside the engine's 1..{engine.max_batch}")
    return batch


def _set_input_shape(engine: _Engine, name: str, shape: tuple[int, ...]) -> None:
    # TensorRT answers False (and logs) for a shape outside the optimisation profile; running on would
    # fail later, or worse, read the previous shape.
    if hasattr(engine.context, "set_input_shape"):
        accepted = engine.context.set_input_shape(name, shape)
    else:
        accepted = engine.context.set_binding_shape(engine.names.index(name), shape)
    if not accepted:
        raise RuntimeError(f"TensorRT refused input shape {shape} for {name} (outside the engine's profile?)")

"""TensorRT on a Jetson (or any NVIDIA GPU): one engine per manifest component, run on one CUDA stream.

Buffers are allocated once per engine at the maximum batch (MAX_SAMPLES: ``samples=K`` runs a batch of K):
pinned host memory (so copies are truly asynchronous) and device memory (service/runtimes/trt_buffers.py).
An input whose values are already on the device is not copied again: the host loop's ``lr_latent`` goes up
once per request, not once per step. Every CUDA call that can fail passes through ``cuda_call``, so a failure
is one ``RuntimeError`` that says what was being done. CUDA events around each run give the GPU's own time
per component in ``last_gpu_seconds``, kept per calling thread so concurrent requests never read each
other's. I/O is by tensor name (``set_tensor_address``/``execute_async_v3``, TensorRT 8.5+): JetPack 4 and
5 (TensorRT 8.2 to 8.5) ship Python 3.6/3.8, which this package does not run on: nothing older is needed.

Start-up registers TensorRT's plugins before deserializing (trt_builder.register_plugins), and a plan that
will not deserialize is deleted and rebuilt once. ``close()`` releases everything with the CUDA context
current, in order: the server's lifespan calls it on shutdown; a runtime dropped without it, or still alive
at exit, closes itself then.

tensorrt and pycuda come from JetPack, never from pip; importing this module imports both.
"""

from __future__ import annotations

import atexit
import functools
import logging
import threading
import traceback
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pycuda.driver as cuda
import tensorrt as trt

from xraysr.service.manifest import MAX_SAMPLES, Manifest
from xraysr.service.runtimes.trt_buffers import SLOT_VALUES, DeviceBuffers, StepSchedule, cuda_call
from xraysr.service.runtimes.trt_build import (
    DEFAULT_WORKSPACE_MIB,
    Device,
    Precision,
    build_all,
    current_device,
    default_cache_dir,
    discard_plan,
)
from xraysr.service.runtimes.trt_builder import register_plugins, tensorrt_logger

logger = logging.getLogger(__name__)

T = TypeVar("T")


class _Engine:
    def __init__(self, engine: Any, max_batch: int) -> None:
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
        self.buffers = DeviceBuffers(engine, max_batch)
        self.max_batch = max_batch


def _deserialize(runtime: Any, component: str, serialized: bytes) -> Any:
    """The engine, or None (logged) when TensorRT refuses the plan: it returns None, or raises, by version."""
    try:
        engine = runtime.deserialize_cuda_engine(serialized)
    except Exception as error:  # noqa: BLE001 - any refusal means the same here: rebuild the plan
        logger.warning("TensorRT could not deserialize the %s engine: %s", component, error)
        return None
    if engine is None:
        logger.warning("TensorRT could not deserialize the %s engine (its log above says why)", component)
    return engine


def load_engines(
    runtime: Any,
    model_dir: Path,
    cache_dir: Path,
    requested: Precision,
    device: Device,
    workspace_mib: int,
    max_batch: int,
) -> dict[str, Any]:
    """Every component's deserialized engine; a plan TensorRT refuses is deleted and rebuilt once.

    A plan can be refused even when its sidecar matches: a plugin missing from this process, a TensorRT
    build number the version string does not show, a file damaged on disk. A second refusal is an error.
    """
    serialized, reports = build_all(model_dir, cache_dir, requested, device, workspace_mib, max_batch)
    engines: dict[str, Any] = {}
    for report in reports:
        engine = _deserialize(runtime, report.component, serialized[report.component])
        if engine is None:
            logger.warning("deleting %s and rebuilding the %s engine once", report.plan, report.component)
            discard_plan(report.plan)
            only = {report.component}
            rebuilt, _ = build_all(model_dir, cache_dir, requested, device, workspace_mib, max_batch, only)
            engine = _deserialize(runtime, report.component, rebuilt[report.component])
            if engine is None:
                raise RuntimeError(
                    f"TensorRT {device.tensorrt_version} could not deserialize the {report.component} engine "
                    f"even after rebuilding it in this process ({report.plan}); see TensorRT's errors above"
                )
        engines[report.component] = engine
    return engines


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
        batch of K, so the default is MAX_SAMPLES, as is `xraysr build-engines`' (one cache key for both).

        Builds any engine missing from the cache first (minutes on a Jetson): `xraysr serve` constructs this
        in its background load, so /readyz answers 503 "loading" meanwhile.
        """
        if not 1 <= max_batch <= SLOT_VALUES:
            raise ValueError(f"max batch must be between 1 and {SLOT_VALUES}, got {max_batch}")
        # One stream and one set of buffers per engine: concurrent requests take turns on the GPU.
        self._lock = threading.Lock()
        self._local = threading.local()
        self._closed = False
        self._engines: dict[str, _Engine] = {}
        self._runtime: Any = None
        self._stream: Any = None
        self._started: Any = None
        self._finished: Any = None
        self._schedule: StepSchedule | None = None
        cuda_call("initialising CUDA", cuda.init)
        # A context of our own, pushed around every call: the server runs inferences on worker threads. Blocking
        # sync makes a waiting thread sleep in the driver instead of spinning a CPU core for the whole GPU run
        # (the default, SCHED_AUTO, spins while there are fewer contexts than cores), on a 7-15 W module.
        flags = cuda.ctx_flags.SCHED_BLOCKING_SYNC
        self._context = cuda_call("creating a CUDA context", cuda.Device(0).make_context, flags)
        engines: dict[str, Any] = {}
        try:
            cache_dir = Path(cache_dir or default_cache_dir(model_dir))
            # fp16 is served from the fp32 manifest, so the manifest alone cannot say what was asked for.
            requested = precision or manifest.precision
            trt_logger = tensorrt_logger(trt)
            register_plugins(trt)  # before any deserialize: the plans may hold plugin layers (TensorRT 8.6)
            self._runtime = trt.Runtime(trt_logger)
            device = current_device()
            engines = load_engines(self._runtime, model_dir, cache_dir, requested, device, workspace_mib, max_batch)
            for name in list(engines):
                self._engines[name] = _Engine(engines.pop(name), max_batch)
            self._stream = cuda_call("creating a CUDA stream", cuda.Stream)
            self._started, self._finished = cuda.Event(), cuda.Event()
            if "unet_step" in self._engines:
                self._schedule = StepSchedule(manifest.sampler.max_steps)
        except BaseException as error:
            # The context is current: free what was made, then destroy it. The traceback's frames would keep
            # TensorRT objects alive past the context, so their locals go first.
            traceback.clear_frames(error.__traceback__)
            engines.clear()
            self._release()
            raise
        cuda.Context.pop()
        # A command that never calls close() (`xraysr upscale`, `bench`) still releases everything with the
        # context current: when the runtime is dropped (__del__), or at exit if it is still referenced then,
        # before interpreter teardown would destroy TensorRT objects with no context current.
        self._close_at_exit = functools.partial(_close_if_alive, weakref.ref(self))
        atexit.register(self._close_at_exit)

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()

    @property
    def last_gpu_seconds(self) -> dict[str, float]:
        """GPU seconds of the calling thread's latest run of each component ("denoise": the whole device loop)."""
        seconds: dict[str, float] | None = getattr(self._local, "gpu_seconds", None)
        if seconds is None:
            seconds = self._local.gpu_seconds = {}
        return seconds

    def run(self, component: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        with self._lock:
            self._check_open()
            return self._in_context(self._run, self._engines[component], component, inputs)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this TensorRT runtime was closed")

    def _in_context(self, call: Callable[..., T], engine: _Engine, *args: Any) -> T:
        self._context.push()
        try:
            return call(engine, *args)
        except BaseException:
            engine.buffers.forget_uploads()  # what is on the device is unknown after a failure
            raise
        finally:
            cuda.Context.pop()

    def _run(self, engine: _Engine, component: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        batch = _batch_of(engine, component, inputs.values())
        tensors, stream = engine.buffers.tensors, self._stream
        for name, values in inputs.items():
            tensors[name].upload(values, stream)
            _set_input_shape(engine, name, (batch, *tensors[name].shape))
        self._started.record(stream)
        _enqueue(engine, component, {name: int(tensor.device) for name, tensor in tensors.items()}, stream)
        self._finished.record(stream)
        (output,) = [tensor for tensor in tensors.values() if not tensor.is_input]
        downloaded = output.download(batch, stream)
        cuda_call(f"running {component}", stream.synchronize)
        self.last_gpu_seconds[component] = self._finished.time_since(self._started) / 1000.0
        return downloaded.reshape(batch, *output.shape).astype(np.float32, copy=True)

    def denoise(
        self, sample: np.ndarray, lr_latent: np.ndarray, timesteps: np.ndarray, alphas: np.ndarray
    ) -> np.ndarray:
        """Every DDIM step of the ``unet_step`` engine enqueued at once: one upload, one download, one sync.

        The sample ping-pongs between the engine's input and output buffers; each step's timestep and alphas
        sit in the preallocated step schedule, one per 256-byte slot because TensorRT wants aligned tensor
        addresses, the slot holding the value once per batch item (the graph takes them with shape (batch,)).
        """
        if "unet_step" not in self._engines and not self._closed:
            raise ValueError("this model has no unet_step component: export it with step_graph to loop on the GPU")
        with self._lock:
            self._check_open()
            return self._in_context(self._denoise, self._engines["unet_step"], sample, lr_latent, timesteps, alphas)

    def _denoise(
        self, engine: _Engine, sample: np.ndarray, lr_latent: np.ndarray, timesteps: np.ndarray, alphas: np.ndarray
    ) -> np.ndarray:
        assert self._schedule is not None  # made with the unet_step engine
        batch = _batch_of(engine, "unet_step", (sample, lr_latent))
        tensors, stream, steps = engine.buffers.tensors, self._stream, len(timesteps)
        slots = self._schedule.upload(timesteps, alphas, stream)
        tensors["sample"].upload(sample, stream)
        tensors["lr_latent"].upload(lr_latent, stream)
        for name in ("sample", "timestep", "lr_latent", "alpha_t", "alpha_prev"):
            _set_input_shape(engine, name, (batch, *tensors[name].shape))
        buffers = [tensors["sample"], tensors["next_sample"]]
        # The engine writes into the sample buffer on odd steps: it no longer holds what was uploaded.
        tensors["sample"].forget_upload()
        self._started.record(stream)
        for step in range(steps):
            addresses = {
                "sample": int(buffers[step % 2].device),
                "next_sample": int(buffers[(step + 1) % 2].device),
                "lr_latent": int(tensors["lr_latent"].device),
            }
            for name in ("timestep", "alpha_t", "alpha_prev"):
                addresses[name] = slots(name, step)
            _enqueue(engine, f"unet_step {step}", addresses, stream)
        self._finished.record(stream)
        downloaded = buffers[steps % 2].download(batch, stream)
        cuda_call("running the denoising loop", stream.synchronize)
        self.last_gpu_seconds["denoise"] = self._finished.time_since(self._started) / 1000.0
        return downloaded.reshape(sample.shape).astype(np.float32, copy=True)

    def close(self) -> None:
        """Releases every GPU resource with this runtime's CUDA context current, then destroys the context.

        Idempotent; waits for a run in progress. TensorRT's destructors free through whatever context is
        current, so they must not run at interpreter exit, when none is.
        """
        with self._lock:
            if self._closed:
                return
            atexit.unregister(self._close_at_exit)
            self._context.push()
            self._release()

    def _release(self) -> None:
        """Waits for the stream, then drops execution contexts, engines, the TensorRT runtime, buffers, events
        and the stream, in that order, and detaches the context. Call with the context current."""
        self._closed = True
        try:
            if self._stream is not None:
                try:
                    self._stream.synchronize()  # nothing queued may still use what is freed below
                except cuda.Error as error:
                    logger.warning("CUDA error while finishing queued work before closing: %s", error)
            engines = list(self._engines.values())
            self._engines = {}
            for engine in engines:
                engine.context = None
            for engine in engines:
                engine.engine = None
            self._runtime = None
            for engine in engines:
                engine.buffers.free()
            if self._schedule is not None:
                self._schedule.free()
                self._schedule = None
            self._started = self._finished = None
            self._stream = None
        finally:
            # Detached while current, pycuda destroys the context from any thread (it would leak it otherwise).
            self._context.detach()


def _close_if_alive(runtime: weakref.ref[TensorRTRuntime]) -> None:
    alive = runtime()
    if alive is not None:
        alive.close()


def _enqueue(engine: _Engine, what: str, addresses: dict[str, int], stream: Any) -> None:
    """Queues one inference on ``stream`` with each I/O tensor at the given device address."""
    for name, address in addresses.items():
        if not engine.context.set_tensor_address(name, address):
            raise RuntimeError(f"TensorRT refused the address of {name} for {what}")
    if not engine.context.execute_async_v3(stream.handle):
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
    if not engine.context.set_input_shape(name, shape):
        raise RuntimeError(f"TensorRT refused input shape {shape} for {name} (outside the engine's profile?)")

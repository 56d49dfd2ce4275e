"""GPU memory for the TensorRT runtime: each engine's I/O buffers, and the device loop's step schedule.

Every buffer is allocated once (pinned host memory, so copies are truly asynchronous, beside device memory)
and freed by ``free()`` with the runtime's CUDA context current. An input remembers what it last uploaded:
the same values again (the host loop's ``lr_latent`` at every step of a request) are not copied again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import pycuda.driver as cuda
import tensorrt as trt

T = TypeVar("T")

# TensorRT requires I/O tensor addresses aligned to 256 bytes; the on-GPU loop's per-step scalars get a slot
# each, holding the scalar once per batch item: a slot fits a batch of up to 64 float32 values.
SCALAR_ALIGNMENT = 256
SLOT_VALUES = SCALAR_ALIGNMENT // 4
SCHEDULE_ROWS = ("timestep", "alpha_t", "alpha_prev")


def cuda_call(what: str, call: Callable[..., T], *args: Any) -> T:
    """Runs one CUDA (pycuda) call; any driver error becomes a RuntimeError naming what was being done."""
    try:
        return call(*args)
    except cuda.Error as error:
        raise RuntimeError(f"CUDA error while {what}: {error}") from error


def _free_pinned(host: np.ndarray) -> None:
    # pagelocked_empty's array keeps its PagelockedHostAllocation as .base; free it now, not at exit.
    allocation = host.base
    if allocation is not None and hasattr(allocation, "free"):
        allocation.free()


class TensorBuffer:
    def __init__(self, name: str, is_input: bool, dtype: np.dtype, shape: tuple[int, ...], max_batch: int) -> None:
        self.name, self.is_input = name, is_input
        self.shape = shape  # per sample, the batch axis left out
        count = max_batch * int(np.prod(shape, dtype=np.int64))
        self.host: np.ndarray = cuda_call(f"allocating pinned memory for {name}", cuda.pagelocked_empty, count, dtype)
        self.device: Any = cuda_call(f"allocating device memory for {name}", cuda.mem_alloc, self.host.nbytes)
        self._resident = 0  # host[:_resident] is what the device holds, when nothing else wrote there

    def upload(self, values: np.ndarray, stream: Any) -> None:
        """Queues a copy of ``values`` to the device, unless the device already holds exactly these values."""
        flat = np.ascontiguousarray(values, dtype=self.host.dtype).ravel()
        used = self.host[: flat.size]
        if self._resident == flat.size and np.array_equal(used.view(np.uint8), flat.view(np.uint8)):
            return
        self._resident = 0
        used[:] = flat
        # Only this batch's part of the max-batch buffer: a batch of 1 copies no more than it did before.
        cuda_call(f"copying {self.name} to the GPU", cuda.memcpy_htod_async, self.device, used, stream)
        self._resident = flat.size

    def forget_upload(self) -> None:
        self._resident = 0

    def download(self, batch: int, stream: Any) -> np.ndarray:
        """Queues the copy of the first ``batch`` samples to pinned memory; read it after the stream syncs."""
        self._resident = 0  # the host side no longer mirrors an upload
        downloaded = self.host[: batch * int(np.prod(self.shape, dtype=np.int64))]
        cuda_call(f"copying {self.name} from the GPU", cuda.memcpy_dtoh_async, downloaded, self.device, stream)
        return downloaded

    def free(self) -> None:
        self.device.free()
        _free_pinned(self.host)


class DeviceBuffers:
    """Host and device memory for one engine's inputs and outputs, allocated once at the maximum batch."""

    def __init__(self, engine: Any, max_batch: int) -> None:
        self.tensors: dict[str, TensorBuffer] = {}
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            shape = tuple(int(size) for size in engine.get_tensor_shape(name))
            if any(size < 0 for size in shape[1:]):
                raise RuntimeError(f"{name} has shape {shape}: only the batch axis may be dynamic here")
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            self.tensors[name] = TensorBuffer(name, is_input, dtype, shape[1:], max_batch)

    def forget_uploads(self) -> None:
        for tensor in self.tensors.values():
            tensor.forget_upload()

    def free(self) -> None:
        for tensor in self.tensors.values():
            tensor.free()
        self.tensors.clear()


class StepSchedule:
    """The device loop's per-step (timestep, alpha_t, alpha_prev), one 256-byte slot each, for up to
    ``max_steps`` steps: allocated once, uploaded only when a request's schedule differs from the last."""

    def __init__(self, max_steps: int) -> None:
        self.max_steps = max_steps
        slots = len(SCHEDULE_ROWS) * max_steps * SLOT_VALUES
        self.host: np.ndarray = cuda_call("allocating the step schedule", cuda.pagelocked_empty, slots, np.float32)
        self.device: Any = cuda_call("allocating the step schedule", cuda.mem_alloc, self.host.nbytes)
        self._layouts: dict[bytes, np.ndarray] = {}  # per distinct schedule (one per step count, in practice)
        self._resident: bytes | None = None

    def _layout(self, timesteps: np.ndarray, alphas: np.ndarray) -> tuple[bytes, np.ndarray]:
        rows = np.stack([timesteps, alphas[:, 0], alphas[:, 1]]).astype(np.float32)  # (3, steps)
        key = rows.tobytes()
        if key not in self._layouts:
            layout = np.zeros((len(SCHEDULE_ROWS), self.max_steps, SLOT_VALUES), np.float32)
            layout[:, : rows.shape[1]] = rows[:, :, None]  # each value repeated across its slot: one per sample
            self._layouts[key] = layout.ravel()
        return key, self._layouts[key]

    def upload(self, timesteps: np.ndarray, alphas: np.ndarray, stream: Any) -> Callable[[str, int], int]:
        """Queues the schedule's upload if needed; returns (row name, step) → that slot's device address."""
        if len(timesteps) > self.max_steps:
            raise ValueError(f"{len(timesteps)} steps is more than the {self.max_steps} the schedule holds")
        key, layout = self._layout(np.asarray(timesteps), np.asarray(alphas))
        if key != self._resident:
            self._resident = None
            self.host[:] = layout
            cuda_call("copying the step schedule to the GPU", cuda.memcpy_htod_async, self.device, self.host, stream)
            self._resident = key
        base = int(self.device)
        return lambda name, step: base + (SCHEDULE_ROWS.index(name) * self.max_steps + step) * SCALAR_ALIGNMENT

    def free(self) -> None:
        self.device.free()
        _free_pinned(self.host)
        self._resident = None

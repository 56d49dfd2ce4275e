"""Stand-ins for ``tensorrt`` and ``pycuda.driver`` on a CPU, so service/runtimes/tensorrt.py's plumbing runs here.

"Device memory" is one flat byte array addressed by integers, every copy and every tensor read or written
checked to lie inside one live allocation (a real GPU would corrupt its neighbour, or fault); an "engine"
is the ONNX file's bytes behind a header holding its profile's max batch (``build_engine`` here replaces
trt_build's), run by ONNX Runtime on whatever the execution context's addresses point at, and an input
shape outside the profile is refused as TensorRT refuses it, by answering False. This checks buffers,
addresses, shapes, batches and the on-GPU loop's ping-pong, not TensorRT itself: the GPU tests do.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

MEMORY = np.zeros(256 << 20, np.uint8)  # untouched pages cost nothing; allocations are never reused
_next_free = [4096]  # address 0 stays invalid, as on a GPU
_live: dict[int, int] = {}  # address → bytes of each allocation not yet freed
PLAN_MAGIC = b"FAKEPLAN"


class Error(Exception):
    pass


class DeviceAllocation:
    def __init__(self, nbytes: int) -> None:
        self.address = _next_free[0]
        _next_free[0] += (nbytes + 255) // 256 * 256  # cudaMalloc's 256-byte alignment
        if _next_free[0] > MEMORY.size:
            raise Error("out of fake device memory")
        _live[self.address] = nbytes
        self.freed = False

    def __int__(self) -> int:
        return self.address

    def free(self) -> None:
        _live.pop(self.address, None)
        self.freed = True


def _bytes_at(address: int, nbytes: int) -> np.ndarray:
    """MEMORY[address : address + nbytes], refused unless the span lies inside one live allocation."""
    if not any(start <= address and address + nbytes <= start + size for start, size in _live.items()):
        raise Error(f"{nbytes} bytes at {address} are not inside one live allocation")
    return MEMORY[address : address + nbytes]


def _view(address: int, dtype: np.dtype, count: int) -> np.ndarray:
    return _bytes_at(address, count * dtype.itemsize).view(dtype)


def memcpy_htod_async(device: DeviceAllocation, host: np.ndarray, stream: Any) -> None:
    flat = np.ascontiguousarray(host).reshape(-1).view(np.uint8)
    _bytes_at(int(device), flat.size)[:] = flat


def memcpy_dtoh_async(host: np.ndarray, device: DeviceAllocation, stream: Any) -> None:
    host.reshape(-1).view(np.uint8)[:] = _bytes_at(int(device), host.nbytes)


class _Context:
    def push(self) -> None: ...

    def pop(self) -> None: ...

    def detach(self) -> None: ...


class Device:
    def __init__(self, index: int) -> None: ...

    def make_context(self) -> _Context:
        return _Context()

    def name(self) -> str:
        return "Fake Orin"

    def compute_capability(self) -> tuple[int, int]:
        return (8, 7)


class Stream:
    handle = 0

    def synchronize(self) -> None: ...


class Event:
    def record(self, stream: Stream) -> None: ...

    def time_since(self, other: Event) -> float:
        return 1.5  # milliseconds


def make_pycuda() -> tuple[types.ModuleType, types.ModuleType]:
    driver = types.ModuleType("pycuda.driver")
    for name in ("Error", "DeviceAllocation", "memcpy_htod_async", "memcpy_dtoh_async", "Device", "Stream", "Event"):
        setattr(driver, name, globals()[name])
    driver.init = lambda: None  # type: ignore[attr-defined]
    driver.pagelocked_empty = lambda count, dtype: np.empty(count, dtype)  # type: ignore[attr-defined]
    driver.mem_alloc = DeviceAllocation  # type: ignore[attr-defined]
    package = types.ModuleType("pycuda")
    package.driver = driver  # type: ignore[attr-defined]
    return package, driver


class _ExecutionContext:
    def __init__(self, engine: _Engine) -> None:
        self.engine, self.shapes, self.addresses = engine, {}, {}
        self.runs = 0
        self.batches: list[int] = []  # the batch of every input shape set, in order

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        """False, as TensorRT answers, for a shape outside the profile: batch 1..max_batch, the rest fixed."""
        (spec,) = [spec for spec in self.engine.session.get_inputs() if spec.name == name]
        fits = len(shape) == len(spec.shape) and all(
            size == expected if isinstance(expected, int) else 1 <= size <= self.engine.max_batch
            for size, expected in zip(shape, spec.shape, strict=True)
        )
        if fits:
            self.shapes[name] = tuple(shape)
            self.batches.append(shape[0])
        return fits

    def set_tensor_address(self, name: str, address: int) -> None:
        assert address % 256 == 0, f"{name} at {address} is not 256-byte aligned"
        self.addresses[name] = address

    def execute_async_v3(self, stream_handle: int) -> bool:
        session, self.runs = self.engine.session, self.runs + 1
        feeds = {
            spec.name: _view(self.addresses[spec.name], np.dtype(np.float32), int(np.prod(self.shapes[spec.name])))
            .reshape(self.shapes[spec.name])
            .copy()
            for spec in session.get_inputs()
        }
        (output,) = session.run(None, feeds)
        name = session.get_outputs()[0].name
        _view(self.addresses[name], np.dtype(np.float32), output.size)[:] = output.reshape(-1)
        return True


def build_engine(onnx_path: Path, precision: str, max_batch: int, *_: Any) -> bytes:
    """Stands in for trt_build.build_engine: the "plan" is the ONNX file behind its profile's max batch."""
    return PLAN_MAGIC + max_batch.to_bytes(2, "little") + Path(onnx_path).read_bytes()


class _Engine:
    def __init__(self, serialized: bytes) -> None:
        assert serialized.startswith(PLAN_MAGIC), "not a plan from fake_tensorrt.build_engine"
        header = len(PLAN_MAGIC)
        self.max_batch = int.from_bytes(serialized[header : header + 2], "little")
        self.session = ort.InferenceSession(serialized[header + 2 :], providers=["CPUExecutionProvider"])
        self.tensors = [(spec, True) for spec in self.session.get_inputs()]
        self.tensors += [(spec, False) for spec in self.session.get_outputs()]
        self.contexts: list[_ExecutionContext] = []

    @property
    def num_io_tensors(self) -> int:
        return len(self.tensors)

    def get_tensor_name(self, index: int) -> str:
        return self.tensors[index][0].name

    def _spec(self, name: str) -> tuple[Any, bool]:
        return next(entry for entry in self.tensors if entry[0].name == name)

    def get_tensor_mode(self, name: str) -> str:
        return "input" if self._spec(name)[1] else "output"

    def get_tensor_dtype(self, name: str) -> str:
        return "float32"

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(size if isinstance(size, int) else -1 for size in self._spec(name)[0].shape)

    def create_execution_context(self) -> _ExecutionContext:
        self.contexts.append(_ExecutionContext(self))
        return self.contexts[-1]


class Runtime:
    def __init__(self, logger: Any) -> None:
        self.engines: list[_Engine] = []

    def deserialize_cuda_engine(self, serialized: bytes) -> _Engine:
        self.engines.append(_Engine(serialized))
        return self.engines[-1]


def make_tensorrt() -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.0.0-fake"
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=2: None})  # type: ignore[attr-defined]
    trt.Runtime = Runtime  # type: ignore[attr-defined]
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")  # type: ignore[attr-defined]
    trt.nptype = lambda dtype: {"float32": np.float32}[dtype]  # type: ignore[attr-defined]
    return trt

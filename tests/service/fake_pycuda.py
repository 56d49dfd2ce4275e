"""A stand-in for ``pycuda.driver`` on a CPU that fails the way the real one does (fake_tensorrt.py's engines
run on it, as TensorRT runs on the CUDA driver).

What is modelled, each because a real-board failure hid behind a fake that did not:

- **Streams.** Copies from and to pinned memory, inferences and event records are queued on their stream and
  run at ``synchronize()``: read a result before synchronizing and it is stale. A copy from pageable memory
  is staged at the call, as the driver does. ``Event.time_since`` raises until both events have completed.
- **Contexts.** pycuda's per-thread context stack: memory, streams, copies and engines need a current context;
  ``detach()`` destroys a context only if it is current or on its creating thread (else it leaks, as pycuda
  does); TensorRT objects and buffers record, when they are destroyed or freed, whether a live context was
  current (``EVENTS``).

"Device memory" is one flat byte array addressed by integers, every copy and tensor access checked to lie
inside one live allocation.
"""

from __future__ import annotations

import threading
import types
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

MEMORY = np.zeros(256 << 20, np.uint8)  # untouched pages cost nothing; allocations are never reused
_next_free = [4096]  # address 0 stays invalid, as on a GPU
_live: dict[int, int] = {}  # address → bytes of each allocation not yet freed
EVENTS: list[tuple[str, str, bool]] = []  # (what, which, whether a live CUDA context was current)
COPIES: list[tuple[str, int, int]] = []  # ("htod" | "dtoh", device address, bytes) as each copy RUNS
_clock_ms = [0.0]
SM_COUNT = 8


class Error(Exception):
    pass


ctx_flags = types.SimpleNamespace(SCHED_AUTO=0, SCHED_SPIN=1, SCHED_YIELD=2, SCHED_BLOCKING_SYNC=4)
device_attribute = types.SimpleNamespace(MULTIPROCESSOR_COUNT="MULTIPROCESSOR_COUNT")
_threads = threading.local()


def _stack() -> list[Context]:
    if not hasattr(_threads, "stack"):
        _threads.stack = []
    return _threads.stack  # type: ignore[no-any-return]


class Context:
    def __init__(self, flags: int) -> None:
        self.flags, self.thread, self.valid, self.fate = flags, threading.get_ident(), True, "alive"

    def push(self) -> None:
        if not self.valid:
            raise Error("cannot push an invalid context")
        _stack().append(self)

    @staticmethod
    def pop() -> None:
        if not _stack():
            raise Error("context::pop: cannot pop non-current context")
        _stack().pop()

    @staticmethod
    def get_current() -> Context | None:
        stack = _stack()
        return stack[-1] if stack and stack[-1].valid else None

    def detach(self) -> None:
        """pycuda's rule: destroyed if current or on its creating thread, else left alone ("leaked")."""
        if not self.valid:
            raise Error("context::detach: cannot detach from invalid context")
        stack = _stack()
        if stack and stack[-1] is self:
            stack.pop()
            self.fate = "destroyed"
        elif self.thread == threading.get_ident():
            self.fate = "destroyed"
        else:
            self.fate = "leaked"
        self.valid = False
        EVENTS.append(("context", self.fate, self.fate == "destroyed"))


def context_is_current() -> bool:
    return Context.get_current() is not None


def require_context(what: str) -> Context:
    context = Context.get_current()
    if context is None:
        raise Error(f"{what}: invalid device context (no current context)")
    return context


class Device:
    def __init__(self, index: int) -> None: ...

    def make_context(self, flags: int = 0) -> Context:
        context = Context(flags)
        context.push()
        return context

    def name(self) -> str:
        return "Fake Orin"

    def compute_capability(self) -> tuple[int, int]:
        return (8, 7)

    def get_attribute(self, attribute: str) -> int:
        assert attribute == device_attribute.MULTIPROCESSOR_COUNT
        return SM_COUNT


class PagelockedHostAllocation(bytearray):
    """The ``.base`` of a pinned array, as pycuda's is."""

    freed = False

    def free(self) -> None:
        if self.freed:
            raise Error("host allocation already freed")
        self.freed = True
        EVENTS.append(("free", "pinned host memory", context_is_current()))


def pagelocked_empty(count: int, dtype: Any) -> np.ndarray:
    require_context("cuMemHostAlloc")
    dtype = np.dtype(dtype)
    return np.ndarray((count,), dtype, buffer=PagelockedHostAllocation(count * dtype.itemsize))


def _pinned(host: np.ndarray) -> PagelockedHostAllocation | None:
    base: Any = host
    while base is not None and not isinstance(base, PagelockedHostAllocation):
        base = getattr(base, "base", None)
    if base is not None and base.freed:
        raise Error("use of freed pinned host memory")
    return base


class DeviceAllocation:
    def __init__(self, nbytes: int) -> None:
        self.context = require_context("cuMemAlloc")
        self.address = _next_free[0]
        _next_free[0] += (nbytes + 255) // 256 * 256  # cudaMalloc's 256-byte alignment
        if _next_free[0] > MEMORY.size:
            raise Error("out of fake device memory")
        _live[self.address] = nbytes
        self.freed = False

    def __int__(self) -> int:
        return self.address

    def free(self) -> None:
        if self.freed:
            raise Error("device_allocation::free: invalid handle")
        self.freed = True
        # pycuda activates the allocation's own context; it cannot from another thread, nor once it is dead.
        current = Context.get_current() is self.context
        usable = self.context.valid and (current or self.context.thread == threading.get_ident())
        if usable:
            _live.pop(self.address, None)
        EVENTS.append(("free", "device memory" if usable else "device memory LEAKED", context_is_current()))


def _bytes_at(address: int, nbytes: int) -> np.ndarray:
    """MEMORY[address : address + nbytes], refused unless the span lies inside one live allocation."""
    if not any(start <= address and address + nbytes <= start + size for start, size in _live.items()):
        raise Error(f"{nbytes} bytes at {address} are not inside one live allocation")
    return MEMORY[address : address + nbytes]


def device_view(address: int, dtype: np.dtype, count: int) -> np.ndarray:
    """``count`` values of ``dtype`` at ``address`` (an engine's tensor), checked as ``_bytes_at`` checks."""
    return _bytes_at(address, count * dtype.itemsize).view(dtype)


_streams: weakref.WeakValueDictionary[int, Stream] = weakref.WeakValueDictionary()
_next_stream = [0x5000]


class Stream:
    def __init__(self) -> None:
        self.context = require_context("cuStreamCreate")
        _next_stream[0] += 16
        self.handle = _next_stream[0]  # never 0, the legacy default stream
        self.queue: list[Callable[[], None]] = []
        _streams[self.handle] = self

    def synchronize(self) -> None:
        require_context("cuStreamSynchronize")
        queue, self.queue = self.queue, []
        for work in queue:
            work()

    def __del__(self) -> None:
        EVENTS.append(("destroy", "stream", context_is_current()))


def stream_of(handle: int) -> Stream | None:
    """The live stream whose handle TensorRT was given (``execute_async_v3`` takes the integer)."""
    return _streams.get(handle)


def memcpy_htod_async(device: DeviceAllocation, host: np.ndarray, stream: Stream) -> None:
    require_context("cuMemcpyHtoDAsync")
    address, nbytes = int(device), host.nbytes
    _bytes_at(address, nbytes)  # the driver checks the range at the call

    def copy(source: np.ndarray) -> None:
        _pinned(host)  # freed pinned memory must not be read
        _bytes_at(address, nbytes)[:] = np.ascontiguousarray(source).reshape(-1).view(np.uint8)
        COPIES.append(("htod", address, nbytes))

    if _pinned(host) is None:  # pageable: the driver stages it now, so later changes to host are not seen
        staged = np.array(host, copy=True)
        stream.queue.append(lambda: copy(staged))
    else:  # pinned: the DMA reads host memory when the copy runs
        stream.queue.append(lambda: copy(host))


def memcpy_dtoh_async(host: np.ndarray, device: DeviceAllocation, stream: Stream) -> None:
    require_context("cuMemcpyDtoHAsync")
    address = int(device)

    def copy() -> None:
        host.reshape(-1).view(np.uint8)[:] = _bytes_at(address, host.nbytes)
        COPIES.append(("dtoh", address, host.nbytes))

    if _pinned(host) is None:  # pageable: synchronous, after everything queued before it
        stream.synchronize()
        copy()
    else:
        stream.queue.append(copy)


def elapse(milliseconds: float) -> None:
    """The device clock moves on, as work queued on a stream runs (events read it)."""
    _clock_ms[0] += milliseconds


class Event:
    def __init__(self) -> None:
        require_context("cuEventCreate")
        self.at_ms: float | None = None

    def record(self, stream: Stream) -> None:
        self.at_ms = None

        def stamp() -> None:
            self.at_ms = _clock_ms[0]

        stream.queue.append(stamp)

    def time_since(self, start: Event) -> float:
        if self.at_ms is None or start.at_ms is None:
            raise Error("cuEventElapsedTime failed: device not ready")
        return self.at_ms - start.at_ms

    def __del__(self) -> None:
        EVENTS.append(("destroy", "event", context_is_current()))


def make_pycuda() -> tuple[types.ModuleType, types.ModuleType]:
    """A fresh pycuda.driver: no context on any thread, empty event and copy logs."""
    _threads.__dict__.clear()
    EVENTS.clear()
    COPIES.clear()
    driver = types.ModuleType("pycuda.driver")
    for name in (
        "Error",
        "Context",
        "Device",
        "DeviceAllocation",
        "Event",
        "PagelockedHostAllocation",
        "Stream",
        "ctx_flags",
        "device_attribute",
        "memcpy_dtoh_async",
        "memcpy_htod_async",
        "pagelocked_empty",
    ):
        setattr(driver, name, globals()[name])
    driver.init = lambda: None  # type: ignore[attr-defined]
    driver.mem_alloc = DeviceAllocation  # type: ignore[attr-defined]
    package = types.ModuleType("pycuda")
    package.driver = driver  # type: ignore[attr-defined]
    return package, driver


def htod_copies_to(address: int) -> int:
    """How many host-to-device copies into the allocation at ``address`` have run."""
    return sum(1 for kind, to, _ in COPIES if kind == "htod" and to == address)

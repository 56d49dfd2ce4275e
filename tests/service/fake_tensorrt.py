"""Stand-ins for ``tensorrt`` and ``pycuda.driver`` on a CPU that fail the way the real ones do.

What is modelled, each because a real-board failure hid behind a fake that did not:

- **Builder.** ``Builder``/``create_network``/``OnnxParser``/``IBuilderConfig``/``build_serialized_network`` as
  in TensorRT 8.6 and 10.x, so service/runtimes/trt_builder.py's real ``build_engine`` runs here. The parser
  makes one layer per ONNX node (plus a constant layer per initializer), with TensorRT's layer and tensor API
  (``layer.precision``, ``set_output_type``, ``tensor.dtype``...). TensorRT < 8.5 refuses cubic Resize;
  TensorRT 8.x (< 10) imports InstanceNormalization as the ``InstanceNormalization_TRT`` plugin unless
  ``OnnxParserFlag.NATIVE_INSTANCENORM`` (8.6+) is set; a Q/DQ network needs ``BuilderFlag.INT8``.
- **Plugin registry, per process.** Parsing registers the plugins (onnx-tensorrt calls initLibNvInferPlugins);
  otherwise only ``init_libnvinfer_plugins`` does. ``deserialize_cuda_engine`` returns None (and logs an
  error) for a plan that needs a plugin this process has not registered, for another TensorRT version's
  plan, and for bytes that are not a plan.
- **Precision.** The "engine" is ONNX Runtime on the parsed ONNX: with ``BuilderFlag.FP16`` every layer's float
  outputs are rounded through float16, except layers pinned to FP32 (``layer.precision`` with
  ``OBEY_PRECISION_CONSTRAINTS``); INT8 components run their Q/DQ nodes. So an FP16 engine differs from ONNX
  Runtime, and an FP32 one matches it exactly.
- **Timing cache.** A blob that is not a timing cache makes ``create_timing_cache`` log an error and return
  None; one from another TensorRT or GPU makes ``set_timing_cache(..., ignore_mismatch=False)`` return False.
- **Streams.** Copies from and to pinned memory, inferences and event records are queued on their stream and
  run at ``synchronize()``: read a result before synchronizing and it is stale. A copy from pageable memory
  is staged at the call, as the driver does. ``Event.time_since`` raises until both events have completed.
- **Contexts.** pycuda's per-thread context stack: memory, streams, copies and engines need a current context;
  ``detach()`` destroys a context only if it is current or on its creating thread (else it leaks, as pycuda
  does); TensorRT objects and buffers record, when they are destroyed or freed, whether a live context was
  current (``EVENTS``).

"Device memory" is one flat byte array addressed by integers, every copy and tensor access checked to lie
inside one live allocation. ``python -m tests.service.fake_tensorrt`` loads a runtime in a fresh process.
"""

from __future__ import annotations

import json
import sys
import threading
import types
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, shape_inference

MEMORY = np.zeros(256 << 20, np.uint8)  # untouched pages cost nothing; allocations are never reused
_next_free = [4096]  # address 0 stays invalid, as on a GPU
_live: dict[int, int] = {}  # address → bytes of each allocation not yet freed
EVENTS: list[tuple[str, str, bool]] = []  # (what, which, whether a live CUDA context was current)
COPIES: list[tuple[str, int, int]] = []  # ("htod" | "dtoh", device address, bytes) as each copy RUNS
GPU_MS_PER_SAMPLE = 1.5  # fake device time of one inference, per batch item
_clock_ms = [0.0]
PLAN_MAGIC = b"FAKEPLAN"
TIMING_MAGIC = b"FAKETIMING"
SM_COUNT = 8


class Error(Exception):
    pass


# --- pycuda.driver ----------------------------------------------------------------------------------------

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


def _current() -> bool:
    return Context.get_current() is not None


def _require_context(what: str) -> Context:
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
        EVENTS.append(("free", "pinned host memory", _current()))


def pagelocked_empty(count: int, dtype: Any) -> np.ndarray:
    _require_context("cuMemHostAlloc")
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
        self.context = _require_context("cuMemAlloc")
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
        EVENTS.append(("free", "device memory" if usable else "device memory LEAKED", _current()))


def _bytes_at(address: int, nbytes: int) -> np.ndarray:
    """MEMORY[address : address + nbytes], refused unless the span lies inside one live allocation."""
    if not any(start <= address and address + nbytes <= start + size for start, size in _live.items()):
        raise Error(f"{nbytes} bytes at {address} are not inside one live allocation")
    return MEMORY[address : address + nbytes]


def _view(address: int, dtype: np.dtype, count: int) -> np.ndarray:
    return _bytes_at(address, count * dtype.itemsize).view(dtype)


_streams: weakref.WeakValueDictionary[int, Stream] = weakref.WeakValueDictionary()
_next_stream = [0x5000]


class Stream:
    def __init__(self) -> None:
        self.context = _require_context("cuStreamCreate")
        _next_stream[0] += 16
        self.handle = _next_stream[0]  # never 0, the legacy default stream
        self.queue: list[Callable[[], None]] = []
        _streams[self.handle] = self

    def synchronize(self) -> None:
        _require_context("cuStreamSynchronize")
        queue, self.queue = self.queue, []
        for work in queue:
            work()

    def __del__(self) -> None:
        EVENTS.append(("destroy", "stream", _current()))


def memcpy_htod_async(device: DeviceAllocation, host: np.ndarray, stream: Stream) -> None:
    _require_context("cuMemcpyHtoDAsync")
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
    _require_context("cuMemcpyDtoHAsync")
    address = int(device)

    def copy() -> None:
        host.reshape(-1).view(np.uint8)[:] = _bytes_at(address, host.nbytes)
        COPIES.append(("dtoh", address, host.nbytes))

    if _pinned(host) is None:  # pageable: synchronous, after everything queued before it
        stream.synchronize()
        copy()
    else:
        stream.queue.append(copy)


class Event:
    def __init__(self) -> None:
        _require_context("cuEventCreate")
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
        EVENTS.append(("destroy", "event", _current()))


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


# --- tensorrt: logging, plugins, data types ------------------------------------------------------------------

_SEVERITY = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)


class ILogger:
    Severity = _SEVERITY
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = 0, 1, 2, 3, 4

    def __init__(self) -> None: ...

    def log(self, severity: int, message: str) -> None: ...


class Logger(ILogger):
    def __init__(self, min_severity: int = 2) -> None:
        self.min_severity = min_severity
        self.messages: list[tuple[int, str]] = []

    def log(self, severity: int, message: str) -> None:
        self.messages.append((severity, message))


DataType = types.SimpleNamespace(
    FLOAT="float32", HALF="float16", INT8="int8", INT32="int32", INT64="int64", BOOL="bool"
)
_ONNX_TYPES = {
    TensorProto.FLOAT: "float32",
    TensorProto.FLOAT16: "float16",
    TensorProto.INT8: "int8",
    TensorProto.UINT8: "int8",
    TensorProto.INT32: "int32",
    TensorProto.INT64: "int64",
    TensorProto.BOOL: "bool",
}
_FLOATS = ("float32", "float16")
_LAYER_TYPES = (
    "ACTIVATION CAST CONCATENATION CONSTANT CONVOLUTION DEQUANTIZE ELEMENTWISE FILL GATHER MATRIX_MULTIPLY "
    "NORMALIZATION PADDING PLUGIN_V2 QUANTIZE REDUCE RESIZE SELECT SHAPE SHUFFLE SLICE UNARY IDENTITY"
)
LayerType = types.SimpleNamespace(**{name: name for name in _LAYER_TYPES.split(" ")})
_LAYER_OF = {
    "Constant": "CONSTANT", "Shape": "SHAPE", "QuantizeLinear": "QUANTIZE", "DequantizeLinear": "DEQUANTIZE",
    "Cast": "CAST", "Conv": "CONVOLUTION", "Gemm": "MATRIX_MULTIPLY", "MatMul": "MATRIX_MULTIPLY",
    "Add": "ELEMENTWISE", "Sub": "ELEMENTWISE", "Mul": "ELEMENTWISE", "Div": "ELEMENTWISE", "Pow": "ELEMENTWISE",
    "Sin": "UNARY", "Cos": "UNARY", "Exp": "UNARY", "Sqrt": "UNARY", "Sigmoid": "ACTIVATION", "Relu": "ACTIVATION",
    "Clip": "ACTIVATION", "Concat": "CONCATENATION", "Reshape": "SHUFFLE", "Unsqueeze": "SHUFFLE",
    "Squeeze": "SHUFFLE", "Transpose": "SHUFFLE", "Flatten": "SHUFFLE", "Pad": "PADDING", "Slice": "SLICE",
    "Resize": "RESIZE", "ConstantOfShape": "FILL", "Gather": "GATHER", "ReduceMean": "REDUCE",
    "InstanceNormalization": "NORMALIZATION", "Identity": "IDENTITY", "Where": "SELECT",
}  # fmt: skip
PLUGIN_INSTANCE_NORM = "InstanceNormalization_TRT"


def _version(trt: Any) -> tuple[int, int]:
    major, minor = trt.__version__.split(".")[:2]
    return int(major), int(minor)


# --- tensorrt: the network and the parser ----------------------------------------------------------------------


class ITensor:
    def __init__(self, name: str, dtype: str, shape: tuple[int, ...] = (), is_network_input: bool = False) -> None:
        self.name, self.dtype, self.shape, self.is_network_input = name, dtype, shape, is_network_input


class ILayer:
    def __init__(self, name: str, kind: str, inputs: list[ITensor | None], outputs: list[ITensor], node: int | None):
        self.name, self.type, self._inputs, self._outputs, self.node = name, kind, inputs, outputs, node
        self._precision: str | None = None
        self._output_types: dict[int, str] = {}

    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))

    def get_input(self, index: int) -> ITensor | None:
        return self._inputs[index]

    def get_output(self, index: int) -> ITensor:
        return self._outputs[index]

    @property
    def precision(self) -> str:
        return self._precision or "float32"

    @precision.setter
    def precision(self, dtype: str) -> None:
        self._precision = dtype

    @property
    def precision_is_set(self) -> bool:
        return self._precision is not None

    def set_output_type(self, index: int, dtype: str) -> None:
        self._output_types[index] = dtype

    def get_output_type(self, index: int) -> str:
        return self._output_types.get(index, self._outputs[index].dtype)

    def output_type_is_set(self, index: int) -> bool:
        return index in self._output_types


class INetworkDefinition:
    def __init__(self, trt: Any, flags: int) -> None:
        self.trt, self.flags = trt, flags
        self.layers: list[ILayer] = []
        self.inputs: list[ITensor] = []
        self.outputs: list[ITensor] = []
        self.plugins: set[str] = set()
        self.model: onnx.ModelProto | None = None

    num_layers = property(lambda self: len(self.layers))
    num_inputs = property(lambda self: len(self.inputs))
    num_outputs = property(lambda self: len(self.outputs))

    def get_layer(self, index: int) -> ILayer:
        return self.layers[index]

    def get_input(self, index: int) -> ITensor:
        return self.inputs[index]

    def get_output(self, index: int) -> ITensor:
        return self.outputs[index]


def _dims(value: onnx.ValueInfoProto) -> tuple[int, ...]:
    return tuple(dim.dim_value if dim.HasField("dim_value") else -1 for dim in value.type.tensor_type.shape.dim)


class _Flags:
    """set_flag / clear_flag / get_flag, as the parser and the builder config both have them."""

    flags: set[str]

    def set_flag(self, flag: str) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag: str) -> None:
        self.flags.discard(flag)

    def get_flag(self, flag: str) -> bool:
        return flag in self.flags


class OnnxParser(_Flags):
    def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
        self.network, self.logger, self.errors = network, logger, []
        trt = network.trt
        # TensorRT 10 imports InstanceNormalization natively by default; 8.6 only with the flag; older never.
        native = getattr(trt, "OnnxParserFlag", None)
        self.flags = {native.NATIVE_INSTANCENORM} if native and _version(trt) >= (10, 0) else set()

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> str:
        return self.errors[index]

    def _fail(self, message: str) -> bool:
        self.errors.append(message)
        self.logger.log(ILogger.ERROR, message)
        return False

    def parse(self, model: bytes, path: str | None = None) -> bool:
        trt, network = self.network.trt, self.network
        if _version(trt) < (10, 0) and not network.flags & (1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)):
            return self._fail("This version of the ONNX parser only supports TensorRT INetworkDefinitions with an "
                              "explicit batch dimension. Please ensure the network was created using the "
                              "EXPLICIT_BATCH NetworkDefinitionCreationFlag.")  # fmt: skip
        trt._plugin_registry.add(PLUGIN_INSTANCE_NORM)  # ModelImporter calls initLibNvInferPlugins
        try:
            proto = shape_inference.infer_shapes(onnx.load_from_string(model))
        except Exception as error:  # noqa: BLE001
            return self._fail(f"Failed to parse ONNX model: {error}")
        graph = proto.graph
        dtypes = {value.name: _ONNX_TYPES.get(value.type.tensor_type.elem_type, "float32") for value in
                  [*graph.input, *graph.output, *graph.value_info]}  # fmt: skip
        tensors: dict[str, ITensor] = {}
        for value in graph.input:
            tensors[value.name] = ITensor(value.name, dtypes[value.name], _dims(value), is_network_input=True)
            network.inputs.append(tensors[value.name])
        for initializer in graph.initializer:
            tensors[initializer.name] = ITensor(initializer.name, _ONNX_TYPES.get(initializer.data_type, "float32"))
            name = f"(Unnamed Layer* {len(network.layers)}) [Constant]"
            network.layers.append(ILayer(name, LayerType.CONSTANT, [], [tensors[initializer.name]], None))
        native = getattr(getattr(trt, "OnnxParserFlag", None), "NATIVE_INSTANCENORM", None)
        for index, node in enumerate(graph.node):
            if node.op_type == "Resize" and _version(trt) < (8, 5):
                mode = next((attr.s.decode() for attr in node.attribute if attr.name == "mode"), "nearest")
                if mode == "cubic":
                    return self._fail(f"{node.name}: Assertion failed: mode != \"cubic\" && \"This version of "
                                      "TensorRT does not support cubic interpolation!\"")  # fmt: skip
            kind = getattr(LayerType, _LAYER_OF.get(node.op_type, "ELEMENTWISE"))
            if node.op_type == "InstanceNormalization" and (native is None or native not in self.flags):
                kind = LayerType.PLUGIN_V2
                network.plugins.add(PLUGIN_INSTANCE_NORM)
            inputs = [tensors[name] if name else None for name in node.input]
            outputs = [ITensor(name, dtypes.get(name, "float32")) for name in node.output]
            tensors.update((tensor.name, tensor) for tensor in outputs)
            network.layers.append(ILayer(node.name or f"{node.op_type}_{index}", kind, inputs, outputs, index))
        network.outputs = [tensors[value.name] for value in graph.output]
        network.model = proto
        return True


# --- tensorrt: the builder ----------------------------------------------------------------------------------------


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}

    def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - TensorRT's names
        self.shapes[name] = (tuple(min), tuple(opt), tuple(max))


class ITimingCache:
    def __init__(self, trt_version: str, device: str, entries: int) -> None:
        self.trt_version, self.device, self.entries = trt_version, device, entries

    def serialize(self) -> bytes:
        header = {"trt": self.trt_version, "device": self.device, "entries": self.entries}
        return TIMING_MAGIC + json.dumps(header).encode()

    def combine(self, other: ITimingCache, ignore_mismatch: bool) -> bool:
        self.entries += other.entries
        return True


def _device_tag() -> str:
    gpu = Device(0)
    return f"{gpu.name()} {gpu.compute_capability()} {gpu.get_attribute(device_attribute.MULTIPROCESSOR_COUNT)}"


class IBuilderConfig(_Flags):
    def __init__(self, builder: Builder) -> None:
        self.builder = builder
        self.flags = set()
        self.pools: dict[str, int] = {}
        self.profiles: list[IOptimizationProfile] = []
        self.timing_cache: ITimingCache | None = None

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        self.pools[pool] = size

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, blob: bytes) -> ITimingCache | None:
        trt = self.builder.trt
        if not blob:
            return ITimingCache(trt.__version__, _device_tag(), 0)
        try:
            assert blob.startswith(TIMING_MAGIC)
            header = json.loads(blob[len(TIMING_MAGIC) :])
        except (AssertionError, ValueError):
            self.builder.logger.log(ILogger.ERROR, "Serialization assertion magicTagRead == kMAGIC_TAG failed. "
                                    "Magic tag does not match. The timing cache will not be used!")  # fmt: skip
            return None
        return ITimingCache(header["trt"], header["device"], header["entries"])

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        trt = self.builder.trt
        if not ignore_mismatch and (cache.trt_version, cache.device) != (trt.__version__, _device_tag()):
            self.builder.logger.log(ILogger.ERROR, "The provided timing cache was created on another device or "
                                    "TensorRT version")  # fmt: skip
            return False
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self.timing_cache


class Builder:
    def __init__(self, logger: ILogger) -> None:
        self.logger = logger
        self.trt = sys.modules["tensorrt"]
        self.platform_has_fast_fp16 = self.platform_has_fast_int8 = True

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition(self.trt, flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig(self)

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def _error(self, message: str) -> None:
        self.logger.log(ILogger.ERROR, message)

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> bytes | None:
        trt, flags = self.trt, config.flags
        if network.model is None:
            self._error("network has no layers (was the ONNX file parsed?)")
            return None
        if any(layer.type in (LayerType.QUANTIZE, LayerType.DEQUANTIZE) for layer in network.layers) and (
            trt.BuilderFlag.INT8 not in flags
        ):
            self._error("Network contains Q/DQ layers (explicit quantization) but BuilderFlag::kINT8 is not set")
            return None
        for layer in network.layers:
            for index, dtype in layer._output_types.items():
                if (dtype in _FLOATS) != (layer.get_output(index).dtype in _FLOATS):
                    self._error(f"{layer.name}: output {index} is {layer.get_output(index).dtype}, set to {dtype}")
                    return None
        (profile,) = config.profiles or [IOptimizationProfile()]
        for tensor in network.inputs:
            if -1 in tensor.shape and tensor.name not in profile.shapes:
                self._error(f"{tensor.name} has dynamic shape {tensor.shape} but no optimization profile")
                return None
        obey = {trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS, trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS} & flags
        pinned = [layer for layer in network.layers if obey and layer._precision == "float32"]
        precision = "int8" if trt.BuilderFlag.INT8 in flags else "fp16" if trt.BuilderFlag.FP16 in flags else "fp32"
        model = network.model
        if trt.BuilderFlag.FP16 in flags:
            model = _rounded_through_fp16(model, {layer.node for layer in pinned})
        max_batch = max((shapes[2][0] for shapes in profile.shapes.values()), default=1)
        io = _resolved_io(model, profile)
        header = {
            "tensorrt": trt.__version__,
            "plugins": sorted(network.plugins),
            "precision": precision,
            "fp32_layers": [layer.name for layer in pinned],
            "max_batch": max_batch,
            "profile": {name: [list(shape) for shape in shapes] for name, shapes in profile.shapes.items()},
            "io": io,
        }
        if config.timing_cache is not None:
            config.timing_cache.entries += 1
        payload = json.dumps(header).encode()
        return PLAN_MAGIC + len(payload).to_bytes(4, "little") + payload + model.SerializeToString()


def _rounded_through_fp16(model: onnx.ModelProto, pinned_nodes: set[int | None]) -> onnx.ModelProto:
    """The model with every float output of every layer not pinned to FP32 rounded through float16."""
    rounded = onnx.ModelProto()
    rounded.CopyFrom(model)
    graph = rounded.graph
    dtypes = {value.name: value.type.tensor_type.elem_type for value in [*graph.value_info, *graph.output]}
    nodes = []
    for index, node in enumerate(graph.node):
        nodes.append(node)
        if index in pinned_nodes or node.op_type in ("Constant", "Shape", "QuantizeLinear"):
            continue
        for position, name in enumerate(node.output):
            if dtypes.get(name, TensorProto.FLOAT) != TensorProto.FLOAT:
                continue
            node.output[position] = f"{name}__fp32"
            nodes.append(helper.make_node("Cast", [f"{name}__fp32"], [f"{name}__fp16"], to=TensorProto.FLOAT16))
            nodes.append(helper.make_node("Cast", [f"{name}__fp16"], [name], to=TensorProto.FLOAT))
    del graph.node[:]
    graph.node.extend(nodes)
    return rounded


def _resolved_io(model: onnx.ModelProto, profile: IOptimizationProfile) -> list[dict[str, Any]]:
    """Each I/O tensor's name, mode, dtype and shape, with every axis but the batch resolved (by a run at the
    profile's minimum), as TensorRT's own shape inference resolves what ONNX left symbolic."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {
        spec.name: np.zeros(profile.shapes.get(spec.name, ((),) * 3)[0] or [max(1, size) for size in _dims(spec)],
                            np.float32)
        for spec in model.graph.input
    }  # fmt: skip
    outputs = session.run(None, feeds)
    io = [{"name": spec.name, "input": True, "dtype": "float32", "shape": _dims(spec)} for spec in model.graph.input]
    for spec, value in zip(model.graph.output, outputs, strict=True):
        io.append({"name": spec.name, "input": False, "dtype": "float32", "shape": [-1, *value.shape[1:]]})
    return io


# --- tensorrt: the runtime ------------------------------------------------------------------------------------


def read_plan(serialized: bytes) -> tuple[dict[str, Any], bytes]:
    """(header, ONNX bytes) of a fake plan; ValueError for anything else."""
    if not bytes(serialized[: len(PLAN_MAGIC)]) == PLAN_MAGIC:
        raise ValueError("not a fake plan")
    start = len(PLAN_MAGIC) + 4
    size = int.from_bytes(serialized[len(PLAN_MAGIC) : start], "little")
    return json.loads(serialized[start : start + size]), bytes(serialized[start + size :])


class Runtime:
    def __init__(self, logger: ILogger) -> None:
        self.logger = logger
        self.trt = sys.modules["tensorrt"]

    def deserialize_cuda_engine(self, serialized: bytes) -> ICudaEngine | None:
        _require_context("deserializing an engine")
        try:
            header, model = read_plan(serialized)
        except ValueError:
            self.logger.log(ILogger.ERROR, "1: [stdArchiveReader.cpp::StdArchiveReader::32] Error Code 1: "
                            "Serialization (Serialization assertion magicTagRead == kMAGIC_TAG failed.)")  # fmt: skip
            return None
        if header["tensorrt"] != self.trt.__version__:
            self.logger.log(ILogger.ERROR, "The engine plan file is not compatible with this version of TensorRT, "
                            f"expecting library version {self.trt.__version__} got {header['tensorrt']}")  # fmt: skip
            return None
        missing = [name for name in header["plugins"] if name not in self.trt._plugin_registry]
        if missing:
            self.logger.log(ILogger.ERROR, "getPluginCreator could not find plugin: " + ", ".join(missing) +
                            " version: 1; Cannot deserialize plugin since corresponding IPluginCreator not "
                            "found in Plugin Registry")  # fmt: skip
            return None
        return ICudaEngine(self, header, model)

    def __del__(self) -> None:
        EVENTS.append(("destroy", "runtime", _current()))


class ICudaEngine:
    def __init__(self, runtime: Runtime, header: dict[str, Any], model: bytes) -> None:
        self.runtime = runtime  # TensorRT keeps the runtime alive while an engine lives
        self.header = header
        self.max_batch = header["max_batch"]
        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        if header["precision"] != "fp32":  # keep ONNX Runtime from fusing the float16 rounding away
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.io = {spec["name"]: spec for spec in header["io"]}
        self.names = [spec["name"] for spec in header["io"]]

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> str:
        return "input" if self.io[name]["input"] else "output"

    def get_tensor_dtype(self, name: str) -> str:
        return str(self.io[name]["dtype"])

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.io[name]["shape"])

    def create_execution_context(self) -> IExecutionContext:
        _require_context("creating an execution context")
        return IExecutionContext(self)

    def __del__(self) -> None:
        EVENTS.append(("destroy", "engine", _current()))


class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine = engine  # TensorRT keeps the engine alive while a context lives
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.runs = 0
        self.batches: list[int] = []  # the batch of every input shape set, in order

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        """False, as TensorRT answers, for a shape outside the profile."""
        low, _, high = self.engine.header["profile"].get(name, [self.engine.io[name]["shape"]] * 3)
        fits = len(shape) == len(low) and all(a <= size <= b for size, a, b in zip(shape, low, high, strict=True))
        if fits:
            self.shapes[name] = tuple(shape)
            self.batches.append(shape[0])
        return fits

    def set_tensor_address(self, name: str, address: int) -> bool:
        if name not in self.engine.io or address % 256:
            self.engine.runtime.logger.log(ILogger.ERROR, f"setTensorAddress: {name} at {address} is not a 256-byte "
                                           "aligned address of an I/O tensor")  # fmt: skip
            return False
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        _require_context("enqueueV3")
        stream = _streams.get(stream_handle)
        inputs = [name for name in self.engine.names if self.engine.io[name]["input"]]
        if stream is None or any(name not in self.shapes or name not in self.addresses for name in inputs):
            return False
        shapes = {name: self.shapes[name] for name in inputs}
        addresses = dict(self.addresses)  # enqueueV3 reads the addresses now, the memory later
        self.runs += 1
        stream.queue.append(lambda: self._execute(shapes, addresses))
        return True

    def _execute(self, shapes: dict[str, tuple[int, ...]], addresses: dict[str, int]) -> None:
        session = self.engine.session
        feeds = {
            name: _view(addresses[name], np.dtype(np.float32), int(np.prod(shape))).reshape(shape).copy()
            for name, shape in shapes.items()
        }
        outputs = session.run(None, feeds)
        for spec, value in zip(session.get_outputs(), outputs, strict=True):
            _view(addresses[spec.name], np.dtype(np.float32), value.size)[:] = value.reshape(-1)
        _clock_ms[0] += GPU_MS_PER_SAMPLE * next(iter(shapes.values()))[0]

    def __del__(self) -> None:
        EVENTS.append(("destroy", "execution context", _current()))


def make_tensorrt(version: str = "10.3.0") -> types.ModuleType:
    """A fresh tensorrt of ``version`` (its own plugin registry: a new "process")."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    major_minor = tuple(int(part) for part in version.split(".")[:2])
    for name in ("ILogger", "Logger", "Builder", "Runtime", "LayerType", "DataType"):
        setattr(trt, name, globals()[name])
    trt._plugin_registry = set()  # type: ignore[attr-defined]

    def init_libnvinfer_plugins(logger: ILogger, namespace: str) -> bool:
        trt._plugin_registry.add(PLUGIN_INSTANCE_NORM)  # type: ignore[attr-defined]
        return True

    trt.init_libnvinfer_plugins = init_libnvinfer_plugins  # type: ignore[attr-defined]
    trt.OnnxParser = OnnxParser  # type: ignore[attr-defined]
    if major_minor >= (8, 6):
        trt.OnnxParserFlag = types.SimpleNamespace(NATIVE_INSTANCENORM="NATIVE_INSTANCENORM")  # type: ignore[attr-defined]
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)  # type: ignore[attr-defined]
    flags = ["FP16", "INT8", "TF32", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"]
    trt.BuilderFlag = types.SimpleNamespace(**{name: name for name in flags})  # type: ignore[attr-defined]
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")  # type: ignore[attr-defined]
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")  # type: ignore[attr-defined]
    for name, value in vars(DataType).items():
        setattr(trt, {"FLOAT": "float32", "HALF": "float16"}.get(name, name.lower()), value)
    trt.nptype = lambda dtype: {"float32": np.float32, "float16": np.float16, "int32": np.int32}[dtype]  # type: ignore[attr-defined]
    return trt


RUNTIME_MODULES = (
    "xraysr.service.runtimes.tensorrt",
    "xraysr.service.runtimes.trt_buffers",
)


def install(modules: Any, version: str = "10.3.0") -> types.ModuleType:
    """Puts the fakes into ``modules`` (sys.modules, or a monkeypatch's setitem-able view) and returns a freshly
    imported xraysr.service.runtimes.tensorrt bound to them."""
    import importlib

    pycuda, driver = make_pycuda()
    for name, module in (("pycuda", pycuda), ("pycuda.driver", driver), ("tensorrt", make_tensorrt(version))):
        modules[name] = module
    for name in RUNTIME_MODULES:
        sys.modules.pop(name, None)
    return importlib.import_module("xraysr.service.runtimes.tensorrt")


class _PatchedModules:
    def __init__(self, monkeypatch: Any) -> None:
        self.monkeypatch = monkeypatch

    def __setitem__(self, name: str, module: types.ModuleType) -> None:
        self.monkeypatch.setitem(sys.modules, name, module)


def install_for_test(monkeypatch: Any, version: str = "10.3.0") -> types.ModuleType:
    """``install`` through a pytest monkeypatch, so the real modules come back after the test."""
    return install(_PatchedModules(monkeypatch), version)


def uninstall() -> None:
    for name in RUNTIME_MODULES:
        sys.modules.pop(name, None)


_KEPT: list[Any] = []


def main(argv: list[str]) -> int:
    """In a fresh process: load the runtime from a cache another process built, run ``component`` on zeros,
    and print one JSON line (the result's shape and checksum, or the error), then close (unless "no-close")."""
    model_dir, cache_dir, precision, version, component, *options = argv
    if "no-close" in options:  # what happened by the end of the interpreter's exit hooks
        import atexit

        atexit.register(lambda: print(json.dumps({"events at exit": EVENTS})))
    runtime_module = install(sys.modules, version)
    from xraysr.service.manifest import load_manifest

    manifest = load_manifest(Path(model_dir), "int8" if precision == "int8" else "fp32")
    try:
        runtime = runtime_module.TensorRTRuntime(manifest, Path(model_dir), precision, Path(cache_dir))
    except Exception as error:  # noqa: BLE001 - reported to the parent test
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}))
        return 1
    spec = manifest.components[component]
    inputs = {
        tensor.name: np.full([1 if isinstance(size, str) else size for size in tensor.shape], 0.25, np.float32)
        for tensor in spec.inputs
    }
    output = runtime.run(component, inputs)
    if "no-close" not in options:
        runtime.close()
    else:
        _KEPT.append(runtime)  # alive until the interpreter exits, as a CLI command's pipeline is
    print(json.dumps({"shape": list(output.shape), "sum": float(output.sum()), "events": EVENTS}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

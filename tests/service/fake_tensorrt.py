"""Stand-ins for ``tensorrt`` and ``pycuda.driver`` on a CPU that fail the way the real ones do.

By concern, as TensorRT and CUDA divide them (and as service/runtimes/ uses them):

- fake_pycuda.py: the CUDA driver (contexts, device memory, streams, events, copies);
- fake_trt_network.py: TensorRT's logger and types, the network definition and the ONNX parser;
- fake_trt_builder.py: the builder (precision, profiles, timing cache) and the plan it serializes;
- this module: the runtime that loads a plan and runs it on a stream, the ``tensorrt`` module assembled from all
  of them, and ``install``, which puts the fakes where ``import tensorrt`` and ``import pycuda.driver`` find them.

What the runtime models, each because a real-board failure hid behind a fake that did not:

- **Deserializing.** ``deserialize_cuda_engine`` returns None (and logs an error) for a plan that needs a
  plugin this process has not registered, for another TensorRT version's plan, and for bytes that are not a plan.
- **Running.** ``execute_async_v3`` reads the tensor addresses at the call and the device memory when the stream
  runs the work (fake_pycuda.py's streams); a shape outside the profile is refused; each inference costs
  ``GPU_MS_PER_SAMPLE`` per batch item on the device clock that events read.
- **Lifetimes.** The runtime, engines and execution contexts record, when they are destroyed, whether a live
  CUDA context was current (fake_pycuda.EVENTS).

``python -m tests.service.fake_tensorrt`` loads a runtime in a fresh process.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from tests.service.fake_pycuda import (
    EVENTS,
    context_is_current,
    device_view,
    elapse,
    make_pycuda,
    require_context,
    stream_of,
)
from tests.service.fake_trt_builder import Builder, read_plan
from tests.service.fake_trt_network import PLUGIN_INSTANCE_NORM, DataType, ILogger, LayerType, Logger, OnnxParser

GPU_MS_PER_SAMPLE = 1.5  # fake device time of one inference, per batch item


# --- tensorrt: the runtime ------------------------------------------------------------------------------------


class Runtime:
    def __init__(self, logger: ILogger) -> None:
        self.logger = logger
        self.trt = sys.modules["tensorrt"]

    def deserialize_cuda_engine(self, serialized: bytes) -> ICudaEngine | None:
        require_context("deserializing an engine")
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
        EVENTS.append(("destroy", "runtime", context_is_current()))


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
        require_context("creating an execution context")
        return IExecutionContext(self)

    def __del__(self) -> None:
        EVENTS.append(("destroy", "engine", context_is_current()))


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
        require_context("enqueueV3")
        stream = stream_of(stream_handle)
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
            name: device_view(addresses[name], np.dtype(np.float32), int(np.prod(shape))).reshape(shape).copy()
            for name, shape in shapes.items()
        }
        outputs = session.run(None, feeds)
        for spec, value in zip(session.get_outputs(), outputs, strict=True):
            device_view(addresses[spec.name], np.dtype(np.float32), value.size)[:] = value.reshape(-1)
        elapse(GPU_MS_PER_SAMPLE * next(iter(shapes.values()))[0])

    def __del__(self) -> None:
        EVENTS.append(("destroy", "execution context", context_is_current()))


def make_tensorrt(version: str = "10.3.0") -> types.ModuleType:
    """A fresh tensorrt of ``version`` (its own plugin registry: a new "process")."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    major_minor = tuple(int(part) for part in version.split(".")[:2])
    classes = {"ILogger": ILogger, "Logger": Logger, "Builder": Builder, "Runtime": Runtime}
    for name, value in {**classes, "LayerType": LayerType, "DataType": DataType}.items():
        setattr(trt, name, value)
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

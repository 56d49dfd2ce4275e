"""TensorRT's builder, from a parsed network (fake_trt_network.py) to a serialized plan: the second half of
``Builder``/``create_network``/``OnnxParser``/``IBuilderConfig``/``build_serialized_network`` as in TensorRT 8.6 and
10.x, so that service/runtimes/trt_builder.py's real ``build_engine`` runs here.

What is modelled, each because a real-board failure hid behind a fake that did not:

- **Refusals.** A Q/DQ network needs ``BuilderFlag.INT8``; a dynamic input needs an optimization profile; an
  output type set across float and integer is an error.
- **Precision.** The "engine" is ONNX Runtime on the parsed ONNX: with ``BuilderFlag.FP16`` every layer's float
  outputs are rounded through float16, except layers pinned to FP32 (``layer.precision`` with
  ``OBEY_PRECISION_CONSTRAINTS``); INT8 components run their Q/DQ nodes. So an FP16 engine differs from ONNX
  Runtime, and an FP32 one matches it exactly.
- **Timing cache.** A blob that is not a timing cache makes ``create_timing_cache`` log an error and return
  None; one from another TensorRT or GPU makes ``set_timing_cache(..., ignore_mismatch=False)`` return False.

A plan is ``PLAN_MAGIC``, a JSON header (TensorRT version, plugins, precision, profile, I/O) and the ONNX that
fake_tensorrt.py's runtime runs; ``read_plan`` takes one apart.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from tests.service.fake_pycuda import Device, device_attribute
from tests.service.fake_trt_network import Flags, ILogger, INetworkDefinition, LayerType, dims_of

PLAN_MAGIC = b"FAKEPLAN"
TIMING_MAGIC = b"FAKETIMING"
_FLOATS = ("float32", "float16")

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


class IBuilderConfig(Flags):
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
        spec.name: np.zeros(profile.shapes.get(spec.name, ((),) * 3)[0] or [max(1, size) for size in dims_of(spec)],
                            np.float32)
        for spec in model.graph.input
    }  # fmt: skip
    outputs = session.run(None, feeds)
    io = [{"name": spec.name, "input": True, "dtype": "float32", "shape": dims_of(spec)} for spec in model.graph.input]
    for spec, value in zip(model.graph.output, outputs, strict=True):
        io.append({"name": spec.name, "input": False, "dtype": "float32", "shape": [-1, *value.shape[1:]]})
    return io


# --- the plan format -------------------------------------------------------------------------------------------


def read_plan(serialized: bytes) -> tuple[dict[str, Any], bytes]:
    """(header, ONNX bytes) of a fake plan; ValueError for anything else."""
    if not bytes(serialized[: len(PLAN_MAGIC)]) == PLAN_MAGIC:
        raise ValueError("not a fake plan")
    start = len(PLAN_MAGIC) + 4
    size = int.from_bytes(serialized[len(PLAN_MAGIC) : start], "little")
    return json.loads(serialized[start : start + size]), bytes(serialized[start + size :])

"""TensorRT's logging and types, its network definition, and the ONNX parser that fills it: the first half of
``Builder``/``create_network``/``OnnxParser``/``IBuilderConfig``/``build_serialized_network`` as in TensorRT 8.6 and
10.x (fake_trt_builder.py is the second), so that service/runtimes/trt_builder.py's real ``build_engine`` runs here.

What is modelled, each because a real-board failure hid behind a fake that did not:

- **Layers.** The parser makes one layer per ONNX node (plus a constant layer per initializer), with TensorRT's
  layer and tensor API (``layer.precision``, ``set_output_type``, ``tensor.dtype``...).
- **Versions.** TensorRT < 8.5 refuses cubic Resize; TensorRT 8.x (< 10) imports InstanceNormalization as the
  ``InstanceNormalization_TRT`` plugin unless ``OnnxParserFlag.NATIVE_INSTANCENORM`` (8.6+) is set.
- **Plugin registry, per process.** Parsing registers the plugins (onnx-tensorrt calls initLibNvInferPlugins);
  otherwise only ``init_libnvinfer_plugins`` does (fake_tensorrt.py's ``Runtime`` checks the registry).
"""

from __future__ import annotations

import types
from typing import Any

import onnx
from onnx import TensorProto, shape_inference

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


def dims_of(value: onnx.ValueInfoProto) -> tuple[int, ...]:
    """An ONNX value's shape, -1 for each axis ONNX left symbolic (as TensorRT reports a dynamic axis)."""
    return tuple(dim.dim_value if dim.HasField("dim_value") else -1 for dim in value.type.tensor_type.shape.dim)


class Flags:
    """set_flag / clear_flag / get_flag, as the parser and the builder config both have them."""

    flags: set[str]

    def set_flag(self, flag: str) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag: str) -> None:
        self.flags.discard(flag)

    def get_flag(self, flag: str) -> bool:
        return flag in self.flags


class OnnxParser(Flags):
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
            tensors[value.name] = ITensor(value.name, dtypes[value.name], dims_of(value), is_network_input=True)
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

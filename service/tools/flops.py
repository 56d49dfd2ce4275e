"""`xraysr bench --flops`: FLOPs and bytes per stage counted from the ONNX graphs, and what they mean on a
Jetson, from published peaks.

The estimate is a roofline: a stage takes at least max(FLOPs / peak compute, bytes / memory bandwidth). Real
kernels reach a fraction of peak, so a second column assumes a stated efficiency. Neither is a measurement;
docs/BENCHMARKS.md prints them beside what was measured. Needs the ``onnx`` package (the train extra).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from xraysr.service.manifest import Manifest

# Multiply-add = 2 FLOPs. Ops not listed cost one FLOP per output element.
_PER_ELEMENT = {
    "GroupNormalization": 8,
    "InstanceNormalization": 8,
    "Sigmoid": 4,
    "Softmax": 5,
    "Exp": 4,
    "Resize": 32,
    "Sin": 4,
    "Cos": 4,
}
_FREE = {
    "Reshape",
    "Transpose",
    "Shape",
    "Gather",
    "Unsqueeze",
    "Squeeze",
    "Concat",
    "Slice",
    "Constant",
    "Identity",
    "Cast",
    "Flatten",
    "Expand",
    "ConstantOfShape",
    "Range",
    "DepthToSpace",
    "SpaceToDepth",
}


@dataclass(frozen=True)
class Device:
    """Published peaks (dense, no structured sparsity), and the efficiency the second estimate assumes."""

    name: str
    peak_flops: dict[str, float]  # precision → operations per second
    bandwidth: float  # bytes per second
    source: str
    efficiency: float = 0.25


DEVICES = (
    Device(
        "Jetson Orin Nano 8GB (15 W)",
        # fp32 on the CUDA cores (1024 × 2 × 625 MHz); fp16/int8 on the tensor cores, dense.
        {"fp32": 1.28e12, "fp16": 10e12, "int8": 20e12},
        68e9,
        "NVIDIA: 40 INT8 TOPS sparse (20 dense), 1024 CUDA cores + 32 tensor cores, 68 GB/s LPDDR5",
    ),
    Device(
        "Jetson Nano 4GB (10 W)",
        {"fp32": 236e9, "fp16": 472e9},  # 128 × 2 × 921 MHz; Maxwell, compute 5.3: no INT8 in TensorRT
        25.6e9,
        "NVIDIA: 472 GFLOPS FP16, 128 Maxwell CUDA cores, 25.6 GB/s LPDDR4",
    ),
)
BYTES_PER_VALUE = {"fp32": 4, "fp16": 2, "int8": 1}


@dataclass(frozen=True)
class GraphCost:
    flops: int
    weight_values: int
    activation_values: int

    def bytes(self, precision: str) -> int:
        # Weights are read once; every activation is written once and read once.
        return BYTES_PER_VALUE[precision] * (self.weight_values + 2 * self.activation_values)


def _runtime_shapes(model, batch: int) -> dict[str, list[int]]:
    """The shape of every value in one real run: ONNX shape inference loses dimensions after the dynamic
    reshapes of GroupNorm, a run of the graph never does."""
    import numpy as np
    import onnx

    from xraysr.service.runtimes.onnxruntime import create_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {output.name for output in probe.graph.output}
    for node in probe.graph.node:
        for name in node.output:
            if name and name not in known:
                probe.graph.output.append(onnx.ValueInfoProto(name=name))
                known.add(name)
    session = create_session(probe.SerializeToString())
    feeds = {}
    for tensor in session.get_inputs():
        shape = [batch if not isinstance(dim, int) else dim for dim in tensor.shape]
        feeds[tensor.name] = np.zeros(shape, dtype=np.float32)
    names = [output.name for output in session.get_outputs()]
    return {name: list(value.shape) for name, value in zip(names, session.run(names, feeds), strict=True)}


def graph_cost(path: Path, batch: int = 1) -> GraphCost:
    """FLOPs and value counts of one run of an ONNX graph, its dynamic batch axis fixed to ``batch``."""
    try:
        import onnx
    except ImportError as error:
        raise ValueError("xraysr bench --flops reads ONNX graphs with the onnx package: pip install onnx") from error
    model = onnx.load(str(path))
    shapes = _runtime_shapes(model, batch)
    initializers = {t.name: list(t.dims) for t in model.graph.initializer}
    flops = activations = 0
    for node in model.graph.node:
        if node.op_type in _FREE:
            continue
        elements = math.prod(shapes.get(node.output[0], [0]))
        activations += elements
        if node.op_type == "Conv":
            weight = initializers.get(node.input[1]) or shapes.get(node.input[1], [])
            flops += 2 * elements * math.prod(weight[1:])  # per output: Cin/groups × kh × kw multiply-adds
        elif node.op_type in ("Gemm", "MatMul"):
            left = shapes.get(node.input[0]) or initializers.get(node.input[0], [])
            flops += 2 * elements * (left[-1] if left else 0)
        else:
            flops += elements * _PER_ELEMENT.get(node.op_type, 1)
    weights = sum(math.prod(dims) for dims in initializers.values())
    return GraphCost(flops=flops, weight_values=weights, activation_values=activations)


def estimate_table(manifest: Manifest, model_dir: Path, steps: int) -> str:
    """Markdown: per stage FLOPs and bytes, then per device and precision the estimated latency."""
    costs = {name: graph_cost(model_dir / component.path) for name, component in manifest.components.items()}
    runs = {"encoder": 1, "unet": steps, "decoder": 1}
    lines = [
        f"FLOPs counted from the ONNX graphs of {manifest.model} {manifest.version}, batch 1, {steps} steps "
        "(multiply-add = 2).",
        "",
        "| stage | runs | GFLOPs per run | GFLOPs total | MB moved per run (fp32) |",
        "|---|---|---|---|---|",
    ]
    for name, cost in costs.items():
        lines.append(
            f"| {name} | {runs[name]} | {cost.flops / 1e9:.3f} | {cost.flops * runs[name] / 1e9:.2f} | "
            f"{cost.bytes('fp32') / 1e6:.1f} |"
        )
    lines += ["", "| device | precision | roofline bound (ms) | at the assumed efficiency (ms) |", "|---|---|---|---|"]
    for device in DEVICES:
        for precision, peak in device.peak_flops.items():
            bound = sum(
                runs[name] * max(cost.flops / peak, cost.bytes(precision) / device.bandwidth)
                for name, cost in costs.items()
            )
            lines.append(
                f"| {device.name} | {precision} | {bound * 1e3:.1f} | "
                f"{bound / device.efficiency * 1e3:.1f} ({device.efficiency:.0%} of peak) |"
            )
    lines += ["", *(f"- {device.name}: {device.source}." for device in DEVICES)]
    return "\n".join(lines) + "\n"

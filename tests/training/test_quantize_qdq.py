"""training/quantize_qdq.py: float exclusions stay float, and the output difference of an INT8 file from its FP32
one, PSNR peak the FP32 outputs' range."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from xraysr.training.quantize_qdq import output_difference, quantize_component, unet_float_nodes


def test_excluded_unet_nodes_stay_float(tiny_engine_dir: Path, tmp_path: Path) -> None:
    unet = tiny_engine_dir / "unet.onnx"
    float_parts = unet_float_nodes(unet)
    assert len(float_parts["stem"]) == len(float_parts["head"]) == 1 and float_parts["time_mlp"]
    excluded = [node for nodes in float_parts.values() for node in nodes]
    rng = np.random.default_rng(0)
    feeds = [
        {
            "noisy_latent": rng.standard_normal((1, 16, 64, 64), np.float32),
            "timestep": np.full((1,), timestep, np.float32),
            "lr_latent": rng.standard_normal((1, 16, 64, 64), np.float32),
        }
        for timestep in (999.0, 500.0)
    ]
    quantize_component(unet, tmp_path / "unet.int8.onnx", feeds, excluded)
    nodes = onnx.load(str(tmp_path / "unet.int8.onnx")).graph.node
    dequantized = {output for node in nodes if node.op_type == "DequantizeLinear" for output in node.output}
    by_name = {node.name: node for node in nodes}
    for name in excluded:
        assert not set(by_name[name].input) & dequantized, f"{name} should read float tensors"
    convs = [node for node in nodes if node.op_type == "Conv" and node.name not in excluded]
    assert convs and all(set(node.input[:2]) <= dequantized for node in convs)


def _one_op_model(path: Path, node: onnx.NodeProto, initializers: list[onnx.TensorProto]) -> Path:
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [node], "g", [value("x", TensorProto.FLOAT, [4])], [value("y", TensorProto.FLOAT, [4])], initializers
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_output_difference_measures_against_the_fp32_range(tmp_path: Path) -> None:
    same = _one_op_model(tmp_path / "same.onnx", helper.make_node("Identity", ["x"], ["y"]), [])
    half = helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])
    shifted = _one_op_model(tmp_path / "shifted.onnx", helper.make_node("Add", ["x", "half"], ["y"]), [half])
    feeds = [{"x": np.array([0.0, 1.0, 2.0, 3.0], np.float32)}, {"x": np.array([1.0, 1.0, 1.0, 1.0], np.float32)}]
    assert output_difference(same, same, feeds) == {"max_abs": 0.0, "mean_abs": 0.0, "psnr_db": math.inf}
    # Every output 0.5 off (MSE 0.25), the FP32 outputs spanning [0, 3]: 10·log10(3² / 0.25) dB.
    difference = output_difference(same, shifted, feeds)
    assert (difference["max_abs"], difference["mean_abs"]) == (0.5, 0.5)
    assert difference["psnr_db"] == pytest.approx(10 * math.log10(9 / 0.25), abs=1e-12)

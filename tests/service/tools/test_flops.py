"""service/tools/flops.py: FLOPs counted from real ONNX graphs against convolution arithmetic and torch's counter."""

from __future__ import annotations

from pathlib import Path

import pytest

from xraysr.service.manifest import load_manifest
from xraysr.service.tools.flops import DEVICES, estimate_table, graph_cost

onnx = pytest.importorskip("onnx", reason="counting FLOPs reads ONNX graphs with the onnx package (train extra)")
torch = pytest.importorskip("torch", reason="the cross-check uses torch's FlopCounterMode (train extra)")


def test_a_single_convolution_costs_what_arithmetic_says(tmp_path: Path) -> None:
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    path = tmp_path / "conv.onnx"
    torch.onnx.export(
        conv,
        (torch.zeros(1, 3, 16, 16),),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        dynamo=False,
    )
    cost = graph_cost(path)
    assert cost.flops == 2 * 8 * 16 * 16 * 3 * 3 * 3
    assert cost.weight_values == 8 * 3 * 3 * 3 + 8
    assert cost.activation_values == 8 * 16 * 16
    assert graph_cost(path, batch=2).flops == 2 * cost.flops


def test_unet_flops_agree_with_torch_and_the_table_covers_every_device(
    tiny_engine_dir: Path, tiny_checkpoint: Path
) -> None:
    from xraysr.training.pipeline import TorchPipeline
    from xraysr.training.unet_lite import flops_per_step

    manifest = load_manifest(tiny_engine_dir)
    counted = graph_cost(tiny_engine_dir / "unet.onnx").flops
    reference = flops_per_step(TorchPipeline.from_checkpoint(tiny_checkpoint).unet, 64)
    # torch counts convolutions and matmuls only; the graph count adds norms and activations on top.
    assert reference <= counted <= 1.15 * reference
    table = estimate_table(manifest, tiny_engine_dir, steps=25)
    assert "| unet | 25 |" in table
    for device in DEVICES:
        for precision in device.peak_flops:
            assert f"| {device.name} | {precision} |" in table
    assert "| Jetson Nano 4GB (10 W) | int8 |" not in table  # no INT8 in TensorRT on compute 5.3

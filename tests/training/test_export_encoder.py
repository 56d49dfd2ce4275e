"""training/export.py's encoder: the bicubic upsampling as two constant MatMuls, so TensorRT 8.2 (the original
Jetson Nano) can build it, where it refuses a cubic Resize."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from torch.nn import functional as F

from xraysr.training.export import bicubic_matrix

SHIPPED = Path(__file__).resolve().parents[2] / "engines" / "cxr-default"


@pytest.mark.parametrize(("in_size", "factor"), [(64, 4), (32, 2), (5, 3)])
def test_the_matrix_form_is_torchs_bicubic(in_size: int, factor: int) -> None:
    generator = torch.Generator().manual_seed(in_size)
    # Values past [-1, 1] too: the border taps and the overshoot must match, not only the interior.
    image = torch.randn(3, 1, in_size, in_size, generator=generator) * 2
    upsample = bicubic_matrix(in_size, in_size * factor)
    assert upsample.shape == (in_size * factor, in_size) and upsample.dtype == torch.float32
    expected = F.interpolate(image, scale_factor=factor, mode="bicubic", align_corners=False)
    assert (upsample @ image @ upsample.T - expected).abs().max() < 1e-5


def test_the_matrix_weights_are_keys_cubic_with_clamped_borders() -> None:
    upsample = bicubic_matrix(64, 256).double()
    torch.testing.assert_close(upsample.sum(dim=1), torch.ones(256, dtype=torch.float64))  # rows sum to 1
    # Output pixel 2 has its centre at source 0.25 * 2.5 - 0.5 = 0.125, between inputs 0 and 1; its far-left tap
    # (input -1) is clamped onto input 0. Keys' weights at distances 1.125, 0.125, 0.875, 1.875 with a = -0.75.
    a = -0.75

    def near(d: float) -> float:
        return (a + 2) * d**3 - (a + 3) * d**2 + 1

    def far(d: float) -> float:
        return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a

    expected = torch.zeros(64, dtype=torch.float64)
    expected[0] = far(1.125) + near(0.125)
    expected[1], expected[2] = near(0.875), far(1.875)
    torch.testing.assert_close(upsample[2], expected, rtol=0, atol=1e-7)


def _ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_the_exported_encoder_has_no_resize(tiny_engine_dir: Path) -> None:
    ops = _ops(tiny_engine_dir / "encoder.onnx")
    assert "Resize" not in ops and "MatMul" in ops


def test_no_shipped_graph_has_a_cubic_resize() -> None:
    files = sorted(SHIPPED.glob("*.onnx"))
    if not files:
        pytest.skip(f"no shipped model at {SHIPPED}")
    assert "Resize" not in _ops(SHIPPED / "encoder.onnx")
    for path in files:
        for node in onnx.load(str(path)).graph.node:
            modes = [attribute.s for attribute in node.attribute if attribute.name == "mode"]
            assert not (node.op_type == "Resize" and b"cubic" in modes), f"{path.name}: {node.name}"

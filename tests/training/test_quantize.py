"""training/quantize.py: symmetric INT8 QDQ files, manifest.int8.json the service loads, the step graph quantized
with the UNet's plan, each component's precision, report (the float exclusions themselves: test_quantize_qdq.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from xraysr.service.engine import load_pipeline
from xraysr.service.manifest import load_manifest, sha256_of
from xraysr.service.settings import Settings
from xraysr.training.quantize import quantize_engines
from xraysr.training.quantize_qdq import FLOAT_UNET_PARTS, unet_float_nodes


@pytest.fixture(scope="module")
def quantized(
    tiny_step_engine_dir: Path, tiny_cxr_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict]:
    """A copy of the tiny engine as export writes it by default (with unet_step; never the shared fixture itself)
    quantized on its 4 train images."""
    engines = tmp_path_factory.mktemp("quantized") / "tiny"
    shutil.copytree(tiny_step_engine_dir, engines)
    report = quantize_engines(engines, tiny_cxr_root, engines.parent / "report", calib_images=4)
    return engines, report


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}


def test_the_unet_is_symmetric_int8_qdq(quantized: tuple[Path, dict]) -> None:
    engines, report = quantized
    assert report["precision"]["unet"] == "int8"
    for name, kind in report["precision"].items():
        path = engines / (f"{name}.int8.onnx" if kind == "int8" else f"{name}.onnx")
        assert path.is_file()
        if kind == "fp32":
            continue
        model = onnx.load(str(path))
        ops = {node.op_type for node in model.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        initializers = _initializers(model)
        zero_points = [
            initializers[node.input[2]]
            for node in model.graph.node
            if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2
        ]
        assert zero_points, "every Q/DQ carries a zero point"
        assert all(point.dtype == np.int8 and not point.any() for point in zero_points)


def test_the_int8_manifest_verifies_and_the_service_serves_it(quantized: tuple[Path, dict]) -> None:
    engines, report = quantized
    manifest = load_manifest(engines, "int8")  # every sha256 checked
    assert manifest.precision == "int8"
    assert load_manifest(engines).precision == "fp32"  # manifest.json is untouched
    for name, component in manifest.components.items():
        expected = f"{name}.int8.onnx" if report["precision"][name] == "int8" else f"{name}.onnx"
        assert component.path == expected
        assert component.sha256 == sha256_of(engines / expected)
    assert manifest.provenance["int8_components"].split(",")[0] in ("encoder", "unet")

    settings = Settings(engines_dir=engines.parent, model=engines.name, precision="int8")
    pipeline = load_pipeline(settings, warm_up=False)
    assert pipeline.manifest.precision == "int8"
    result = pipeline.upscale(np.full((64, 64), 128, np.uint8), steps=manifest.sampler.min_steps, seed=0)
    assert result.image.shape == (256, 256) and result.image.dtype == np.uint8


def test_the_report_has_components_sensitivity_and_test_scores(quantized: tuple[Path, dict]) -> None:
    engines, report = quantized
    assert set(report) == {
        "precision", "unet_variant", "components", "sensitivity", "step_graph", "test", "files", "settings"
    }
    variants = {"encoder", "decoder", "unet", "unet_float_stem_head_time_mlp"}
    assert set(report["components"]) == variants
    assert set(report["sensitivity"]) == variants | {"fp32"}
    for difference in report["components"].values():
        assert set(difference) == {"max_abs", "mean_abs", "psnr_db"}
    assert set(report["test"]) == {"split", "images", "fp32", "int8", "bicubic", "fp32_vs_int8_psnr_db"}
    assert (report["test"]["split"], report["test"]["images"]) == ("test", 2)
    assert set(report["test"]["int8"]) == {"psnr", "ssim"}
    assert report["settings"]["calib_images"] == 4
    assert (engines.parent / "report" / "quantize_report.json").is_file()
    markdown = (engines.parent / "report" / "quantize_report.md").read_text()
    assert markdown.startswith("## INT8 quantization") and "Step graph (unet_step, the UNet's plan" in markdown


def _qdq_nodes(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """(the Conv/Gemm nodes that read a DequantizeLinear output, those that read float only), in graph order."""
    dequantized = {output for node in model.graph.node if node.op_type == "DequantizeLinear" for output in node.output}
    arithmetic = [node for node in model.graph.node if node.op_type in ("Conv", "Gemm")]
    return (
        [node.name for node in arithmetic if set(node.input[:2]) & dequantized],
        [node.name for node in arithmetic if not set(node.input[:2]) & dequantized],
    )


def _activation_scales(model: onnx.ModelProto) -> list[float]:
    """The scales of the QuantizeLinear nodes (activations; weights are stored already quantized)."""
    initializers = _initializers(model)
    return sorted(float(initializers[node.input[1]]) for node in model.graph.node if node.op_type == "QuantizeLinear")


def test_the_step_graph_is_quantized_with_the_unets_plan(quantized: tuple[Path, dict]) -> None:
    engines, report = quantized
    manifest = load_manifest(engines, "int8")
    assert list(manifest.components) == ["encoder", "unet", "decoder", "unet_step"]
    assert manifest.components["unet_step"].path == "unet_step.int8.onnx"
    assert report["precision"]["unet_step"] == "int8"

    unet = onnx.load(str(engines / "unet.int8.onnx"))
    step = onnx.load(str(engines / "unet_step.int8.onnx"))
    unet_quantized, unet_float = _qdq_nodes(unet)
    step_quantized, step_float = _qdq_nodes(step)
    # The same Conv/Gemm nodes kept float (the step graph's names carry the /unet prefix of its wrapper).
    assert (len(step_quantized), len(step_float)) == (len(unet_quantized), len(unet_float))
    assert len(unet_float) == len(report["sensitivity"][report["unet_variant"]]["float_nodes"])
    parts = unet_float_nodes(engines / "unet_step.onnx")
    expected_float = [node for part in FLOAT_UNET_PARTS for node in parts[part]] if unet_float else []
    assert sorted(step_float) == sorted(expected_float) and report["step_graph"]["float_nodes"] == expected_float
    # The same calibration steps give the same activation ranges, so the same INT8 scales.
    np.testing.assert_allclose(_activation_scales(step), _activation_scales(unet), rtol=1e-5)
    # And it computes what the host loop does from the INT8 UNet, up to float rounding in the update.
    # The same QDQ arithmetic in both: they differ only where a value sits on a rounding tie and one quantization
    # step flips (seen: 1e-6 run alone, 0.006 in a full run, as float summation order varies). The step's output
    # is a latent sample of order 1, so a wrong update (swapped alphas, another prediction type) stays far above.
    assert report["step_graph"]["max_abs_vs_int8_unet_host_update"] < 0.02
    assert report["step_graph"]["output_vs_fp32"]["psnr_db"] > 20


def test_each_component_records_its_precision(quantized: tuple[Path, dict]) -> None:
    engines, report = quantized
    assert {component.precision for component in load_manifest(engines).components.values()} == {"fp32"}
    manifest = load_manifest(engines, "int8")
    for name, component in manifest.components.items():
        ops = {node.op_type for node in onnx.load(str(engines / component.path)).graph.node}
        assert component.precision == ("int8" if "QuantizeLinear" in ops else "fp32"), name
        assert component.precision == report["precision"][name]
    kinds = {component.precision for component in manifest.components.values()}
    assert manifest.provenance["int8_components"] == ",".join(
        name for name, component in manifest.components.items() if component.precision == "int8"
    )
    assert "int8" in kinds


def test_a_model_without_a_step_graph_quantizes_without_one(
    tiny_engine_dir: Path, tiny_cxr_root: Path, tmp_path: Path
) -> None:
    engines = tmp_path / "tiny"
    shutil.copytree(tiny_engine_dir, engines)
    (engines / "unet_step.int8.onnx").write_bytes(b"an earlier run's file")
    report = quantize_engines(engines, tiny_cxr_root, tmp_path / "report", calib_images=1)
    assert report["step_graph"] is None and "unet_step" not in report["precision"]
    assert "unet_step" not in load_manifest(engines, "int8").components
    assert not (engines / "unet_step.int8.onnx").exists()

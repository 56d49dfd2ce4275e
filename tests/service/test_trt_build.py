"""The real ``build_engine`` (service/runtimes/trt_builder.py) against the fake TensorRT builder: plugins and the
parser's InstanceNorm flag, precision per component, FP32 pinning, the timing cache, and per-component reports."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from xraysr.service.manifest import load_manifest, read_manifest, sha256_of, write_manifest
from xraysr.service.runtimes.trt_build import (
    Device,
    EngineBuildError,
    build_all,
    default_cache_dir,
    sidecar_path,
    timing_cache_path,
)
from xraysr.service.runtimes.trt_builder import build_engine
from xraysr.service.runtimes.trt_precision import SCHEDULE_INPUTS, PinnedLayers

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "engines" / "cxr-default"


def fake_device(version: str) -> Device:
    """What current_device() reports on the fake GPU."""
    return Device(name="Fake Orin", compute_capability="8.7", tensorrt_version=version, sm_count=8)


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[ModuleType]:
    """The fake TensorRT installed; yields its builder's module, whose plans and timing caches these tests read."""
    from tests.service import fake_tensorrt, fake_trt_builder

    fake_tensorrt.install_for_test(monkeypatch, getattr(request, "param", "10.3.0"))
    yield fake_trt_builder
    fake_tensorrt.uninstall()


def plan_header(fakes: ModuleType, plan: bytes | Path) -> dict[str, object]:
    header, _ = fakes.read_plan(plan.read_bytes() if isinstance(plan, Path) else plan)
    return header  # type: ignore[no-any-return]


# --- plugins ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fakes", "plugins"),
    [("8.5.3", ["InstanceNormalization_TRT"]), ("8.6.1", []), ("10.3.0", [])],
    indirect=["fakes"],
    ids=["8.5-no-parser-flag", "8.6-flag-set", "10.3-native-default"],
)
def test_instance_norm_is_imported_natively_where_the_parser_allows(fakes: ModuleType, plugins: list[str]) -> None:
    plan = build_engine(DEFAULT_MODEL / "decoder.onnx", "fp32", 1, 64)
    assert plan_header(fakes, plan)["plugins"] == plugins


# --- precision per component ------------------------------------------------------------------------------------


def test_a_q_dq_file_builds_only_with_the_int8_flag(fakes: ModuleType) -> None:
    with pytest.raises(RuntimeError, match="TensorRT failed to build unet.int8.onnx at fp32: .*Q/DQ"):
        build_engine(DEFAULT_MODEL / "unet.int8.onnx", "fp32", 1, 64)
    assert plan_header(fakes, build_engine(DEFAULT_MODEL / "unet.int8.onnx", "int8", 1, 64))["precision"] == "int8"


def test_an_int8_model_builds_its_float_components_at_fp32(
    fakes: ModuleType, model_with_int8: Path, tmp_path: Path
) -> None:
    _, reports = build_all(model_with_int8, tmp_path / "cache", "int8", fake_device("10.3.0"), 64, 1)
    built = {report.component: plan_header(fakes, report.plan)["precision"] for report in reports}
    # What `xraysr quantize` measured: the UNet INT8, the encoder and decoder (the image's precision) FP32.
    assert built == {"encoder": "fp32", "unet": "int8", "decoder": "fp32"}
    for report in reports:
        assert json.loads(sidecar_path(report.plan).read_text())["precision"] == built[report.component]


# --- FP32 pinning -----------------------------------------------------------------------------------------------


def test_the_time_embedding_is_pinned_to_fp32_in_fp16_and_int8_builds(fakes: ModuleType) -> None:
    fp16 = plan_header(fakes, build_engine(DEFAULT_MODEL / "unet.onnx", "fp16", 1, 64))["fp32_layers"]
    assert isinstance(fp16, list)
    # The angles t·freq, their sin/cos, the time MLP, and each block's projection of the embedding.
    for layer in ("/Mul", "/Sin", "/Cos", "/Concat", "/time_mlp/time_mlp.0/Gemm", "/time_mlp/time_mlp.2/Gemm"):
        assert layer in fp16
    assert "/down_blocks.0.0/embed/Gemm" in fp16
    # Nothing that touches a feature map.
    assert not [name for name in fp16 if "Conv" in name or "norm" in name or name.startswith("/stem")]
    int8 = plan_header(fakes, build_engine(DEFAULT_MODEL / "unet.int8.onnx", "int8", 1, 64))["fp32_layers"]
    assert {"/Sin", "/Cos", "/Mul"} <= set(int8)  # type: ignore[arg-type]
    assert plan_header(fakes, build_engine(DEFAULT_MODEL / "unet.onnx", "fp32", 1, 64))["fp32_layers"] == []


def _downstream_of(model: onnx.ModelProto, sources: frozenset[str]) -> set[str]:
    """Names of the nodes that read, directly or not, any of ``sources``: an independent walk of the ONNX graph."""
    reached, names = set(sources), set()
    for node in model.graph.node:
        if reached & set(node.input):
            reached.update(node.output)
            names.add(node.name)
    return names


def test_the_step_graphs_ddim_update_is_pinned_to_fp32(fakes: ModuleType, tiny_step_engine_dir: Path) -> None:
    path = tiny_step_engine_dir / "unet_step.onnx"
    pinned = plan_header(fakes, build_engine(path, "fp16", 1, 64))["fp32_layers"]
    assert isinstance(pinned, list)
    update = _downstream_of(onnx.load(path), SCHEDULE_INPUTS)
    casts = {node.name for node in onnx.load(path).graph.node if node.op_type in ("Shape", "Cast", "Constant")}
    assert update - casts and update - casts <= set(pinned)
    (last,) = [node.name for node in onnx.load(path).graph.node if "next_sample" in node.output]
    assert last in pinned  # the update's final sum, which is the step's output
    assert not [name for name in update if name.startswith("/unet/")]  # the UNet never reads the alphas


def _unet_error_at_t_999(fakes: ModuleType, plan: bytes) -> float:
    """Largest |FP16 engine − FP32 ONNX Runtime| of the UNet's prediction at timestep 999."""
    _, model = fakes.read_plan(plan)
    rng = np.random.default_rng(0)
    feeds = {
        "noisy_latent": rng.standard_normal((1, 16, 64, 64)).astype(np.float32),
        "timestep": np.full((1,), 999.0, np.float32),
        "lr_latent": rng.standard_normal((1, 16, 64, 64)).astype(np.float32),
    }
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    (engine,) = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"]).run(None, feeds)
    (reference,) = ort.InferenceSession(str(DEFAULT_MODEL / "unet.onnx"), providers=["CPUExecutionProvider"]).run(
        None, feeds
    )
    return float(np.abs(engine - reference).max())


def test_pinning_is_what_keeps_the_fp16_unet_close_at_t_999(fakes: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    pinned = _unet_error_at_t_999(fakes, build_engine(DEFAULT_MODEL / "unet.onnx", "fp16", 1, 64))
    monkeypatch.setattr("xraysr.service.runtimes.trt_builder.pin_fp32_layers", lambda trt, network: PinnedLayers())
    unpinned = _unet_error_at_t_999(fakes, build_engine(DEFAULT_MODEL / "unet.onnx", "fp16", 1, 64))
    # FP16 angles near 999 rad are 0.5 rad apart: the unpinned embedding is a different timestep's.
    assert unpinned > 1.5 * pinned, (pinned, unpinned)  # measured: 0.0005 pinned, 0.0013 not


# --- timing cache -----------------------------------------------------------------------------------------------


def test_the_timing_cache_is_written_then_reused(fakes: ModuleType, tmp_path: Path) -> None:
    cache = timing_cache_path(tmp_path, fake_device("10.3.0"))
    build_engine(DEFAULT_MODEL / "decoder.onnx", "fp16", 1, 64, cache)
    build_engine(DEFAULT_MODEL / "encoder.onnx", "fp16", 1, 64, cache)
    assert json.loads(cache.read_bytes()[len(fakes.TIMING_MAGIC) :])["entries"] == 2


OTHER_TENSORRT = json.dumps({"trt": "8.6.1", "device": "Fake Orin (8, 7) 8", "entries": 5}).encode()


@pytest.mark.parametrize(
    "blob",
    [b"\x00garbage", b"FAKETIMING" + OTHER_TENSORRT],
    ids=["corrupt", "other-tensorrt"],
)
def test_an_unusable_timing_cache_is_discarded_and_rebuilt(
    fakes: ModuleType, tmp_path: Path, blob: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "timing.cache"
    cache.write_bytes(blob)
    with caplog.at_level(logging.WARNING):
        plan = build_engine(DEFAULT_MODEL / "decoder.onnx", "fp16", 1, 64, cache)
    assert plan_header(fakes, plan)["precision"] == "fp16"
    assert f"discarding timing cache {cache} (corrupt, or written by another TensorRT or GPU)" in caplog.text
    assert json.loads(cache.read_bytes()[len(fakes.TIMING_MAGIC) :]) == {
        "trt": "10.3.0",
        "device": "Fake Orin (8, 7) 8",
        "entries": 1,
    }


# --- one report per component -----------------------------------------------------------------------------------


def _cubic_encoder() -> onnx.ModelProto:
    """An encoder with the manifest's signature whose first node is a cubic Resize (the shipped encoder's bicubic
    before it became two constant MatMuls), which TensorRT's ONNX parser refuses below 8.5."""
    from onnx import TensorProto, helper

    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1.0, 1.0, 1.0, 1.0])
    weight = helper.make_tensor("weight", TensorProto.FLOAT, [16, 1, 1, 1], [1.0] * 16)
    nodes = [
        helper.make_node("Resize", ["lr_image", "", "scales"], ["resized"], name="/resize/Resize", mode="cubic"),
        helper.make_node("Conv", ["resized", "weight"], ["lr_latent"], name="/proj/Conv"),
    ]
    graph = helper.make_graph(
        nodes,
        "cubic_encoder",
        [helper.make_tensor_value_info("lr_image", TensorProto.FLOAT, ["batch", 1, 64, 64])],
        [helper.make_tensor_value_info("lr_latent", TensorProto.FLOAT, ["batch", 16, 64, 64])],
        [scales, weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture
def cubic_encoder_model(tmp_path: Path) -> Path:
    """The default model with its encoder.onnx replaced by ``_cubic_encoder()`` and manifest.json's checksum for it
    rewritten: an fp32 model whose encoder, alone of its components, TensorRT < 8.5 cannot parse."""
    model_dir = tmp_path / "cubic" / "cxr-cubic"
    model_dir.mkdir(parents=True)
    for file in DEFAULT_MODEL.glob("*.onnx"):
        if file.name != "encoder.onnx":
            (model_dir / file.name).symlink_to(file)
    onnx.save(_cubic_encoder(), model_dir / "encoder.onnx")
    shipped = read_manifest(DEFAULT_MODEL)
    components = dict(shipped.components)
    components["encoder"] = components["encoder"].model_copy(update={"sha256": sha256_of(model_dir / "encoder.onnx")})
    write_manifest(shipped.model_copy(update={"components": components}), model_dir)
    load_manifest(model_dir)  # every checksum verifies: a failure below is TensorRT's, not the manifest's
    return model_dir


@pytest.mark.parametrize("fakes", ["8.4.3"], indirect=True)
def test_a_component_that_fails_is_reported_and_the_others_still_build(
    fakes: ModuleType, cubic_encoder_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # TensorRT < 8.5 (the original Nano's 8.2) has no cubic Resize, which this model's encoder graph uses.
    with caplog.at_level(logging.INFO), pytest.raises(EngineBuildError) as raised:
        build_all(cubic_encoder_model, tmp_path / "cache", "fp16", fake_device("8.4.3"), 64, 1)
    reports = {report.component: report for report in raised.value.reports}
    # The device loop's components: unet_step in place of unet.
    assert [(name, report.action) for name, report in reports.items()] == [
        ("encoder", "failed"),
        ("decoder", "built"),
        ("unet_step", "built"),
    ]
    assert "does not support cubic interpolation" in str(reports["encoder"].error)
    assert str(raised.value).startswith("1 of 3 TensorRT engines failed to build: encoder (fp16): TensorRT cannot")
    assert reports["unet_step"].plan.is_file() and reports["decoder"].plan.is_file()
    assert not reports["encoder"].plan.exists()
    assert "failed encoder engine (fp16) from encoder.onnx" in caplog.text


@pytest.mark.parametrize("fakes", ["8.4.3"], indirect=True)
def test_build_engines_prints_every_component_then_fails(
    fakes: ModuleType, cubic_encoder_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from xraysr.service.cli import main

    argv = ["build-engines", "--engines-dir", str(cubic_encoder_model.parent), "--model", cubic_encoder_model.name]
    assert main([*argv, "--precision", "fp16", "--trt-cache-dir", str(tmp_path / "cache"), "--max-batch", "1"]) == 2
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "Fake Orin (compute capability 8.7), TensorRT 8.4.3"
    assert lines[1].startswith("failed encoder (fp16): TensorRT cannot parse encoder.onnx: ")
    assert "does not support cubic interpolation" in lines[1]
    assert [line.split(":")[0] for line in lines[2:]] == ["built decoder (fp16)", "built unet_step (fp16)"]
    assert captured.err.startswith("xraysr build-engines: error: 1 of 3 TensorRT engines failed to build: ")


@pytest.mark.parametrize("fakes", ["8.4.3"], indirect=True)
def test_the_shipped_encoder_builds_on_tensorrt_before_8_5(fakes: ModuleType, tmp_path: Path) -> None:
    """The shipped encoder's bicubic is two constant MatMuls, not a cubic Resize: TensorRT 8.2/8.4 (the original
    Nano's JetPack 4.6) builds every component of the default model."""
    assert not [node for node in onnx.load(DEFAULT_MODEL / "encoder.onnx").graph.node if node.op_type == "Resize"]
    _, reports = build_all(DEFAULT_MODEL, tmp_path, "fp16", fake_device("8.4.3"), 64, 1)
    assert [(report.component, report.action) for report in reports] == [
        ("encoder", "built"),
        ("decoder", "built"),
        ("unet_step", "built"),
    ]
    header = plan_header(fakes, reports[0].plan)
    assert header["precision"] == "fp16"
    # The engine is the shipped encoder's graph at FP16: ONNX Runtime's FP32 result of encoder.onnx, to FP16's
    # ~3 significant digits (measured: 8e-4 at most, on latents within ±1).
    _, model = fakes.read_plan(reports[0].plan.read_bytes())
    lr = np.random.default_rng(0).uniform(-1, 1, (1, 1, 64, 64)).astype(np.float32)
    (engine,) = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"lr_image": lr})
    session = ort.InferenceSession(str(DEFAULT_MODEL / "encoder.onnx"), providers=["CPUExecutionProvider"])
    (reference,) = session.run(None, {"lr_image": lr})
    np.testing.assert_allclose(engine, reference, atol=3e-3)


def test_the_default_cache_is_beside_the_model_unless_that_is_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir = tmp_path / "site-packages" / "cxr-default"
    model_dir.mkdir(parents=True)
    assert default_cache_dir(model_dir) == model_dir / "tensorrt"
    # A wheel installed by root and served by another user: site-packages is not writable.
    monkeypatch.setattr("os.access", lambda path, mode: Path(path) != model_dir)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_cache_dir(model_dir) == tmp_path / "cache" / "xraysr" / "tensorrt" / "cxr-default"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir(model_dir) == Path.home() / ".cache" / "xraysr" / "tensorrt" / "cxr-default"

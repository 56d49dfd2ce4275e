"""The TensorRT backend: cache keys, the precision policy and build checks on any CPU; real engines on a GPU."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import logging
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from xraysr.service.cli import main
from xraysr.service.manifest import MAX_SAMPLES, Manifest, load_manifest
from xraysr.service.pipeline import SRPipeline
from xraysr.service.runtimes import DeviceLoop, load_runtime
from xraysr.service.runtimes.onnxruntime import OnnxRuntime
from xraysr.service.runtimes.trt_build import (
    BUILD_RECIPE,
    Device,
    EngineKey,
    build_all,
    cached_engine,
    check_build_request,
    load_or_build,
    resolve_precision,
    sidecar_path,
    timing_cache_path,
)

TRT_AVAILABLE = all(importlib.util.find_spec(name) is not None for name in ("tensorrt", "pycuda"))
needs_tensorrt = pytest.mark.skipif(
    not TRT_AVAILABLE, reason="TensorRT and pycuda are not installed (they need a GPU driver and NVIDIA's index)"
)
DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "engines" / "cxr-default"
# What TensorRT builds of the default model: its device loop runs unet_step (UNet + DDIM update) in place of unet.
DEVICE_LOOP_COMPONENTS = ("encoder", "decoder", "unet_step")
ORIN = Device(name="Orin", compute_capability="8.7", tensorrt_version="10.3.0", sm_count=8)
NANO = Device(name="NVIDIA Tegra X1", compute_capability="5.3", tensorrt_version="8.2.1", sm_count=1)

KEY = EngineKey(
    component="unet",
    precision="fp16",
    onnx_sha256="ab" * 32,
    tensorrt_version="10.3.0",
    gpu_name="Orin",
    sm_count=8,
    compute_capability="8.7",
    workspace_mib=1024,
    max_batch=1,
)


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_manifest(DEFAULT_MODEL)


def record_builds(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """build_all's builder replaced by one that records (ONNX file, precision) and returns a dummy plan."""
    built: list[tuple[str, str]] = []

    def fake_build(onnx_path: Path, precision: str, *_: object) -> bytes:
        built.append((onnx_path.name, precision))
        return b"plan"

    monkeypatch.setattr("xraysr.service.runtimes.trt_build.build_engine", fake_build)
    return built


# --- cache keys -------------------------------------------------------------------------------------------


def test_same_fields_give_the_same_key() -> None:
    assert dataclasses.replace(KEY).digest() == KEY.digest()
    assert KEY.file_name() == f"unet-fp16-{KEY.digest()[:16]}.plan"


@pytest.mark.parametrize(
    "change",
    [
        {"component": "decoder"},
        {"precision": "int8"},
        {"onnx_sha256": "cd" * 32},
        {"tensorrt_version": "8.6.2"},
        {"gpu_name": "NVIDIA Tegra X1"},
        {"compute_capability": "7.2"},
        {"workspace_mib": 512},
        {"max_batch": 4},
        {"sm_count": 4},  # the 4 GB Orin Nano: also called "Orin"
        {"build_recipe": BUILD_RECIPE + 1},
    ],
)
def test_every_field_changes_the_key(change: dict[str, object]) -> None:
    other = dataclasses.replace(KEY, **change)  # type: ignore[arg-type]
    assert other.digest() != KEY.digest()
    assert other.file_name() != KEY.file_name()


def test_an_engine_is_built_once_then_loaded(tmp_path: Path) -> None:
    builds: list[int] = []

    def build() -> bytes:
        builds.append(1)
        return b"plan-bytes"

    assert load_or_build(tmp_path, KEY, build) == (b"plan-bytes", "built")
    assert load_or_build(tmp_path, KEY, build) == (b"plan-bytes", "loaded")
    assert len(builds) == 1
    assert json.loads(sidecar_path(tmp_path / KEY.file_name()).read_text()) == dataclasses.asdict(KEY)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([KEY.file_name(), f"{KEY.file_name()[:-5]}.json"])


@pytest.mark.parametrize(
    "tamper",
    [
        lambda sidecar: sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "tensorrt_version": "8.2"})),
        lambda sidecar: sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "gpu_name": "Xavier"})),
        lambda sidecar: sidecar.write_text("{not json"),
        lambda sidecar: sidecar.unlink(),
    ],
    ids=["other-tensorrt", "other-gpu", "corrupt", "missing"],
)
def test_a_stale_or_foreign_engine_is_rebuilt_never_loaded(tmp_path: Path, tamper, caplog) -> None:  # type: ignore[no-untyped-def]
    load_or_build(tmp_path, KEY, lambda: b"old")
    tamper(sidecar_path(tmp_path / KEY.file_name()))
    assert cached_engine(tmp_path, KEY) is None
    assert load_or_build(tmp_path, KEY, lambda: b"new") == (b"new", "built")
    assert load_or_build(tmp_path, KEY, lambda: b"unused") == (b"new", "loaded")


def test_a_failed_build_leaves_no_plan(tmp_path: Path) -> None:
    def build() -> bytes:
        raise RuntimeError("TensorRT failed")

    with pytest.raises(RuntimeError, match="TensorRT failed"):
        load_or_build(tmp_path, KEY, build)
    assert list(tmp_path.iterdir()) == []


# --- precision policy -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "capability", "effective"),
    [
        ("int8", "8.7", "int8"),  # Orin
        ("int8", "7.2", "int8"),  # Xavier
        ("int8", "6.1", "int8"),
        ("int8", "6.2", "fp16"),  # the TX2: Pascal, but no INT8
        ("int8", "5.3", "fp16"),  # the original Nano: FP16, no INT8
        ("fp16", "5.3", "fp16"),
        ("fp32", "5.3", "fp32"),
        ("fp16", "5.0", "fp32"),
        ("int8", "5.0", "fp32"),
        ("fp16", (8, 7), "fp16"),
    ],
)
def test_resolve_precision(requested, capability, effective) -> None:  # type: ignore[no-untyped-def]
    assert resolve_precision(requested, capability) == effective


def test_int8_on_a_nano_warns_that_it_builds_fp16(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        resolve_precision("int8", "5.3")
    assert "compute capability 5.3 has no INT8 in TensorRT: --precision int8 builds FP16" in caplog.text


def test_a_malformed_compute_capability_is_refused() -> None:
    with pytest.raises(ValueError, match="compute capability must look like '8.7', got 'sm87'"):
        resolve_precision("fp16", "sm87")


# --- manifest / engine compatibility ----------------------------------------------------------------------


def test_int8_needs_a_quantized_model(manifest: Manifest) -> None:
    with pytest.raises(ValueError, match="an INT8 engine needs a quantized \\(Q/DQ\\) model"):
        check_build_request(manifest, "int8")
    check_build_request(manifest, "fp16")
    check_build_request(manifest, "fp32")


def test_a_quantized_model_needs_int8_kernels(manifest: Manifest) -> None:
    components = dict(manifest.components)
    components["unet"] = components["unet"].model_copy(update={"precision": "int8"})
    quantized = manifest.model_copy(update={"precision": "int8", "components": components})
    check_build_request(quantized, "int8")
    with pytest.raises(ValueError, match="is quantized \\(Q/DQ\\) but this GPU builds fp16"):
        check_build_request(quantized, "fp16")
    # A Q/DQ file in an fp32 manifest is as unbuildable without INT8.
    with pytest.raises(ValueError, match="is quantized \\(Q/DQ\\) but this GPU builds fp16"):
        check_build_request(manifest.model_copy(update={"components": components}), "fp16")


def test_an_int8_manifest_without_per_component_precision_is_refused(manifest: Manifest) -> None:
    older = manifest.model_copy(update={"precision": "int8"})  # every component defaults to fp32
    with pytest.raises(ValueError, match="marks no component int8 \\(it predates per-component precision\\)"):
        check_build_request(older, "int8")


def test_build_all_keys_each_component_by_its_onnx_checksum(
    manifest: Manifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[tuple[str, str, int, int]] = []
    timing_caches: list[str] = []

    def fake_build(onnx_path: Path, precision: str, max_batch: int, workspace_mib: int, timing_cache: Path) -> bytes:
        built.append((onnx_path.name, precision, max_batch, workspace_mib))
        timing_caches.append(timing_cache.name)
        assert timing_cache.parent == tmp_path
        return onnx_path.name.encode()

    monkeypatch.setattr("xraysr.service.runtimes.trt_build.build_engine", fake_build)
    engines, reports = build_all(DEFAULT_MODEL, tmp_path, "fp16", ORIN, workspace_mib=256)
    assert engines == {name: f"{name}.onnx".encode() for name in DEVICE_LOOP_COMPONENTS}
    # The default max batch is MAX_SAMPLES, the same as the runtime's: serve loads what build-engines built.
    # unet.onnx is never built: the device loop has no use for it.
    assert built == [(f"{name}.onnx", "fp16", MAX_SAMPLES, 256) for name in DEVICE_LOOP_COMPONENTS]
    assert [(report.component, report.action) for report in reports] == [
        ("encoder", "built"),
        ("decoder", "built"),
        ("unet_step", "built"),
    ]
    for report in reports:
        recorded = json.loads(sidecar_path(report.plan).read_text())
        assert recorded["onnx_sha256"] == manifest.components[report.component].sha256  # type: ignore[index]
        assert (recorded["gpu_name"], recorded["compute_capability"], recorded["tensorrt_version"]) == (
            "Orin",
            "8.7",
            "10.3.0",
        )

    _, again = build_all(DEFAULT_MODEL, tmp_path, "fp16", ORIN, workspace_mib=256)
    assert [report.action for report in again] == ["loaded"] * 3
    assert len(built) == 3
    # Another TensorRT (a JetPack upgrade) never loads these plans.
    _, upgraded = build_all(DEFAULT_MODEL, tmp_path, "fp16", dataclasses.replace(ORIN, tensorrt_version="10.7.0"), 256)
    assert [report.action for report in upgraded] == ["built"] * 3
    # One timing cache per TensorRT version and GPU: another version's blob would not load.
    names = [f"timing-trt{version}-sm87-8sms-Orin.cache" for version in ("10.3.0", "10.7.0")]
    assert timing_caches == [names[0]] * 3 + [names[1]] * 3
    assert timing_cache_path(tmp_path, ORIN).name == timing_caches[0]


def test_int8_builds_the_quantized_files_on_an_orin_and_fp16_from_fp32_on_a_nano(
    model_with_int8: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    built = record_builds(monkeypatch)
    _, orin = build_all(model_with_int8, tmp_path / "orin", "int8", ORIN)
    # INT8 only for the Q/DQ file; the encoder and decoder at the FP32 that `xraysr quantize` measured.
    assert [(report.component, report.precision) for report in orin] == [
        ("encoder", "fp32"),
        ("unet", "int8"),  # this model has no unet_step: the device loop's runtime runs unet from the host
        ("decoder", "fp32"),
    ]
    assert built[:3] == [("encoder.onnx", "fp32"), ("unet.int8.onnx", "int8"), ("decoder.onnx", "fp32")]
    for report in orin:
        assert json.loads(sidecar_path(report.plan).read_text())["precision"] == report.precision
        assert report.plan.name.startswith(f"{report.component}-{report.precision}-")
    with caplog.at_level(logging.WARNING):
        _, nano = build_all(model_with_int8, tmp_path / "nano", "int8", NANO)
    assert [report.precision for report in nano] == ["fp16"] * 3
    assert "--precision int8 builds FP16" in caplog.text
    assert all(report.plan.name.startswith(f"{report.component}-fp16-") for report in nano)


def test_the_shipped_int8_model_builds_its_step_graph_at_int8_and_the_rest_at_fp32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = record_builds(monkeypatch)
    _, reports = build_all(DEFAULT_MODEL, tmp_path, "int8", ORIN)
    # manifest.int8.json marks unet and unet_step int8; only unet_step is built, at INT8 from its Q/DQ file.
    assert built == [("encoder.onnx", "fp32"), ("decoder.onnx", "fp32"), ("unet_step.int8.onnx", "int8")]
    assert [(report.component, report.precision, report.action) for report in reports] == [
        ("encoder", "fp32", "built"),
        ("decoder", "fp32", "built"),
        ("unet_step", "int8", "built"),
    ]


def test_int8_without_a_quantized_model_and_a_zero_batch_are_refused(tmp_path: Path) -> None:
    fp32_only = tmp_path / "fp32-only"
    shutil.copytree(DEFAULT_MODEL, fp32_only, ignore=shutil.ignore_patterns("*.int8.*"))
    with pytest.raises(ValueError, match="no manifest.int8.json in"):
        build_all(fp32_only, tmp_path / "cache", "int8", ORIN)
    with pytest.raises(ValueError, match="max batch must be at least 1, got 0"):
        build_all(DEFAULT_MODEL, tmp_path, "fp16", ORIN, max_batch=0)


# --- without TensorRT ---------------------------------------------------------------------------------------


@pytest.mark.skipif(TRT_AVAILABLE, reason="TensorRT and pycuda are installed here")
def test_load_runtime_without_tensorrt_says_what_is_missing(manifest: Manifest) -> None:
    with pytest.raises(ValueError, match="the tensorrt backend needs TensorRT and pycuda \\(JetPack ships TensorRT"):
        load_runtime("tensorrt", manifest, DEFAULT_MODEL)


@pytest.mark.skipif(TRT_AVAILABLE, reason="TensorRT and pycuda are installed here")
def test_build_engines_without_tensorrt_exits_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["build-engines", "--engines-dir", str(DEFAULT_MODEL.parent), "--model", DEFAULT_MODEL.name]
    assert main([*argv, "--precision", "fp16", "--trt-cache-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err  # the wording is service/commands.py's; one line naming what is missing
    assert error.startswith("xraysr build-engines: error: ") and error.count("\n") == 1
    assert "TensorRT" in error and "pycuda" in error
    assert list(tmp_path.iterdir()) == []


# --- the runtime's plumbing on stand-ins (tests/service/fake_*.py) -------------------------------------------


@pytest.fixture
def fake_tensorrt(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """xraysr.service.runtimes.tensorrt imported against CPU stand-ins (TensorRT 10.3): the real build_engine
    runs against the fake builder, and the "engines" run the parsed ONNX in ONNX Runtime."""
    from tests.service import fake_tensorrt as fakes

    yield fakes.install_for_test(monkeypatch)
    fakes.uninstall()  # later tests must not see the stand-ins


def test_build_engines_builds_then_loads(
    fake_tensorrt: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["build-engines", "--engines-dir", str(DEFAULT_MODEL.parent), "--model", DEFAULT_MODEL.name]
    argv += ["--precision", "fp16", "--trt-cache-dir", str(tmp_path / "plans")]
    assert main(argv) == 0
    first = capsys.readouterr().out.splitlines()
    assert first[0] == "Fake Orin (compute capability 8.7), TensorRT 10.3.0"
    assert [line.split(":")[0] for line in first[1:]] == [
        "built encoder (fp16)",
        "built decoder (fp16)",
        "built unet_step (fp16)",
    ]
    assert main(argv) == 0
    assert [line.split(" ")[0] for line in capsys.readouterr().out.splitlines()[1:]] == ["loaded"] * 3


def test_build_engines_builds_for_the_batch_serve_will_ask_for(
    fake_tensorrt: object, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # serve builds for max(XRAYSR_MAX_BATCH, MAX_SAMPLES) (engine_max_batch); plans built for anything else would
    # miss its cache key and be built again on the first start.
    monkeypatch.setenv("XRAYSR_MAX_BATCH", "16")
    argv = ["build-engines", "--engines-dir", str(DEFAULT_MODEL.parent), "--model", DEFAULT_MODEL.name]
    argv += ["--precision", "fp16", "--trt-cache-dir", str(tmp_path / "plans")]
    assert main(argv) == 0
    sidecars = [json.loads(path.read_text()) for path in (tmp_path / "plans").glob("*.json")]
    assert sorted(sidecar["max_batch"] for sidecar in sidecars) == [16, 16, 16]
    capsys.readouterr()
    assert main([*argv, "--max-batch", "9"]) == 0  # the flag still wins
    assert [line.split(" ")[0] for line in capsys.readouterr().out.splitlines()[1:]] == ["built"] * 3


def test_the_runtime_runs_each_component_through_device_buffers(
    fake_tensorrt: object, tiny_engine_dir: Path, tmp_path: Path
) -> None:
    manifest = load_manifest(tiny_engine_dir)
    # FP32 engines compute what ONNX Runtime computes (an FP16 one does not: tests/service/test_trt_runtime.py).
    runtime = load_runtime("tensorrt", manifest, tiny_engine_dir, precision="fp32", trt_cache_dir=tmp_path / "cache")
    assert runtime.backend == "tensorrt"
    lr = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8)
    expected = SRPipeline(manifest, OnnxRuntime(manifest, tiny_engine_dir, threads=1)).upscale(lr, steps=4, seed=2)
    actual = SRPipeline(manifest, runtime).upscale(lr, steps=4, seed=2)
    np.testing.assert_array_equal(actual.image, expected.image)
    assert runtime.last_gpu_seconds == {"encoder": 1.5e-3, "unet": 1.5e-3, "decoder": 1.5e-3}  # type: ignore[attr-defined]
    plans = sorted(path.name.split("-")[:2] for path in (tmp_path / "cache").glob("*.plan"))
    assert plans == [["decoder", "fp32"], ["encoder", "fp32"], ["unet", "fp32"]]
    runtime.close()  # type: ignore[attr-defined]


def test_the_denoising_loop_stays_on_the_device(
    fake_tensorrt: object, tiny_step_engine_dir: Path, tmp_path: Path
) -> None:
    manifest = load_manifest(tiny_step_engine_dir)
    runtime = load_runtime("tensorrt", manifest, tiny_step_engine_dir, trt_cache_dir=tmp_path / "cache")
    assert isinstance(runtime, DeviceLoop)
    lr = np.add.outer(np.arange(64), np.arange(64)[::-1]).astype(np.uint8)
    for steps in (4, 5):  # an even and an odd count: the sample ends in either ping-pong buffer
        actual = SRPipeline(manifest, runtime).upscale(lr, steps=steps, seed=3)
        reference = SRPipeline(manifest, OnnxRuntime(manifest, tiny_step_engine_dir, threads=1))
        expected = reference.upscale(lr, steps=steps, seed=3)
        assert np.abs(actual.image.astype(int) - expected.image.astype(int)).max() <= 1
    engines = runtime._engines  # type: ignore[attr-defined]
    assert sorted(engines) == ["decoder", "encoder", "unet_step"]  # no unet engine: nothing would run it
    assert engines["unet_step"].context.runs == 9
    assert "denoise" in runtime.last_gpu_seconds  # type: ignore[attr-defined]


def test_the_runtime_runs_k_samples_as_one_batch(fake_tensorrt: object, tiny_engine_dir: Path, tmp_path: Path) -> None:
    manifest = load_manifest(tiny_engine_dir)
    runtime = load_runtime("tensorrt", manifest, tiny_engine_dir, trt_cache_dir=tmp_path / "cache")
    reference = SRPipeline(manifest, OnnxRuntime(manifest, tiny_engine_dir, threads=1))
    lr = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8)
    try:
        # The largest batch, then a single sample: a smaller batch after a larger one reads only its own part.
        for samples in (MAX_SAMPLES, 1):
            actual = SRPipeline(manifest, runtime).upscale(lr, steps=3, seed=4, samples=samples)
            expected = reference.upscale(lr, steps=3, seed=4, samples=samples)
            assert np.abs(actual.image.astype(int) - expected.image.astype(int)).max() <= 1
            if samples > 1:
                assert actual.uncertainty is not None and expected.uncertainty is not None
                np.testing.assert_allclose(actual.uncertainty, expected.uncertainty, atol=0.05)
        engines = runtime._engines  # type: ignore[attr-defined]
        assert engines["encoder"].context.batches == [1, 1]  # the encoder runs once per request, whatever K
        assert engines["unet"].context.batches == [MAX_SAMPLES] * 9 + [1] * 9  # 3 inputs × 3 steps per request
        assert engines["decoder"].context.batches == [MAX_SAMPLES, 1]
    finally:
        runtime.close()  # type: ignore[attr-defined]


def test_the_device_loop_runs_k_samples_as_one_batch(
    fake_tensorrt: object, tiny_step_engine_dir: Path, tmp_path: Path
) -> None:
    manifest = load_manifest(tiny_step_engine_dir)
    runtime = load_runtime("tensorrt", manifest, tiny_step_engine_dir, trt_cache_dir=tmp_path / "cache")
    reference = SRPipeline(manifest, OnnxRuntime(manifest, tiny_step_engine_dir, threads=1))
    lr = np.add.outer(np.arange(64), np.arange(64)[::-1]).astype(np.uint8)
    for steps in (4, 5):  # each sample's timestep and alphas are read from its own place in the slot
        actual = SRPipeline(manifest, runtime).upscale(lr, steps=steps, seed=3, samples=3)
        expected = reference.upscale(lr, steps=steps, seed=3, samples=3)
        assert np.abs(actual.image.astype(int) - expected.image.astype(int)).max() <= 1
        assert actual.uncertainty is not None and expected.uncertainty is not None
        np.testing.assert_allclose(actual.uncertainty, expected.uncertainty, atol=0.5)
    step_engine = runtime._engines["unet_step"]  # type: ignore[attr-defined]
    assert step_engine.context.runs == 9 and set(step_engine.context.batches) == {3}


def test_a_batch_beyond_the_engines_max_is_refused(fake_tensorrt, tiny_engine_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    manifest = load_manifest(tiny_engine_dir)
    with pytest.raises(ValueError, match="max batch must be between 1 and 64, got 65"):
        fake_tensorrt.TensorRTRuntime(manifest, tiny_engine_dir, cache_dir=tmp_path, max_batch=65)
    runtime = fake_tensorrt.TensorRTRuntime(manifest, tiny_engine_dir, cache_dir=tmp_path, max_batch=2)
    lr = np.zeros((64, 64), np.uint8)
    try:
        with pytest.raises(ValueError, match="unet: batch 3 is outside the engine's 1..2"):
            SRPipeline(manifest, runtime).upscale(lr, steps=2, seed=0, samples=3)
        # Past the runtime's own check, TensorRT refuses a shape outside the profile, and the runtime raises.
        unet = runtime._engines["unet"]
        shape = (3, *unet.buffers.tensors["noisy_latent"].shape)
        with pytest.raises(RuntimeError, match=r"TensorRT refused input shape \(3, .*\) for noisy_latent"):
            fake_tensorrt._set_input_shape(unet, "noisy_latent", shape)
        assert SRPipeline(manifest, runtime).upscale(lr, steps=2, seed=0, samples=2).samples == 2
    finally:
        runtime.close()


# --- on a GPU -------------------------------------------------------------------------------------------------


@needs_tensorrt
@pytest.mark.parametrize("timestep", [500.0, 999.0])  # 999: FP16 angles are 0.5 rad apart there (pinned FP32)
@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 1e-3), ("fp16", 5e-2)])
def test_tensorrt_engines_match_onnxruntime(  # type: ignore[no-untyped-def]
    tiny_engine_dir: Path, tmp_path: Path, precision, tolerance, timestep
) -> None:
    from xraysr.service.runtimes.onnxruntime import OnnxRuntime
    from xraysr.service.runtimes.tensorrt import TensorRTRuntime

    manifest = load_manifest(tiny_engine_dir)
    runtime = TensorRTRuntime(manifest, tiny_engine_dir, precision, cache_dir=tmp_path)
    reference = OnnxRuntime(manifest, tiny_engine_dir, threads=1)
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((1, manifest.latent.channels, manifest.latent.size, manifest.latent.size))
    lr = rng.uniform(-1, 1, (1, 1, manifest.image.lr_size, manifest.image.lr_size))
    feeds = {
        "encoder": {"lr_image": lr.astype(np.float32)},
        "unet": {
            "noisy_latent": latent.astype(np.float32),
            "timestep": np.full((1,), timestep, np.float32),
            "lr_latent": latent[:, ::-1].astype(np.float32),
        },
        "decoder": {"hr_latent": latent.astype(np.float32)},
    }
    try:
        for component, inputs in feeds.items():
            expected = reference.run(component, inputs)
            actual = runtime.run(component, inputs)
            assert actual.shape == expected.shape
            assert np.abs(actual - expected).max() <= tolerance * max(1.0, np.abs(expected).max()), component
            assert runtime.last_gpu_seconds[component] > 0
    finally:
        runtime.close()
    # A second runtime finds every plan in the cache.
    assert sorted(path.suffix for path in tmp_path.glob("*-*.*")) == [".json"] * 3 + [".plan"] * 3


@needs_tensorrt
def test_the_tensorrt_device_loop_matches_the_host_loop(tiny_step_engine_dir: Path, tmp_path: Path) -> None:
    from xraysr.service.runtimes.tensorrt import TensorRTRuntime

    manifest = load_manifest(tiny_step_engine_dir)
    runtime = TensorRTRuntime(manifest, tiny_step_engine_dir, "fp32", cache_dir=tmp_path)
    lr = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8)
    try:
        for steps in (4, 5):
            actual = SRPipeline(manifest, runtime).upscale(lr, steps=steps, seed=1)
            reference = SRPipeline(manifest, OnnxRuntime(manifest, tiny_step_engine_dir, threads=1))
            expected = reference.upscale(lr, steps=steps, seed=1)
            assert np.abs(actual.image.astype(int) - expected.image.astype(int)).max() <= 2
        assert runtime.last_gpu_seconds["denoise"] > 0
    finally:
        runtime.close()


@needs_tensorrt
def test_tensorrt_plans_built_here_load_in_a_new_process(tiny_engine_dir: Path, tmp_path: Path) -> None:
    """The container's order (build-engines, then serve in another process): TensorRT 8.6 plans with plugin
    layers only load where init_libnvinfer_plugins ran."""
    import subprocess

    from xraysr.service.runtimes.trt_build import current_device

    build_all(tiny_engine_dir, tmp_path, "fp16", current_device())
    code = (
        "import sys; from pathlib import Path; from xraysr.service.manifest import load_manifest; "
        "from xraysr.service.runtimes.tensorrt import TensorRTRuntime; model = Path(sys.argv[1]); "
        "TensorRTRuntime(load_manifest(model), model, 'fp16', Path(sys.argv[2])).close(); print('loaded')"
    )
    command = [sys.executable, "-c", code, str(tiny_engine_dir), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip() == "loaded", result.stderr[-2000:]
    assert "rebuilding" not in result.stderr

"""service/runtimes/tensorrt.py on the fake TensorRT and pycuda (tests/service/fake_*.py): loading in a new
process, delete-and-rebuild, close(), resident uploads, per-thread GPU time, and the fake's own fidelity."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.service import fake_pycuda, fake_trt_builder
from xraysr.service.manifest import Manifest, load_manifest
from xraysr.service.pipeline import SRPipeline
from xraysr.service.runtimes.onnxruntime import OnnxRuntime
from xraysr.service.runtimes.trt_build import Device, build_all
from xraysr.service.settings import load_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[ModuleType]:
    from tests.service import fake_tensorrt

    fake_tensorrt.install_for_test(monkeypatch, getattr(request, "param", "10.3.0"))
    yield fake_tensorrt
    fake_tensorrt.uninstall()


def runtime_module() -> Any:
    return sys.modules["xraysr.service.runtimes.tensorrt"]


def latent_of(manifest: Manifest) -> np.ndarray:
    return np.zeros((1, manifest.latent.channels, manifest.latent.size, manifest.latent.size), np.float32)


def lr_image() -> np.ndarray:
    return np.add.outer(np.arange(64), np.arange(64)[::-1]).astype(np.uint8)


# --- a new process --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fakes", ["8.5.3", "8.6.1", "10.3.0"], indirect=True)
def test_a_plan_built_in_one_process_loads_in_a_new_one(
    fakes: ModuleType, tiny_engine_dir: Path, tmp_path: Path
) -> None:
    """The container's order: `xraysr build-engines`, then `xraysr serve` in another process that never parses."""
    version = sys.modules["tensorrt"].__version__
    cache = tmp_path / "cache"
    _, reports = build_all(tiny_engine_dir, cache, "fp16", Device("Fake Orin", "8.7", version, 8), max_batch=8)
    plans = {report.plan: report.plan.stat().st_mtime_ns for report in reports}
    if version == "8.5.3":  # no native-InstanceNorm flag before 8.6: the plans hold the plugin
        assert fake_trt_builder.read_plan(reports[0].plan.read_bytes())[0]["plugins"] == ["InstanceNormalization_TRT"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "tests.service.fake_tensorrt", str(tiny_engine_dir), str(cache), "fp16", version]
    result = subprocess.run([*command, "unet"], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0 and "error" not in answer, result.stderr[-2000:]
    assert answer["shape"][0] == 1 and np.isfinite(answer["sum"])
    # Loaded, not rebuilt: no plan changed and none was added.
    assert {plan: plan.stat().st_mtime_ns for plan in plans} == plans
    assert sorted(cache.glob("*.plan")) == sorted(plans)


# --- a plan TensorRT refuses ------------------------------------------------------------------------------------


def test_a_plan_that_will_not_deserialize_is_deleted_and_rebuilt_once(
    fakes: ModuleType, tiny_engine_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = load_manifest(tiny_engine_dir)
    runtime_module().TensorRTRuntime(manifest, tiny_engine_dir, "fp32", tmp_path, max_batch=1).close()
    (unet_plan,) = tmp_path.glob("unet-fp32-*.plan")
    unet_plan.write_bytes(b"damaged on disk" + unet_plan.read_bytes()[20:])  # its sidecar still vouches for it
    with caplog.at_level(logging.INFO):
        runtime = runtime_module().TensorRTRuntime(manifest, tiny_engine_dir, "fp32", tmp_path, max_batch=1)
    try:
        assert "TensorRT could not deserialize the unet engine" in caplog.text
        assert f"deleting {unet_plan} and rebuilding the unet engine once" in caplog.text
        assert unet_plan.read_bytes().startswith(fake_trt_builder.PLAN_MAGIC)
        assert "built unet engine (fp32)" in caplog.text and "built encoder engine" not in caplog.text
        hr_size = manifest.image.hr_size
        assert runtime.run("decoder", {"hr_latent": latent_of(manifest)}).shape == (1, 1, hr_size, hr_size)
    finally:
        runtime.close()


def test_a_plan_refused_again_after_rebuilding_is_an_error(
    fakes: ModuleType, tiny_engine_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deserialize = fakes.Runtime.deserialize_cuda_engine

    def refuse_the_unet(self: Any, serialized: bytes) -> Any:
        header, _ = fake_trt_builder.read_plan(serialized)
        return None if "noisy_latent" in [tensor["name"] for tensor in header["io"]] else deserialize(self, serialized)

    monkeypatch.setattr(fakes.Runtime, "deserialize_cuda_engine", refuse_the_unet)
    manifest = load_manifest(tiny_engine_dir)
    with pytest.raises(RuntimeError, match="could not deserialize the unet engine even after rebuilding it"):
        runtime_module().TensorRTRuntime(manifest, tiny_engine_dir, "fp32", tmp_path, max_batch=1)
    # The encoder's engine, already made, went with the runtime while the context was current; nothing is left.
    assert [(kind, what) for kind, what, _ in fake_pycuda.EVENTS if kind == "destroy"] == [
        ("destroy", "engine"),
        ("destroy", "runtime"),
    ]
    assert all(current for kind, _, current in fake_pycuda.EVENTS if kind == "destroy")
    assert fake_pycuda.EVENTS[-1] == ("context", "destroyed", True)
    assert fake_pycuda.Context.get_current() is None


# --- close() ----------------------------------------------------------------------------------------------------


def test_close_releases_everything_in_order_with_the_context_current(
    fakes: ModuleType, tiny_engine_dir: Path, tmp_path: Path
) -> None:
    manifest = load_manifest(tiny_engine_dir)
    made: list[Any] = []
    # Made on a worker thread, closed on another (the server's lifespan): pycuda would leak a context
    # detached there unless it is current.
    worker = threading.Thread(
        target=lambda: made.append(runtime_module().TensorRTRuntime(manifest, tiny_engine_dir, "fp32", tmp_path))
    )
    worker.start()
    worker.join()
    (runtime,) = made
    assert runtime._context.flags == fake_pycuda.ctx_flags.SCHED_BLOCKING_SYNC  # sleeps in sync, no spinning core
    runtime.run("decoder", {"hr_latent": latent_of(manifest)})
    fake_pycuda.EVENTS.clear()
    runtime.close()
    order = [(kind, what) for kind, what, _ in fake_pycuda.EVENTS]
    assert all(current for kind, _, current in fake_pycuda.EVENTS if kind != "context")
    assert order[:3] == [("destroy", "execution context")] * 3
    assert order[3:6] == [("destroy", "engine")] * 3
    assert order[6] == ("destroy", "runtime")
    assert set(order[7:-4]) == {("free", "device memory"), ("free", "pinned host memory")}
    assert len(order[7:-4]) == 2 * sum(len(component.inputs) + 1 for component in manifest.components.values())
    assert order[-4:] == [("destroy", "event")] * 2 + [("destroy", "stream"), ("context", "destroyed")]
    runtime.close()  # a second close does nothing
    assert len(fake_pycuda.EVENTS) == len(order)
    with pytest.raises(RuntimeError, match="this TensorRT runtime was closed"):
        runtime.run("decoder", {"hr_latent": latent_of(manifest)})


def test_a_runtime_nobody_closed_is_closed_when_dropped(
    fakes: ModuleType, tiny_engine_dir: Path, tmp_path: Path
) -> None:
    manifest = load_manifest(tiny_engine_dir)
    runtime = runtime_module().TensorRTRuntime(manifest, tiny_engine_dir, "fp32", tmp_path, max_batch=1)
    fake_pycuda.EVENTS.clear()
    del runtime
    assert fake_pycuda.EVENTS[-1] == ("context", "destroyed", True)
    assert all(current for kind, _, current in fake_pycuda.EVENTS if kind != "context")


def test_a_runtime_nobody_closed_is_closed_at_exit(fakes: ModuleType, tiny_engine_dir: Path, tmp_path: Path) -> None:
    """`xraysr upscale` never calls close() and holds its pipeline to the end: the runtime's exit hook closes it,
    with the context current, before interpreter teardown."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "tests.service.fake_tensorrt", str(tiny_engine_dir), str(tmp_path), "fp32"]
    result = subprocess.run(
        [*command, "10.3.0", "decoder", "no-close"], capture_output=True, text=True, cwd=REPO, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    events = [tuple(event) for event in json.loads(result.stdout.strip().splitlines()[-1])["events at exit"]]
    assert ("destroy", "runtime", True) in events and events[-1] == ("context", "destroyed", True)
    assert all(current for kind, _, current in events if kind != "context")


def test_the_server_closes_the_runtime_on_shutdown(fakes: ModuleType, tiny_engine_dir: Path, tmp_path: Path) -> None:
    from xraysr.service.app import create_app

    settings = load_settings(
        engines_dir=tiny_engine_dir.parent,
        model=tiny_engine_dir.name,
        backend="tensorrt",
        precision="fp32",
        trt_cache_dir=tmp_path,
    )
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        assert client.get("/readyz").status_code == 200
        assert ("context", "destroyed", True) not in fake_pycuda.EVENTS
    assert ("context", "destroyed", True) in fake_pycuda.EVENTS
    assert not [event for event in fake_pycuda.EVENTS if "LEAKED" in event[1] or not event[2]]


# --- what goes up to the GPU, and when -------------------------------------------------------------------------


def test_lr_latent_goes_to_the_gpu_once_per_request(fakes: ModuleType, tiny_engine_dir: Path, tmp_path: Path) -> None:
    manifest = load_manifest(tiny_engine_dir)
    runtime = runtime_module().TensorRTRuntime(manifest, tiny_engine_dir, "fp32", tmp_path)
    reference = SRPipeline(manifest, OnnxRuntime(manifest, tiny_engine_dir, threads=1))
    try:
        unet = runtime._engines["unet"].buffers.tensors
        for request, steps in enumerate((4, 3), start=1):
            before = {name: fake_pycuda.htod_copies_to(int(tensor.device)) for name, tensor in unet.items()}
            image = lr_image() if request == 1 else lr_image().T.copy()
            actual = SRPipeline(manifest, runtime).upscale(image, steps=steps, seed=request)
            copies = {
                name: fake_pycuda.htod_copies_to(int(tensor.device)) - before[name] for name, tensor in unet.items()
            }
            assert copies == {"noisy_latent": steps, "timestep": steps, "lr_latent": 1, "prediction": 0}
            expected = reference.upscale(image, steps=steps, seed=request)
            np.testing.assert_array_equal(actual.image, expected.image)
    finally:
        runtime.close()


@pytest.fixture
def device_loop(fakes: ModuleType, tiny_step_engine_dir: Path, tmp_path: Path) -> Iterator[tuple[Any, SRPipeline]]:
    """The step-graph model on fake TensorRT (FP32), and the same model's ONNX Runtime pipeline to compare with."""
    manifest = load_manifest(tiny_step_engine_dir)
    runtime = runtime_module().TensorRTRuntime(manifest, tiny_step_engine_dir, "fp32", tmp_path)
    try:
        yield runtime, SRPipeline(manifest, OnnxRuntime(manifest, tiny_step_engine_dir, threads=1))
    finally:
        runtime.close()


def test_the_device_loop_uploads_its_schedule_once_per_step_count(
    fakes: ModuleType, device_loop: tuple[Any, SRPipeline]
) -> None:
    runtime, reference = device_loop
    schedule = int(runtime._schedule.device)
    sample = int(runtime._engines["unet_step"].buffers.tensors["sample"].device)
    for steps in (4, 4, 5):
        # The same seed every time: the sample must still go up (the last loop overwrote it on the GPU).
        actual = SRPipeline(reference.manifest, runtime).upscale(lr_image(), steps=steps, seed=3)
        expected = reference.upscale(lr_image(), steps=steps, seed=3)
        assert np.abs(actual.image.astype(int) - expected.image.astype(int)).max() <= 1
    assert fake_pycuda.htod_copies_to(schedule) == 2  # for 4 steps, then for 5
    assert fake_pycuda.htod_copies_to(sample) == 3


def test_the_estimate_runs_on_the_device_loop_as_one_step_graph_call(
    fakes: ModuleType, device_loop: tuple[Any, SRPipeline]
) -> None:
    """TensorRT's estimate: unet_step once at the last timestep stepping to alpha = 1 (x0 itself), from zeros."""
    runtime, reference = device_loop
    schedule = int(runtime._schedule.device)
    images = [lr_image(), lr_image().T.copy()]
    actual = SRPipeline(reference.manifest, runtime).estimate_batch(images)
    for device, host in zip(actual, reference.estimate_batch(images), strict=True):
        assert device.answer == "estimate" and np.abs(device.image.astype(int) - host.image.astype(int)).max() <= 1
    assert fake_pycuda.htod_copies_to(schedule) == 1  # one step's timestep and alphas


def test_gpu_seconds_are_kept_per_thread(fakes: ModuleType, tiny_engine_dir: Path, tmp_path: Path) -> None:
    manifest = load_manifest(tiny_engine_dir)
    runtime = runtime_module().TensorRTRuntime(manifest, tiny_engine_dir, "fp32", tmp_path)
    seen: dict[int, float] = {}

    def request(batch: int) -> None:
        runtime.run("encoder", {"lr_image": np.zeros((batch, 1, 64, 64), np.float32)})
        seen[batch] = runtime.last_gpu_seconds["encoder"]

    try:
        for batch in (1, 2):  # one request after the other, each on its own worker thread
            thread = threading.Thread(target=request, args=(batch,))
            thread.start()
            thread.join()
        assert seen == {1: fakes.GPU_MS_PER_SAMPLE / 1000, 2: 2 * fakes.GPU_MS_PER_SAMPLE / 1000}
        assert runtime.last_gpu_seconds == {}  # this thread ran nothing
    finally:
        runtime.close()


def test_an_fp16_engine_is_close_to_onnxruntime_but_not_equal(
    fakes: ModuleType, tiny_engine_dir: Path, tmp_path: Path
) -> None:
    manifest = load_manifest(tiny_engine_dir)
    runtime = runtime_module().TensorRTRuntime(manifest, tiny_engine_dir, "fp16", tmp_path)
    rng = np.random.default_rng(0)
    latent = rng.standard_normal(latent_of(manifest).shape).astype(np.float32)
    try:
        actual = runtime.run("decoder", {"hr_latent": latent})
    finally:
        runtime.close()
    expected = OnnxRuntime(manifest, tiny_engine_dir, threads=1).run("decoder", {"hr_latent": latent})
    assert not np.array_equal(actual, expected)
    np.testing.assert_allclose(actual, expected, atol=2e-2)


# --- the fake itself --------------------------------------------------------------------------------------------


def test_the_fake_runs_queued_copies_at_synchronize_as_a_gpu_does(fakes: ModuleType) -> None:
    cuda = sys.modules["pycuda.driver"]
    context = cuda.Device(0).make_context(cuda.ctx_flags.SCHED_BLOCKING_SYNC)
    try:
        stream, started, finished = cuda.Stream(), cuda.Event(), cuda.Event()
        source, target = cuda.pagelocked_empty(4, np.float32), cuda.pagelocked_empty(4, np.float32)
        source[:], target[:] = 1.0, 0.0
        device = cuda.mem_alloc(source.nbytes)
        started.record(stream)
        cuda.memcpy_htod_async(device, source, stream)
        source[:] = 2.0  # pinned: the copy reads the memory when it runs, not when it was queued
        cuda.memcpy_dtoh_async(target, device, stream)
        finished.record(stream)
        assert np.array_equal(target, np.zeros(4, np.float32))  # read before synchronize(): stale
        with pytest.raises(cuda.Error, match="not ready"):
            finished.time_since(started)
        stream.synchronize()
        assert np.array_equal(target, np.full(4, 2.0, np.float32))
        assert finished.time_since(started) == 0.0
        device.free()
        with pytest.raises(cuda.Error, match="invalid handle"):
            device.free()
    finally:
        context.detach()
    with pytest.raises(cuda.Error, match="no current context"):
        cuda.mem_alloc(16)


def test_readyz_answers_loading_while_the_engines_build(
    fakes: ModuleType, tiny_engine_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`xraysr serve` loads in the background: the port answers, and /readyz says 503 "loading", while TensorRT
    builds the engines of a first start (minutes on a Jetson)."""
    import time

    import httpx
    import uvicorn

    from xraysr.service.app import create_app
    from xraysr.service.runtimes import trt_build
    from xraysr.service.tools.local_server import free_port

    building, release = threading.Event(), threading.Event()
    real_build = trt_build.build_engine

    def slow_build(*args: Any) -> bytes:
        building.set()
        assert release.wait(60), "the test never released the build"
        return real_build(*args)

    monkeypatch.setattr(trt_build, "build_engine", slow_build)
    port = free_port()
    settings = load_settings(
        engines_dir=tiny_engine_dir.parent, model=tiny_engine_dir.name, backend="tensorrt", precision="fp32",
        trt_cache_dir=tmp_path, port=port,
    )  # fmt: skip
    server = uvicorn.Server(uvicorn.Config(create_app(settings, load_in_background=True), port=port, log_level="error"))
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        assert building.wait(60)
        while not server.started:
            time.sleep(0.05)
        answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert (answer.status_code, answer.json()) == (503, {"status": "loading"})
        release.set()
        deadline = time.monotonic() + 120
        while (answer := httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)).status_code != 200:
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.1)
        assert answer.json()["backend"] == "tensorrt"
    finally:
        release.set()
        server.should_exit = True
        thread.join(60)
    assert ("context", "destroyed", True) in fake_pycuda.EVENTS  # and shutdown closed the runtime

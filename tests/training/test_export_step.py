"""training/export.py's step graph: iterating unet_step.onnx reproduces the service's numpy DDIM loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from xraysr.service.manifest import Manifest, load_manifest
from xraysr.service.pipeline import SRPipeline
from xraysr.service.runtimes import DeviceLoop
from xraysr.service.runtimes.onnxruntime import OnnxRuntime
from xraysr.service.sampler import DDIMSampler, initial_noise
from xraysr.training.export import UNET_STEP_INPUTS


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def step_engine_dir(tiny_step_engine_dir: Path) -> Path:
    return tiny_step_engine_dir


@pytest.fixture(scope="module")
def step_graph(step_engine_dir: Path) -> Path:
    return step_engine_dir / "unet_step.onnx"


def test_the_step_graph_is_an_optional_manifest_component(step_engine_dir: Path, tiny_engine_dir: Path) -> None:
    manifest = load_manifest(step_engine_dir)  # checksums included
    assert list(manifest.components) == ["encoder", "unet", "decoder", "unet_step"]
    assert [spec.name for spec in manifest.components["unet_step"].inputs] == UNET_STEP_INPUTS
    assert manifest.components["unet_step"].outputs[0].shape == manifest.components["unet"].outputs[0].shape
    # tiny_step_engine_dir is export's default; tiny_engine_dir was exported with step_graph=False.
    assert "unet_step" not in load_manifest(tiny_engine_dir).components
    without_unet = {name: component for name, component in manifest.components.items() if name != "unet"}
    with pytest.raises(ValueError, match=r"components \['unet'\] are missing"):
        Manifest.model_validate({**manifest.model_dump(), "components": without_unet})


def test_step_graph_signature(step_graph: Path) -> None:
    session = _session(step_graph)
    assert [tensor.name for tensor in session.get_inputs()] == UNET_STEP_INPUTS
    assert [tensor.name for tensor in session.get_outputs()] == ["next_sample"]
    assert all(tensor.shape[0] == "batch" for tensor in session.get_inputs())


@pytest.mark.parametrize("steps", [4, 50])
def test_iterating_the_step_graph_reproduces_the_numpy_sampler(
    step_engine_dir: Path, step_graph: Path, steps: int
) -> None:
    manifest = load_manifest(step_engine_dir)
    unet, unet_step = _session(step_engine_dir / "unet.onnx"), _session(step_graph)
    rng = np.random.default_rng(1)
    lr_latent = rng.standard_normal((1, manifest.latent.channels, manifest.latent.size, manifest.latent.size))
    lr_latent = lr_latent.astype(np.float32)
    sampler = DDIMSampler(manifest.sampler)
    timesteps = sampler.set_timesteps(steps)
    assert timesteps[0] == manifest.sampler.num_train_timesteps - 1

    # The service's loop (service/pipeline.py): ONNX UNet, numpy update.
    reference = initial_noise(lr_latent.shape, seed=7)
    for timestep in timesteps:
        t = np.full((1,), timestep, dtype=np.float32)
        (prediction,) = unet.run(None, {"noisy_latent": reference, "timestep": t, "lr_latent": lr_latent})
        reference = sampler.step(prediction, int(timestep), reference)

    # The same loop with the update inside the graph: only the alphas cross over per step.
    sample = initial_noise(lr_latent.shape, seed=7)
    for timestep in timesteps:
        alpha_t, alpha_prev = sampler.alphas(int(timestep))
        feeds = {
            "sample": sample,
            "timestep": np.full((1,), timestep, dtype=np.float32),
            "lr_latent": lr_latent,
            "alpha_t": np.full((1,), alpha_t, dtype=np.float32),
            "alpha_prev": np.full((1,), alpha_prev, dtype=np.float32),
        }
        (sample,) = unet_step.run(None, feeds)

    assert np.abs(sample - reference).max() < 1e-4
    assert not np.allclose(sample, initial_noise(lr_latent.shape, seed=7))  # the loop did move the sample


class _StepLoop(OnnxRuntime):
    """The DeviceLoop protocol on ONNX Runtime: what the TensorRT runtime does on the GPU, step by step here.

    OnnxRuntime itself loads only what its host loop runs (served_components), so the step graph is opened here.
    """

    def __init__(self, manifest: Manifest, model_dir: Path, threads: int) -> None:
        super().__init__(manifest, model_dir, threads)
        self._sessions["unet_step"] = _session(model_dir / manifest.components["unet_step"].path)
        self._output_names["unet_step"] = "next_sample"

    def denoise(
        self, sample: np.ndarray, lr_latent: np.ndarray, timesteps: np.ndarray, alphas: np.ndarray
    ) -> np.ndarray:
        for timestep, (alpha_t, alpha_prev) in zip(timesteps, alphas, strict=True):
            feeds = {
                "sample": sample,
                "timestep": np.full((1,), timestep, np.float32),
                "lr_latent": lr_latent,
                "alpha_t": np.full((1,), alpha_t, np.float32),
                "alpha_prev": np.full((1,), alpha_prev, np.float32),
            }
            sample = self.run("unet_step", feeds)
        return sample


def test_the_pipeline_takes_the_step_graph_loop_and_gives_the_same_image(step_engine_dir: Path) -> None:
    manifest = load_manifest(step_engine_dir)
    loop_runtime = _StepLoop(manifest, step_engine_dir, threads=1)
    assert isinstance(loop_runtime, DeviceLoop)
    calls: list[str] = []
    original_run = loop_runtime.run

    def counting_run(component: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        calls.append(component)
        return original_run(component, inputs)

    loop_runtime.run = counting_run  # type: ignore[method-assign]
    lr = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8)
    on_device = SRPipeline(manifest, loop_runtime).upscale(lr, steps=4, seed=5)
    assert calls == ["encoder"] + ["unet_step"] * 4 + ["decoder"]
    on_host = SRPipeline(manifest, OnnxRuntime(manifest, step_engine_dir, threads=1)).upscale(lr, steps=4, seed=5)
    assert np.abs(on_device.image.astype(int) - on_host.image.astype(int)).max() <= 1


@pytest.mark.parametrize(("flag", "has_step_graph"), [([], True), (["--no-step-graph"], False)])
def test_xraysr_export_writes_the_step_graph_unless_told_not_to(
    tiny_checkpoint: Path, tmp_path: Path, flag: list[str], has_step_graph: bool
) -> None:
    from xraysr.service.cli import main

    out = tmp_path / "tiny"
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out), *flag]) == 0
    assert ("unet_step" in load_manifest(out).components) == has_step_graph
    assert (out / "unet_step.onnx").is_file() == has_step_graph

"""service/pipeline.py: stage timings (with the device times a GPU runtime reports), and samples=K batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xraysr.service.api.upscale_response import server_timing
from xraysr.service.manifest import Manifest, load_manifest
from xraysr.service.pipeline import AnswerPlan, SRPipeline, choose_answer, to_pixels
from xraysr.service.runtimes import load_runtime
from xraysr.service.runtimes.onnxruntime import OnnxRuntime
from xraysr.service.sampler import SEED_MAX


class _DeviceTimedRuntime:
    """ONNX Runtime plus the ``last_gpu_seconds`` a CUDA-event-timed runtime keeps (a fixed 2 ms per run)."""

    def __init__(self, inner) -> None:
        self.inner, self.backend, self.last_gpu_seconds = inner, "timed", {}

    def run(self, component: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        self.last_gpu_seconds[component] = 0.002
        return self.inner.run(component, inputs)

    def close(self) -> None:
        self.inner.close()


def test_device_times_are_reported_beside_host_times(tiny_engine_dir: Path) -> None:
    manifest = load_manifest(tiny_engine_dir)
    onnx = load_runtime("onnxruntime", manifest, tiny_engine_dir)
    lr = np.full((64, 64), 128, np.uint8)

    plain = SRPipeline(manifest, onnx).upscale(lr, steps=3, seed=0)
    assert set(plain.stage_seconds) == {"encode", "denoise", "vae_decode"}

    timed = SRPipeline(manifest, _DeviceTimedRuntime(onnx)).upscale(lr, steps=3, seed=0)
    assert np.array_equal(timed.image, plain.image)
    assert timed.stage_seconds["encode_gpu"] == 0.002
    assert abs(timed.stage_seconds["denoise_gpu"] - 3 * 0.002) < 1e-12  # one UNet run per step
    assert timed.stage_seconds["vae_decode_gpu"] == 0.002
    header = server_timing({"decode": 1.0, "denoise": 20.0, "denoise_gpu": 6.0})
    assert header == "decode;dur=1.000, denoise;dur=20.000, denoise_gpu;dur=6.000"


class _RecordingRuntime:
    """ONNX Runtime that records each run's component and input shapes, and keeps the decoder's outputs."""

    def __init__(self, inner) -> None:
        self.inner, self.backend = inner, "recording"
        self.calls: list[tuple[str, dict[str, tuple[int, ...]]]] = []
        self.decoded: list[np.ndarray] = []

    @property
    def last_gpu_seconds(self) -> dict[str, float]:
        return self.inner.last_gpu_seconds

    def run(self, component: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        self.calls.append((component, {name: values.shape for name, values in inputs.items()}))
        output = self.inner.run(component, inputs)
        if component == "decoder":
            self.decoded.append(output[:, 0])
        return output

    def close(self) -> None:
        self.inner.close()


@pytest.fixture(scope="module")
def recording(tiny_engine_dir: Path) -> tuple[Manifest, _RecordingRuntime]:
    manifest = load_manifest(tiny_engine_dir)
    return manifest, _RecordingRuntime(load_runtime("onnxruntime", manifest, tiny_engine_dir, threads=1))


LR = np.add.outer(np.arange(64), np.arange(64)[::-1]).astype(np.uint8)


def test_k_samples_run_the_encoder_once_and_the_loop_and_decoder_as_one_batch(
    recording: tuple[Manifest, _RecordingRuntime],
) -> None:
    manifest, runtime = recording
    runtime.calls.clear()
    result = SRPipeline(manifest, runtime).upscale(LR, steps=3, seed=11, samples=4)
    assert [component for component, _ in runtime.calls] == ["encoder", "unet", "unet", "unet", "decoder"]
    (encoder_input,) = runtime.calls[0][1].values()
    assert encoder_input == (1, 1, 64, 64)
    noisy, timestep, condition = (spec.name for spec in manifest.components["unet"].inputs)
    for _, shapes in runtime.calls[1:4]:
        assert shapes[timestep] == (4,)
        assert shapes[noisy][0] == shapes[condition][0] == 4
    (decoder_input,) = runtime.calls[4][1].values()
    assert decoder_input[0] == 4
    assert (result.samples, result.seed, result.steps) == (4, 11, 3)
    assert result.image.shape == (256, 256) and result.image.dtype == np.uint8


def test_the_mean_of_identical_samples_is_exactly_one_run(recording: tuple[Manifest, _RecordingRuntime]) -> None:
    manifest, runtime = recording
    pipeline = SRPipeline(manifest, runtime)
    single = pipeline.upscale(LR, steps=3, seed=5)
    repeated = pipeline.upscale_seeds(LR, steps=3, seeds=[5, 5, 5])
    assert single.uncertainty is None and single.samples == 1
    np.testing.assert_array_equal(repeated.image, single.image)
    assert repeated.uncertainty is not None and repeated.samples == 3
    assert float(repeated.uncertainty.max()) < 1e-3  # the same noise thrice: no spread to speak of


def test_sample_k_is_the_one_sample_request_with_seed_plus_k(recording: tuple[Manifest, _RecordingRuntime]) -> None:
    manifest, runtime = recording
    pipeline = SRPipeline(manifest, runtime)
    runtime.decoded.clear()
    first = SEED_MAX - 1  # the seeds wrap: SEED_MAX - 1, SEED_MAX, 0
    result = pipeline.upscale(LR, steps=3, seed=first, samples=3)
    (batched,) = runtime.decoded
    singles = []
    for seed in (SEED_MAX - 1, SEED_MAX, 0):
        runtime.decoded.clear()
        pipeline.upscale(LR, steps=3, seed=seed)
        singles.append(runtime.decoded[0][0])
    np.testing.assert_allclose(batched, np.stack(singles), atol=1e-5)
    expected_mean = to_pixels(np.mean(singles, axis=0)).astype(int)
    assert np.abs(result.image.astype(int) - expected_mean).max() <= 1
    assert result.uncertainty is not None and result.uncertainty.dtype == np.float32
    expected_spread = (np.clip(np.stack(singles), -1, 1).astype(np.float64) * 127.5).std(axis=0)
    np.testing.assert_allclose(result.uncertainty, expected_spread, atol=1e-2)
    assert float(result.uncertainty.mean()) > 0.01  # different noises, different samples


@pytest.mark.parametrize("samples", [0, 9, -1])
def test_samples_outside_1_to_8_are_refused(recording: tuple[Manifest, _RecordingRuntime], samples: int) -> None:
    manifest, runtime = recording
    pipeline = SRPipeline(manifest, runtime)
    runtime.calls.clear()
    with pytest.raises(ValueError, match=f"^samples must be between 1 and 8, got {samples}$"):
        pipeline.upscale(LR, steps=3, seed=0, samples=samples)
    with pytest.raises(ValueError, match="samples must be between 1 and 8, got 0"):
        pipeline.upscale_seeds(LR, steps=3, seeds=[])
    assert runtime.calls == []  # refused before any inference


def test_a_model_with_a_step_graph_runs_its_host_loop_through_the_unet(tiny_step_engine_dir: Path) -> None:
    """ONNX Runtime loops on the host over unet.onnx: it never opens a session for unet_step (TensorRT's)."""
    manifest = load_manifest(tiny_step_engine_dir)
    assert "unet_step" in manifest.components
    onnx = OnnxRuntime(manifest, tiny_step_engine_dir, threads=1)
    assert sorted(onnx._sessions) == ["decoder", "encoder", "unet"]
    with pytest.raises(KeyError, match="unet_step"):
        onnx.run("unet_step", {})
    runtime = _RecordingRuntime(onnx)
    result = SRPipeline(manifest, runtime).upscale(LR, steps=3, seed=1)
    assert [component for component, _ in runtime.calls] == ["encoder", "unet", "unet", "unet", "decoder"]
    assert result.image.shape == (256, 256)


# --- the one-pass estimate -----------------------------------------------------------------------------------


def test_the_estimate_is_one_unet_pass_at_the_last_timestep_from_a_zero_latent(
    recording: tuple[Manifest, _RecordingRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest, runtime = recording
    fed: list[dict[str, np.ndarray]] = []
    run = runtime.run

    def remember(component: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if component == "unet":
            fed.append({name: value.copy() for name, value in feeds.items()})
        return run(component, feeds)

    monkeypatch.setattr(runtime, "run", remember)
    runtime.calls.clear()
    result = SRPipeline(manifest, runtime).estimate(LR)
    assert [component for component, _ in runtime.calls] == ["encoder", "unet", "decoder"]
    noisy, timestep, _ = (spec.name for spec in manifest.components["unet"].inputs)
    (feeds,) = fed
    assert not feeds[noisy].any() and feeds[timestep].tolist() == [manifest.sampler.num_train_timesteps - 1]
    assert (result.answer, result.steps, result.samples, result.seed, result.uncertainty) == (
        "estimate", 1, 0, None, None
    )


def test_the_estimate_is_the_networks_x0_there_and_a_batch_changes_no_answer(tiny_engine_dir: Path) -> None:
    """The DDIM step to alpha = 1 returns the predicted x0 for any prediction type (the tiny model is v-prediction),
    and each image of a batch gets the answer it gets alone."""
    manifest = load_manifest(tiny_engine_dir)
    runtime = load_runtime("onnxruntime", manifest, tiny_engine_dir, threads=1)
    pipeline = SRPipeline(manifest, runtime)
    lr_latent = runtime.run("encoder", {"lr_image": (LR[None, None] / 127.5 - 1).astype(np.float32)})
    last = manifest.sampler.num_train_timesteps - 1
    feeds = {"noisy_latent": np.zeros_like(lr_latent), "timestep": np.array([last], np.float32), "lr_latent": lr_latent}
    v = runtime.run("unet", feeds)
    x0 = -np.sqrt(1 - manifest.sampler.alphas_cumprod[last]) * v  # v-prediction at x_t = 0
    hr = runtime.run("decoder", {"hr_latent": (x0 / manifest.latent.target_scale + lr_latent).astype(np.float32)})
    np.testing.assert_array_equal(pipeline.estimate(LR).image, to_pixels(hr[0, 0]))
    other = LR[::-1].copy()
    batch = pipeline.estimate_batch([LR, other, LR])
    np.testing.assert_array_equal(batch[0].image, batch[2].image)
    np.testing.assert_array_equal(batch[1].image, pipeline.estimate(other).image)


def test_choose_answer_is_the_one_rule_for_every_caller(tiny_engine_dir: Path) -> None:
    spec = load_manifest(tiny_engine_dir).sampler
    assert choose_answer(spec) == AnswerPlan("estimate", 1, 0)
    assert choose_answer(spec, steps=3) == AnswerPlan("samples", 3, spec.default_samples)
    assert choose_answer(spec, samples=2) == AnswerPlan("samples", spec.default_steps, 2)
    old = spec.model_copy(update={"default_answer": "samples"})
    assert choose_answer(old) == AnswerPlan("samples", spec.default_steps, spec.default_samples)
    with pytest.raises(ValueError, match="steps must be between 2 and 50 for model m, got 99"):
        choose_answer(spec, steps=99, model="m")
    with pytest.raises(ValueError, match="samples must be between 1 and 8"):
        choose_answer(spec, samples=9)

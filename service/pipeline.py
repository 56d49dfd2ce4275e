"""encode → denoise loop → decode, backend-agnostic and timed per stage (diffusers' pipeline __call__ shape).

``samples=K`` runs K diffusion samples of one image as one batch of K through the UNet loop and the decoder
(the encoder once), and answers their posterior mean with the per-pixel spread beside it (service/uncertainty.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from xraysr.service.manifest import MAX_SAMPLES, Manifest
from xraysr.service.runtimes import DeviceLoop, Runtime
from xraysr.service.sampler import DDIMSampler, initial_noise, sample_seeds
from xraysr.service.uncertainty import mean_and_spread


@dataclass
class UpscaleResult:
    image: np.ndarray  # uint8, hr_size × hr_size: the mean of the samples
    steps: int
    seed: int  # the first sample's; sample k had seed + k (service.sampler.sample_seeds)
    samples: int
    uncertainty: np.ndarray | None  # float32 per-pixel std across the samples in grey levels; None for one
    stage_seconds: dict[str, float] = field(default_factory=dict)


class Stopped(Exception):
    """The denoising loop was asked to stop between steps (its clients left, or the server is shutting down)."""


def to_model_range(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float32) / 127.5 - 1.0


def to_pixels(values: np.ndarray) -> np.ndarray:
    return np.round((np.clip(values, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def check_samples(samples: int, name: str = "samples") -> int:
    """``samples`` when it is a count the pipeline runs (1..MAX_SAMPLES); else a ValueError naming the range."""
    if not 1 <= samples <= MAX_SAMPLES:
        raise ValueError(f"{name} must be between 1 and {MAX_SAMPLES}, got {samples}")
    return samples


class SRPipeline:
    def __init__(self, manifest: Manifest, runtime: Runtime) -> None:
        self.manifest = manifest
        self.runtime = runtime
        self._names = {
            name: [spec.name for spec in component.inputs] for name, component in manifest.components.items()
        }

    def upscale(self, lr_image: np.ndarray, steps: int, seed: int, samples: int = 1) -> UpscaleResult:
        """An ``lr_size²`` uint8 image → the mean of ``samples`` ``hr_size²`` samples, with seconds per stage.

        Sample k draws its noise from seed ``seed + k`` (wrapping past 2³¹ − 1), so it is the image that
        ``samples=1`` with that seed gives.
        """
        return self.upscale_seeds(lr_image, steps, sample_seeds(seed, check_samples(samples)))

    def upscale_seeds(self, lr_image: np.ndarray, steps: int, seeds: Sequence[int]) -> UpscaleResult:
        """``upscale`` with one explicit seed per sample: the batch is ``len(seeds)`` samples."""
        return self.upscale_batch([(lr_image, seeds)], steps)[0]

    def upscale_batch(
        self,
        items: Sequence[tuple[np.ndarray, Sequence[int]]],
        steps: int,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[UpscaleResult]:
        """Several images, each with its own seeds, as one engine batch of every sample (dynamic batching).

        Each result equals what ``upscale_seeds`` gives for that image alone: the noise of a sample depends only
        on its seed, and the engines treat each batch row independently. ``should_stop`` is asked before every
        denoising step; when it answers True the loop ends with ``Stopped`` (all of the batch's clients left).
        Stage times are the batch's, shared by its images.
        """
        size = self.manifest.image.lr_size
        for lr_image, seeds in items:
            if lr_image.dtype != np.uint8 or lr_image.shape != (size, size):
                raise ValueError(f"expected a {size}x{size} uint8 image, got {lr_image.dtype} {lr_image.shape}")
            check_samples(len(seeds))
        counts = [len(seeds) for _, seeds in items]
        latent, sampler = self.manifest.latent, DDIMSampler(self.manifest.sampler)
        timesteps = sampler.set_timesteps(steps)
        stage_seconds: dict[str, float] = {}
        device_seconds: dict[str, float] = {}

        # 1. encode: bicubic ×4 and the VAE encoder, both inside the encoder graph, once per image
        started = time.perf_counter()
        (encoder_input,) = self._names["encoder"]
        images = np.stack([to_model_range(lr_image)[None] for lr_image, _ in items])
        lr_latent = np.repeat(self.runtime.run("encoder", {encoder_input: images}), counts, axis=0)
        stage_seconds["encode"] = time.perf_counter() - started
        self._device_time(device_seconds, "encode_gpu", "encoder")

        # 2. denoise: x_T ~ N(0, I) for each sample's seed, then the DDIM loop on the scaled residual, as one batch
        started = time.perf_counter()
        seeds = [seed for _, item_seeds in items for seed in item_seeds]
        sample = np.concatenate([initial_noise(lr_latent[:1].shape, seed) for seed in seeds])
        if "unet_step" in self.manifest.components and isinstance(self.runtime, DeviceLoop):
            # The same update inside the graph (training/export.py's unet_step): the loop stays on the GPU, so
            # it cannot stop between steps.
            alphas = np.array([sampler.alphas(int(timestep)) for timestep in timesteps], dtype=np.float32)
            sample = self.runtime.denoise(sample, lr_latent, timesteps, alphas)
            self._device_time(device_seconds, "denoise_gpu", "denoise")
        else:
            sample = self._denoise_on_host(sampler, sample, lr_latent, timesteps, device_seconds, should_stop)
        hr_latent = sample / np.float32(latent.target_scale)
        if latent.target == "residual":
            hr_latent = hr_latent + lr_latent
        stage_seconds["denoise"] = time.perf_counter() - started

        # 3. vae_decode: latents → images, each image's mean (and spread) over its samples back to 8-bit
        started = time.perf_counter()
        (decoder_input,) = self._names["decoder"]
        hr_images = self.runtime.run("decoder", {decoder_input: hr_latent.astype(np.float32)})[:, 0]
        results, first = [], 0
        for (_, item_seeds), count in zip(items, counts, strict=True):
            mean, spread = mean_and_spread(hr_images[first : first + count])
            first += count
            results.append(
                UpscaleResult(
                    image=to_pixels(mean), steps=steps, seed=item_seeds[0], samples=count, uncertainty=spread
                )
            )
        stage_seconds["vae_decode"] = time.perf_counter() - started
        self._device_time(device_seconds, "vae_decode_gpu", "decoder")
        for result in results:
            result.stage_seconds = {**stage_seconds, **device_seconds}
        return results

    def _device_time(self, device_seconds: dict[str, float], stage: str, component: str) -> None:
        """A GPU runtime times each run with CUDA events (``last_gpu_seconds``); add that beside host time."""
        last = getattr(self.runtime, "last_gpu_seconds", {})
        if component in last:
            device_seconds[stage] = device_seconds.get(stage, 0.0) + last[component]

    def _denoise_on_host(
        self,
        sampler: DDIMSampler,
        sample: np.ndarray,
        lr_latent: np.ndarray,
        timesteps: np.ndarray,
        device_seconds: dict[str, float],
        should_stop: Callable[[], bool] | None,
    ) -> np.ndarray:
        """The UNet on the runtime, the DDIM update in numpy, once per timestep for the whole batch."""
        noisy_name, timestep_name, condition_name = self._names["unet"]
        for timestep in timesteps:
            if should_stop is not None and should_stop():
                raise Stopped(f"stopped before timestep {int(timestep)}: nobody is waiting for this batch")
            prediction = self.runtime.run(
                "unet",
                {
                    noisy_name: sample,
                    timestep_name: np.full((len(sample),), timestep, dtype=np.float32),
                    condition_name: lr_latent,
                },
            )
            self._device_time(device_seconds, "denoise_gpu", "unet")
            sample = sampler.step(prediction, int(timestep), sample)
        return sample

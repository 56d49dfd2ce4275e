"""encode → denoise → decode, backend-agnostic and timed per stage (diffusers' pipeline __call__ shape).

Two answers, one pipeline. ``estimate`` is the default: the UNet's x0 prediction at the last timestep from a
zero latent (the mean of x_T), one network pass, the same bytes whatever the seed — the posterior-mean estimate
the model was trained to give there. ``upscale`` runs the reverse-diffusion loop: K diffusion samples of one
image as one batch of K through the UNet loop and the decoder (the encoder once), answering their mean with the
per-pixel spread beside it (service/uncertainty.py). Both share encode, denoise and decode below.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from xraysr.service.manifest import MAX_SAMPLES, AnswerKind, Manifest, SamplerSpec
from xraysr.service.runtimes import DeviceLoop, Runtime
from xraysr.service.sampler import DDIMSampler, estimate_input, initial_noise, sample_seeds
from xraysr.service.uncertainty import mean_and_spread

# "estimate": one network pass, no noise drawn; "samples": the mean of K reverse-diffusion samples.
Answer = AnswerKind


@dataclass
class UpscaleResult:
    image: np.ndarray  # uint8, hr_size × hr_size: the estimate, or the mean of the samples
    steps: int  # network passes per image: 1 for the estimate
    seed: int | None  # the first sample's (sample k had seed + k, service.sampler.sample_seeds); None: estimate
    samples: int  # diffusion samples averaged: 0 for the estimate, which draws none
    uncertainty: np.ndarray | None  # float32 per-pixel std across the samples in grey levels; None below two
    stage_seconds: dict[str, float] = field(default_factory=dict)
    sample_images: np.ndarray | None = None  # uint8 (K, H, W): each diffusion sample as shown alone; None below two

    @property
    def answer(self) -> Answer:
        return "estimate" if self.seed is None else "samples"

    def describe(self) -> str:
        """What made this image, in words: for PNG provenance, DICOM DerivationDescription and the CLI."""
        if self.seed is None:
            return "the one-pass estimate (the network's posterior mean, no noise drawn)"
        seeds = sample_seeds(self.seed, self.samples)
        if self.samples == 1:
            return f"{self.steps} DDIM steps, seed {seeds[0]}"
        return f"{self.steps} DDIM steps, mean of {self.samples} samples, seeds {seeds[0]} to {seeds[-1]}"


class Stopped(Exception):
    """The denoising loop was asked to stop between steps (its clients left, or the server is shutting down)."""


def to_model_range(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float32) / 127.5 - 1.0


def to_pixels(values: np.ndarray) -> np.ndarray:
    return np.round((np.clip(values, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


@dataclass(frozen=True)
class AnswerPlan:
    """Which answer a request gets, and at what cost: the estimate is one pass (steps 1, samples 0)."""

    answer: Answer
    steps: int
    samples: int


def choose_answer(
    spec: SamplerSpec, steps: int | None = None, samples: int | None = None, model: str = ""
) -> AnswerPlan:
    """The one rule for the route, the CLI and every other caller: naming ``steps`` or ``samples`` asks for the
    reverse-diffusion loop (the other taken from the manifest's defaults); naming neither gets the manifest's
    ``default_answer``. Raises ValueError, naming the range (and ``model``), for a count the model does not take."""
    if steps is None and samples is None and spec.default_answer == "estimate":
        return AnswerPlan("estimate", 1, 0)
    steps = spec.default_steps if steps is None else steps
    if not spec.min_steps <= steps <= spec.max_steps:
        of_model = f" for model {model}" if model else ""
        raise ValueError(f"steps must be between {spec.min_steps} and {spec.max_steps}{of_model}, got {steps}")
    return AnswerPlan("samples", steps, check_samples(spec.default_samples if samples is None else samples))


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

    def answer(self, lr_image: np.ndarray, plan: AnswerPlan, seed: int) -> UpscaleResult:
        """What ``plan`` asks for: the estimate (``seed`` unused), or the mean of its samples from ``seed``."""
        return self.answer_batch([(lr_image, sample_seeds(seed, plan.samples))], plan.answer, plan.steps)[0]

    def answer_batch(
        self,
        items: Sequence[tuple[np.ndarray, Sequence[int]]],
        answer: Answer,
        steps: int,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[UpscaleResult]:
        """Several images as one engine batch, each with its samples' seeds: the one-pass estimate of each (the
        seeds unused), or the mean of its samples after ``steps`` steps. The route's batcher, the Python API and
        ``answer`` all choose here."""
        if answer == "estimate":
            return self.estimate_batch([image for image, _ in items], should_stop)
        return self.upscale_batch(items, steps, should_stop)

    def estimate(self, lr_image: np.ndarray) -> UpscaleResult:
        """An ``lr_size²`` uint8 image → the model's one-pass estimate, with seconds per stage."""
        return self.estimate_batch([lr_image])[0]

    def estimate_batch(
        self, lr_images: Sequence[np.ndarray], should_stop: Callable[[], bool] | None = None
    ) -> list[UpscaleResult]:
        """The one-pass estimate of several images as one engine batch; each equals ``estimate`` of it alone."""
        sampler = DDIMSampler(self.manifest.sampler)
        timesteps = sampler.set_estimate()
        return self._run([(image, None) for image in lr_images], sampler, timesteps, should_stop)

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
        for _, seeds in items:
            check_samples(len(seeds))
        sampler = DDIMSampler(self.manifest.sampler)
        return self._run(items, sampler, sampler.set_timesteps(steps), should_stop)

    def _run(
        self,
        items: Sequence[tuple[np.ndarray, Sequence[int] | None]],
        sampler: DDIMSampler,
        timesteps: np.ndarray,
        should_stop: Callable[[], bool] | None,
    ) -> list[UpscaleResult]:
        """Images with their seeds (None: the estimate, one row from ``estimate_input``) through the engines."""
        size = self.manifest.image.lr_size
        for lr_image, _ in items:
            if lr_image.dtype != np.uint8 or lr_image.shape != (size, size):
                raise ValueError(f"expected a {size}x{size} uint8 image, got {lr_image.dtype} {lr_image.shape}")
        counts = [1 if seeds is None else len(seeds) for _, seeds in items]
        latent = self.manifest.latent
        stage_seconds: dict[str, float] = {}
        device_seconds: dict[str, float] = {}

        # 1. encode: bicubic ×4 and the VAE encoder, both inside the encoder graph, once per image
        started = time.perf_counter()
        (encoder_input,) = self._names["encoder"]
        images = np.stack([to_model_range(lr_image)[None] for lr_image, _ in items])
        lr_latent = np.repeat(self.runtime.run("encoder", {encoder_input: images}), counts, axis=0)
        stage_seconds["encode"] = time.perf_counter() - started
        self._device_time(device_seconds, "encode_gpu", "encoder")

        # 2. denoise: x_T ~ N(0, I) for each sample's seed (a zero latent for an estimate), then the DDIM loop on
        # the scaled residual, as one batch; the estimate's "loop" is its single step to alpha = 1, x0 itself
        started = time.perf_counter()
        shape = lr_latent[:1].shape
        latents = np.concatenate(
            [
                estimate_input(shape) if seeds is None else np.concatenate([initial_noise(shape, s) for s in seeds])
                for _, seeds in items
            ]
        )
        if "unet_step" in self.manifest.components and isinstance(self.runtime, DeviceLoop):
            # The same update inside the graph (training/export.py's unet_step): the loop stays on the GPU, so
            # it cannot stop between steps.
            alphas = np.array([sampler.alphas(int(timestep)) for timestep in timesteps], dtype=np.float32)
            latents = self.runtime.denoise(latents, lr_latent, timesteps, alphas)
            self._device_time(device_seconds, "denoise_gpu", "denoise")
        else:
            latents = self._denoise_on_host(sampler, latents, lr_latent, timesteps, device_seconds, should_stop)
        hr_latent = latents / np.float32(latent.target_scale)
        if latent.target == "residual":
            hr_latent = hr_latent + lr_latent
        stage_seconds["denoise"] = time.perf_counter() - started

        # 3. vae_decode: latents → images, each image's mean (and spread) over its samples back to 8-bit
        started = time.perf_counter()
        (decoder_input,) = self._names["decoder"]
        hr_images = self.runtime.run("decoder", {decoder_input: hr_latent.astype(np.float32)})[:, 0]
        results, first = [], 0
        for (_, item_seeds), count in zip(items, counts, strict=True):
            decoded = hr_images[first : first + count]
            mean, spread = mean_and_spread(decoded)
            first += count
            seed, samples = (None, 0) if item_seeds is None else (item_seeds[0], count)
            each = np.stack([to_pixels(image) for image in decoded]) if count > 1 else None
            results.append(
                UpscaleResult(
                    image=to_pixels(mean),
                    steps=len(timesteps),
                    seed=seed,
                    samples=samples,
                    uncertainty=spread,
                    sample_images=each,
                )
            )
        stage_seconds["vae_decode"] = time.perf_counter() - started
        self._device_time(device_seconds, "vae_decode_gpu", "decoder")
        for result in results:
            result.stage_seconds = {**stage_seconds, **device_seconds}
        return results

    def _device_time(self, device_seconds: dict[str, float], stage: str, component: str) -> None:
        """A GPU runtime times each run with CUDA events (``last_gpu_seconds``); add that beside host time."""
        last = self.runtime.last_gpu_seconds
        if component in last:
            device_seconds[stage] = device_seconds.get(stage, 0.0) + last[component]

    def _denoise_on_host(
        self,
        sampler: DDIMSampler,
        latents: np.ndarray,
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
                    noisy_name: latents,
                    timestep_name: np.full((len(latents),), timestep, dtype=np.float32),
                    condition_name: lr_latent,
                },
            )
            self._device_time(device_seconds, "denoise_gpu", "unet")
            latents = sampler.step(prediction, int(timestep), latents)
        return latents

"""Latent diffusion for SR: what is diffused, the diffusers schedulers, and the PyTorch reference sampler.

The diffused sample ``x0`` is, by default, the residual between the HR latent and the latent of the
bicubic-upsampled LR image (ResShift's observation: the LR already carries most of the image, so the
model only has to add what bicubic misses), multiplied by ``target_scale`` to unit variance.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from torch import Tensor, nn
from torch.nn import functional as F

from xraysr.service.sampler import ddim_step, floored_timesteps
from xraysr.training.config import DiffusionConfig

Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]


class ConditionEncoder(nn.Module):
    """LR image → LR latent: bicubic upsampling to the HR grid, then the frozen VAE's encoder.

    The upsampling lives inside this module so that it is exported into the encoder's ONNX graph (a
    cubic ``Resize``) and the appliance needs no image library that agrees with torch's bicubic.
    """

    def __init__(self, vae: nn.Module, scale_factor: int) -> None:
        super().__init__()
        self.vae = vae
        self.scale_factor = scale_factor

    def forward(self, lr_image: Tensor) -> Tensor:
        return self.vae.encode(upsample_bicubic(lr_image, self.scale_factor))


def upsample_bicubic(image: Tensor, scale_factor: int) -> Tensor:
    # a = -0.75 and half-pixel centres, the same kernel as cv2.INTER_CUBIC and ONNX Resize(cubic).
    return F.interpolate(image, scale_factor=scale_factor, mode="bicubic", align_corners=False).clamp(-1.0, 1.0)


def make_training_scheduler(config: DiffusionConfig) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
        clip_sample=False,
    )


def make_sampling_scheduler(config: DiffusionConfig, sampler: str | None = None):
    """DDIM or DPM-Solver++ on the training noise schedule.

    "trailing" spacing starts sampling at the last training timestep, where the latent really is pure
    noise (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", table 2).
    """
    shared = dict(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
        timestep_spacing="trailing",
    )
    match sampler or config.sampler:
        case "ddim":
            return DDIMScheduler(clip_sample=False, set_alpha_to_one=True, **shared)
        case "dpmsolver++":
            return DPMSolverMultistepScheduler(
                algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero", **shared
            )
        case other:
            raise ValueError(f"unknown sampler {other!r}; expected 'ddim' or 'dpmsolver++'")


def diffusion_sample(hr_latent: Tensor, lr_latent: Tensor, config: DiffusionConfig, target_scale: float) -> Tensor:
    """The clean sample x0 the model learns to generate."""
    match config.target:
        case "residual":
            return (hr_latent - lr_latent) * target_scale
        case "latent":
            return hr_latent * target_scale


def hr_latent_from_sample(latent: Tensor, lr_latent: Tensor, config: DiffusionConfig, target_scale: float) -> Tensor:
    """The inverse of ``diffusion_sample``."""
    match config.target:
        case "residual":
            return latent / target_scale + lr_latent
        case "latent":
            return latent / target_scale


def regression_target(scheduler: DDPMScheduler, latent: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
    """What the network is trained to output for its prediction type."""
    match scheduler.config.prediction_type:
        case "epsilon":
            return noise
        case "sample":
            return latent
        case "v_prediction":
            return scheduler.get_velocity(latent, noise, timesteps)
        case other:
            raise ValueError(f"unknown prediction type {other!r}")


@torch.no_grad()
def sample_latent(
    denoiser: Denoiser,
    lr_latent: Tensor,
    config: DiffusionConfig,
    target_scale: float,
    steps: int,
    generator: torch.Generator,
    sampler: str | None = None,
    initial_noise: Tensor | None = None,
) -> Tensor:
    """The reference reverse-diffusion loop: pure noise → x0 → HR latent (deterministic for eta=0).

    ``initial_noise`` replaces the draw from ``generator`` for x_T, so another implementation of the loop
    (the service's numpy sampler) can be compared on the very same start.
    """
    if initial_noise is None:
        initial_noise = torch.randn(lr_latent.shape, generator=generator, dtype=torch.float32)
    if config.final_timestep is not None and (sampler or config.sampler) == "ddim":
        latent = _floored_ddim(denoiser, initial_noise.to(lr_latent.device), lr_latent, config, steps)
        return hr_latent_from_sample(latent, lr_latent, config, target_scale)
    scheduler = make_sampling_scheduler(config, sampler)
    scheduler.set_timesteps(steps, device=lr_latent.device)
    latent = initial_noise.to(lr_latent.device) * scheduler.init_noise_sigma
    step_kwargs = {"eta": config.eta} if isinstance(scheduler, DDIMScheduler) else {}
    for timestep in scheduler.timesteps:
        model_input = scheduler.scale_model_input(latent, timestep)
        prediction = denoiser(model_input, timestep.expand(latent.shape[0]), lr_latent)
        latent = scheduler.step(prediction, timestep, latent, generator=generator, **step_kwargs).prev_sample
    return hr_latent_from_sample(latent, lr_latent, config, target_scale)


def _floored_ddim(denoiser: Denoiser, noise: Tensor, lr_latent: Tensor, config: DiffusionConfig, steps: int) -> Tensor:
    """Deterministic DDIM from T - 1 down to ``config.final_timestep`` (service/sampler.py's floored spacing and
    ``ddim_step``), returning the x0 estimate there. diffusers' DDIMScheduler steps by a fixed ratio, so this loop
    is ours."""
    if config.eta != 0.0:
        raise ValueError("final_timestep needs deterministic DDIM (eta = 0)")
    assert config.final_timestep is not None
    alphas_cumprod = make_training_scheduler(config).alphas_cumprod.to(torch.float64)
    timesteps = floored_timesteps(config.num_train_timesteps, steps, config.final_timestep).tolist()
    latent = noise
    for index, timestep in enumerate(timesteps):
        prediction = denoiser(latent, torch.full((latent.shape[0],), timestep, device=latent.device), lr_latent)
        alpha = alphas_cumprod[timestep].item()
        alpha_previous = alphas_cumprod[timesteps[index + 1]].item() if index + 1 < len(timesteps) else 1.0
        latent = ddim_step(prediction, latent, alpha, alpha_previous, config.prediction_type)
    return latent


@torch.no_grad()
def super_resolve(
    denoiser: Denoiser,
    condition_encoder: ConditionEncoder,
    vae: nn.Module,
    lr_image: Tensor,
    config: DiffusionConfig,
    target_scale: float,
    steps: int,
    generator: torch.Generator,
    sampler: str | None = None,
    initial_noise: Tensor | None = None,
) -> Tensor:
    """LR images ``B×1×64×64`` in [-1, 1] → SR images ``B×1×256×256`` in [-1, 1]."""
    lr_latent = condition_encoder(lr_image)
    hr_latent = sample_latent(denoiser, lr_latent, config, target_scale, steps, generator, sampler, initial_noise)
    return vae.decode(hr_latent).clamp(-1.0, 1.0)

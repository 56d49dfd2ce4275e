"""Deterministic DDIM (eta = 0) in numpy, from the manifest's noise table: the appliance's reverse diffusion.

Song et al. 2021, "Denoising Diffusion Implicit Models", equation (12) with sigma = 0. It reproduces
diffusers' ``DDIMScheduler(timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False)``, which
the training side samples with; tests/service/test_sampler.py pins the two together.

With the manifest's ``final_timestep`` F the steps are instead spaced evenly from the last training timestep
down to F, and the loop returns the model's x0 estimate at F. Trailing spacing ends at a timestep that falls
as steps rise (T/steps − 1), so each added step lets a sample commit to more detail the input does not hold;
with F fixed, more steps only follow the same path more finely (`floored_timesteps`).

The update itself, ``ddim_step``, is written with + - * / and ** alone, so that numpy (this loop), torch
(training/diffusion.py's floored loop) and the ONNX step graph traced from it (training/export.py) run one copy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xraysr.service.manifest import SamplerSpec

SEED_MAX = 2**31 - 1

# A numpy array or a torch tensor: ``ddim_step`` uses only the arithmetic both implement (+ - * / **), so service
# code can share it with training without importing torch.
ArrayOrTensor = Any


class DDIMSampler:
    def __init__(self, spec: SamplerSpec) -> None:
        self.spec = spec
        self.alphas_cumprod = np.asarray(spec.alphas_cumprod, dtype=np.float64)
        self.timesteps: np.ndarray | None = None
        self._previous: dict[int, int] = {}

    def set_timesteps(self, steps: int) -> np.ndarray:
        """The first step is the last training timestep, where x_T really is noise; then "trailing" spacing,
        or even spacing down to the manifest's ``final_timestep``."""
        if not self.spec.min_steps <= steps <= self.spec.max_steps:
            raise ValueError(f"steps must be in [{self.spec.min_steps}, {self.spec.max_steps}], got {steps}")
        num_train_timesteps = self.spec.num_train_timesteps
        if self.spec.final_timestep is None:
            step_ratio = num_train_timesteps // steps
            spacing = num_train_timesteps / steps
            self.timesteps = np.round(np.arange(num_train_timesteps, 0, -spacing)).astype(np.int64) - 1
            # diffusers steps to t - T // steps, which is not always the next timestep of the list.
            self._previous = {int(t): int(t) - step_ratio for t in self.timesteps}
        else:
            self.timesteps = floored_timesteps(num_train_timesteps, steps, self.spec.final_timestep)
            self._previous = dict(zip(self.timesteps.tolist(), [*self.timesteps[1:].tolist(), -1], strict=True))
        return self.timesteps

    def set_estimate(self) -> np.ndarray:
        """The one-pass estimate's schedule: the last training timestep alone, stepping to alpha = 1, where the
        DDIM update returns the predicted x0 itself (any prediction type)."""
        last = self.spec.num_train_timesteps - 1
        self.timesteps = np.array([last], dtype=np.int64)
        self._previous = {last: -1}
        return self.timesteps

    def alphas(self, timestep: int) -> tuple[float, float]:
        """(alpha_cumprod at t, at t - Δ): the step's only inputs besides the model, also fed to the step graph.

        Past the first timestep, alpha is 1: the latent is x0 itself (diffusers' ``set_alpha_to_one``).
        """
        if self.timesteps is None:
            raise ValueError("call set_timesteps() before alphas() or step()")
        previous = self._previous[timestep]
        alpha_previous = float(self.alphas_cumprod[previous]) if previous >= 0 else 1.0
        return float(self.alphas_cumprod[timestep]), alpha_previous

    def step(self, model_output: np.ndarray, timestep: int, latent: np.ndarray) -> np.ndarray:
        """One update x_t → x_{t-Δ} (``ddim_step``), computed in float64 and returned as float32."""
        alpha_t, alpha_previous = self.alphas(timestep)
        # numpy scalars, not Python floats: under NEP 50 a float64 scalar makes the update float64, rounded once.
        next_latent = ddim_step(
            model_output, latent, np.float64(alpha_t), np.float64(alpha_previous), self.spec.prediction_type
        )
        return next_latent.astype(np.float32)


def ddim_step(
    model_output: ArrayOrTensor,
    latent: ArrayOrTensor,
    alpha_t: ArrayOrTensor | float,
    alpha_prev: ArrayOrTensor | float,
    prediction_type: str,
) -> ArrayOrTensor:
    """One deterministic DDIM update x_t → x_{t-Δ}: Song et al. 2021, "Denoising Diffusion Implicit Models",
    formula (12) with sigma_t = 0 (eta = 0), as diffusers' ``DDIMScheduler.step`` computes it.

    ``alpha_t`` and ``alpha_prev`` are alphas_cumprod (the paper's alpha) at t and at the previous step value,
    1 past the first training timestep (``set_alpha_to_one``): floats, or arrays or tensors that broadcast against
    ``sample`` (the step graph gathers one per batch item). ``prediction_type`` says what ``model_output`` is:
    "epsilon" (the noise), "sample" (x0) or "v_prediction" (v). The result keeps the operands' type and dtype;
    the arithmetic is + - * / and ** only, so numpy runs it, torch runs it, and torch.onnx traces it.
    """
    # 1. compute beta_t = 1 - alpha_t, the variance of the noise in x_t
    beta_t = 1.0 - alpha_t

    # 2. compute "predicted x_0" of formula (12), and the noise epsilon_theta(x_t) it implies
    match prediction_type:
        case "epsilon":
            predicted_noise = model_output
            predicted_x0 = (latent - beta_t**0.5 * model_output) / alpha_t**0.5
        case "sample":
            predicted_x0 = model_output
            predicted_noise = (latent - alpha_t**0.5 * model_output) / beta_t**0.5
        case "v_prediction":
            # v = sqrt(alpha_t) * epsilon - sqrt(beta_t) * x_0 (Salimans & Ho 2022, section 4)
            predicted_x0 = alpha_t**0.5 * latent - beta_t**0.5 * model_output
            predicted_noise = alpha_t**0.5 * model_output + beta_t**0.5 * latent
        case other:
            raise ValueError(f"unknown prediction_type {other!r}; expected 'epsilon', 'sample' or 'v_prediction'")

    # 3. compute the "direction pointing to x_t" of formula (12), sqrt(1 - alpha_prev - sigma_t^2) * epsilon_theta(x_t)
    direction_to_sample = (1.0 - alpha_prev) ** 0.5 * predicted_noise

    # 4. compute x_{t-1} of formula (12); its "random noise" term is zero with sigma_t = 0
    return alpha_prev**0.5 * predicted_x0 + direction_to_sample


def floored_timesteps(num_train_timesteps: int, steps: int, final_timestep: int) -> np.ndarray:
    """``steps`` timesteps from ``num_train_timesteps - 1`` down to ``final_timestep``, evenly spaced and rounded."""
    if not 0 <= final_timestep < num_train_timesteps or steps > num_train_timesteps - final_timestep:
        raise ValueError(f"cannot space {steps} distinct steps from {num_train_timesteps - 1} down to {final_timestep}")
    return np.round(np.linspace(num_train_timesteps - 1, final_timestep, steps)).astype(np.int64)


def estimate_input(shape: tuple[int, ...]) -> np.ndarray:
    """x_T for the one-pass estimate: zeros, the mean of x_T ~ N(0, I). At the last timestep the signal in x_t is
    negligible (sqrt(alpha_cumprod) = 0.006 on the linear schedule), so the x0 predicted there is the model's
    estimate of E[x0 | LR]; feeding the mean rather than a draw makes it one deterministic answer, and models
    trained with ``estimate_fraction`` saw exactly this input."""
    return np.zeros(shape, dtype=np.float32)


def initial_noise(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """x_T for a seed: the same seed gives the same image on every backend."""
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def sample_seeds(seed: int, samples: int) -> list[int]:
    """The seeds of a ``samples``-sample request: ``seed, seed + 1, …``, wrapping past SEED_MAX to 0.

    Sample k of a request is therefore the image a one-sample request with seed ``seed + k`` gives.
    """
    return [(seed + offset) % (SEED_MAX + 1) for offset in range(samples)]

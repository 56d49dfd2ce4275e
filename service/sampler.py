"""Deterministic DDIM (eta = 0) in numpy, from the manifest's noise table: the appliance's reverse diffusion.

Song et al. 2021, "Denoising Diffusion Implicit Models", equation (12) with sigma = 0. It reproduces
diffusers' ``DDIMScheduler(timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False)``, which
the training side samples with; tests/service/test_sampler.py pins the two together.

With the manifest's ``final_timestep`` F the steps are instead spaced evenly from the last training timestep
down to F, and the loop returns the model's x0 estimate at F. Trailing spacing ends at a timestep that falls
as steps rise (T/steps − 1), so each added step lets a sample commit to more detail the input does not hold;
with F fixed, more steps only follow the same path more finely (`floored_timesteps`).
"""

from __future__ import annotations

import numpy as np

from xraysr.service.manifest import SamplerSpec

SEED_MAX = 2**31 - 1


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
        train_steps = self.spec.num_train_timesteps
        if self.spec.final_timestep is None:
            step_ratio = train_steps // steps
            spacing = train_steps / steps
            self.timesteps = np.round(np.arange(train_steps, 0, -spacing)).astype(np.int64) - 1
            # diffusers steps to t - T // steps, which is not always the next timestep of the list.
            self._previous = {int(t): int(t) - step_ratio for t in self.timesteps}
        else:
            self.timesteps = floored_timesteps(train_steps, steps, self.spec.final_timestep)
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

        Past the first timestep, alpha is 1: the sample is x0 itself (diffusers' ``set_alpha_to_one``).
        """
        if self.timesteps is None:
            raise ValueError("call set_timesteps() before alphas() or step()")
        previous = self._previous[timestep]
        alpha_previous = float(self.alphas_cumprod[previous]) if previous >= 0 else 1.0
        return float(self.alphas_cumprod[timestep]), alpha_previous

    def step(self, model_output: np.ndarray, timestep: int, sample: np.ndarray) -> np.ndarray:
        """One update x_t → x_{t-Δ}."""
        # 1. alphas at t and at the previous step value (= t - Δ)
        alpha_t, alpha_previous = self.alphas(timestep)
        beta_t = 1.0 - alpha_t
        # 2. predicted x0 and predicted noise, from whichever the model outputs (DDIM eq. (12), "predicted x0")
        match self.spec.prediction_type:
            case "epsilon":
                predicted_noise = model_output
                predicted_x0 = (sample - np.sqrt(beta_t) * model_output) / np.sqrt(alpha_t)
            case "sample":
                predicted_x0 = model_output
                predicted_noise = (sample - np.sqrt(alpha_t) * model_output) / np.sqrt(beta_t)
            case "v_prediction":
                predicted_x0 = np.sqrt(alpha_t) * sample - np.sqrt(beta_t) * model_output
                predicted_noise = np.sqrt(alpha_t) * model_output + np.sqrt(beta_t) * sample
        # 3. "direction pointing to x_t" with sigma = 0, then x_{t-1} (eq. (12))
        direction = np.sqrt(1.0 - alpha_previous) * predicted_noise
        return (np.sqrt(alpha_previous) * predicted_x0 + direction).astype(np.float32)


def floored_timesteps(train_steps: int, steps: int, final_timestep: int) -> np.ndarray:
    """``steps`` timesteps from ``train_steps - 1`` down to ``final_timestep``, evenly spaced and rounded."""
    if not 0 <= final_timestep < train_steps or steps > train_steps - final_timestep:
        raise ValueError(f"cannot space {steps} distinct steps from {train_steps - 1} down to {final_timestep}")
    return np.round(np.linspace(train_steps - 1, final_timestep, steps)).astype(np.int64)


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

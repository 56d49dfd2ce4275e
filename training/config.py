"""Typed run configuration: one YAML file per run in configs/, validated on load.

Every knob of a run lives here, so a run is reproduced from its YAML alone. Choices are strings
(``Literal``), not booleans, following diffusers' PHILOSOPHY.md.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from xraysr.service.renamed_flags import REMOVED_IN
from xraysr.service.validation import describe_validation_error

logger = logging.getLogger(__name__)

# The three parts of a patient-disjoint split, written by `xraysr prepare` and read by training/data.py.
Split = Literal["train", "val", "test"]
# How an LR image is made from its HR image; training/degradation.py implements each.
Degradation = Literal["cubic", "area", "cubic_aa"]


class _Strict(BaseModel):
    # A misspelt key in a YAML file is an error, not a silently ignored default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    root: Path = Field(description="A folder written by `xraysr prepare`: HR_256/, LR_64/, splits.csv.")
    hr_size: int = Field(256, gt=0)
    lr_size: int = Field(64, gt=0)
    sources: tuple[str, ...] | None = Field(
        None,
        min_length=1,
        description="Train and validate only on these sources of splits.csv (None: all), e.g. to leave one "
        "hospital out and score the model on it as on a hospital it never saw.",
    )

    @model_validator(mode="after")
    def _integer_scale(self) -> DataConfig:
        if self.hr_size % self.lr_size:
            raise ValueError(f"hr_size {self.hr_size} is not a multiple of lr_size {self.lr_size}")
        return self


class Range(_Strict):
    """A closed interval a parameter is drawn from, uniformly."""

    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.high < self.low:
            raise ValueError(f"range low {self.low} is above high {self.high}")
        return self


class AcquisitionConfig(_Strict):
    """How another hospital's films differ: processing, export and noise, applied to the HR before its LR is
    made (training/acquisition.py). Each step is applied to a pair with its probability, several at once; the
    ranges say exactly what a model saw, and the shift test (evaluate-served --shift) goes beyond them."""

    unsharp_probability: float = Field(0.0, ge=0, le=1)
    unsharp_radius: Range = Field(Range(low=0.5, high=3.0), description="Gaussian sigma, HR pixels.")
    unsharp_amount: Range = Field(Range(low=0.2, high=1.5), description="Edge enhancement gain.")
    local_contrast_probability: float = Field(0.0, ge=0, le=1)
    local_contrast_gain: Range = Field(Range(low=-0.3, high=0.6), description="Gain on detail above a broad mean.")
    local_contrast_radius: Range = Field(Range(low=8.0, high=32.0), description="Gaussian sigma of the mean.")
    tone_probability: float = Field(0.0, ge=0, le=1)
    tone_gamma: Range = Field(Range(low=0.7, high=1.4), description="Power curve on [0, 1].")
    resolution_probability: float = Field(0.0, ge=0, le=1)
    resolution_size: Range = Field(
        Range(low=160, high=256), description="Native size the film had before its 256² HR: down by area, up again."
    )
    jpeg_probability: float = Field(0.0, ge=0, le=1)
    jpeg_quality: Range = Field(Range(low=60, high=95))
    noise_probability: float = Field(0.0, ge=0, le=1)
    noise_sigma: Range = Field(Range(low=0.5, high=4.0), description="Gaussian noise, 8-bit grey levels.")

    @model_validator(mode="after")
    def _ranges_in_bounds(self) -> AcquisitionConfig:
        if self.unsharp_radius.low <= 0 or self.local_contrast_radius.low <= 0:
            raise ValueError("blur radii must be positive")
        if self.tone_gamma.low <= 0:
            raise ValueError("tone_gamma must be positive")
        if not 16 <= self.resolution_size.low <= self.resolution_size.high <= 256:
            raise ValueError("resolution_size must lie in [16, 256]")
        if not 1 <= self.jpeg_quality.low <= self.jpeg_quality.high <= 100:
            raise ValueError("jpeg_quality must lie in [1, 100]")
        if self.noise_sigma.low < 0:
            raise ValueError("noise_sigma must be non-negative")
        return self


class AugmentConfig(_Strict):
    """Paired augmentation, applied identically to the LR and HR of a pair."""

    hflip_probability: float = Field(0.5, ge=0, le=1)
    max_rotation_degrees: float = Field(15.0, ge=0, le=45)
    brightness_jitter: float = Field(0.05, ge=0, le=0.5, description="Max additive shift on the [-1, 1] scale.")
    # "degrade_augmented_hr" re-derives the LR from the augmented HR with a real degradation (degradation.py);
    # "augment_lr" warps the stored LR instead, which teaches the model a degradation it never meets.
    lr_source: Literal["degrade_augmented_hr", "augment_lr"] = "degrade_augmented_hr"
    degradations: dict[Degradation, float] = Field(
        default_factory=lambda: {"cubic": 1.0},
        description="Relative weights of the degradations an LR is made with, one drawn per pair "
        "(degrade_augmented_hr only).",
    )
    acquisition: AcquisitionConfig = AcquisitionConfig()

    @model_validator(mode="after")
    def _degradation_weights(self) -> AugmentConfig:
        if any(weight < 0 for weight in self.degradations.values()) or sum(self.degradations.values()) <= 0:
            raise ValueError(f"degradations needs non-negative weights with a positive sum, got {self.degradations}")
        if self.lr_source == "augment_lr" and set(self.degradations) != {"cubic"}:
            raise ValueError("degradations other than cubic need lr_source: degrade_augmented_hr")
        if self.lr_source == "augment_lr" and self.acquisition != AcquisitionConfig():
            raise ValueError("acquisition augmentation changes the HR, so it needs lr_source: degrade_augmented_hr")
        return self


class CxrVAEConfig(_Strict):
    """The project's own 1-channel chest-X-ray VAE."""

    kind: Literal["cxr"] = "cxr"
    latent_channels: int = Field(
        16, gt=0, description="f*f (16) gives an identity-initialised, lossless-capable latent."
    )
    downsample_factor: Literal[4] = 4
    hidden_channels: int = Field(32, gt=0, multiple_of=8, description="A multiple of the 8 GroupNorm groups.")
    num_res_blocks: int = Field(2, ge=0)
    checkpoint: Path | None = Field(
        None, description="Weights from `xraysr train-vae`; required to train the SR model."
    )


class DiffusersVAEConfig(_Strict):
    """A pretrained diffusers VAE, frozen; grayscale is replicated to its 3 input channels."""

    kind: Literal["diffusers"] = "diffusers"
    architecture: Literal["autoencoder_kl", "autoencoder_tiny"] = "autoencoder_kl"
    model: str = Field(description="A hub id (resolved offline from the local cache) or a local folder.")
    subfolder: str | None = None


VAEConfig = Annotated[CxrVAEConfig | DiffusersVAEConfig, Field(discriminator="kind")]


class UNetConfig(_Strict):
    base_channels: int = Field(32, gt=0, multiple_of=8, description="A multiple of the 8 GroupNorm groups.")
    channel_multipliers: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = Field(1, ge=1)
    time_embed_dim: int = Field(128, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)


class DiffusionConfig(_Strict):
    # "regression": the ablation a diffusion model has to justify itself against. The same UNet is trained
    # only at the last timestep, where its input is pure noise, so it learns the conditional mean in one step
    # (L2 on x0); exported, it is served with steps = 1.
    objective: Literal["diffusion", "regression"] = "diffusion"
    num_train_timesteps: int = Field(1000, gt=1)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon"
    # "residual": diffuse z(HR) - z(bicubic LR), ResShift-style; "latent": diffuse z(HR) itself.
    target: Literal["residual", "latent"] = "residual"
    target_scale: float | Literal["auto"] = Field(
        "auto", description="Multiplier bringing the diffused target to unit std; 'auto' measures it on train data."
    )
    sampler: Literal["ddim", "dpmsolver++"] = "ddim"
    # Reverse-diffusion steps of the validation grid: `steps` in the HTTP query and the CLI. Training steps are
    # always named as such (optim.max_steps); the diffusion's timesteps are num_train_timesteps.
    sampling_steps: int = Field(25, ge=1, le=1000)
    eta: float = Field(0.0, ge=0, le=1)
    final_timestep: int | None = Field(
        None,
        ge=0,
        description="DDIM only: space the steps evenly down to this timestep and answer the x0 estimate there "
        "(service/sampler.py); None: trailing spacing.",
    )
    # The one-pass estimate the service answers by default (service/sampler.py, estimate_input): the x0 the
    # UNet predicts at the last timestep from a zero latent, the mean of x_T. This share of every batch is
    # trained on exactly that input with L2 on x0, the rest on the diffusion objective: one network, both jobs.
    estimate_fraction: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, values: Any) -> Any:
        """``sample_steps`` is the old name of ``sampling_steps`` (0.2), still read from configs and checkpoints."""
        if isinstance(values, dict) and "sample_steps" in values:
            if "sampling_steps" in values:
                raise ValueError("sample_steps is the old name of sampling_steps: give one of the two")
            logger.warning(
                "diffusion.sample_steps is renamed diffusion.sampling_steps; the old name goes in %s", REMOVED_IN
            )
            values = {**values, "sampling_steps": values["sample_steps"]}
            del values["sample_steps"]
        return values

    @model_validator(mode="after")
    def _regression_predicts_the_sample(self) -> DiffusionConfig:
        if self.objective == "regression" and (self.prediction_type != "sample" or self.sampling_steps != 1):
            raise ValueError("objective regression needs prediction_type: sample and sampling_steps: 1")
        if self.estimate_fraction > 0 and self.prediction_type != "sample":
            raise ValueError("estimate_fraction trains the x0 estimate directly: it needs prediction_type: sample")
        return self


class OptimConfig(_Strict):
    learning_rate: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(100, ge=0)
    batch_size: int = Field(16, gt=0)
    max_steps: int = Field(2000, gt=0)
    grad_clip_norm: float = Field(1.0, gt=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)


class ScheduleConfig(_Strict):
    """How often the loop does its side jobs, in optimiser steps."""

    checkpoint_every: int = Field(500, gt=0)
    validate_every: int = Field(500, gt=0)
    sample_grid_every: int = Field(500, gt=0)
    log_every: int = Field(25, gt=0)
    validation_images: int = Field(16, gt=0)


class _RunConfig(_Strict):
    run_name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    output_dir: Path = Path("runs")
    seed: int = 0
    mixed_precision: Literal["no", "fp16", "bf16"] = Field("no", description="Ignored on CPU.")
    data: DataConfig
    augment: AugmentConfig = AugmentConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.run_name


class VAETrainConfig(_RunConfig):
    vae: CxrVAEConfig = CxrVAEConfig()
    kl_weight: float = Field(1e-4, ge=0, description="Weight of the per-element KL; see vae.kl_divergence.")
    l1_weight: float = Field(1.0, gt=0)
    mse_weight: float = Field(0.0, ge=0)


class SRTrainConfig(_RunConfig):
    vae: VAEConfig
    unet: UNetConfig = UNetConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    init_from: Path | None = Field(
        None,
        description="Start the UNet (and its target scale) from these weights with a fresh optimiser: an SR "
        "checkpoint, or `xraysr import-engines`'s sr_init.pt of a shipped model.",
    )

    @model_validator(mode="after")
    def _vae_has_weights(self) -> SRTrainConfig:
        if isinstance(self.vae, CxrVAEConfig) and self.vae.checkpoint is None:
            raise ValueError("vae.checkpoint is required: train one with `xraysr train-vae` first")
        return self


ConfigT = TypeVar("ConfigT", bound=BaseModel)


class ConfigError(ValueError):
    """A config file that cannot be read or does not validate; the message names the file and the fields."""


def load_config(path: str | Path, config_type: type[ConfigT]) -> ConfigT:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read config {path}: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a YAML mapping, got {type(raw).__name__}")
    try:
        return config_type.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"invalid config {path}: {describe_validation_error(error)}") from error


def save_config(config: BaseModel, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))

"""The trained SR model as one object: frozen VAE + EMA UNet-lite + diffusion settings, from a checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from xraysr.training.checkpoint import load_checkpoint
from xraysr.training.config import SRTrainConfig
from xraysr.training.diffusion import ConditionEncoder, super_resolve
from xraysr.training.unet_lite import UNetLite, build_unet
from xraysr.training.vae import build_frozen_vae


@dataclass
class TorchPipeline:
    config: SRTrainConfig
    unet: UNetLite
    vae: torch.nn.Module
    condition_encoder: ConditionEncoder
    target_scale: float
    step: int

    @classmethod
    def from_checkpoint(cls, path: str | Path, data_root: Path | None = None) -> TorchPipeline:
        """Loads the EMA weights of an `xraysr train` checkpoint; ``data_root`` overrides the data folder."""
        state = load_checkpoint(Path(path))
        raw = state["config"]
        if data_root is not None:
            raw = {**raw, "data": {**raw["data"], "root": str(data_root)}}
        config = SRTrainConfig.model_validate(raw)
        vae = build_frozen_vae(config.vae)
        unet = build_unet(config.unet, vae.latent_channels)
        unet.load_state_dict(state["ema"])
        unet.eval().requires_grad_(False)
        encoder = ConditionEncoder(vae, config.data.hr_size // config.data.lr_size)
        return cls(config, unet, vae, encoder, float(state["target_scale"]), int(state["step"]))

    @torch.no_grad()
    def __call__(
        self,
        lr_image: torch.Tensor,
        steps: int,
        generator: torch.Generator,
        sampler: str | None = None,
        initial_noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``B×1×64×64`` LR in [-1, 1] → ``B×1×256×256`` SR in [-1, 1]."""
        return super_resolve(
            self.unet,
            self.condition_encoder,
            self.vae,
            lr_image,
            self.config.diffusion,
            self.target_scale,
            steps,
            generator,
            sampler,
            initial_noise,
        )

"""The latent codecs: the project's own chest-X-ray VAE and a frozen pretrained diffusers VAE.

Both map a ``B×1×H×W`` image in [-1, 1] to a ``B×C×H/f×W/f`` latent and back, so the diffusion model
and the export code never ask which one they hold (``LatentCodec``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn

from xraysr.training.config import CxrVAEConfig, DiffusersVAEConfig, VAEConfig
from xraysr.training.layers import ResBlock, group_norm

logger = logging.getLogger(__name__)


class LatentCodec(Protocol):
    latent_channels: int
    downsample_factor: int

    def encode(self, image: Tensor) -> Tensor: ...

    def decode(self, latent: Tensor) -> Tensor: ...


class CxrVAE(nn.Module):
    """A 1-channel VAE working at ``1/f`` resolution after a space-to-depth (pixel-unshuffle) stem.

    Args:
        latent_channels: channels of the latent. With ``f*f`` channels the latent has the image's
            dimensionality, and a parameter-free space-to-depth skip makes the untrained codec an exact
            identity: the reconstruction ceiling starts above any SR target and training only has to keep it
            there while shaping a smooth latent (KL). The diffusion model can never beat this ceiling.
        downsample_factor: ``f``; 4 puts the latent of a 256² image at 64², the LR image's own grid.
        hidden_channels: width of the residual stacks.
        num_res_blocks: residual blocks in the encoder and in the decoder.
    """

    def __init__(
        self, latent_channels: int = 16, downsample_factor: int = 4, hidden_channels: int = 64, num_res_blocks: int = 2
    ) -> None:
        super().__init__()
        self.latent_channels = latent_channels
        self.downsample_factor = downsample_factor
        patch_channels = downsample_factor * downsample_factor
        self.identity_skip = latent_channels == patch_channels
        self.encoder = nn.Sequential(
            nn.PixelUnshuffle(downsample_factor),
            nn.Conv2d(patch_channels, hidden_channels, 3, padding=1),
            *[ResBlock(hidden_channels, hidden_channels) for _ in range(num_res_blocks)],
            group_norm(hidden_channels),
            nn.SiLU(),
            nn.Conv2d(hidden_channels, 2 * latent_channels, 3, padding=1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, hidden_channels, 3, padding=1),
            *[ResBlock(hidden_channels, hidden_channels) for _ in range(num_res_blocks)],
            group_norm(hidden_channels),
            nn.SiLU(),
            nn.Conv2d(hidden_channels, patch_channels, 3, padding=1),
        )
        self.depth_to_space = nn.PixelShuffle(downsample_factor)
        self.space_to_depth = nn.PixelUnshuffle(downsample_factor)
        if self.identity_skip:
            # Start as an exact identity with a tiny posterior variance (log-variance bias -10).
            for head in (self.encoder[-1], self.decoder[-1]):
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)
            nn.init.constant_(self.encoder[-1].bias[latent_channels:], -10.0)

    def encode_distribution(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """Returns the posterior's mean and log-variance."""
        moments = self.encoder(image)
        mean, log_variance = moments.chunk(2, dim=1)
        if self.identity_skip:
            mean = mean + self.space_to_depth(image)
        return mean, log_variance.clamp(-30.0, 20.0)

    def encode(self, image: Tensor) -> Tensor:
        return self.encode_distribution(image)[0]

    def decode(self, latent: Tensor) -> Tensor:
        patches = self.decoder(latent)
        if self.identity_skip:
            patches = patches + latent
        return self.depth_to_space(patches)

    def forward(self, image: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Reparameterised reconstruction; returns (reconstruction, mean, log_variance)."""
        mean, log_variance = self.encode_distribution(image)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        latent = mean + torch.exp(0.5 * log_variance) * noise
        return self.decode(latent), mean, log_variance


def kl_divergence(mean: Tensor, log_variance: Tensor) -> Tensor:
    """KL(q(z|x) || N(0, I)) per latent element, averaged like the per-pixel L1 it is weighed against.

    The per-element mean (not the usual sum) makes ``kl_weight`` independent of the image size: at balance
    the posterior std settles near ``kl_weight / 0.8`` on the [-1, 1] scale, so 1e-4 keeps the noise it adds
    far below one grey level and the reconstruction ceiling far above the SR target.
    """
    per_element = 0.5 * (mean.pow(2) + log_variance.exp() - 1.0 - log_variance)
    return per_element.mean()


class PretrainedVAE(nn.Module):
    """A frozen diffusers ``AutoencoderKL`` or ``AutoencoderTiny`` behind the 1-channel codec interface.

    Grayscale is replicated to the 3 channels the model was trained on; the decoded RGB is averaged back
    to one channel. Latents are multiplied by the model's ``scaling_factor`` as diffusers pipelines do.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.latent_channels = int(model.config.latent_channels)
        self.scaling_factor = float(getattr(model.config, "scaling_factor", 1.0))
        # Measured, not read from the config: AutoencoderKL and AutoencoderTiny describe it differently.
        probe_size = 64
        with torch.no_grad():
            probe = self.encode(torch.zeros(1, 1, probe_size, probe_size))
        self.downsample_factor = probe_size // probe.shape[-1]

    def encode(self, image: Tensor) -> Tensor:
        rgb = image.expand(-1, 3, -1, -1)
        encoded = self.model.encode(rgb)
        latent = encoded.latent_dist.mean if hasattr(encoded, "latent_dist") else encoded.latents
        return latent * self.scaling_factor

    def decode(self, latent: Tensor) -> Tensor:
        rgb = self.model.decode(latent / self.scaling_factor).sample
        return rgb.mean(dim=1, keepdim=True)


def load_pretrained_vae(config: DiffusersVAEConfig) -> PretrainedVAE:
    """Loads from a local folder, or a hub id already in the local cache; never from the network."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    match config.architecture:
        case "autoencoder_kl":
            model_class = AutoencoderKL
        case "autoencoder_tiny":
            model_class = AutoencoderTiny
    try:
        stored = model_class.load_config(config.model, subfolder=config.subfolder, local_files_only=True)
    except OSError as error:
        raise FileNotFoundError(
            f"cannot load {config.architecture} VAE {config.model!r} from local files (xraysr never downloads "
            f"weights; put the model folder on disk and name it): {error}"
        ) from error
    # diffusers would build the requested class from another class's folder with random weights and only
    # log the unused ones: a silently random frozen codec. Refuse it here.
    if stored.get("_class_name") != model_class.__name__:
        raise ValueError(
            f"{config.model!r} holds a {stored.get('_class_name')}, but vae.architecture is {config.architecture!r}"
        )
    model = model_class.from_pretrained(config.model, subfolder=config.subfolder, local_files_only=True)
    return PretrainedVAE(model)


def build_cxr_vae(config: CxrVAEConfig) -> CxrVAE:
    return CxrVAE(
        latent_channels=config.latent_channels,
        downsample_factor=config.downsample_factor,
        hidden_channels=config.hidden_channels,
        num_res_blocks=config.num_res_blocks,
    )


def load_cxr_vae(config: CxrVAEConfig, weights: Path | None = None) -> CxrVAE:
    path = weights or config.checkpoint
    if path is None:
        raise ValueError("no CxrVAE weights given: set vae.checkpoint (from `xraysr train-vae`)")
    vae = build_cxr_vae(config)
    state = torch.load(path, map_location="cpu", weights_only=True)
    # A train-vae checkpoint holds the EMA weights under "ema"; a bare state dict is accepted too.
    vae.load_state_dict(state.get("ema", state))
    logger.info("loaded CxrVAE weights from %s", path)
    return vae


def build_frozen_vae(config: VAEConfig) -> nn.Module:
    """The frozen codec the SR model is trained and served with."""
    match config:
        case CxrVAEConfig():
            vae: nn.Module = load_cxr_vae(config)
        case DiffusersVAEConfig():
            vae = load_pretrained_vae(config)
    return vae.eval().requires_grad_(False)

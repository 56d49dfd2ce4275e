"""UNet-lite: a small denoising U-Net conditioned on the LR latent, sized for a Jetson's 25-step loop."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from xraysr.training.config import UNetConfig
from xraysr.training.layers import ResBlock, group_norm


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in "Attention is all you need" / DDPM."""
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, device=timesteps.device) / half)
    angles = timesteps.float()[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return F.pad(embedding, (0, dim % 2))


class UNetLite(nn.Module):
    """Predicts the diffusion target (noise, by default) of a noisy latent given the LR latent.

    The condition is concatenated with the noisy latent at the input, as in the SD x4 upscaler and LDM-SR:
    both live on the same 64×64 grid, so every level sees the LR structure it must refine.

    Args:
        latent_channels: channels of the noisy latent and of the prediction.
        cond_channels: channels of the LR latent concatenated at the input.
        base_channels: width of the first level.
        channel_multipliers: width multiplier per level; each level after the first halves the resolution.
        num_res_blocks: residual blocks per level on each side.
        time_embed_dim: width of the timestep embedding MLP.
        dropout: dropout inside the residual blocks.
    """

    def __init__(
        self,
        latent_channels: int,
        cond_channels: int,
        base_channels: int = 32,
        channel_multipliers: tuple[int, ...] = (1, 2, 4),
        num_res_blocks: int = 1,
        time_embed_dim: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.latent_channels = latent_channels
        self.cond_channels = cond_channels
        self.base_channels = base_channels
        self.time_mlp = nn.Sequential(
            nn.Linear(base_channels, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim)
        )
        self.stem = nn.Conv2d(latent_channels + cond_channels, base_channels, 3, padding=1)

        widths = [base_channels * m for m in channel_multipliers]
        self.down_blocks = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        skip_widths = []
        width = base_channels
        for level, level_width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(width, level_width, time_embed_dim, dropout))
                width = level_width
            self.down_blocks.append(blocks)
            skip_widths.append(width)
            is_last = level == len(widths) - 1
            self.downsamplers.append(nn.Identity() if is_last else nn.Conv2d(width, width, 3, stride=2, padding=1))

        self.middle = nn.ModuleList(
            [ResBlock(width, width, time_embed_dim, dropout), ResBlock(width, width, time_embed_dim, dropout)]
        )

        self.up_blocks = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for level, level_width in reversed(list(enumerate(widths))):
            blocks = nn.ModuleList()
            for index in range(num_res_blocks):
                in_width = width + skip_widths[level] if index == 0 else width
                blocks.append(ResBlock(in_width, level_width, time_embed_dim, dropout))
                width = level_width
            self.up_blocks.append(blocks)
            self.upsamplers.append(
                nn.Identity()
                if level == 0
                else nn.Sequential(
                    nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(width, widths[level - 1], 3, padding=1)
                )
            )
            if level > 0:
                width = widths[level - 1]

        self.head = nn.Sequential(group_norm(width), nn.SiLU(), nn.Conv2d(width, latent_channels, 3, padding=1))
        # A zero head makes the untrained model predict 0, a stable start for any prediction type.
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, noisy_latent: Tensor, timestep: Tensor, lr_latent: Tensor) -> Tensor:
        if timestep.ndim == 0:
            timestep = timestep.expand(noisy_latent.shape[0])
        embedding = self.time_mlp(timestep_embedding(timestep, self.base_channels))
        h = self.stem(torch.cat([noisy_latent, lr_latent], dim=1))
        skips = []
        for blocks, downsample in zip(self.down_blocks, self.downsamplers, strict=True):
            for block in blocks:
                h = block(h, embedding)
            skips.append(h)
            h = downsample(h)
        for block in self.middle:
            h = block(h, embedding)
        for blocks, upsample in zip(self.up_blocks, self.upsamplers, strict=True):
            h = torch.cat([h, skips.pop()], dim=1)
            for block in blocks:
                h = block(h, embedding)
            h = upsample(h)
        return self.head(h)


def build_unet(config: UNetConfig, latent_channels: int) -> UNetLite:
    return UNetLite(
        latent_channels=latent_channels,
        cond_channels=latent_channels,
        base_channels=config.base_channels,
        channel_multipliers=config.channel_multipliers,
        num_res_blocks=config.num_res_blocks,
        time_embed_dim=config.time_embed_dim,
        dropout=config.dropout,
    )


def parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def flops_per_step(model: UNetLite, latent_size: int) -> int:
    """Floating-point operations of one denoising step on one image (multiply-add counted as 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    noisy = torch.zeros(1, model.latent_channels, latent_size, latent_size)
    cond = torch.zeros(1, model.cond_channels, latent_size, latent_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(noisy, torch.tensor([500]), cond)
    return int(counter.get_total_flops())

"""Building blocks shared by the VAE and UNet-lite."""

from __future__ import annotations

from torch import Tensor, nn


def group_norm(channels: int) -> nn.GroupNorm:
    # 8 groups keeps at least 4 channels a group at the narrowest width we use (32).
    return nn.GroupNorm(num_groups=min(8, channels), num_channels=channels, eps=1e-6)


class ResBlock(nn.Module):
    """Pre-activation residual block (GroupNorm → SiLU → conv, twice), optionally shifted by an embedding.

    Args:
        in_channels: input channels.
        out_channels: output channels; a 1×1 conv matches the skip when they differ.
        embed_dim: width of the timestep embedding added after the first conv; 0 for none (the VAE).
        dropout: dropout before the second conv.
    """

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.embed = nn.Linear(embed_dim, out_channels) if embed_dim else None
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.activation = nn.SiLU()
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, embedding: Tensor | None = None) -> Tensor:
        h = self.conv1(self.activation(self.norm1(x)))
        if self.embed is not None:
            if embedding is None:
                raise ValueError("this ResBlock was built with an embedding and needs one")
            h = h + self.embed(self.activation(embedding))[:, :, None, None]
        h = self.conv2(self.dropout(self.activation(self.norm2(h))))
        return self.skip(x) + h

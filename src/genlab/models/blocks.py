"""The networks that several model families share: convolutional encoder and decoder stacks.

The layout follows DCGAN (Radford et al. 2016): each stage halves (or doubles) the side length with a
4x4 stride-2 convolution; GroupNorm keeps the nets independent of batch composition, so training and
sampling behave the same in any batch size. The diffusion UNet's pieces (a sinusoidal timestep embedding and a
residual block conditioned on it) follow Ho et al. 2020, "Denoising Diffusion Probabilistic Models".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from genlab.checks import ConfigError


def check_image_size(image_size: int, channels: Sequence[int]) -> None:
    """Raise a ValueError unless `image_size` survives len(channels) halvings without remainder."""
    factor = 2 ** len(channels)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < factor or image_size % factor:
        raise ConfigError(
            f"image_size={image_size!r} cannot be handled: the network halves it {len(channels)} times "
            f"(channels={list(channels)}), so it must be a positive multiple of {factor}"
        )


def check_channels(channels: Sequence[int]) -> None:
    """Raise a ConfigError unless `channels` is a non-empty list of positive integers that `norm` can split into
    groups (GroupNorm needs a width divisible by its group count, min(32, width // 4))."""
    if not channels or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels):
        raise ConfigError(f"channels must be a non-empty list of positive integers, got {channels!r}")
    for width in channels:
        if width % norm_groups(width):
            fits = [w for w in range(width - 1, 0, -1) if not w % norm_groups(w)][:1]
            fits += [w for w in range(width + 1, 2 * width + 2) if not w % norm_groups(w)][:1]
            raise ConfigError(
                f"channels={list(channels)} give a width that GroupNorm cannot split: {width} is not a multiple of "
                f"its min(32, width // 4) = {norm_groups(width)} groups; use e.g. {' or '.join(map(str, fits))}"
            )


def norm_groups(num_channels: int) -> int:
    return min(32, num_channels // 4) or 1


def norm(num_channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(norm_groups(num_channels), num_channels)


class ConvEncoder(nn.Module):
    """Images (B, C, S, S) -> vectors (B, out_dim), one stride-2 stage per entry of `channels`."""

    def __init__(self, image_channels: int, image_size: int, channels: Sequence[int], out_dim: int) -> None:
        super().__init__()
        check_image_size(image_size, channels)
        layers: list[nn.Module] = []
        prev = image_channels
        for ch in channels:
            layers += [nn.Conv2d(prev, ch, 4, stride=2, padding=1), norm(ch), nn.SiLU()]
            prev = ch
        self.features = nn.Sequential(*layers)
        side = image_size // 2 ** len(channels)
        self.head = nn.Linear(prev * side * side, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))  # (B, C', s, s) -> (B, C's^2) -> (B, out_dim)


class ConvDecoder(nn.Module):
    """Vectors (B, in_dim) -> images (B, C, S, S), mirroring `ConvEncoder` with the same `channels`."""

    def __init__(self, in_dim: int, image_channels: int, image_size: int, channels: Sequence[int]) -> None:
        super().__init__()
        check_image_size(image_size, channels)
        channels = list(channels)[::-1]  # widest first
        self.side = image_size // 2 ** len(channels)
        self.stem = nn.Sequential(nn.Linear(in_dim, channels[0] * self.side**2), nn.SiLU())
        layers: list[nn.Module] = []
        for ch, nxt in zip(channels, [*channels[1:], channels[-1]], strict=True):
            layers += [nn.ConvTranspose2d(ch, nxt, 4, stride=2, padding=1), norm(nxt), nn.SiLU()]
        layers.append(nn.Conv2d(channels[-1], image_channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        h = self.stem(z).view(len(z), -1, self.side, self.side)  # (B, C', s, s)
        return self.body(h)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of (integer or real) timesteps t (B,) -> (B, dim), as the Transformer's positions
    (Vaswani et al. 2017): geometric frequencies from 1 to 1 / max_period, cosines then sines."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]  # (B, 1) * (1, half) -> (B, half)
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    return nn.functional.pad(emb, (0, dim % 2))  # an odd dim gets one zero column


class TimeEmbedding(nn.Module):
    """Timesteps (B,) -> (B, out_dim): the sinusoidal embedding of width `dim` through a two-layer MLP."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.dim))


class TimeResBlock(nn.Module):
    """Residual block (B, in_ch, H, W) -> (B, out_ch, H, W) conditioned on an embedding (B, emb_dim): GroupNorm,
    SiLU, 3x3 convolution twice, with the projected embedding added in between (the DDPM UNet's block).

    The second convolution starts at zero, so every block starts as the identity (on its skip path) and a deep
    UNet trains from the first step."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.block1 = nn.Sequential(norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_ch))
        conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.block2 = nn.Sequential(norm(out_ch), nn.SiLU(), nn.Dropout(dropout), conv2)
        nn.init.zeros_(self.block2[-1].weight)
        nn.init.zeros_(self.block2[-1].bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.block1(x) + self.emb(emb)[:, :, None, None]  # (B, out_ch) -> (B, out_ch, 1, 1) over all pixels
        return self.skip(x) + self.block2(h)

"""The networks that several model families share: convolutional encoder and decoder stacks.

The layout follows DCGAN (Radford et al. 2016): each stage halves (or doubles) the side length with a
4x4 stride-2 convolution; GroupNorm keeps the nets independent of batch composition, so training and
sampling behave the same in any batch size.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


def check_image_size(image_size: int, channels: Sequence[int]) -> None:
    """Raise a ValueError unless `image_size` survives len(channels) halvings without remainder."""
    factor = 2 ** len(channels)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < factor or image_size % factor:
        raise ValueError(
            f"image_size={image_size!r} cannot be handled: the network halves it {len(channels)} times "
            f"(channels={list(channels)}), so it must be a positive multiple of {factor}"
        )


def norm(num_channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, num_channels // 4) or 1, num_channels)


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

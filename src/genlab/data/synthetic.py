"""Synthetic images of simple shapes with labels: seeded, any size, made in memory. For tests and smoke runs."""

from __future__ import annotations

import torch
from torch import Tensor

from genlab.checks import ConfigError, check_positive_int
from genlab.data.base import ImageDataModule, check_split

SHAPES = ("disk", "square", "cross", "ring", "diamond", "hbar", "vbar", "triangle")


def shape_masks(label: int, dx: Tensor, dy: Tensor) -> Tensor:
    """Boolean masks (n, S, S) of shape `SHAPES[label]` in coordinates scaled to the shape's radius."""
    name = SHAPES[label]
    if name == "disk":
        return dx**2 + dy**2 <= 1
    if name == "square":
        return torch.maximum(dx.abs(), dy.abs()) <= 0.8
    if name == "cross":
        return ((dx.abs() <= 0.25) & (dy.abs() <= 1)) | ((dy.abs() <= 0.25) & (dx.abs() <= 1))
    if name == "ring":
        r2 = dx**2 + dy**2
        return (r2 <= 1) & (r2 >= 0.4)
    if name == "diamond":
        return dx.abs() + dy.abs() <= 1
    if name == "hbar":
        return (dy.abs() <= 0.3) & (dx.abs() <= 1)
    if name == "vbar":
        return (dx.abs() <= 0.3) & (dy.abs() <= 1)
    return (dy <= 0.8) & (dy >= 2 * dx.abs() - 1)  # triangle, apex up


def make_shapes(
    num_samples: int, image_size: int = 28, channels: int = 1, num_classes: int = 4, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """uint8 images (n, channels, S, S) of one shape each on a black background, and their labels (n,).

    Labels are balanced (class i is shape `SHAPES[i]`); position, size and colour are random given `seed`.
    """
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(num_samples) % num_classes)[torch.randperm(num_samples, generator=g)]
    centre = (torch.rand(num_samples, 2, generator=g) - 0.5) * 0.6  # in [-0.3, 0.3]
    radius = 0.35 + 0.3 * torch.rand(num_samples, generator=g)
    colour = 0.5 + 0.5 * torch.rand(num_samples, channels, generator=g)
    axis = torch.linspace(-1, 1, image_size)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    dx = (xx - centre[:, :1, None]) / radius[:, None, None]  # (n, S, S)
    dy = (yy - centre[:, 1:, None]) / radius[:, None, None]
    mask = torch.zeros(num_samples, image_size, image_size, dtype=torch.bool)
    for label in range(num_classes):
        idx = labels == label
        mask[idx] = shape_masks(label, dx[idx], dy[idx])
    images = mask[:, None].float() * colour[:, :, None, None]  # (n, C, S, S) in [0, 1]
    return (images * 255).round().to(torch.uint8), labels


class SyntheticDataModule(ImageDataModule):
    """Seeded shapes: `num_samples` for train+validation and `num_samples // 4` for test.

    Args:
        num_samples: images in the train split (before the validation hold-out).
        channels: 1 (grey) or 3 (colour).
        num_classes: how many shapes, 1 to len(SHAPES).
        seed: seed of the images; the test split uses `seed + 1`.
        **kwargs: see `ImageDataModule`.
    """

    name = "synthetic"

    def __init__(
        self, num_samples: int = 1024, channels: int = 1, num_classes: int = 4, seed: int = 0, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        check_positive_int("num_samples", num_samples)
        check_split(num_samples, self.val_fraction)  # known now, not only once the images are made
        if channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {channels!r}")
        if not 1 <= num_classes <= len(SHAPES):
            shapes = ", ".join(SHAPES)
            raise ConfigError(f"num_classes must be between 1 and {len(SHAPES)} ({shapes}), got {num_classes!r}")
        self.num_samples = num_samples
        self.channels = channels
        self.num_classes = num_classes
        self.seed = seed

    def load_split(self, train: bool) -> tuple[Tensor, Tensor]:
        n = self.num_samples if train else max(1, self.num_samples // 4)
        return make_shapes(n, self.image_size, self.channels, self.num_classes, self.seed + (0 if train else 1))

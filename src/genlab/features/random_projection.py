"""A fixed random projection of pixels: a cheap, deterministic stand-in for a network, for tests."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genlab.features.base import FeatureExtractor, to_uint8


class RandomProjectionExtractor(FeatureExtractor):
    """Flattened [0, 1] pixels times fixed Gaussian matrices (seeded): features (B, dim), logits (B, num_logits)."""

    name = "random"

    def __init__(
        self, image_shape: tuple[int, int, int] = (1, 28, 28), dim: int = 64, num_logits: int = 10, seed: int = 0
    ) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        pixels = math.prod(image_shape)
        self.image_shape = tuple(image_shape)
        self.feature_dim, self.num_logits = dim, num_logits
        self.register_buffer("features_map", torch.randn(pixels, dim, generator=g) / math.sqrt(pixels))
        self.register_buffer("logits_map", torch.randn(dim, num_logits, generator=g))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"images must have shape (B, {self.image_shape}), got {tuple(images.shape)}")
        x = to_uint8(images).float() / 255  # the same quantisation as images stored on disk
        features = x.flatten(1) @ self.features_map  # (B, C*H*W) @ (C*H*W, D) -> (B, D)
        return features, features @ self.logits_map

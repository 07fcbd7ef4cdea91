"""A fixed random projection of pixels: a cheap, deterministic stand-in for a network, for tests.

Random linear features are the usual sanity baseline of generative-model metrics (e.g. Naeem et al. 2020,
"Reliable Fidelity and Diversity Metrics for Generative Models", which score random embeddings): they need
no weights, cost one matrix product, and are the same in every process for a given seed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genlab.checks import check_positive_int
from genlab.features.base import FeatureExtractor, to_uint8
from genlab.features.precision import check_precision


class RandomProjectionExtractor(FeatureExtractor):
    """Flattened [0, 1] pixels times fixed Gaussian matrices (seeded): features (B, dim), logits (B, num_logits).

    Args:
        image_shape: (C, H, W) of the images it accepts.
        dim: feature dimension.
        num_logits: logits dimension (0: no logits).
        seed: seed of the torch.Generator that draws both matrices.
    """

    name = "random"

    def __init__(
        self, image_shape: tuple[int, int, int] = (1, 28, 28), dim: int = 64, num_logits: int = 10, seed: int = 0
    ) -> None:
        super().__init__()
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W) with positive sizes, got {image_shape!r}")
        if dim < 1 or num_logits < 0:
            raise ValueError(f"dim must be >= 1 and num_logits >= 0, got dim={dim!r}, num_logits={num_logits!r}")
        g = torch.Generator().manual_seed(seed)  # CPU generator: the same numbers on every machine and process
        pixels = math.prod(image_shape)
        self.image_shape = tuple(image_shape)
        self.feature_dim, self.num_logits, self.seed = dim, num_logits, seed
        # 1/sqrt(fan-in) keeps features and logits O(1) whatever the image size
        self.register_buffer("features_map", torch.randn(pixels, dim, generator=g) / math.sqrt(pixels))
        self.register_buffer("logits_map", torch.randn(dim, num_logits, generator=g) / math.sqrt(dim))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"images must have shape (B, {', '.join(map(str, self.image_shape))}), got {tuple(images.shape)}"
            )
        x = to_uint8(images, channels=(self.image_shape[0],)).float() / 255  # as stored on disk, like every extractor
        features = x.flatten(1) @ self.features_map.float()  # (B, C*H*W) @ (C*H*W, D) -> (B, D)
        logits = features @ self.logits_map.float() if self.num_logits else None
        return features, logits


def random_extractor(
    datamodule,
    cache_dir: str | None = None,
    precision: str = "fp32",
    progress: bool = True,
    dim: int = 64,
    seed: int = 0,
) -> RandomProjectionExtractor:
    """The `random` extractor config's factory: a projection of the data's image shape with one logit per class
    of the data (nothing to cache or train: `cache_dir` and `progress` are unused; one matrix product has no
    precision to choose, so `precision` is recorded only)."""
    check_positive_int("dim", dim)  # here, where the config check reads it
    extractor = RandomProjectionExtractor(tuple(datamodule.image_shape), dim, datamodule.num_classes, seed)
    extractor.precision = check_precision(precision)
    return extractor

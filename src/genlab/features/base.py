"""The feature-extractor interface: images in [0, 1] -> (features, logits), with a name and a weights hash, and
the factory signature that the extractor configs satisfy. Interface only: the extractors live beside it.

Every number genlab logs carries the extractor's name and weights hash: numbers from different extractors
(or different weights) are never comparable. Images are quantised to uint8 before any extractor sees them,
exactly as `torchvision.utils.save_image` writes them to disk, so that features of in-memory samples equal
the features of the same samples saved as PNG files (the protocol of torch-fidelity and pytorch-fid, which
score image files).
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

import torch
from torch import Tensor, nn

RANGE_TOLERANCE = 1e-4  # float error of e.g. (tanh(x) + 1) / 2; anything further out is a bug upstream


class FeatureExtractor(nn.Module):
    """Base class. Subclasses set `name`, `feature_dim`, `num_logits` and implement `forward`.

    Extractors are frozen: `.train()` leaves them in eval mode, so that a Lightning module that owns one (or a
    `model.train()` call) can never switch its BatchNorm layers to batch statistics.
    """

    name: str = "extractor"
    feature_dim: int = 0
    num_logits: int = 0  # 0: the extractor returns no logits
    precision: str = "fp32"  # the arithmetic of `forward`, part of what makes two numbers comparable

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """Images (B, C, H, W) floats in [0, 1] -> features (B, D) float32 and logits (B, K) float32 or None."""
        raise NotImplementedError

    def train(self, mode: bool = True) -> FeatureExtractor:
        return super().train(False)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        self._weights_hash = None  # new weights, new hash
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def weights_hash(self) -> str:
        """The first 12 hex digits of the sha256 of the weights (state dict in key order); cached.

        Hashes names and raw bytes (not Python's per-process `hash`), in the standard memory layout, so the
        value is the same in every process and on every device.
        """
        if getattr(self, "_weights_hash", None) is None:
            digest = hashlib.sha256()
            for name, tensor in sorted(self.state_dict().items()):
                digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                flat = tensor.detach().to("cpu", memory_format=torch.contiguous_format).reshape(-1)
                digest.update(flat.view(torch.uint8).numpy().tobytes())
            self._weights_hash = digest.hexdigest()[:12]
        return self._weights_hash


class ExtractorFactory(Protocol):
    """How an evaluation gets its extractor: an extractor config (`configs/eval/extractor/*.yaml`) instantiated
    with `_partial_: true` is called with the datamodule it will score against, a cache folder (where a trained
    extractor keeps its weights), the precision to extract in (`genlab.features.precision`) and whether to show
    progress bars."""

    def __call__(
        self, *, datamodule: Any, cache_dir: str | None, precision: str, progress: bool
    ) -> FeatureExtractor: ...


def to_uint8(images: Tensor, channels: tuple[int, ...] = (1, 3)) -> Tensor:
    """[0, 1] floats (B, C, H, W) -> uint8 levels floor(x * 255 + 0.5): rounded half up, not truncated.

    This is `torchvision.utils.save_image`'s conversion, so the result equals the pixels of the saved PNG.
    uint8 input is returned as it is. Raises a ValueError naming the problem for a wrong shape or dtype,
    NaN/inf, or values outside [0, 1] (beyond a 1e-4 tolerance).
    """
    if images.ndim != 4 or images.shape[1] not in channels:
        raise ValueError(f"images must have shape (B, C, H, W) with C in {list(channels)}, got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise ValueError(f"images must be floats in [0, 1] or uint8, got dtype {images.dtype}")
    if images.numel() == 0:
        return images.to(torch.uint8)
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or inf values")
    low, high = images.min().item(), images.max().item()
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise ValueError(f"images must be floats in [0, 1], got values in [{low:.4g}, {high:.4g}]")
    # upcast first: bf16/fp16 cannot hold x * 255 + 0.5 exactly, and would move values across level boundaries
    return (images.float() * 255 + 0.5).clamp(0, 255).to(torch.uint8)

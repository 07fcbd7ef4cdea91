"""Input validation shared by the `genlab.metrics` functions.

Every check raises ValueError (TypeError for a non-tensor) whose message names the argument, the bad value and
what is allowed, so a misconfigured evaluation fails loudly instead of returning a silently wrong number.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_features(name: str, features: Tensor, min_samples: int = 1, purpose: str = "this metric") -> None:
    """`features` must be a finite floating-point (N, D) tensor with N >= `min_samples` and D >= 1."""
    if not isinstance(features, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, D), got {type(features).__name__}")
    if features.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {features.dtype}")
    n, d = features.shape
    if d < 1:
        raise ValueError(f"{name} has feature dimension D=0; D must be at least 1")
    if n < min_samples:
        raise ValueError(f"{name} has {n} samples, but {purpose} needs at least {min_samples}")
    bad = int((~torch.isfinite(features)).sum())
    if bad:
        raise ValueError(f"{name} contains {bad} NaN or inf values (of {features.numel()}); features must be finite")


def check_pair(real: Tensor, fake: Tensor, real_name: str = "real_features", fake_name: str = "fake_features") -> None:
    """Real and fake tensors must have the same feature dimension and live on the same device."""
    if real.shape[-1] != fake.shape[-1]:
        raise ValueError(
            f"{real_name} has feature dimension {real.shape[-1]} but {fake_name} has {fake.shape[-1]}; they must match"
        )
    if real.device != fake.device:
        raise ValueError(f"{real_name} is on {real.device} but {fake_name} is on {fake.device}; use one device")


def check_int(name: str, value: int, minimum: int) -> None:
    """`value` must be a Python/NumPy integer >= `minimum` (bool is rejected)."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")


def check_labels(name: str, labels: Tensor, num_samples: int, features_name: str) -> None:
    """`labels` must be an integer (N,) tensor with one label per row of `features_name`."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N,), got {type(labels).__name__}")
    if labels.ndim != 1 or labels.shape[0] != num_samples:
        raise ValueError(
            f"{name} must have shape ({num_samples},), one label per row of {features_name}, "
            f"got shape {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got dtype {labels.dtype}")


class TooFewSamplesError(ValueError):
    """The samples are too few where a metric needs them (e.g. no k-means cell holds enough generated samples):
    a property of this sample set, not of the arguments. Callers may skip the metric and say why."""

"""The contract every genlab model satisfies, so that evaluation never needs to know the family."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lightning as L
import torch
from torch import Tensor

from genlab.checks import ConfigError

CLASS_KEY = "genlab_model_class"


@runtime_checkable
class GenerativeModel(Protocol):
    """What the evaluation callback and the sample grids rely on.

    `sample(n, labels=None, generator=None)` returns (n, C, H, W) floats in [0, 1] on the module's device;
    `labels` (n,) int64 is required when `num_classes > 0` and refused otherwise.
    """

    num_classes: int

    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor: ...


def randn(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise on `device`, drawn on the generator's own device so a seed gives the same noise
    whatever device the model is on."""
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source).to(device)


def check_labels(num_classes: int, n: int, labels: Tensor | None) -> None:
    """Raise a ValueError unless `labels` fit a model with `num_classes` classes (0: unconditional)."""
    if num_classes == 0:
        if labels is not None:
            raise ValueError("this model is unconditional (num_classes=0): call sample() without labels")
        return
    if labels is None or labels.shape != (n,):
        got = None if labels is None else tuple(labels.shape)
        raise ValueError(f"a conditional model needs labels of shape ({n},), got {got}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes - 1}], got values in [{labels.min()}, {labels.max()}]")


def to_unit(x: Tensor) -> Tensor:
    """Images in [-1, 1] (the models' range) -> [0, 1] (the contract's range), clamped."""
    return ((x + 1) / 2).clamp(0, 1)


class GenerativeModule(L.LightningModule):
    """Base of every genlab model: records its class in checkpoints so `load_model` needs no config."""

    num_classes: int = 0
    # What the best-by-loss checkpoint (callbacks.model_checkpoint, monitor: auto) ranks by; None where no
    # validation loss measures sample quality (a GAN's val/loss is its discriminator's). With evaluation on,
    # the best checkpoint by eval/fid is kept as well.
    checkpoint_monitor: str | None = "val/loss"

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CLASS_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"

    def log_diagnostics(self, values: dict[str, Any]) -> None:
        """Per-step training values beside `train/loss` (which is logged every step: the progress bar and the
        finite-loss guard read it), logged only at the steps whose logs Lightning writes (every
        `trainer.log_every_n_steps`): each `self.log` call costs about half a millisecond, as much as a small
        model's whole step on a GPU, and the values of the other steps would never be written anyway."""
        trainer = self._trainer
        connector = getattr(trainer, "_logger_connector", None)
        if connector is None or trainer.fast_dev_run or getattr(connector, "should_update_logs", True):
            self.log_dict(values)


def load_model(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> GenerativeModule:
    """Any genlab model from its checkpoint, whatever the family, in eval mode."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if CLASS_KEY not in checkpoint:
        raise ConfigError(f"{ckpt_path} is not a genlab model checkpoint: it does not name its model class")
    module_name, _, class_name = checkpoint[CLASS_KEY].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls.load_from_checkpoint(ckpt_path, map_location=map_location).eval()

"""Exponential moving average of a model's weights, for sampling: Lightning's own `EMAWeightAveraging`.

Models that sample from averaged weights (the GAN's generator, the diffusion UNet) return `EMA(...)` from
`configure_callbacks()`. Lightning then swaps the averaged weights in for validation (so the evaluation callback
and the sample grids, which run at validation end, see them), writes them into the checkpoint's `state_dict`
(the raw weights under `current_model_state`, restored on resume) and copies them into the model when `fit`
ends. The one change: until the first update (before `start_step`) there is no average yet, and Lightning
would swap in, and finally copy back, the weights the model had when training started; here the model keeps
its own weights until then.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging

from genlab.checks import ConfigError


class EMA(EMAWeightAveraging):
    """`EMAWeightAveraging(decay, update_starting_at_step=start_step)` that does nothing before its first update.

    Args:
        decay: weight of the old average at each optimizer step (0.999: an average over ~1,000 steps).
        start_step: optimizer steps before the average starts (it starts as a copy of the weights then).
        use_buffers: average the buffers too (False: copy them, for buffers that are constants).
    """

    def __init__(self, decay: float = 0.999, start_step: int = 0, use_buffers: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"EMA decay must be in [0, 1), got {decay!r}")
        if start_step < 0:
            raise ConfigError(f"EMA start_step must be >= 0, got {start_step!r}")
        super().__init__(decay=decay, update_starting_at_step=start_step, use_buffers=use_buffers)

    def has_average(self) -> bool:
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swapped = self.has_average()
        if self._swapped:
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if getattr(self, "_swapped", False):
            super().on_validation_epoch_end(trainer, pl_module)
        self._swapped = False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.has_average():
            super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if self.has_average():  # else the checkpoint keeps the model's own weights
            super().on_save_checkpoint(trainer, pl_module, checkpoint)

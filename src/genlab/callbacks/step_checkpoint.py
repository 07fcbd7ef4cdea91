"""`checkpoints/last.ckpt` in the middle of an epoch too, every few minutes or steps: what a killed run
(SIGKILL, a lost node) resumes from. With the training loader's position in the checkpoint
(`genlab.data.base.ResumableLoader`) and the RNG states (`RNGState`), the resumed run ends with the weights of one
that never stopped. At epoch ends the `last_checkpoint` callback writes the same file.

It is a Lightning `Checkpoint`, which Lightning runs after every other callback: the `FiniteLoss` guard has rolled
back a NaN step (or stopped the run) before the step is saved.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint

from genlab.checks import ConfigError, check_positive_int


class StepCheckpoint(Checkpoint):
    """Save `<dirpath>/<filename>.ckpt` after a training step once `every_n_minutes` have passed since the last
    save, or every `every_n_steps` steps; null turns either trigger off."""

    def __init__(
        self,
        dirpath: str,
        filename: str = "last",
        every_n_minutes: float | None = 10.0,
        every_n_steps: int | None = None,
    ) -> None:
        if every_n_minutes is not None and not every_n_minutes > 0:
            raise ConfigError(f"every_n_minutes must be > 0 or null, got {every_n_minutes!r}")
        if every_n_steps is not None:
            check_positive_int("every_n_steps", every_n_steps)
        self.path = Path(dirpath) / f"{filename}.ckpt"
        self.every_n_minutes, self.every_n_steps = every_n_minutes, every_n_steps
        self._last_save = time.monotonic()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_save = time.monotonic()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        by_steps = self.every_n_steps is not None and (batch_idx + 1) % self.every_n_steps == 0
        by_time = self.every_n_minutes is not None and time.monotonic() - self._last_save >= 60 * self.every_n_minutes
        if trainer.strategy.broadcast(by_steps or by_time):  # every rank decides alike: saving is collective
            trainer.save_checkpoint(self.path)
            self._last_save = time.monotonic()

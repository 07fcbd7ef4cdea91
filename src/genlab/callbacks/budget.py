"""A training budget in wall-clock seconds of training alone, with a checkpoint at every fixed share of it.

    python train.py model=vae callbacks.budget.seconds=240 callbacks.budget.points=4 trainer.max_epochs=-1

trains for 240 s of training and saves `checkpoints/budget/point-01.ckpt` .. `point-04.ckpt` at 60, 120, 180 and
240 s, then stops. What the clock leaves out: validation (and so the evaluation callback, which runs inside it), the
sanity check, and the saving of these checkpoints. The checkpoints are what `scripts/benchmark_models.py` scores for
its quality-versus-compute curves, each recorded in `budget.json` beside them with its training seconds, the images
seen so far, its epoch and step. A model with a `prepare_snapshot()` method (the autoencoder: its latent density is
fitted at epoch ends) has it called before each save, so that a checkpoint taken mid-epoch samples as the weights
at that moment would.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L

from genlab.atomic import atomic_write
from genlab.checks import ConfigError, check_positive_int

clock = time.perf_counter  # module-level, so that tests can drive the budget with a clock of their own


class TrainingBudget(L.Callback):
    """Stop after `seconds` of training, saving a checkpoint at each of `points` equal shares of it.

    Args:
        seconds: the training budget; None switches the callback off (the default config).
        points: checkpoints at seconds * i / points for i = 1 .. points (the last one where training stops).
        dirpath: folder of the checkpoints; `budget.json` is written to its parent.
    """

    def __init__(self, seconds: float | None = None, points: int = 10, dirpath: str = "checkpoints/budget") -> None:
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0):
            raise ConfigError(f"callbacks.budget.seconds must be a number > 0, or null (off); got {seconds!r}")
        check_positive_int("callbacks.budget.points", points)
        self.seconds, self.points, self.dirpath = seconds, points, Path(dirpath)
        self.spent = 0.0  # training seconds before this process's start (a resumed run's)
        self.images = 0
        self.saved: list[dict[str, Any]] = []
        self._start: float | None = None  # clock at this process's training start
        self._excluded = 0.0  # seconds since then that are not training
        self._paused_at: float | None = None

    @property
    def active(self) -> bool:
        return self.seconds is not None

    def training_seconds(self) -> float:
        """Training seconds so far: wall time since the start, less validation and checkpoint saving."""
        if self._start is None:
            return self.spent
        now = clock() if self._paused_at is None else self._paused_at
        return self.spent + now - self._start - self._excluded

    def _pause(self) -> None:
        if self._start is not None and self._paused_at is None:
            self._paused_at = clock()

    def _resume(self) -> None:
        if self._paused_at is not None:
            self._excluded += clock() - self._paused_at
            self._paused_at = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.active:
            self._start, self._excluded, self._paused_at = clock(), 0.0, None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pause()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._resume()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if not self.active:
            return
        first = batch[0] if isinstance(batch, tuple | list) else batch
        self.images += len(first) * trainer.world_size
        while len(self.saved) < self.points and self.training_seconds() >= self.point_seconds(len(self.saved) + 1):
            self.save_point(trainer, pl_module)
        if len(self.saved) == self.points:
            trainer.should_stop = True

    def point_seconds(self, point: int) -> float:
        """The training seconds at which checkpoint `point` (1 .. points) is due."""
        return self.seconds * point / self.points

    def save_point(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save the next point's checkpoint and its line in budget.json, off the clock."""
        seconds = self.training_seconds()
        self._pause()
        point = len(self.saved) + 1
        prepare = getattr(pl_module, "prepare_snapshot", None)
        if callable(prepare):
            prepare()
        path = self.dirpath / f"point-{point:02d}.ckpt"
        record = {
            "point": point,
            "fraction": point / self.points,
            "budget_seconds": self.point_seconds(point),
            "train_seconds": seconds,
            "images": self.images,
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "ckpt": path.name,
        }
        self.saved.append(record)  # before the save, so that the checkpoint's own state counts itself
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            summary = {"seconds": self.seconds, "points": self.points, "done": point == self.points}
            text = json.dumps({**summary, "saved": self.saved}, indent=2)
            atomic_write(self.dirpath.parent / "budget.json", lambda f: f.write(text.encode()))
        self._resume()

    def state_dict(self) -> dict[str, Any]:
        return {"spent": self.training_seconds(), "images": self.images, "saved": list(self.saved)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.spent, self.images, self.saved = state_dict["spent"], state_dict["images"], list(state_dict["saved"])

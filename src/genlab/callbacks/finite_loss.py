"""Stop, or roll back once, when a training loss turns NaN or infinite.

The last good state (weights, EMA and optimizer moments) is kept in memory at the start of training and at each
epoch end, where `last.ckpt` is written. A non-finite loss restores that state and multiplies every learning rate
by `lr_factor`, up to `max_rollbacks` times; after that the run stops with `DivergedError`, which names the
step and the loss. The on-exception checkpoint is not written for it, so no checkpoint on disk holds NaN weights.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import OnExceptionCheckpoint

from genlab.checks import ConfigError, RunError, check_positive_int

log = logging.getLogger(__name__)


class DivergedError(RunError):
    """The loss went NaN or infinite and the rollbacks allowed are spent: the message says where."""


class FiniteLoss(L.Callback):
    """Check each training step's losses (the step's output and every logged `train/*` value).

    Args:
        max_rollbacks: how many times a non-finite loss rolls back to the last good state before the run stops.
        lr_factor: what each rollback multiplies the learning rates by.
    """

    def __init__(self, max_rollbacks: int = 1, lr_factor: float = 0.5) -> None:
        check_positive_int("max_rollbacks", max_rollbacks, allow_zero=True)
        if not 0.0 < lr_factor <= 1.0:
            raise ConfigError(f"lr_factor must be in (0, 1], got {lr_factor!r}")
        self.max_rollbacks, self.lr_factor = max_rollbacks, lr_factor
        self.rollbacks = 0
        self._good: dict[str, Any] | None = None
        self._seen: dict[str, int] = {}  # logged name -> id of the value already checked (a stale one is skipped)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._keep(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._keep(trainer, pl_module)

    def _keep(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._good = {
            "model": copy.deepcopy(pl_module.state_dict()),
            "optimizers": [copy.deepcopy(o.state_dict()) for o in trainer.optimizers],
            "step": trainer.global_step,
        }

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        fresh = {k: v for k, v in trainer.callback_metrics.items() if self._seen.get(k) != id(v)}
        self._seen.update({k: id(v) for k, v in fresh.items()})
        bad = non_finite_losses(outputs, fresh)
        if not bad:
            return
        where = f"step {trainer.global_step} (epoch {trainer.current_epoch}, batch {batch_idx})"
        losses = ", ".join(f"{name}={value}" for name, value in bad.items())
        if self.rollbacks >= self.max_rollbacks or self._good is None:
            tried = f" after {self.rollbacks} rollback(s)" if self.rollbacks else ""
            raise DivergedError(
                f"the loss is not finite at {where}: {losses}{tried}. The last good checkpoint is the run's "
                "checkpoints/last.ckpt; lower the learning rate (model.lr...) or set callbacks.finite_loss."
                "max_rollbacks higher to roll back and go on"
            )
        self.rollbacks += 1
        self._restore(trainer, pl_module)
        log.warning(
            f"the loss is not finite at {where}: {losses}. Rolled back to the state of step {self._good['step']} "
            f"and multiplied the learning rate by {self.lr_factor} (rollback {self.rollbacks} of {self.max_rollbacks})"
        )

    def _restore(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.load_state_dict(self._good["model"])
        for optimizer, state in zip(trainer.optimizers, self._good["optimizers"], strict=True):
            optimizer.load_state_dict(copy.deepcopy(state))
            for group in optimizer.param_groups:
                group["lr"] *= self.lr_factor
        self._good["optimizers"] = [copy.deepcopy(o.state_dict()) for o in trainer.optimizers]  # the lowered rates

    def state_dict(self) -> dict[str, Any]:
        return {"rollbacks": self.rollbacks}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rollbacks = state_dict.get("rollbacks", 0)


def non_finite_losses(outputs: Any, logged: dict[str, Any]) -> dict[str, float]:
    """The step's loss (the output, or its "loss") and the logged `train/*` values that are NaN or infinite."""
    values = {}
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    if loss is not None and hasattr(loss, "item") and loss.numel() == 1:
        values["loss"] = float(loss.detach())
    values.update({k: float(v) for k, v in logged.items() if k.startswith("train/") and v.numel() == 1})
    return {name: value for name, value in values.items() if not math.isfinite(value)}


class SafeOnExceptionCheckpoint(OnExceptionCheckpoint):
    """Lightning's on-exception checkpoint, except for a diverged run: its weights are the NaN ones. One written
    during the epoch's validation resumes into that validation again, whole: Lightning's counters would say it had
    finished once its last batch had, and the resumed run would skip the evaluation (and the checkpoints and grids)
    of the validation's end, where a SIGTERM most often lands."""

    _in_validation = False

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, DivergedError):
            return
        self._in_validation = trainer.state.fn == "fit" and trainer.validating and not trainer.sanity_checking
        try:
            super().on_exception(trainer, pl_module, exception)
        finally:
            self._in_validation = False

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._in_validation:
            restart_validation(checkpoint["loops"]["fit_loop"])


def restart_validation(fit_loop: dict[str, Any]) -> None:
    """Mark the fit loop's validation (in a checkpoint's loop state) as interrupted in its first batch, the state that
    Lightning resumes by running the validation from its start."""
    progress = fit_loop["epoch_loop.val_loop.batch_progress"]
    before = progress["total"]["completed"] - progress["current"]["completed"]  # earlier validations of the epoch
    progress["total"].update(ready=before + 1, started=before + 1, processed=before, completed=before)
    progress["current"].update(ready=1, started=1, processed=0, completed=0)
    progress["is_last_batch"] = False

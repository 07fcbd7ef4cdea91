"""Save the random number generators' states in checkpoints and restore them on resume.

Lightning restores the epoch, the optimizer and the schedulers, but not the global RNGs that drive
shuffling, dropout and the reparameterisation noise. With this callback, training 2 epochs in one go
and training 1, stopping and resuming for 1 give the same weights.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


class RNGState(L.Callback):
    """Checkpoint the torch (CPU and CUDA), numpy and Python RNG states; restore them when training starts."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None
        self._at_validation_start: dict[str, Any] | None = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A checkpoint written during validation (Ctrl-C, SIGTERM) resumes by running that validation again from
        # its start: it must hold the generators as they were there, not as the validation left them.
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._at_validation_start = self.current_state()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._at_validation_start = None  # (checkpoint callbacks run after this one: theirs is the state after)

    def state_dict(self) -> dict[str, Any]:
        return self._at_validation_start if self._at_validation_start is not None else self.current_state()

    def current_state(self) -> dict[str, Any]:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        # numpy's key array travels as a tensor so the checkpoint loads with torch.load(weights_only=True)
        numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)
        state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Applied here, not in load_state_dict, so that nothing between restoring and training consumes it.
        if self._pending is None:
            return
        torch.set_rng_state(self._pending["torch"])
        name, keys, pos, has_gauss, cached = self._pending["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(self._pending["python"])
        if "cuda" in self._pending and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self._pending["cuda"])
        self._pending = None

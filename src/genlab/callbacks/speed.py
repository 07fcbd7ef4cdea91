"""`Speed`: the channels_last and torch.compile switches for a model's networks in training (`genlab.speed`)."""

from __future__ import annotations

import lightning as L

from genlab.speed import speed_up


class Speed(L.Callback):
    """Apply `genlab.speed.speed_up` to the model at the start of fit.

    Args:
        channels_last: convert the networks' 4-d weights (and so their activations) to channels_last.
        compile: `torch.compile` the networks the training step calls; eagerly, with a warning, where it cannot run.
    """

    def __init__(self, channels_last: bool = False, compile: bool = False) -> None:
        self.channels_last, self.compile = channels_last, compile

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and (self.channels_last or self.compile):
            speed_up(pl_module, self.channels_last, self.compile, "training", pl_module.device)

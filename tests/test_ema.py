"""The EMA callback models return from configure_callbacks: averaged weights for validation, checkpoints and the
final model, and the model's own weights until the average has started."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import quiet_trainer

from genlab.data import SyntheticDataModule
from genlab.models import VAEModule
from genlab.models.ema import EMA


class EMAVAE(VAEModule):
    def __init__(self, decay: float, start_step: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ema_args = (decay, start_step)

    def configure_callbacks(self):
        return [EMA(*self.ema_args)]


class Probe(L.Callback):
    """Records the last layer's weights where the evaluation callback runs: at validation-epoch end, before the
    model's own callbacks (EMA swaps back there)."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []
        self.raw: list[torch.Tensor] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seen.append(pl_module.decoder.body[-1].weight.detach().clone())

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.raw.append(pl_module.decoder.body[-1].weight.detach().clone())  # after validation: swapped back


def fit(model: L.LightningModule, root: Path, epochs: int = 1) -> L.Trainer:
    trainer = quiet_trainer(
        root, callbacks=[Probe()], max_epochs=epochs, limit_train_batches=3, limit_val_batches=1, num_sanity_val_steps=0
    )
    trainer.fit(model, datamodule=SyntheticDataModule(num_samples=64, image_size=16, batch_size=16))
    return trainer


def tiny(decay: float, start_step: int) -> EMAVAE:
    torch.manual_seed(0)
    return EMAVAE(decay, start_step, image_size=16, channels=[8, 16], latent_dim=4)


def test_averaged_weights_are_validated_checkpointed_and_kept(tmp_path: Path) -> None:
    model = tiny(decay=0.5, start_step=0)
    trainer = fit(model, tmp_path, epochs=2)
    (ema,) = [c for c in trainer.callbacks if isinstance(c, EMA)]
    (probe,) = [c for c in trainer.callbacks if isinstance(c, Probe)]
    final = model.decoder.body[-1].weight
    assert torch.equal(probe.seen[-1], final)  # validation saw the average, which the model ends with
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    checkpoint = torch.load(tmp_path / "m.ckpt", weights_only=True)
    key = f"decoder.body.{len(model.decoder.body) - 1}.weight"
    assert torch.equal(checkpoint["state_dict"][key], final)
    assert not torch.equal(probe.raw[-1], probe.seen[-1])  # training goes on with the raw weights
    assert int(ema._average_model.n_averaged) == 6


def test_before_the_average_starts_the_model_keeps_its_own_weights(tmp_path: Path) -> None:
    model = tiny(decay=0.999, start_step=100)
    initial = copy.deepcopy(model.state_dict())
    trainer = fit(model, tmp_path)
    after = model.state_dict()
    assert any(not torch.equal(after[k], initial[k]) for k in after)  # training is not undone at the end
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    saved = torch.load(tmp_path / "m.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], after[k]) for k in after)


@pytest.mark.parametrize(("kwargs", "message"), [({"decay": 1.0}, "decay must be in"), ({"start_step": -1}, ">= 0")])
def test_bad_ema_settings_name_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EMA(**kwargs)

"""The training budget: checkpoints at equal shares of the training seconds, validation off the clock, a stop at the
end, a fresh latent density in mid-epoch checkpoints, and off by default."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import quiet_trainer

from genlab.callbacks import TrainingBudget, budget
from genlab.checks import ConfigError
from genlab.data import SyntheticDataModule
from genlab.models import AEModule, load_model

TINY_AE = {"image_channels": 1, "image_size": 16, "latent_dim": 4, "channels": [8, 16], "latent_density": "gaussian"}


class Ticks(L.Callback):
    """A fake clock: each training batch takes 1 s, each validation batch 100 s."""

    def __init__(self) -> None:
        self.now = 0.0

    def on_train_batch_start(self, *args) -> None:
        self.now += 1.0

    def on_validation_batch_start(self, *args) -> None:
        self.now += 100.0


def fit(tmp_path: Path, monkeypatch, callback: TrainingBudget, max_epochs: int = -1) -> tuple[L.Trainer, AEModule]:
    ticks = Ticks()
    monkeypatch.setattr(budget, "clock", lambda: ticks.now)
    L.seed_everything(0)
    model = AEModule(**TINY_AE)
    trainer = quiet_trainer(
        tmp_path,
        max_epochs=max_epochs,
        limit_train_batches=4,
        limit_val_batches=1,
        num_sanity_val_steps=1,
        callbacks=[ticks, callback],
    )
    trainer.fit(model, datamodule=SyntheticDataModule(num_samples=128, image_size=16, batch_size=16))
    return trainer, model


def test_checkpoints_at_equal_shares_of_the_training_seconds_then_a_stop(tmp_path: Path, monkeypatch) -> None:
    callback = TrainingBudget(seconds=6, points=3, dirpath=str(tmp_path / "run" / "budget"))
    trainer, _ = fit(tmp_path, monkeypatch, callback)
    assert trainer.global_step == 6  # 6 one-second batches; the two validations' 200 s are off the clock
    found = json.loads((tmp_path / "run" / "budget.json").read_text())
    assert found["done"] and (found["seconds"], found["points"]) == (6, 3)
    rows = [(r["point"], r["train_seconds"], r["images"], r["epoch"], r["step"]) for r in found["saved"]]
    assert rows == [(1, 2.0, 32, 0, 2), (2, 4.0, 64, 0, 4), (3, 6.0, 96, 1, 6)]  # 4 batches per epoch
    assert [r["budget_seconds"] for r in found["saved"]] == [2.0, 4.0, 6.0]
    for r in found["saved"]:
        model = load_model(tmp_path / "run" / "budget" / r["ckpt"])
        assert model.sample(2).shape == (2, 1, 16, 16)


def test_a_mid_epoch_checkpoint_carries_a_density_of_that_epoch_s_codes(tmp_path: Path, monkeypatch) -> None:
    callback = TrainingBudget(seconds=2, points=1, dirpath=str(tmp_path / "budget"))
    fit(tmp_path, monkeypatch, callback)  # stops after 2 of the first epoch's 4 batches
    state = torch.load(tmp_path / "budget" / "point-01.ckpt", weights_only=True)["state_dict"]
    assert state["density_means"].abs().sum() > 0  # fitted before the save, not N(0, I) until the epoch's end
    assert not torch.equal(state["density_covs"][0, 0], torch.eye(4, dtype=torch.float64))


def test_without_seconds_it_does_nothing(tmp_path: Path, monkeypatch) -> None:
    callback = TrainingBudget(dirpath=str(tmp_path / "budget"))  # the default config: seconds null
    trainer, _ = fit(tmp_path, monkeypatch, callback, max_epochs=2)
    assert trainer.global_step == 8 and not (tmp_path / "budget").exists() and not (tmp_path / "budget.json").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seconds": 0}, "callbacks.budget.seconds must be a number > 0, or null"),
        ({"seconds": "4m"}, "callbacks.budget.seconds must be a number > 0, or null .* got '4m'"),
        ({"seconds": 10, "points": 0}, "callbacks.budget.points must be a positive integer, got 0"),
    ],
)
def test_bad_settings_name_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainingBudget(**kwargs)

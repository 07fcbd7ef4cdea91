"""SampleGrid writes once per epoch, at validation end where validation runs (where EMA weights are swapped in)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import quiet_trainer

from genlab.callbacks import SampleGrid
from genlab.data import SyntheticDataModule
from genlab.models import VAEModule


class RecordingVAE(VAEModule):
    """Records, at each sample() call, whether the trainer was validating."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.calls: list[bool] = []

    def sample(self, n, labels=None, generator=None):
        self.calls.append(self._trainer is not None and self.trainer.validating)
        return super().sample(n, labels, generator)


@pytest.mark.parametrize(("val_batches", "validating"), [(1, True), (0, False)])
def test_one_grid_per_epoch_written_at_validation_end_when_there_is_one(
    tmp_path: Path, val_batches: int, validating: bool
) -> None:
    model = RecordingVAE(image_size=16, channels=[8, 16], latent_dim=4)
    trainer = quiet_trainer(
        tmp_path,
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=val_batches,
        callbacks=[SampleGrid(str(tmp_path), num_samples=8, num_reconstructions=8)],
    )
    trainer.fit(model, datamodule=SyntheticDataModule(num_samples=64, image_size=16, batch_size=16))
    assert model.calls == [validating, validating]  # once per epoch, never during the sanity check
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["epoch_000.png", "epoch_001.png"]

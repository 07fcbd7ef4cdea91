"""The autoencoder: the latent density (fit, use by sample(), timing in the epoch), PSNR/SSIM, bad hyperparameters."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import quiet_trainer
from torch.utils.data import DataLoader, TensorDataset

from genlab.data import SyntheticDataModule
from genlab.models.ae import AEModule

TINY = {"image_channels": 1, "image_size": 16, "latent_dim": 3, "channels": [8, 16]}


def correlated_codes(n: int = 4000) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    mix = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.3, -0.2], [0.0, 0.0, 2.0]])
    return torch.randn(n, 3, generator=g) @ mix + torch.tensor([3.0, -1.0, 0.5])


def sampled_codes(model: AEModule, n: int, seed: int = 0) -> torch.Tensor:
    """The codes (n, latent_dim) that sample() decodes, captured by replacing the decoder call."""
    captured = []

    def decode(z: torch.Tensor) -> torch.Tensor:
        captured.append(z)
        return torch.zeros(len(z), 1, 16, 16)

    model.decode = decode
    model.sample(n, generator=torch.Generator().manual_seed(seed))
    del model.decode
    return captured[0].double()


def test_gaussian_density_has_the_codes_mean_and_covariance_and_sample_uses_it() -> None:
    model = AEModule(**TINY, latent_density="gaussian")
    before = model.sample(8, generator=torch.Generator().manual_seed(0))
    prior = sampled_codes(model, 4000)  # N(0, I) before any fit
    torch.testing.assert_close(torch.cov(prior.T), torch.eye(3, dtype=prior.dtype), atol=0.08, rtol=0)
    codes = correlated_codes()
    model.fit_density(codes)
    cov = torch.cov(codes.T.double(), correction=0)
    torch.testing.assert_close(model.density_means[0, 0], codes.double().mean(0))
    torch.testing.assert_close(model.density_covs[0, 0], cov, atol=1e-3, rtol=1e-3)
    after = model.sample(8, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(before, after)
    z = sampled_codes(model, 20000)
    torch.testing.assert_close(z.mean(0), codes.double().mean(0), atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(z.T), cov, atol=0.06, rtol=0.03)


def test_gmm_density_finds_the_code_clusters_and_samples_from_them() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]])
    codes = centres[torch.arange(3000) % 3] + 0.1 * torch.randn(3000, 3, generator=g)
    model = AEModule(**TINY, latent_density="gmm", latent_components=3)
    model.fit_density(codes)
    means = model.density_means[0].float()
    torch.testing.assert_close(means[means.argmax(0)], centres, atol=0.02, rtol=0)  # one component per cluster
    torch.testing.assert_close(model.density_log_weights.exp().float(), torch.full((1, 3), 1 / 3), atol=0.01, rtol=0)
    z = sampled_codes(model, 600).float()
    nearest = torch.cdist(z, centres).min(1).values
    assert nearest.max() < 1.0  # every sample sits in a cluster, none between them
    assert torch.bincount(torch.cdist(z, centres).argmin(1), minlength=3).min() > 150


def test_density_is_fitted_before_validation_ends_and_saved_in_the_checkpoint(tmp_path: Path) -> None:
    seen = []

    class Record(L.Callback):
        def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if not trainer.sanity_checking:  # what the evaluation callback would sample from
                seen.append(pl_module.density_means.abs().sum().item())

    L.seed_everything(0)
    dm = SyntheticDataModule(num_samples=64, image_size=16, batch_size=16)
    model = AEModule(**TINY, latent_density="gmm", latent_components=2)
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1, callbacks=[Record()])
    trainer.fit(model, datamodule=dm)
    assert len(seen) == 1 and seen[0] > 0  # no longer the N(0, I) the model starts with
    trainer.save_checkpoint(tmp_path / "ae.ckpt")
    reloaded = AEModule.load_from_checkpoint(tmp_path / "ae.ckpt")
    assert torch.equal(reloaded.density_means, model.density_means)
    assert torch.equal(reloaded.density_covs, model.density_covs)


def test_density_is_fitted_at_epoch_end_without_validation(tmp_path: Path) -> None:
    L.seed_everything(0)
    dm = SyntheticDataModule(num_samples=64, image_size=16, batch_size=16)
    model = AEModule(**TINY, latent_density="gaussian")
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    assert model.density_means.abs().sum() > 0 and not torch.equal(model.density_covs[0, 0], torch.eye(3).double())
    assert model._codes == []


def validate(model: AEModule, x: torch.Tensor, tmp_path: Path) -> dict[str, float]:
    loader = DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=8)
    (results,) = quiet_trainer(tmp_path).validate(model, dataloaders=loader, verbose=False)
    return results


def test_psnr_and_ssim_are_logged_and_perfect_reconstruction_scores_perfectly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = (torch.rand(16, 1, 16, 16) > 0.7).float() * 2 - 1  # sparse bright pixels, like digits
    model = AEModule(**TINY)
    untrained = validate(model, x, tmp_path)
    assert {"val/loss", "val/mse", "val/psnr", "val/ssim"} <= untrained.keys()
    assert 0 < untrained["val/psnr"] < 20 and -1 <= untrained["val/ssim"] < 0.5
    assert untrained["val/psnr"] == pytest.approx(-10 * math.log10(untrained["val/mse"]), abs=1.5)
    model.encode = lambda images: images.flatten(1)  # a perfect autoencoder
    model.decode = lambda z: z.view(-1, 1, 16, 16)
    perfect = validate(model, x, tmp_path)
    assert perfect["val/loss"] == 0 and perfect["val/mse"] == 0
    assert perfect["val/ssim"] == pytest.approx(1.0, abs=1e-4) and perfect["val/psnr"] > 60


def test_reconstruct_returns_unit_range_images() -> None:
    model = AEModule(**TINY)
    r = model.reconstruct(torch.rand(3, 1, 16, 16) * 2 - 1)
    assert r.shape == (3, 1, 16, 16) and r.min() >= 0 and r.max() <= 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"latent_dim": 0}, "latent_dim must be a positive integer, got 0"),
        ({"image_size": 30}, r"image_size=30 cannot be handled: .* multiple of 4"),
        ({"channels": []}, "channels must be a non-empty list of positive integers"),
        ({"latent_density": "flow"}, r"latent_density must be one of \['gaussian', 'gmm'\], got 'flow'"),
        ({"latent_components": -2}, "latent_components must be a positive integer, got -2"),
        ({"lr": -1.0}, "lr must be > 0, got -1.0"),
        ({"weight_decay": -0.1}, "weight_decay must be >= 0, got -0.1"),
    ],
)
def test_bad_hyperparameters_name_the_value(override: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AEModule(**{**TINY, **override})

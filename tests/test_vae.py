"""The VAE and the model contract: loss, sample(), reconstruct(), checkpoint reload, bad hyperparameters."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import quiet_trainer

from genlab.data import SyntheticDataModule
from genlab.models import GenerativeModel, VAEModule, load_model

TINY = {"image_channels": 1, "image_size": 16, "latent_dim": 4, "channels": [8, 16]}


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_loss_is_finite_and_is_the_negative_elbo(likelihood: str) -> None:
    torch.manual_seed(0)
    model = VAEModule(**TINY, likelihood=likelihood)
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    losses = model.losses(x)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["kl"] >= 0
    torch.testing.assert_close(losses["loss"], losses["recon"] + losses["kl"])
    losses["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_beta_weights_the_kl_term() -> None:
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    torch.manual_seed(0)
    model = VAEModule(**TINY, beta=4.0)
    torch.manual_seed(1)
    losses = model.losses(x)
    torch.testing.assert_close(losses["loss"], losses["recon"] + 4.0 * losses["kl"])


def test_sample_contract() -> None:
    model = VAEModule(**TINY)
    assert isinstance(model, GenerativeModel) and model.num_classes == 0
    x = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, 1, 16, 16) and x.dtype == torch.float32 and x.device == model.device
    assert x.min() >= 0 and x.max() <= 1
    same = model.sample(5, generator=torch.Generator().manual_seed(0))
    other = model.sample(5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(x, same) and not torch.equal(x, other)
    with pytest.raises(ValueError, match="unconditional"):
        model.sample(5, labels=torch.zeros(5, dtype=torch.long))


def test_reconstruct_returns_unit_range_images() -> None:
    model = VAEModule(**TINY)
    r = model.reconstruct(torch.rand(3, 1, 16, 16) * 2 - 1)
    assert r.shape == (3, 1, 16, 16) and r.min() >= 0 and r.max() <= 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sample_on_gpu_matches_cpu_noise() -> None:
    model = VAEModule(**TINY)
    cpu = model.sample(4, generator=torch.Generator().manual_seed(0))
    model.cuda()
    gpu = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_checkpoint_reloads_without_hydra_and_samples_the_same(tmp_path: Path) -> None:
    L.seed_everything(0)
    model = VAEModule(**TINY)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        default_root_dir=tmp_path,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=SyntheticDataModule(num_samples=64, image_size=16, batch_size=16))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    reloaded = VAEModule.load_from_checkpoint(path)
    assert reloaded.hparams.channels == [8, 16] and type(reloaded.hparams.channels) is list
    a = model.sample(6, generator=torch.Generator().manual_seed(7))
    b = reloaded.sample(6, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    found = load_model(path)  # the class is read from the checkpoint
    assert type(found) is VAEModule and torch.equal(found.sample(6, generator=torch.Generator().manual_seed(7)), a)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"latent_dim": -3}, "latent_dim must be a positive integer, got -3"),
        ({"latent_dim": 0}, "latent_dim must be a positive integer, got 0"),
        ({"image_size": 30}, r"image_size=30 cannot be handled: .* halves it 2 times .* multiple of 4"),
        ({"image_size": 16, "channels": [8, 8, 8, 8, 8]}, r"image_size=16 cannot be handled: .* multiple of 32"),
        ({"channels": []}, "channels must be a non-empty list of positive integers"),
        ({"likelihood": "poisson"}, r"likelihood must be one of \['bernoulli', 'gaussian'\], got 'poisson'"),
        ({"beta": -1.0}, "beta must be >= 0, got -1.0"),
        ({"lr": 0.0}, "lr must be > 0, got 0.0"),
        ({"latent_density": "flow"}, r"latent_density must be one of \['none', 'gaussian', 'gmm'\], got 'flow'"),
        ({"latent_density": "gmm", "latent_components": 0}, "latent_components must be a positive integer, got 0"),
    ],
)
def test_bad_hyperparameters_name_the_value(override: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VAEModule(**{**TINY, **override})


@pytest.mark.parametrize(("likelihood", "offset"), [("bernoulli", 0.0), ("gaussian", 6.99435)])
def test_bits_per_dim_is_the_elbo_in_bits_per_pixel(likelihood: str, offset: float) -> None:
    model = VAEModule(**TINY, likelihood=likelihood)
    nelbo = torch.tensor(16 * 16 * math.log(2) * 3.0)  # 3 bits per pixel of a 16x16 grey image
    assert model.bpd(nelbo).item() == pytest.approx(3.0 + offset, abs=1e-4)  # gaussian: + log2(255 / 2) per pixel


def test_an_ex_post_density_is_fitted_to_the_posterior_means_and_sampled_unless_the_prior_is_asked_for(
    tmp_path: Path,
) -> None:
    L.seed_everything(0)
    model = VAEModule(**TINY, latent_density="gaussian")
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=1)
    data = SyntheticDataModule(num_samples=64, image_size=16, batch_size=16)
    trainer.fit(model, datamodule=data)
    assert model.density_means.abs().sum() > 0  # fitted, no longer N(0, I)
    codes = torch.randn(500, 4, generator=torch.Generator().manual_seed(1)) * 0.1 + 2.0
    model.fit_density(codes)  # the fit is the autoencoder's (tests/test_ae.py): it follows the codes it is given
    torch.testing.assert_close(model.density_means[0, 0].float(), codes.mean(0))
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    from_density = model.sample(8, generator=g())
    z = model.sample_density(8, g())
    torch.testing.assert_close(from_density, model.decoded_mean(model.decode(z)))
    model.sample_latent = "prior"
    from_prior = model.sample(8, generator=g())
    assert not torch.allclose(from_prior, from_density)
    path = tmp_path / "density.ckpt"
    trainer.save_checkpoint(path)
    reloaded = load_model(path)
    assert reloaded.sample_latent == "density" and torch.equal(reloaded.sample(8, generator=g()), from_density)
    reloaded.sample_latent = "posterior"
    with pytest.raises(ValueError, match=r"sample_latent must be one of \['prior', 'density'\], got 'posterior'"):
        reloaded.sample(2)
    assert "density_means" not in VAEModule(**TINY).state_dict()  # latent_density=none: checkpoints as before

"""The GAN family: losses and gradient penalty in closed form, one training step per loss, n_critic, the conditional
generator and projection discriminator, the networks at MNIST and CIFAR sizes, and bad hyperparameters."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import quiet_trainer
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch import nn

from genlab.data import MNISTDataModule, SyntheticDataModule
from genlab.models.gan import (
    Discriminator,
    GANModule,
    Generator,
    d_loss_hinge,
    d_loss_ns,
    d_loss_wgan,
    g_loss_mean,
    g_loss_ns,
    gradient_penalty,
)

TINY = {"image_channels": 1, "image_size": 16, "latent_dim": 4, "channels": [8, 16]}


def fit_batches(model: GANModule, root: Path, batches: int) -> None:
    trainer = quiet_trainer(root, max_epochs=1, limit_train_batches=batches, limit_val_batches=0)
    trainer.fit(model, datamodule=SyntheticDataModule(num_samples=64, image_size=16, batch_size=16, num_classes=4))


def changed(before: nn.Module, after: nn.Module) -> list[str]:
    old, new = before.state_dict(), after.state_dict()
    return [k for k in new if not torch.equal(old[k], new[k])]


def test_closed_form_losses_on_known_logits() -> None:
    zero = torch.zeros(4)
    torch.testing.assert_close(d_loss_ns(zero, zero), torch.tensor(2 * math.log(2)))
    torch.testing.assert_close(g_loss_ns(zero), torch.tensor(math.log(2)))
    # sigmoid(log 3) = 3/4: the generator's loss is -log 3/4; D's is -log 3/4 - log(1 - 1/4)
    torch.testing.assert_close(g_loss_ns(torch.full((3,), math.log(3))), torch.tensor(-math.log(0.75)))
    third = torch.tensor([math.log(3)])
    torch.testing.assert_close(d_loss_ns(third, -third), torch.tensor(-2 * math.log(0.75)))
    assert d_loss_ns(torch.tensor([50.0]), torch.tensor([-50.0])) < 1e-20  # softplus: no log(0) at confident logits
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.5])
    torch.testing.assert_close(d_loss_hinge(real, fake), torch.tensor((0 + 1) / 2 + (0 + 1.5) / 2))
    torch.testing.assert_close(d_loss_wgan(real, fake), torch.tensor(-0.75 - 1.0))
    torch.testing.assert_close(g_loss_mean(fake), torch.tensor(0.75))


def test_gradient_penalty_of_a_linear_critic_is_exact() -> None:
    # f(x) = w.x has gradient w at every interpolate, so the penalty is (||w|| - 1)^2 whatever the images.
    torch.manual_seed(0)
    w = torch.randn(1 * 4 * 4, requires_grad=True)
    real, fake = torch.randn(6, 1, 4, 4), torch.randn(6, 1, 4, 4)
    penalty = gradient_penalty(lambda x: x.flatten(1) @ w, real, fake)
    norm = w.detach().norm()
    torch.testing.assert_close(penalty, (norm - 1) ** 2)
    penalty.backward()  # differentiable in the critic's weights: d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    torch.testing.assert_close(w.grad, 2 * (norm - 1) * w.detach() / norm)
    unit = (w / w.norm()).detach()
    assert gradient_penalty(lambda x: x.flatten(1) @ unit, real, fake) < 1e-10


@pytest.mark.parametrize("loss", ["ns", "hinge", "wgan_gp"])
def test_one_training_step_updates_both_networks(loss: str, tmp_path: Path) -> None:
    L.seed_everything(0)
    model = GANModule(**TINY, loss=loss, ema_decay=0.0)
    before = copy.deepcopy(model)
    fit_batches(model, tmp_path, batches=1)
    assert model.global_step == 2  # one discriminator and one generator step
    assert set(changed(before.generator, model.generator)) == set(model.generator.state_dict())
    moved = changed(before.discriminator, model.discriminator)
    assert {k for k in model.discriminator.state_dict() if "weight" in k} <= set(moved)


def test_n_critic_steps_the_discriminator_more_often(tmp_path: Path) -> None:
    L.seed_everything(0)
    model = GANModule(**TINY, loss="wgan_gp", n_critic=3, ema_decay=0.0)
    before = copy.deepcopy(model)
    fit_batches(model, tmp_path, batches=2)  # two critic steps, no generator step yet
    assert model.global_step == 2
    assert not changed(before.generator, model.generator) and changed(before.discriminator, model.discriminator)
    model = copy.deepcopy(before)
    fit_batches(model, tmp_path, batches=3)  # the third batch ends with a generator step
    assert model.global_step == 4 and changed(before.generator, model.generator)


def test_weight_average_callback_follows_the_hyperparameters() -> None:
    (ema,) = GANModule(**TINY, ema_decay=0.99, ema_start=10, n_critic=2).configure_callbacks()
    assert isinstance(ema, EMAWeightAveraging)
    assert ema.update_starting_at_step == 30  # Lightning counts every optimizer step: 3 per generator step
    assert GANModule(**TINY, ema_decay=0.0).configure_callbacks() == []


def test_conditional_generator_output_depends_on_the_label() -> None:
    torch.manual_seed(0)
    model = GANModule(**TINY, num_classes=4)
    z = torch.randn(1, 4).expand(4, 4)
    x = model.generator(z, torch.arange(4))
    assert all(not torch.allclose(x[i], x[j]) for i in range(4) for j in range(i))
    samples = [model.sample(3, torch.full((3,), k), torch.Generator().manual_seed(0)) for k in (0, 1)]
    assert not torch.allclose(*samples)


@pytest.mark.slow
def test_conditional_gan_keeps_variety_within_each_class(tmp_path: Path) -> None:
    """Three epochs of the default cGAN on the bundled digits: samples of one label still differ from one another.
    The raw generator (no weight average) is checked, the one that collapses first. With a learned label embedding
    it ignored z within the first epochs: a within-class spread of 0.13-0.2 of the real digits' (one image per class
    at the end of training), against 0.4-0.8 with the one-hot label."""
    L.seed_everything(0)
    datamodule = MNISTDataModule(source="bundled", batch_size=128)
    model = GANModule(num_classes=10, ema_decay=0.0)
    trainer = quiet_trainer(tmp_path, max_epochs=3, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    images, labels = datamodule.train_set.images.float() / 255, datamodule.train_set.labels
    generator = torch.Generator().manual_seed(0)
    for label in (1, 3, 8):
        real_spread = images[labels == label][:64].std(0).mean()  # per-pixel std over 64 digits, averaged
        fake_spread = model.sample(64, torch.full((64,), label), generator).std(0).mean()
        assert fake_spread > 0.3 * real_spread, (label, fake_spread.item(), real_spread.item())


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_projection_discriminator_matches_the_formula(spectral_norm: bool) -> None:
    torch.manual_seed(0)
    disc = Discriminator(1, 16, [8, 16], num_classes=4, spectral_norm=spectral_norm).eval()
    x, y = torch.randn(5, 1, 16, 16), torch.tensor([0, 1, 2, 3, 1])
    phi = disc.phi(x)
    expected = disc.psi(phi).squeeze(1) + (disc.embed.weight[y] * phi).sum(1)  # psi(phi(x)) + <embed(y), phi(x)>
    torch.testing.assert_close(disc(x, y), expected)
    # the label enters only through the projection: D(x, a) - D(x, b) = <embed(a) - embed(b), phi(x)>
    a, b = torch.zeros(5, dtype=torch.long), torch.full((5,), 2)
    torch.testing.assert_close(disc(x, a) - disc(x, b), ((disc.embed.weight[0] - disc.embed.weight[2]) * phi).sum(1))


@pytest.mark.parametrize("d_norm", ["none", "group"])
def test_discriminator_scores_each_image_on_its_own(d_norm: str) -> None:
    # What the per-image gradient penalty relies on: no batch norm, no mixing across the batch.
    torch.manual_seed(0)
    disc = Discriminator(1, 16, [8, 16], d_norm=d_norm)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in disc.modules())
    x = torch.randn(4, 1, 16, 16)
    torch.testing.assert_close(disc(x)[:1], disc(x[:1]))


@pytest.mark.parametrize(("image_channels", "image_size"), [(1, 28), (3, 32)])
def test_networks_fit_mnist_and_cifar_sizes(image_channels: int, image_size: int) -> None:
    gen = Generator(8, image_channels, image_size, [8, 16], num_classes=10)
    x = gen(torch.randn(2, 8), torch.tensor([0, 9]))
    assert x.shape == (2, image_channels, image_size, image_size) and x.abs().max() <= 1
    disc = Discriminator(image_channels, image_size, [8, 16], num_classes=10, spectral_norm=True)
    assert disc(x, torch.tensor([0, 9])).shape == (2,)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"loss": "lsgan"}, r"loss must be one of \['ns', 'hinge', 'wgan_gp'\], got 'lsgan'"),
        ({"n_critic": 0}, "n_critic must be a positive integer, got 0"),
        ({"latent_dim": -1}, "latent_dim must be a positive integer, got -1"),
        ({"num_classes": -2}, "num_classes must be a non-negative integer, got -2"),
        ({"image_size": 30}, r"image_size=30 cannot be handled: .* multiple of 4"),
        ({"channels": []}, "channels must be a non-empty list of positive integers"),
        ({"lr_g": 0.0}, "lr_g must be > 0, got 0.0"),
        ({"lr_d": -1e-4}, "lr_d must be > 0, got -0.0001"),
        ({"gp_weight": -10.0}, "gp_weight must be >= 0, got -10.0"),
        ({"d_norm": "batch"}, r"d_norm must be one of \['none', 'group'\], got 'batch'"),
        ({"ema_decay": 1.0}, r"ema_decay must be in \[0, 1\) \(0 turns averaging off\), got 1.0"),
        ({"ema_start": -5}, "ema_start must be a non-negative integer, got -5"),
    ],
)
def test_bad_hyperparameters_name_the_value(override: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GANModule(**{**TINY, **override})

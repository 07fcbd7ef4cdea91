"""The GMM baseline: EM on synthetic clusters (monotone likelihood, recovery), full vs diag, class routing, PCA."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from conftest import quiet_trainer

from genlab.data import SyntheticDataModule
from genlab.models.gmm import (
    GMMModule,
    component_log_densities,
    e_step,
    fit_mixture,
    kmeans_pp,
    m_step,
    sample_mixture,
    sufficient_statistics,
)

CENTRES = torch.tensor([[-0.6, -0.6], [0.6, -0.6], [-0.6, 0.6], [0.6, 0.6]])
WEIGHTS = torch.tensor([0.1, 0.2, 0.3, 0.4])


def clusters(n: int = 1000, std: float = 0.05, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n points (n, 2) from four well-separated round clusters with unequal weights, and their cluster index."""
    g = torch.Generator().manual_seed(seed)
    index = torch.multinomial(WEIGHTS, n, replacement=True, generator=g)
    return CENTRES[index] + std * torch.randn(n, 2, generator=g), index


def as_images(z: torch.Tensor) -> torch.Tensor:
    """Points (n, 2) as 2-channel 1x1 'images' (n, 2, 1, 1), so the module fits them in pixel space."""
    return z[:, :, None, None]


def fit_module(model: GMMModule, x: torch.Tensor, y: torch.Tensor, iterations: int, batch: int = 250) -> list[float]:
    """initialize, then `iterations` EM iterations over fixed batches; the average log-likelihood of each E-step."""
    batches = [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)]
    torch.manual_seed(0)  # the pool of initial means is drawn by a generator seeded with the run's seed
    model.initialize(batches)
    history = []
    for _ in range(iterations):
        history.append(torch.cat([model.accumulate(*b) for b in batches]).mean().item())
        model.maximize()
    return history


def row_order(means: torch.Tensor) -> torch.Tensor:
    """The order of `means` (K, 2) that lists them as CENTRES does: bottom row first, left to right."""
    return torch.argsort(means[:, 1] * 10 + means[:, 0])


@pytest.mark.slow
@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_em_log_likelihood_never_decreases(covariance: str) -> None:
    z, _ = clusters(std=0.3)  # overlapping clusters: EM needs many iterations
    history = fit_mixture(
        z, 6, covariance, reg=1e-6, generator=torch.Generator().manual_seed(1), max_iterations=40, tol=0
    )[3]
    assert len(history) == 40 and history[-1] > history[0] + 0.1
    assert all(b >= a - 1e-10 for a, b in zip(history, history[1:], strict=False)), history


def test_kmeans_pp_seeds_one_mean_in_every_well_separated_cluster() -> None:
    z, _ = clusters(n=80)  # the smallest cluster has about 8 points
    for seed in range(40):
        means = kmeans_pp(z, 4, torch.Generator().manual_seed(seed))
        nearest = torch.cdist(means, CENTRES).argmin(1)
        assert sorted(nearest.tolist()) == [0, 1, 2, 3], (seed, means)


@pytest.mark.slow
@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_module_recovers_well_separated_clusters(covariance: str) -> None:
    z, _ = clusters()
    model = GMMModule(
        image_channels=2, image_size=1, num_components=4, covariance=covariance, pca_dim=None, reg_covar=1e-6
    )
    history = fit_module(model, as_images(z), torch.zeros(len(z), dtype=torch.long), iterations=15)
    assert all(b >= a - 1e-10 for a, b in zip(history, history[1:], strict=False)), history
    order = row_order(model.means[0])
    torch.testing.assert_close(model.means[0, order].float(), CENTRES, atol=0.02, rtol=0)
    torch.testing.assert_close(model.log_weights[0, order].exp().float(), WEIGHTS, atol=0.03, rtol=0)
    variances = model.covs[0] if covariance == "diag" else model.covs[0].diagonal(dim1=-2, dim2=-1)
    torch.testing.assert_close(variances.float(), torch.full((4, 2), 0.05**2), rtol=0.3, atol=0)


def test_em_steps_by_hand_and_densities_match_torch_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(50, 3, generator=g, dtype=torch.float64)
    means = torch.randn(2, 3, generator=g, dtype=torch.float64)
    a = torch.randn(2, 3, 3, generator=g, dtype=torch.float64)
    covs = a @ a.mT + 0.5 * torch.eye(3, dtype=torch.float64)
    expected = torch.distributions.MultivariateNormal(means, covs).log_prob(z[:, None])  # (50, 2)
    torch.testing.assert_close(component_log_densities(z, means, covs, "full"), expected)
    variances = covs.diagonal(dim1=-2, dim2=-1)
    expected_diag = torch.distributions.Normal(means, variances.sqrt()).log_prob(z[:, None]).sum(-1)
    torch.testing.assert_close(component_log_densities(z, means, variances, "diag"), expected_diag)
    # with responsibilities of one component, the M-step is the ML Gaussian of the data
    resp, log_lik = e_step(z, torch.tensor([0.0, -math.inf], dtype=torch.float64), means, covs, "full")
    torch.testing.assert_close(log_lik, expected[:, 0])
    _, mean, cov = m_step(*sufficient_statistics(z, resp, "full"), "full", reg=0.0)
    torch.testing.assert_close(mean[0], z.mean(0))
    torch.testing.assert_close(cov[0], torch.cov(z.T, correction=0))


def test_diag_keeps_only_the_variances_and_fits_correlated_data_worse_than_full() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3000, 2, generator=g) @ torch.tensor([[1.0, 0.9], [0.0, 0.3]])  # strongly correlated
    full = fit_mixture(z, 1, "full", reg=1e-9, generator=torch.Generator().manual_seed(0))
    diag = fit_mixture(z, 1, "diag", reg=1e-9, generator=torch.Generator().manual_seed(0))
    assert full[2].shape == (1, 2, 2) and diag[2].shape == (1, 2)
    cov = torch.cov(z.T.double(), correction=0)
    torch.testing.assert_close(full[2][0], cov)
    torch.testing.assert_close(diag[2][0], cov.diagonal())
    assert full[3][-1] > diag[3][-1] + 0.3  # the correlation is worth nats per point


@pytest.mark.slow
def test_conditional_routes_statistics_and_samples_by_label() -> None:
    z, index = clusters()
    y = (index >= 2).long()  # class 0: the two lower clusters, class 1: the two upper ones
    model = GMMModule(image_channels=2, image_size=1, num_classes=2, num_components=2, pca_dim=None)
    fit_module(model, as_images(z), y, iterations=10)
    torch.testing.assert_close(model.means[0, row_order(model.means[0])].float(), CENTRES[:2], atol=0.02, rtol=0)
    torch.testing.assert_close(model.means[1, row_order(model.means[1])].float(), CENTRES[2:], atol=0.02, rtol=0)
    torch.testing.assert_close(model.log_class_prior.exp().float(), torch.tensor([0.3, 0.7]), atol=0.03, rtol=0)
    labels = torch.tensor([0, 1]).repeat(500)
    samples = model.sample(1000, labels=labels, generator=torch.Generator().manual_seed(0))
    height = samples[:, 1, 0, 0] * 2 - 1  # back to [-1, 1]: the second coordinate tells the classes apart
    assert (height[labels == 0] < 0).all() and (height[labels == 1] > 0).all()
    # log p(x) without labels is the mixture over classes of log p(x | y)
    x = as_images(z[:5])
    per_class = torch.stack([model.log_likelihood(x, torch.full((5,), c)) for c in (0, 1)], 1)
    torch.testing.assert_close(model.log_likelihood(x), (per_class + model.log_class_prior).logsumexp(1))


def test_sample_mixture_draws_components_by_weight_and_uses_the_cholesky_factor() -> None:
    means = torch.tensor([[[0.0, 0.0], [5.0, 5.0]]], dtype=torch.float64)
    covs = torch.tensor([[[1.0, 0.8], [0.8, 1.0]], [[0.1, 0.0], [0.0, 0.1]]], dtype=torch.float64)[None]
    log_weights = torch.tensor([[0.75, 0.25]], dtype=torch.float64).log()
    groups = torch.zeros(20000, dtype=torch.long)
    z = sample_mixture(log_weights, means, covs, "full", groups, torch.Generator().manual_seed(0))
    first = z[:, 0] < 2.5
    assert abs(first.double().mean() - 0.75) < 0.02
    torch.testing.assert_close(torch.cov(z[first].T), covs[0, 0], atol=0.05, rtol=0)
    again = sample_mixture(log_weights, means, covs, "full", groups, torch.Generator().manual_seed(0))
    assert torch.equal(z, again)


def test_pca_round_trip_and_orthonormal_basis() -> None:
    g = torch.Generator().manual_seed(0)
    directions = torch.linalg.qr(torch.randn(256, 3, generator=g)).Q  # data in a 3-d subspace of 16x16 pixels
    x = (0.1 + torch.randn(300, 3, generator=g) @ directions.T * 0.05).view(300, 1, 16, 16)
    model = GMMModule(image_size=16, num_components=2, pca_dim=3)
    model.initialize([(x, torch.zeros(300, dtype=torch.long))])
    basis = model.pca_basis
    torch.testing.assert_close(basis.T @ basis, torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(model.decode(model.encode(x)), x, atol=1e-5, rtol=0)
    assert model.encode(x).shape == (300, 3) and model.means.shape == (1, 2, 3)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*configure_optimizers.* returned `None`")
def test_trainer_fit_is_one_em_iteration_per_epoch_and_validation_sees_the_new_parameters(tmp_path) -> None:
    class Record(L.Callback):
        def __init__(self) -> None:
            self.train, self.val = [], []

        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.train.append(trainer.callback_metrics["train/log_likelihood"].item())
            self.val.append(trainer.callback_metrics["val/log_likelihood"].item())

    L.seed_everything(0)
    # 64 training images in batches of 16: every epoch sees the same images, so EM is exact
    dm = SyntheticDataModule(num_samples=80, image_size=16, batch_size=16, val_fraction=0.2)
    model, record = GMMModule(image_size=16, num_components=3, pca_dim=6), Record()
    trainer = quiet_trainer(tmp_path, max_epochs=5, callbacks=[record])
    trainer.fit(model, datamodule=dm)
    assert bool(model.initialized)
    assert all(b >= a - 1e-6 for a, b in zip(record.train, record.train[1:], strict=False)), record.train
    assert record.train[-1] > record.train[0]
    # the logged validation likelihood is that of the final parameters: the M-step ran before validation
    x, y = next(iter(dm.val_dataloader()))
    assert record.val[-1] == pytest.approx(model.log_likelihood(x).mean().item(), rel=1e-6)


@pytest.mark.filterwarnings("ignore:.*configure_optimizers.* returned `None`")
def test_an_epoch_cut_short_leaves_the_mixture_as_it_was(tmp_path) -> None:
    """A stop in the middle of an epoch (trainer.max_time, a signal) must not do an M-step from part of the data."""

    class StopMidSecondEpoch(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.current_epoch == 1 and batch_idx == 1:
                self.means = pl_module.means.clone()
                trainer.should_stop = True

    L.seed_everything(0)
    dm = SyntheticDataModule(num_samples=80, image_size=16, batch_size=16, val_fraction=0.2)
    model, stop = GMMModule(image_size=16, num_components=3, pca_dim=6), StopMidSecondEpoch()
    trainer = quiet_trainer(tmp_path, max_epochs=5, callbacks=[stop])
    trainer.fit(model, datamodule=dm)
    assert hasattr(stop, "means"), "the stop never happened"
    torch.testing.assert_close(model.means, stop.means, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"num_components": 0}, "num_components must be a positive integer, got 0"),
        ({"num_classes": -1}, "num_classes must be a non-negative integer, got -1"),
        ({"covariance": "spherical"}, r"covariance must be one of \['full', 'diag'\], got 'spherical'"),
        ({"pca_dim": 0}, "pca_dim must be a positive integer, got 0"),
        ({"pca_dim": 785}, r"pca_dim must be null or at most .* = 784, got 785"),
        ({"reg_covar": 0.0}, "reg_covar must be > 0, got 0.0"),
        ({"image_size": -28}, "image_size must be a positive integer, got -28"),
    ],
)
def test_bad_hyperparameters_name_the_value(override: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GMMModule(**override)


def test_too_few_images_for_the_components_is_named() -> None:
    model = GMMModule(image_size=4, num_components=5, pca_dim=2)
    with pytest.raises(ValueError, match="cannot seed num_components=5 from 3 data points"):
        model.initialize([(torch.rand(3, 1, 4, 4), torch.zeros(3, dtype=torch.long))])

"""Gaussian mixture model fitted by expectation-maximisation: the baseline that every other family must beat.

Dempster, Laird & Rubin 1977, "Maximum Likelihood from Incomplete Data via the EM Algorithm"; the E and M steps
are Bishop 2006, "Pattern Recognition and Machine Learning", eqs. 9.23-9.27. The numerics follow scikit-learn's
`GaussianMixture`: float64, log-densities through Cholesky factors, logsumexp over components, `reg_covar` added to
the diagonal of every covariance, `full` or `diag` covariances; the means are seeded by k-means++ (Arthur &
Vassilvitskii 2007). Mixtures of Gaussians as image models: Richardson & Weiss 2018, "On GANs and GMMs".

Each epoch is one exact full-batch EM iteration: `training_step` runs the E-step on its batch and adds the sufficient
statistics to float64 running sums; the sums are reduced across DDP ranks and the M-step runs when the epoch's data
has been seen. The pure functions below (`e_step`, `sufficient_statistics`, `m_step`, `fit_mixture`, ...) are the
whole algorithm; the AE reuses them for the density of its latent codes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import lightning as L
import torch
from torch import Tensor, nn

from genlab.checks import ConfigError, check_positive_int
from genlab.models.base import GenerativeModule, check_labels, randn, to_unit

COVARIANCES = ("full", "diag")
POOL_PER_COMPONENT = 20  # data points kept per component as k-means++ candidates
LOG_2PI = math.log(2 * math.pi)


def sum_across_ranks(module: L.LightningModule, t: Tensor) -> Tensor:
    """`t` summed over the DDP ranks of the module's trainer (itself on one process or without a trainer)."""
    trainer = module._trainer
    if trainer is not None and trainer.world_size > 1:
        return trainer.strategy.reduce(t, reduce_op="sum")
    return t


def gather_across_ranks(module: L.LightningModule, t: Tensor) -> Tensor:
    """Every rank's `t` (N, ...) (the same N on every rank) concatenated: (world_size * N, ...)."""
    trainer = module._trainer
    if trainer is not None and trainer.world_size > 1:
        return trainer.strategy.all_gather(t).flatten(0, 1)  # (W, N, ...) -> (W * N, ...)
    return t


def cholesky(covs: Tensor) -> Tensor:
    """Lower Cholesky factors of covariances (..., d, d); a ValueError names the components that are not PD."""
    chol, info = torch.linalg.cholesky_ex(covs)
    if info.any():
        bad = info.nonzero().tolist()
        raise ValueError(f"covariance(s) at {bad} are not positive definite: increase reg_covar")
    return chol


def component_log_densities(z: Tensor, means: Tensor, covs: Tensor, covariance: str) -> Tensor:
    """log N(z_n | mu_k, Sigma_k): z (N, d), means (K, d), covs (K, d, d) for `full` or variances (K, d) for
    `diag` -> (N, K)."""
    d = z.shape[1]
    if covariance == "diag":
        maha = ((z[:, None] - means) ** 2 / covs).sum(-1)  # (N, K, d) -> (N, K)
        logdet = covs.log().sum(-1)
    else:
        chol = cholesky(covs)
        diff = (z[None] - means[:, None]).transpose(1, 2)  # (K, d, N)
        maha = torch.linalg.solve_triangular(chol, diff, upper=False).pow(2).sum(1).T  # |L^-1 (z - mu)|^2: (N, K)
        logdet = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return -0.5 * (maha + logdet + d * LOG_2PI)


def e_step(z: Tensor, log_weights: Tensor, means: Tensor, covs: Tensor, covariance: str) -> tuple[Tensor, Tensor]:
    """Responsibilities r_nk = p(k | z_n) (N, K) (Bishop eq. 9.23) and log p(z_n) (N,)."""
    joint = log_weights + component_log_densities(z, means, covs, covariance)  # log w_k + log N(z_n | k): (N, K)
    log_lik = joint.logsumexp(1)
    return (joint - log_lik[:, None]).exp(), log_lik


def sufficient_statistics(z: Tensor, resp: Tensor, covariance: str) -> tuple[Tensor, Tensor, Tensor]:
    """The sums the M-step needs, additive over batches and ranks: sum_n r_nk (K,), sum_n r_nk z_n (K, d) and
    sum_n r_nk z_n z_n^T (K, d, d), or only its diagonal (K, d) for `diag`."""
    if covariance == "diag":
        return resp.sum(0), resp.T @ z, resp.T @ z**2
    weighted = (resp.T[:, :, None] * z).transpose(1, 2)  # r_nk z_n: (K, N, d) -> (K, d, N)
    return resp.sum(0), resp.T @ z, weighted @ z


def m_step(nk: Tensor, sum_z: Tensor, sum_zz: Tensor, covariance: str, reg: float) -> tuple[Tensor, Tensor, Tensor]:
    """Log-weights (K,), means (K, d) and covariances (+ reg on the diagonal) from the sums (Bishop eqs. 9.24-9.26)."""
    nk = nk + 10 * torch.finfo(nk.dtype).eps  # a component that lost all its points must not divide by zero
    means = sum_z / nk[:, None]
    if covariance == "diag":
        covs = (sum_zz / nk[:, None] - means**2).clamp_min(0) + reg
    else:
        covs = sum_zz / nk[:, None, None] - means[:, :, None] * means[:, None, :]  # E[zz^T] - mu mu^T
        covs = (covs + covs.mT) / 2 + reg * torch.eye(means.shape[1], dtype=covs.dtype, device=covs.device)
    return (nk / nk.sum()).log(), means, covs


def kmeans_pp(points: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """k rows of `points` (N, d) chosen by greedy k-means++ seeding (scikit-learn's): the first uniformly, then each
    time 2 + log k candidates drawn with probability proportional to their squared distance to the nearest row
    already chosen, keeping the one that lowers the total squared distance most. Draws on the generator's device."""
    if len(points) < k:
        raise ValueError(f"cannot seed num_components={k} from {len(points)} data points: too few images per mixture")
    source = generator.device if generator is not None else points.device
    chosen = [int(torch.randint(len(points), (1,), generator=generator, device=source))]
    d2 = ((points - points[chosen[0]]) ** 2).sum(1)
    trials = 2 + int(math.log(k))
    for _ in range(k - 1):
        probs = d2 if d2.sum() > 0 else torch.ones_like(d2)  # all points identical: any will do
        candidates = torch.multinomial(probs.to(source, torch.float64), trials, replacement=True, generator=generator)
        candidates = candidates.to(points.device)
        new_d2 = torch.minimum(d2, ((points[None] - points[candidates, None]) ** 2).sum(-1))  # (trials, N)
        best = int(new_d2.sum(1).argmin())
        chosen.append(int(candidates[best]))
        d2 = new_d2[best]
    return points[chosen]


def initial_mixture(
    points: Tensor, cov: Tensor, k: int, covariance: str, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Before EM: equal weights, k-means++ means picked from `points` (N, d), every covariance the data's `cov`."""
    d = points.shape[1]
    means = kmeans_pp(points, k, generator)
    covs = cov.expand(k, d, d) if covariance == "full" else cov.diagonal().expand(k, d)
    return torch.full((k,), -math.log(k), dtype=points.dtype, device=points.device), means, covs.clone()


def fit_mixture(
    z: Tensor,
    num_components: int,
    covariance: str = "full",
    reg: float = 1e-6,
    generator: torch.Generator | None = None,
    max_iterations: int = 100,
    tol: float = 1e-6,
) -> tuple[Tensor, Tensor, Tensor, list[float]]:
    """Full-batch EM on z (N, d) in float64 until the average log-likelihood gains less than `tol` nats.

    Returns log-weights (K,), means (K, d), covariances and the average log-likelihood before each M-step.
    """
    z = z.double()
    centred = z - z.mean(0)
    cov = centred.T @ centred / len(z) + reg * torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
    log_weights, means, covs = initial_mixture(z, cov, num_components, covariance, generator)
    history: list[float] = []
    for _ in range(max_iterations):
        resp, log_lik = e_step(z, log_weights, means, covs, covariance)
        history.append(log_lik.mean().item())
        log_weights, means, covs = m_step(*sufficient_statistics(z, resp, covariance), covariance, reg)
        if len(history) > 1 and history[-1] - history[-2] < tol:
            break
    return log_weights, means, covs, history


def sample_mixture(
    log_weights: Tensor,
    means: Tensor,
    covs: Tensor,
    covariance: str,
    groups: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One draw per entry of `groups` (n,) from mixture `groups[i]` of the stacked mixtures log_weights (G, K),
    means (G, K, d), covs (G, K, d, d) or (G, K, d): a component from the weights, then z = mu + L eps."""
    source = generator.device if generator is not None else means.device
    probs = log_weights[groups].exp().to(source)  # (n, K)
    k = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(means.device)
    eps = randn((len(groups), means.shape[-1]), means.device, generator).to(means.dtype)
    mu = means[groups, k]
    if covariance == "diag":
        return mu + covs[groups, k].sqrt() * eps
    return mu + (cholesky(covs)[groups, k] @ eps[:, :, None]).squeeze(2)  # L (n, d, d) @ eps (n, d, 1)


def keep_smallest(keys: Tensor, items: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """The `size` entries of keys (N,) and items (N, ...) with the smallest keys (random keys: a uniform sample)."""
    order = keys.topk(min(size, len(keys)), largest=False).indices
    return keys[order], items[order]


class GMMModule(GenerativeModule):
    """Gaussian mixture over flattened images (or their PCA coefficients), one EM iteration per epoch.

    What each stage does:
        `on_train_start` (once, skipped when the model is already initialised, e.g. on resume): one pass over the
            training data gathers the pixel mean and covariance (PCA basis when `pca_dim` is set), the class counts,
            and a random pool of data points (keys from a generator seeded by the run's seed) from which k-means++
            picks the initial means; covariances start at the data's covariance, weights equal.
        epoch e (e = 0, 1, ...): E-step of every batch under parameters theta_e, statistics summed; after the epoch's
            last batch (at the start of validation, so that validation, sample grids and evaluation see the new
            parameters, or at train-epoch end where validation does not run) the M-step gives theta_{e+1}.
    `train/log_likelihood` at epoch e is the average log p(z) of the epoch's images under theta_e (nats per image,
    in the space where the mixture lives), which exact EM never decreases when every epoch sees the same images
    (a loader that drops a different last partial batch each epoch makes it fluctuate by that much).

    Args:
        image_channels: channels of the images.
        image_size: side length of the square images.
        num_classes: 0 for one mixture; > 0 for one mixture per class (sample() then takes labels).
        num_components: Gaussians per mixture.
        covariance: `full` or `diag`.
        pca_dim: fit the mixture to this many principal components of the pixels; None: to the pixels.
        reg_covar: variance added to the diagonal of every covariance (in units of the [-1, 1] pixels).
    """

    def __init__(
        self,
        image_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 0,
        num_components: int = 30,
        covariance: str = "full",
        pca_dim: int | None = 50,
        reg_covar: float = 1e-3,
    ) -> None:
        super().__init__()
        check_hparams(image_channels, image_size, num_classes, num_components, covariance, pca_dim, reg_covar)
        self.save_hyperparameters()
        self.automatic_optimization = False  # EM, no gradients
        self.num_classes = num_classes
        pixels, groups, k = image_channels * image_size**2, max(1, num_classes), num_components
        d = pca_dim or pixels
        f64 = torch.float64
        if pca_dim is not None:
            self.register_buffer("pca_mean", torch.zeros(pixels, dtype=f64))
            self.register_buffer("pca_basis", torch.eye(pixels, d, dtype=f64))  # (pixels, d), orthonormal columns
        self.register_buffer("log_weights", torch.full((groups, k), -math.log(k), dtype=f64))
        self.register_buffer("means", torch.zeros(groups, k, d, dtype=f64))
        eye = torch.eye(d, dtype=f64) if covariance == "full" else torch.ones(d, dtype=f64)
        self.register_buffer("covs", eye.expand(groups, k, *eye.shape).clone())
        self.register_buffer("log_class_prior", torch.full((groups,), -math.log(groups), dtype=f64))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        # DDP refuses to wrap a module without a trainable parameter; EM has none, so it gets one that nothing uses.
        self.ddp_placeholder = nn.Parameter(torch.zeros(()))
        self._stats: list[Tensor] | None = None  # running sums of this epoch's E-steps, per class and component
        self._batches = 0
        self._log_lik = torch.zeros(2, dtype=f64)  # this epoch's sum of log p(z) and its number of images

    def encode(self, x: Tensor) -> Tensor:
        """Images (B, C, S, S) in [-1, 1] -> points (B, d) in float64 in the mixture's space."""
        x = x.flatten(1).double()  # (B, C*S*S)
        return x if self.hparams.pca_dim is None else (x - self.pca_mean) @ self.pca_basis

    def decode(self, z: Tensor) -> Tensor:
        """Points (B, d) -> images (B, C, S, S) in [-1, 1], float32."""
        x = z if self.hparams.pca_dim is None else self.pca_mean + z @ self.pca_basis.T
        c, s = self.hparams.image_channels, self.hparams.image_size
        return x.clamp(-1, 1).float().view(len(z), c, s, s)

    def groups(self, y: Tensor) -> Tensor:
        """The mixture each image belongs to: its label (conditional) or 0."""
        return y.to(self.device) if self.num_classes else torch.zeros(len(y), dtype=torch.long, device=self.device)

    def mixture(self, g: int) -> tuple[Tensor, Tensor, Tensor, str]:
        """Log-weights, means, covariances and covariance type of mixture g (class g, or 0)."""
        return self.log_weights[g], self.means[g], self.covs[g], self.hparams.covariance

    def set_mixture(self, g: int, params: tuple[Tensor, Tensor, Tensor]) -> None:
        for buffer, value in zip((self.log_weights, self.means, self.covs), params, strict=True):
            buffer[g].copy_(value)  # in place: the buffers stay normal tensors even under inference mode

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """log p(x) per image (B,) in nats, of its PCA coefficients when `pca_dim` is set. A conditional model
        gives log p(x | labels), or without labels log sum_y p(y) p(x | y) with p(y) the training class shares."""
        z = self.encode(x.to(self.device))
        if labels is not None or not self.num_classes:
            groups = self.groups(labels if labels is not None else torch.zeros(len(z), dtype=torch.long))
            log_lik = torch.empty(len(z), dtype=z.dtype, device=z.device)
            for g in groups.unique().tolist():
                log_lik[groups == g] = e_step(z[groups == g], *self.mixture(g))[1]
            return log_lik
        per_class = [e_step(z, *self.mixture(g))[1] for g in range(self.num_classes)]
        return (torch.stack(per_class, 1) + self.log_class_prior).logsumexp(1)  # (B, classes) -> (B,)

    @torch.no_grad()
    def accumulate(self, x: Tensor, y: Tensor) -> Tensor:
        """E-step of one batch under the current parameters; adds its statistics to the epoch's sums and returns
        log p(z) per image (B,)."""
        z, groups = self.encode(x.to(self.device)), self.groups(y)
        if self._stats is None:
            self._stats = [torch.zeros_like(t) for t in (self.log_weights, self.means, self.covs)]
        log_lik = torch.empty(len(z), dtype=z.dtype, device=z.device)
        for g in groups.unique().tolist():
            idx = groups == g
            resp, log_lik[idx] = e_step(z[idx], *self.mixture(g))
            stats = sufficient_statistics(z[idx], resp, self.hparams.covariance)
            for total, stat in zip(self._stats, stats, strict=True):
                total[g] += stat
        return log_lik

    @torch.no_grad()
    def maximize(self) -> None:
        """M-step from the epoch's statistics, summed across ranks; classes absent from the data keep theirs."""
        nk, sum_z, sum_zz = (sum_across_ranks(self, s) for s in self._stats)
        self._stats, self._batches = None, 0
        for g in (nk.sum(1) > 0).nonzero().flatten().tolist():
            self.set_mixture(g, m_step(nk[g], sum_z[g], sum_zz[g], self.hparams.covariance, self.hparams.reg_covar))

    @torch.no_grad()
    def initialize(self, batches: Iterable[tuple[Tensor, Tensor]]) -> None:
        """One pass over `batches` (this rank's share of the data): PCA basis, class shares and initial mixtures."""
        count, sum_x, sum_xx, pool_keys, pool_x = self._moments_and_pool(batches)
        count, sum_x, sum_xx = (sum_across_ranks(self, t) for t in (count, sum_x, sum_xx))
        pool_keys = gather_across_ranks(self, pool_keys.T.contiguous()).T  # (G, P) -> (W*P, G) -> (G, W*P)
        pool_x = gather_across_ranks(self, pool_x.transpose(0, 1).contiguous()).transpose(0, 1)  # (G, W*P, D)
        mixture_cov = self.fit_pca(sum_x / count.sum(), sum_xx / count.sum())
        generator = torch.Generator().manual_seed(torch.initial_seed())  # the same on every rank
        for g in range(len(count)):
            keys, x = keep_smallest(pool_keys[g], pool_x[g], POOL_PER_COMPONENT * self.hparams.num_components)
            points = self.encode(x[keys.isfinite()])
            k, covariance = self.hparams.num_components, self.hparams.covariance
            self.set_mixture(g, initial_mixture(points, mixture_cov, k, covariance, generator))
        self.log_class_prior.copy_((count / count.sum()).log())
        self.initialized.fill_(True)

    def fit_pca(self, mean: Tensor, second_moment: Tensor) -> Tensor:
        """The PCA basis (when `pca_dim` is set) from the pixels' E[x] (D,) and E[x x^T] (D, D); returns the data's
        covariance in the mixture's space plus `reg_covar`, from which every component starts."""
        cov = second_moment - torch.outer(mean, mean)
        if self.hparams.pca_dim is not None:
            eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
            self.pca_mean.copy_(mean)
            self.pca_basis.copy_(eigenvectors[:, -self.hparams.pca_dim :].flip(1))
            cov = eigenvalues[-self.hparams.pca_dim :].flip(0).clamp_min(0).diag()  # the covariance of z = V^T (x - m)
        return cov + self.hparams.reg_covar * torch.eye(len(cov), dtype=cov.dtype, device=cov.device)

    def _moments_and_pool(self, batches: Iterable[tuple[Tensor, Tensor]]) -> tuple[Tensor, ...]:
        """Class counts (G,), sum x (D,), sum x x^T (D, D) in float64, and per class the data points (G, P, D) with
        the smallest random keys (G, P) (inf where a class has fewer than P)."""
        groups_n, d = self.log_weights.shape[0], self.hparams.image_channels * self.hparams.image_size**2
        size, dev = POOL_PER_COMPONENT * self.hparams.num_components, self.device
        rank = self._trainer.global_rank if self._trainer is not None else 0
        generator = torch.Generator().manual_seed(torch.initial_seed() + rank)  # other ranks, other keys
        count = torch.zeros(groups_n, dtype=torch.float64, device=dev)
        sum_x = torch.zeros(d, dtype=torch.float64, device=dev)
        sum_xx = torch.zeros(d, d, dtype=torch.float64, device=dev)
        pool_keys = torch.full((groups_n, size), math.inf, device=dev)
        pool_x = torch.zeros(groups_n, size, d, device=dev)
        for x, y in batches:
            x, groups = x.to(dev).flatten(1), self.groups(y)  # (B, D)
            keys = torch.rand(len(x), generator=generator).to(dev)
            count += torch.bincount(groups, minlength=groups_n)
            sum_x += x.double().sum(0)
            sum_xx += x.double().T @ x.double()
            for g in groups.unique().tolist():
                idx = groups == g
                merged_keys, merged_x = torch.cat([pool_keys[g], keys[idx]]), torch.cat([pool_x[g], x[idx]])
                pool_keys[g], pool_x[g] = keep_smallest(merged_keys, merged_x, size)
        return count, sum_x, sum_xx, pool_keys, pool_x

    def on_train_start(self) -> None:
        if not self.initialized:
            self.initialize(self.trainer.train_dataloader)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        per_image = self.accumulate(x, y)
        log_lik = per_image.mean()
        if self._batches == 0:
            self._log_lik = torch.zeros(2, dtype=per_image.dtype, device=per_image.device)
        self._log_lik += torch.stack([per_image.sum(), per_image.new_tensor(len(per_image))])
        self._batches += 1
        # No parameters to step: this steps Lightning's placeholder optimizer only so that `global_step`, which
        # checkpointing counts (it never saves at a step it has already saved at), advances with every batch.
        self.optimizers().step()
        self.log("train/loss", -log_lik, prog_bar=True)
        if self._batches == self.trainer.num_training_batches:  # the epoch's mean once, not a log call per batch
            mean = self._log_lik[0] / self._log_lik[1]
            self.log("train/log_likelihood", mean, on_step=False, on_epoch=True, sync_dist=True)

    def on_validation_epoch_start(self) -> None:
        # Validation (and the evaluation at its end) runs before on_train_epoch_end: do the M-step here, but only
        # once the whole epoch has been seen (not for a validation in the middle of an epoch).
        if self.seen_whole_epoch():
            self.maximize()

    def on_train_epoch_end(self) -> None:
        # Epochs without validation. An epoch cut short (trainer.max_time, a stop signal) keeps the mixture: an
        # M-step from part of the data is no EM iteration and could lower the likelihood.
        if self.seen_whole_epoch():
            self.maximize()
        self._stats, self._batches = None, 0

    def seen_whole_epoch(self) -> bool:
        """Whether this epoch's statistics cover every training batch: only then is the M-step an EM iteration."""
        return self._stats is not None and self._batches >= self.trainer.num_training_batches

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        log_lik = self.log_likelihood(x, y if self.num_classes else None).mean()
        metrics = {"val/loss": -log_lik, "val/log_likelihood": log_lik}
        self.log_dict(metrics, prog_bar=True, sync_dist=True, batch_size=len(x))

    def configure_optimizers(self) -> None:
        return None

    @torch.no_grad()
    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """n images (n, C, S, S) in [0, 1]: a component from the (label's) mixture weights, z = mu + L eps, decoded."""
        check_labels(self.num_classes, n, labels)
        groups = self.groups(labels if labels is not None else torch.zeros(n, dtype=torch.long))
        z = sample_mixture(self.log_weights, self.means, self.covs, self.hparams.covariance, groups, generator)
        return to_unit(self.decode(z))


def check_hparams(
    image_channels: int,
    image_size: int,
    num_classes: int,
    num_components: int,
    covariance: str,
    pca_dim: int | None,
    reg_covar: float,
) -> None:
    """Raise a ValueError naming the first invalid hyperparameter and what is allowed."""
    check_positive_int("image_channels", image_channels)
    check_positive_int("image_size", image_size)
    check_positive_int("num_classes", num_classes, allow_zero=True)
    check_positive_int("num_components", num_components)
    if covariance not in COVARIANCES:
        raise ConfigError(f"covariance must be one of {list(COVARIANCES)}, got {covariance!r}")
    if pca_dim is not None:
        check_positive_int("pca_dim", pca_dim)
        pixels = image_channels * image_size**2
        if pca_dim > pixels:
            raise ConfigError(f"pca_dim must be null or at most channels * image_size**2 = {pixels}, got {pca_dim}")
    if not reg_covar > 0:
        raise ConfigError(f"reg_covar must be > 0, got {reg_covar!r}")

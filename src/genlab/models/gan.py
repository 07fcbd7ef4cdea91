"""DCGAN-style GAN and, with `num_classes > 0`, the class-conditional GAN (cGAN).

Networks after DCGAN (Radford et al. 2016, https://arxiv.org/abs/1511.06434): 4x4 stride-2 (transposed)
convolutions, LeakyReLU(0.2) in the discriminator, Adam with beta1 = 0.5. Three losses:
    ns       non-saturating (Goodfellow et al. 2014, https://arxiv.org/abs/1406.2661)
             D: -log s(D(x)) - log(1 - s(D(G(z))))          G: -log s(D(G(z)))
    hinge    (Lim & Ye 2017, https://arxiv.org/abs/1705.02894; Miyato et al. 2018, https://arxiv.org/abs/1802.05957)
             D: relu(1 - D(x)) + relu(1 + D(G(z)))          G: -D(G(z))
    wgan_gp  (Gulrajani et al. 2017, https://arxiv.org/abs/1704.00028)
             D: D(G(z)) - D(x) + 10 (||grad D(x_hat)||_2 - 1)^2 at random interpolates x_hat    G: -D(G(z))
Optional spectral normalisation of every discriminator layer (Miyato et al. 2018). The conditional model feeds the
scaled one-hot label to the generator beside z and uses a projection discriminator (Miyato & Koyama 2018,
https://arxiv.org/abs/1802.05637): D(x, y) = psi(phi(x)) + <embed(y), phi(x)>. Samples come from an exponential
moving average of the weights, kept by Lightning's EMAWeightAveraging callback (genlab.models.ema.EMA).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as add_spectral_norm

from genlab.checks import ConfigError, check_positive_int
from genlab.models.base import GenerativeModule, check_labels, randn, to_unit
from genlab.models.blocks import check_channels, check_image_size, norm
from genlab.models.ema import EMA


# --- losses: logits (B,) -> scalar; pure functions so that they can be tested on known values -------------------
def d_loss_ns(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator cross-entropy: -log s(D(x)) - log(1 - s(D(G(z)))), written with softplus for stability."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_loss_ns(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss -log s(D(G(z))): strong gradients while D rejects the fakes."""
    return F.softplus(-fake_logits).mean()


def d_loss_hinge(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def d_loss_wgan(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The critic's loss without the penalty: minus the Wasserstein-1 estimate E[D(x)] - E[D(G(z))]."""
    return fake_logits.mean() - real_logits.mean()


def g_loss_mean(fake_logits: Tensor) -> Tensor:
    """Generator loss of hinge and WGAN: -E[D(G(z))]."""
    return -fake_logits.mean()


LOSSES: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "ns": (d_loss_ns, g_loss_ns),
    "hinge": (d_loss_hinge, g_loss_mean),
    "wgan_gp": (d_loss_wgan, g_loss_mean),
}
D_NORMS = ("none", "group")


def gradient_penalty(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor) -> Tensor:
    """WGAN-GP penalty E[(||grad_x critic(x_hat)||_2 - 1)^2] at x_hat = a x_real + (1 - a) x_fake, a ~ U(0, 1) per
    image. Differentiable (create_graph) so that it trains the critic. `critic` maps (B, ...) to (B,) and must treat
    images independently (no batch norm), so that the gradient of the sum is each image's own gradient."""
    alpha = torch.rand(len(real), *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


# --- networks --------------------------------------------------------------------------------------------------
class Generator(nn.Module):
    """Noise z (B, latent_dim) [and labels y (B,)] -> images (B, C, S, S) in [-1, 1].

    DCGAN's generator: a linear stem to a (widest, S / 2**L, S / 2**L) map, then stride-2 4x4 transposed
    convolutions narrowing as `channels` reversed, the last one straight to the image channels, and a tanh.
    GroupNorm instead of DCGAN's batch norm keeps a sample independent of the rest of its batch.

    A conditional generator concatenates the one-hot label to z (Mirza & Osindero 2014), scaled to sqrt(latent_dim),
    the expected norm of z, so that neither input drowns the other in the stem. In our MNIST runs a learned class
    embedding (trained or frozen), or a one-hot twice as large, made the generator ignore z: one image per class
    (recall 0.01), which a high precision and accuracy hide.
    """

    def __init__(
        self, latent_dim: int, image_channels: int, image_size: int, channels: Sequence[int], num_classes: int = 0
    ) -> None:
        super().__init__()
        check_image_size(image_size, channels)
        widths = list(channels)[::-1]  # widest first
        self.side = image_size // 2 ** len(widths)
        self.num_classes = num_classes
        self.label_scale = math.sqrt(latent_dim)
        self.stem = nn.Linear(latent_dim + num_classes, widths[0] * self.side**2)
        layers: list[nn.Module] = [norm(widths[0]), nn.ReLU()]
        for ch, nxt in zip(widths, widths[1:], strict=False):
            layers += [nn.ConvTranspose2d(ch, nxt, 4, stride=2, padding=1), norm(nxt), nn.ReLU()]
        layers += [nn.ConvTranspose2d(widths[-1], image_channels, 4, stride=2, padding=1), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        if self.num_classes:
            onehot = F.one_hot(y, self.num_classes).to(z.dtype) * self.label_scale
            z = torch.cat([z, onehot], dim=1)  # (B, latent_dim + num_classes)
        h = self.stem(z).view(len(z), -1, self.side, self.side)  # (B, widest * s^2) -> (B, widest, s, s)
        return self.body(h)


class Discriminator(nn.Module):
    """Images (B, C, S, S) [and labels y (B,)] -> logits (B,).

    phi: stride-2 4x4 convolutions with LeakyReLU(0.2), GroupNorm on all but the first stage (DCGAN leaves the
    first unnormalised) unless `d_norm="none"`; never batch norm, which would mix images and break the per-image
    gradient of WGAN-GP. psi: a linear layer on the flattened features. The conditional discriminator adds the
    projection <embed(y), phi(x)>.
    """

    def __init__(
        self,
        image_channels: int,
        image_size: int,
        channels: Sequence[int],
        num_classes: int = 0,
        d_norm: str = "group",
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = image_channels
        for i, ch in enumerate(channels):
            layers.append(nn.Conv2d(prev, ch, 4, stride=2, padding=1))
            if d_norm == "group" and i > 0:
                layers.append(norm(ch))
            layers.append(nn.LeakyReLU(0.2))
            prev = ch
        self.features = nn.Sequential(*layers)
        feature_dim = prev * (image_size // 2 ** len(channels)) ** 2
        self.psi = nn.Linear(feature_dim, 1)
        self.embed = nn.Embedding(num_classes, feature_dim) if num_classes else None
        if self.embed is not None:
            # Glorot init as in the reference code: embed(y) ~ N(0, 1) over thousands of features would start the
            # projection term at logits of size ~sqrt(feature_dim) and saturate the losses.
            nn.init.xavier_uniform_(self.embed.weight)
        if spectral_norm:
            for module in self.modules():
                if isinstance(module, nn.Conv2d | nn.Linear | nn.Embedding):
                    add_spectral_norm(module)

    def phi(self, x: Tensor) -> Tensor:
        return self.features(x).flatten(1)  # (B, C', s, s) -> (B, C' s^2)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        h = self.phi(x)
        logits = self.psi(h).squeeze(1)  # (B, 1) -> (B,)
        if self.embed is not None:
            logits = logits + (self.embed(y) * h).sum(1)  # projection term <embed(y), phi(x)>
        return logits


# --- the Lightning module --------------------------------------------------------------------------------------
class GANModule(GenerativeModule):
    """GAN (cGAN when `num_classes > 0`) trained with manual optimization: one discriminator step per batch and
    one generator step every `n_critic` batches.

    Args:
        image_channels: channels of the images (1 grey, 3 colour).
        image_size: side length of the square images; a multiple of 2 ** len(channels).
        num_classes: 0 for a GAN; the number of classes for a cGAN (labels then go to both networks).
        latent_dim: size of z.
        channels: discriminator widths, one stride-2 stage each; the generator mirrors them.
        loss: `ns`, `hinge` or `wgan_gp`.
        lr_g: generator Adam learning rate.
        lr_d: discriminator Adam learning rate. Adam's betas are (0.5, 0.999), (0.0, 0.9) for WGAN-GP.
        n_critic: discriminator steps (batches) per generator step.
        gp_weight: weight of the WGAN-GP gradient penalty (used by `wgan_gp` only).
        d_norm: `group` (GroupNorm in the discriminator) or `none`.
        spectral_norm: spectral normalisation of every discriminator layer.
        ema_decay: decay of the weight average that samples come from; 0 turns averaging off.
        ema_start: generator steps before the average starts (it starts as a copy of the weights then).
    """

    checkpoint_monitor = None  # val/loss is the discriminator's: lower is not better samples

    def __init__(
        self,
        image_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 0,
        latent_dim: int = 64,
        channels: Sequence[int] = (32, 64),
        loss: str = "ns",
        lr_g: float = 1e-3,
        lr_d: float = 1e-3,
        n_critic: int = 1,
        gp_weight: float = 10.0,
        d_norm: str = "group",
        spectral_norm: bool = False,
        ema_decay: float = 0.99,
        ema_start: int = 0,
    ) -> None:
        super().__init__()
        check_hparams(
            image_channels, image_size, num_classes, latent_dim, channels, loss, lr_g, lr_d, n_critic, gp_weight
        )
        check_training_hparams(d_norm, ema_decay, ema_start)
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.num_classes = num_classes
        self.generator = Generator(latent_dim, image_channels, image_size, channels, num_classes)
        self.discriminator = Discriminator(image_channels, image_size, channels, num_classes, d_norm, spectral_norm)
        self.d_loss_fn, self.g_loss_fn = LOSSES[loss]

    def generate(self, n: int, y: Tensor | None, generator: torch.Generator | None = None) -> Tensor:
        """n images (n, C, S, S) in [-1, 1] from fresh noise."""
        return self.generator(randn((n, self.hparams.latent_dim), self.device, generator), y)

    def d_losses(self, x: Tensor, y: Tensor | None, fake: Tensor) -> dict[str, Tensor]:
        """The discriminator's loss on real images `x` and generated `fake`, and what goes into it."""
        real_logits, fake_logits = self.discriminator(x, y), self.discriminator(fake, y)
        out = {"d_loss": self.d_loss_fn(real_logits, fake_logits), "d_real": real_logits.mean()}
        out |= {"d_fake": fake_logits.mean(), "g_loss": self.g_loss_fn(fake_logits)}
        if self.hparams.loss == "wgan_gp" and torch.is_grad_enabled():  # validation has no gradients: no penalty
            out["gp"] = gradient_penalty(lambda v: self.discriminator(v, y), x, fake)
            out["d_loss"] = out["d_loss"] + self.hparams.gp_weight * out["gp"]
        return out

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch[0], batch[1] if self.num_classes else None
        opt_g, opt_d = self.optimizers()
        # Discriminator step. The fakes are detached; the zero-weighted sum over the generator's parameters marks
        # them used, which DDP (find_unused_parameters=False) needs in every backward pass. Their zero gradients are
        # cleared before the generator step.
        with torch.no_grad():
            fake = self.generate(len(x), y)
        out = self.d_losses(x, y, fake)
        touch = sum(p.sum() for p in self.generator.parameters()) * 0.0
        opt_d.zero_grad()
        self.manual_backward(out["d_loss"] + touch)
        opt_d.step()
        # Generator step (fakes labelled like the real batch, so D sees the same classes on both sides).
        if (batch_idx + 1) % self.hparams.n_critic == 0:
            out["g_loss"] = self.g_loss_fn(self.discriminator(self.generate(len(x), y), y))
            opt_g.zero_grad()
            self.manual_backward(out["g_loss"])
            opt_g.step()
        # train/loss is the generator loss (of the generator step, else of the discriminator step's fakes).
        self.log("train/loss", out["g_loss"], prog_bar=True)
        self.log_diagnostics({f"train/{k}": v.detach() for k, v in out.items()})

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """val/loss: the discriminator's loss on held-out images against fresh fakes (without the WGAN-GP penalty,
        which needs gradients). There is no held-out GAN objective that tracks quality; select by eval/fid."""
        x, y = batch[0], batch[1] if self.num_classes else None
        out = self.d_losses(x, y, self.generate(len(x), y))
        self.log("val/loss", out["d_loss"], prog_bar=True, sync_dist=True)
        self.log_dict({f"val/{k}": out[k] for k in ("d_real", "d_fake", "g_loss")}, sync_dist=True)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        betas = (0.0, 0.9) if self.hparams.loss == "wgan_gp" else (0.5, 0.999)
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=self.hparams.lr_g, betas=betas)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.hparams.lr_d, betas=betas)
        return [opt_g, opt_d]

    def configure_callbacks(self) -> list[L.Callback]:
        """The weight average that validation, evaluation and checkpoints use. Lightning's global step counts every
        optimizer step (n_critic + 1 per generator step), and the average is updated once per batch."""
        if self.hparams.ema_decay == 0:
            return []
        start = self.hparams.ema_start * (self.hparams.n_critic + 1)
        return [EMA(decay=self.hparams.ema_decay, start_step=start)]

    @torch.no_grad()
    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """n images (n, C, S, S) in [0, 1] from z ~ N(0, I) (and `labels` (n,) for a cGAN)."""
        check_labels(self.num_classes, n, labels)
        y = labels.to(self.device) if labels is not None else None
        return to_unit(self.generate(n, y, generator)).float()


def check_hparams(
    image_channels: int,
    image_size: int,
    num_classes: int,
    latent_dim: int,
    channels: Sequence[int],
    loss: str,
    lr_g: float,
    lr_d: float,
    n_critic: int,
    gp_weight: float,
) -> None:
    """Raise a ValueError naming the first invalid hyperparameter and what is allowed."""
    check_positive_int("image_channels", image_channels)
    check_positive_int("num_classes", num_classes, allow_zero=True)
    check_positive_int("latent_dim", latent_dim)
    check_channels(channels)
    check_image_size(image_size, channels)
    if loss not in LOSSES:
        raise ConfigError(f"loss must be one of {list(LOSSES)}, got {loss!r}")
    for name, value in (("lr_g", lr_g), ("lr_d", lr_d)):
        if not value > 0:
            raise ConfigError(f"{name} must be > 0, got {value!r}")
    check_positive_int("n_critic", n_critic)
    if not gp_weight >= 0:
        raise ConfigError(f"gp_weight must be >= 0, got {gp_weight!r}")


def check_training_hparams(d_norm: str, ema_decay: float, ema_start: int) -> None:
    """Raise a ValueError for an unknown discriminator norm or a bad weight-average setting."""
    if d_norm not in D_NORMS:
        raise ConfigError(f"d_norm must be one of {list(D_NORMS)}, got {d_norm!r}")
    if not 0 <= ema_decay < 1:
        raise ConfigError(f"ema_decay must be in [0, 1) (0 turns averaging off), got {ema_decay!r}")
    check_positive_int("ema_start", ema_start, allow_zero=True)

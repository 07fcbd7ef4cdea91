"""Convolutional variational autoencoder.

Kingma & Welling 2014, "Auto-Encoding Variational Bayes" (https://arxiv.org/abs/1312.6114): a Gaussian
encoder q(z|x), a standard normal prior p(z) and a decoder p(x|z), trained on the negative ELBO
    loss = E_q[-log p(x|z)] + beta * KL(q(z|x) || p(z))        (nats per image)
with beta = 1 the true bound (Higgins et al. 2017 for beta != 1). The decoder is Bernoulli on pixel
intensities in [0, 1] (the usual choice for MNIST) or Gaussian with one learned scale (Rybkin et al. 2021,
"Simple and Effective VAE Training with Calibrated Decoders").

The aggregate posterior of a trained VAE is not its N(0, I) prior, and decoding prior samples lands in the holes
between the posteriors (Dai & Wipf 2019, "Diagnosing and Enhancing VAE Models", two-stage VAE: InceptionV3 FID 12.6
against 16.6 on MNIST). `latent_density=gaussian|gmm` fits an ex-post density to the posterior means of each epoch's
training images (Ghosh et al. 2020; `genlab.models.latent_density`); `sample()` then decodes z drawn from it, or
from the prior when the attribute `sample_latent` is set to `prior` (to compare the two on one checkpoint).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.checks import ConfigError, check_positive_int
from genlab.models.base import GenerativeModule, check_labels, randn, to_unit
from genlab.models.blocks import ConvDecoder, ConvEncoder, check_channels, check_image_size
from genlab.models.latent_density import LATENT_DENSITIES, LatentDensity, check_latent_density

LIKELIHOODS = ("bernoulli", "gaussian")
VAE_LATENT_DENSITIES = ("none", *LATENT_DENSITIES)  # none: sample the prior N(0, I), fit nothing
SAMPLE_LATENTS = ("prior", "density")


class VAEModule(LatentDensity, GenerativeModule):
    """VAE with a convolutional encoder and decoder.

    Args:
        image_channels: channels of the images (1 grey, 3 colour).
        image_size: side length of the square images; a multiple of 2 ** len(channels).
        latent_dim: size of z.
        channels: encoder widths, one stride-2 stage each (the decoder mirrors them).
        likelihood: `bernoulli` or `gaussian` decoder.
        beta: weight of the KL term (1 gives the ELBO).
        latent_density: `none` (sample the prior), or an ex-post density over the posterior means, `gaussian`
            or `gmm`, that `sample()` uses (attribute `sample_latent`: `density`, or `prior` to ignore it).
        latent_components: Gaussians in the `gmm` density.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
    """

    num_classes = 0

    def __init__(
        self,
        image_channels: int = 1,
        image_size: int = 28,
        latent_dim: int = 16,
        channels: Sequence[int] = (32, 64),
        likelihood: str = "bernoulli",
        beta: float = 1.0,
        latent_density: str = "none",
        latent_components: int = 10,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        check_hparams(image_channels, image_size, latent_dim, channels, likelihood, beta, lr)
        check_latent_density(latent_density, latent_components, VAE_LATENT_DENSITIES)
        self.save_hyperparameters()
        self.encoder = ConvEncoder(image_channels, image_size, channels, 2 * latent_dim)
        self.decoder = ConvDecoder(latent_dim, image_channels, image_size, channels)
        # log of the Gaussian decoder's scale, in units of the [-1, 1] pixel range
        self.log_scale = nn.Parameter(torch.zeros(())) if likelihood == "gaussian" else None
        self.fits_density = latent_density != "none"
        if self.fits_density:  # no density buffers otherwise: older checkpoints load as they were saved
            self.init_density(latent_dim, latent_density, latent_components)
        else:
            self._codes = []
        self.sample_latent = "density" if self.fits_density else "prior"  # what sample() decodes

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images (B, C, S, S) in [-1, 1] -> mean and log-variance of q(z|x), each (B, latent_dim)."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-30, 20)

    def decode(self, z: Tensor) -> Tensor:
        """Latents (B, latent_dim) -> decoder output (B, C, S, S): logits (bernoulli) or mean in [-1, 1]."""
        return self.decoder(z)

    def decoded_mean(self, out: Tensor) -> Tensor:
        """Mean of p(x|z) in [0, 1] from the decoder output."""
        return torch.sigmoid(out) if self.hparams.likelihood == "bernoulli" else to_unit(out)

    def reconstruction_nll(self, out: Tensor, x: Tensor) -> Tensor:
        """-log p(x|z) in nats, summed over pixels: (B,)."""
        if self.hparams.likelihood == "bernoulli":
            nll = F.binary_cross_entropy_with_logits(out, (x + 1) / 2, reduction="none")
        else:
            scale = self.log_scale.exp()
            nll = 0.5 * ((x - out) / scale) ** 2 + self.log_scale + 0.5 * math.log(2 * math.pi)
        return nll.flatten(1).sum(1)

    def losses(self, x: Tensor, keep_codes: bool = False) -> dict[str, Tensor]:
        """Negative ELBO and its two terms, averaged over the batch (nats per image); `keep_codes`: keep the
        posterior means for the latent density."""
        mu, logvar = self.encode(x)
        if keep_codes and self.fits_density:
            self.keep_codes(mu)
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)  # reparameterisation trick
        recon = self.reconstruction_nll(self.decode(z), x).mean()
        kl = (0.5 * (mu**2 + logvar.exp() - 1 - logvar)).sum(1).mean()  # KL(N(mu, s^2) || N(0, 1)), closed form
        return {"loss": recon + self.hparams.beta * kl, "recon": recon, "kl": kl, "bits_per_dim": self.bpd(recon + kl)}

    def bpd(self, nelbo: Tensor) -> Tensor:
        """Negative ELBO (nats per image, beta = 1) -> an upper bound on bits per dimension.

        Gaussian decoder: its density on [-1, 1] times the width 2/255 of an 8-bit pixel's bin gives the bin's
        probability, hence the log2(255 / 2) per dimension. Bernoulli decoder: bits per binary pixel, a true
        bound only on binarised data (the usual MNIST convention)."""
        dims = self.hparams.image_channels * self.hparams.image_size**2
        bpd = nelbo / (dims * math.log(2))
        return bpd + math.log2(255 / 2) if self.hparams.likelihood == "gaussian" else bpd

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        losses = self.losses(batch[0], keep_codes=True)
        self.log("train/loss", losses["loss"], prog_bar=True)
        self.log_diagnostics(
            {"train/recon": losses["recon"], "train/kl": losses["kl"], "train/bits_per_dim": losses["bits_per_dim"]}
        )
        return losses["loss"]

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        losses = self.losses(batch[0])
        self.log_dict({f"val/{k}": v for k, v in losses.items()}, prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    @torch.no_grad()
    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """n images (n, C, S, S) in [0, 1]: the decoder's mean at z ~ N(0, I), or z from the fitted latent density
        (`sample_latent`)."""
        check_labels(self.num_classes, n, labels)
        if self.sample_latent not in SAMPLE_LATENTS:
            raise ConfigError(f"sample_latent must be one of {list(SAMPLE_LATENTS)}, got {self.sample_latent!r}")
        if self.sample_latent == "density":
            return self.decoded_mean(self.decode(self.sample_density(n, generator)))
        z = randn((n, self.hparams.latent_dim), self.device, generator)
        return self.decoded_mean(self.decode(z))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Images (B, C, S, S) in [-1, 1] -> the decoder's mean at the posterior mean, in [0, 1]."""
        mu, _ = self.encode(x.to(self.device))
        return self.decoded_mean(self.decode(mu))


def check_hparams(
    image_channels: int,
    image_size: int,
    latent_dim: int,
    channels: Sequence[int],
    likelihood: str,
    beta: float,
    lr: float,
) -> None:
    """Raise a ValueError naming the first invalid hyperparameter and what is allowed."""
    check_positive_int("image_channels", image_channels)
    check_positive_int("latent_dim", latent_dim)
    check_channels(channels)
    check_image_size(image_size, channels)
    if likelihood not in LIKELIHOODS:
        raise ConfigError(f"likelihood must be one of {list(LIKELIHOODS)}, got {likelihood!r}")
    if not beta >= 0:
        raise ConfigError(f"beta must be >= 0, got {beta!r}")
    if not lr > 0:
        raise ConfigError(f"lr must be > 0, got {lr!r}")

"""Convolutional autoencoder, sampled through a density fitted to its latent codes.

Hinton & Salakhutdinov 2006, "Reducing the Dimensionality of Data with Neural Networks": an encoder and a decoder
trained on the mean squared reconstruction error (here of images in [-1, 1]). An autoencoder has no prior to sample
from, so after every training epoch a density is fitted to the codes of that epoch's training images: one Gaussian
(`gaussian`) or a mixture fitted by EM (`gmm`), as in Ghosh et al. 2020, "From Variational to Deterministic
Autoencoders" (ex-post density estimation, `genlab.models.latent_density`). Samples decode z drawn from it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from genlab.checks import ConfigError, check_positive_int
from genlab.models.base import GenerativeModule, check_labels, to_unit
from genlab.models.blocks import ConvDecoder, ConvEncoder, check_channels, check_image_size
from genlab.models.latent_density import LATENT_DENSITIES, LatentDensity, check_latent_density


class AEModule(LatentDensity, GenerativeModule):
    """Autoencoder with a convolutional encoder and decoder and a density over its latent codes.

    The density is fitted after each epoch's training (see `LatentDensity`); until the first fit, z ~ N(0, I).

    Args:
        image_channels: channels of the images (1 grey, 3 colour).
        image_size: side length of the square images; a multiple of 2 ** len(channels).
        latent_dim: size of the code z.
        channels: encoder widths, one stride-2 stage each (the decoder mirrors them).
        latent_density: `gaussian` (one full-covariance Gaussian) or `gmm` (a full-covariance mixture).
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
        latent_density: str = "gmm",
        latent_components: int = 10,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        check_hparams(
            image_channels, image_size, latent_dim, channels, latent_density, latent_components, lr, weight_decay
        )
        self.save_hyperparameters()
        self.encoder = ConvEncoder(image_channels, image_size, channels, latent_dim)
        self.decoder = ConvDecoder(latent_dim, image_channels, image_size, channels)
        self.init_density(latent_dim, latent_density, latent_components)

    def encode(self, x: Tensor) -> Tensor:
        """Images (B, C, S, S) in [-1, 1] -> codes (B, latent_dim)."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """Codes (B, latent_dim) -> reconstructions (B, C, S, S), unbounded (trained towards [-1, 1])."""
        return self.decoder(z)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x = batch[0]
        z = self.encode(x)
        loss = F.mse_loss(self.decode(z), x)
        self.keep_codes(z)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x = batch[0]
        out = self.decode(self.encode(x))
        recon, target = to_unit(out), to_unit(x)  # [0, 1], as PSNR and SSIM with data_range=1 expect
        metrics = {
            "val/loss": F.mse_loss(out, x),
            "val/mse": F.mse_loss(recon, target),
            "val/psnr": peak_signal_noise_ratio(recon, target, data_range=1.0, dim=(1, 2, 3)),  # mean over images
            "val/ssim": structural_similarity_index_measure(recon, target, data_range=1.0),
        }
        self.log_dict(metrics, prog_bar=True, sync_dist=True, batch_size=len(x))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    @torch.no_grad()
    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """n images (n, C, S, S) in [0, 1]: the decoded z drawn from the fitted latent density."""
        check_labels(self.num_classes, n, labels)
        return to_unit(self.decode(self.sample_density(n, generator)))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Images (B, C, S, S) in [-1, 1] -> reconstructions in [0, 1]."""
        return to_unit(self.decode(self.encode(x.to(self.device))))


def check_hparams(
    image_channels: int,
    image_size: int,
    latent_dim: int,
    channels: Sequence[int],
    latent_density: str,
    latent_components: int,
    lr: float,
    weight_decay: float,
) -> None:
    """Raise a ValueError naming the first invalid hyperparameter and what is allowed."""
    check_positive_int("image_channels", image_channels)
    check_positive_int("latent_dim", latent_dim)
    check_channels(channels)
    check_image_size(image_size, channels)
    check_latent_density(latent_density, latent_components, LATENT_DENSITIES)
    if not lr > 0:
        raise ConfigError(f"lr must be > 0, got {lr!r}")
    if not weight_decay >= 0:
        raise ConfigError(f"weight_decay must be >= 0, got {weight_decay!r}")

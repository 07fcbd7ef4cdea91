"""Model families, each a LightningModule that satisfies `GenerativeModel`."""

from genlab.models.base import GenerativeModel
from genlab.models.vae import VAEModule

__all__ = ["GenerativeModel", "VAEModule"]

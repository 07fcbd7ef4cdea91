"""Model families, each a LightningModule that satisfies `GenerativeModel`."""

from genlab.models.base import GenerativeModel, GenerativeModule, load_model
from genlab.models.vae import VAEModule

__all__ = ["GenerativeModel", "GenerativeModule", "VAEModule", "load_model"]

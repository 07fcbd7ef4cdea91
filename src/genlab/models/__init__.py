"""Model families, each a LightningModule that satisfies `GenerativeModel`."""

from genlab.models.ae import AEModule
from genlab.models.base import GenerativeModel, GenerativeModule, load_model
from genlab.models.diffusion import DiffusionModule
from genlab.models.dvae import DVAEModule
from genlab.models.gan import GANModule
from genlab.models.gmm import GMMModule
from genlab.models.vae import VAEModule

__all__ = [
    "AEModule",
    "DVAEModule",
    "DiffusionModule",
    "GANModule",
    "GMMModule",
    "GenerativeModel",
    "GenerativeModule",
    "VAEModule",
    "load_model",
]

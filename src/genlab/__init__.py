"""genlab: train small generative models with Lightning and Hydra, and score them with one callback."""

__version__ = "0.1.0"

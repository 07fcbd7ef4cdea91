"""Callbacks: sample grids and resumable RNG state."""

from genlab.callbacks.rng_state import RNGState
from genlab.callbacks.sample_grid import SampleGrid

__all__ = ["RNGState", "SampleGrid"]

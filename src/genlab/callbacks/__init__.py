"""Callbacks: evaluation, sample grids and resumable RNG state."""

from genlab.callbacks.generative_eval import BestFIDCheckpoint, GenerativeEval
from genlab.callbacks.rng_state import RNGState
from genlab.callbacks.sample_grid import SampleGrid

__all__ = ["BestFIDCheckpoint", "GenerativeEval", "RNGState", "SampleGrid"]

"""Callbacks: evaluation, sample grids, speed switches, resumable RNG state, mid-epoch checkpoints, the
finite-loss guard and the training budget."""

from genlab.callbacks.budget import TrainingBudget
from genlab.callbacks.finite_loss import DivergedError, FiniteLoss, SafeOnExceptionCheckpoint
from genlab.callbacks.generative_eval import BestFIDCheckpoint, GenerativeEval
from genlab.callbacks.rng_state import RNGState
from genlab.callbacks.sample_grid import SampleGrid
from genlab.callbacks.speed import Speed
from genlab.callbacks.step_checkpoint import StepCheckpoint

__all__ = [
    "BestFIDCheckpoint",
    "DivergedError",
    "FiniteLoss",
    "GenerativeEval",
    "RNGState",
    "SafeOnExceptionCheckpoint",
    "SampleGrid",
    "Speed",
    "StepCheckpoint",
    "TrainingBudget",
]

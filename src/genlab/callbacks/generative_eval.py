"""GenerativeEval: score any genlab model at the end of validation every N epochs. Orchestration only.

What is scored and how lives in `genlab.evaluator.Evaluator` (the same object `evaluate.py` uses, built from
the same `eval` config node) and `genlab.metric_table`; this callback decides when, hands the evaluator this
process's rank, logs `eval/*` together with the extractor's name, weights hash and precision (numbers from
different extractors are never comparable), and writes a nearest-neighbour grid at each evaluation. An evaluation
that meets NaN or inf samples or features logs an error and no `eval/*` number, and training goes on.

Each evaluation's wall time (sampling, features, metrics, the grid; the first also builds the real side) is logged
as `time/eval_seconds` (not under `eval/`, which holds metrics alone), and `overhead()` gives the evaluations' share
of the fit's wall time, which the run's summary and status.json report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.seed import isolate_rng

from genlab.callbacks.sample_grid import save_grid
from genlab.checks import check_positive_int
from genlab.evaluator import Evaluator, Scores
from genlab.feature_sets import NonFiniteError
from genlab.features.base import ExtractorFactory

log = logging.getLogger(__name__)


class GenerativeEval(L.Callback):
    """Log every metric of `genlab.metric_table` that `metrics` selects, as `eval/<key>`.

    Args:
        extractor: an extractor factory (configs/eval/extractor/: domain, inception, random).
        metrics: `default` (the table's per-epoch metrics), `all`, or a list of names.
        every_n_epochs: evaluate at the end of validation every N epochs (and at the last epoch).
        dirpath: run folder that receives `nearest/epoch_XXX.png` (None: no grid).
        **evaluator: the rest of `Evaluator`'s arguments (num_samples, batch_size, precision, cache_dir, seed,
            progress) and the metric settings.
    """

    def __init__(
        self,
        extractor: ExtractorFactory,
        metrics: str | Sequence[str] = "default",
        every_n_epochs: int = 5,
        dirpath: str | None = None,
        **evaluator: Any,
    ) -> None:
        check_positive_int("every_n_epochs", every_n_epochs)
        self.evaluator = Evaluator(extractor, metrics, **evaluator)
        self.every_n_epochs = every_n_epochs
        self.dirpath = Path(dirpath) if dirpath else None
        self.evaluated_epoch = -1  # the last epoch scored, for BestFIDCheckpoint
        self.logged_keys: set[str] = set()  # the eval/* keys logged at that epoch
        self._logged_info = False
        self.evaluations, self.seconds, self.epochs = 0, 0.0, 0  # this fit's evaluations, their time, its epochs
        self._fit_started: float | None = None
        self._fit_seconds: float | None = None  # the last fit's wall time, once it has ended

    @property
    def extractor(self):
        return self.evaluator.extractor

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.evaluations, self.seconds, self.epochs, self._fit_started = 0, 0.0, 0, time.perf_counter()
        self._fit_seconds = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_seconds = time.perf_counter() - self._fit_started

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs += 1

    def overhead(self) -> dict[str, float | int] | None:
        """{evaluations, seconds (theirs), epochs, fit_seconds, share (seconds / fit_seconds)} of the current fit so
        far, or of the last one from its start to its end (a resumed run counts its own part); None before one."""
        if self._fit_started is None:
            return None
        fit = self._fit_seconds if self._fit_seconds is not None else time.perf_counter() - self._fit_started
        share = self.seconds / fit
        return {
            "evaluations": self.evaluations,
            "seconds": self.seconds,
            "epochs": self.epochs,
            "fit_seconds": fit,
            "share": share,
        }

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.due(trainer):
            return
        started = time.perf_counter()
        with isolate_rng():  # evaluation must not change the training run's random stream
            scores = self.evaluate(trainer, pl_module)
        if scores is not None:
            self.log_scores(trainer, pl_module, scores)
        took = time.perf_counter() - started
        self.evaluations, self.seconds = self.evaluations + 1, self.seconds + took
        pl_module.log("time/eval_seconds", took, sync_dist=False)

    def log_scores(self, trainer: L.Trainer, pl_module: L.LightningModule, scores: Scores) -> None:
        self.evaluated_epoch = trainer.current_epoch
        results = scores.metrics
        self.logged_keys = {f"eval/{k}" for k in results}
        pl_module.log_dict({f"eval/{k}": v for k, v in results.items()}, sync_dist=False)
        summary = ", ".join(f"{k}={v:.4g}" for k, v in results.items())
        rank_zero_info(f"epoch {trainer.current_epoch} eval [{self.evaluator.describe()}]: {summary}")
        if self.dirpath is not None and trainer.is_global_zero:
            grid = self.evaluator.nearest_neighbour_grid(scores.fake)
            save_grid(trainer, self.dirpath, "nearest", grid)

    def scored(self, epoch: int, key: str) -> bool:
        """Whether the evaluation of `epoch` logged `key` (an `eval/*` key; a non-finite value is not logged)."""
        return self.evaluated_epoch == epoch and key in self.logged_keys

    def due(self, trainer: L.Trainer) -> bool:
        """Every `every_n_epochs` epochs, and at the last epoch so that a run always ends with its final numbers."""
        epoch = trainer.current_epoch + 1
        return epoch % self.every_n_epochs == 0 or (
            trainer.max_epochs not in (None, -1) and epoch >= trainer.max_epochs
        )

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Scores | None:
        """This process's part of the evaluation; None (and an error line) if it met NaN or inf."""
        try:
            scores = self.evaluator.evaluate(
                trainer.datamodule,
                pl_module.device,
                model=pl_module,
                rank=trainer.global_rank,
                world=trainer.world_size,
                all_gather=trainer.strategy.all_gather,
                progress=self.evaluator.progress and trainer.is_global_zero,
            )
        except NonFiniteError as err:  # every process raises it alike: the check follows the gather
            if trainer.is_global_zero:
                log.error(f"epoch {trainer.current_epoch} eval: {err}; no eval/* metric logged for this epoch")
            return None
        if not self._logged_info:
            self._logged_info = True
            e = self.evaluator.extractor
            info = {
                "eval/extractor": e.name,
                "eval/extractor_hash": e.weights_hash(),
                "eval/precision": e.precision,
                "eval/num_samples": self.evaluator.num_samples,
            }
            for logger in trainer.loggers:
                logger.log_hyperparams(info)
        return scores


class BestFIDCheckpoint(ModelCheckpoint):
    """Keeps the best model by `eval/fid`, considering only the epochs whose evaluation logged an `eval/fid`:
    between evaluations (and after one that logged none) `eval/fid` still holds an older model's number, which must
    not be credited to the current one."""

    def __init__(self, evaluation: GenerativeEval, **kwargs) -> None:
        super().__init__(monitor="eval/fid", mode="min", every_n_epochs=1, save_on_train_epoch_end=False, **kwargs)
        self.evaluation = evaluation

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.evaluation.scored(trainer.current_epoch, self.monitor):
            super().on_validation_end(trainer, pl_module)

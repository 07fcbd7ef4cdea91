"""GenerativeEval: score any genlab model at the end of validation every N epochs. Orchestration only.

Sampling, feature extraction and metrics live in `genlab.evaluator`, `genlab.features` and `genlab.metrics`;
this callback decides when, splits the sample batches across DDP ranks, gathers them, and logs `eval/*`
together with the extractor's name, weights hash and precision (numbers from different extractors are never
comparable).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.seed import isolate_rng

from genlab.checks import check_positive_int
from genlab.evaluator import (
    CONDITIONAL_GROUPS,
    FeatureSet,
    MetricSettings,
    batch_plan,
    check_metric_names,
    compute_metrics,
    dataset_features,
    gather_batches,
    make_extractor,
    sample_features,
)
from genlab.features.base import FeatureExtractor

log = logging.getLogger(__name__)


class GenerativeEval(L.Callback):
    """Log FID, IS, KID, precision/recall, density/coverage (and intra-FID, accuracy for conditional models).

    Args:
        metrics: metric groups: fid, is, kid, pr, dc, intra_fid, accuracy (the last two only for conditional
            models; they are skipped for unconditional ones).
        extractor: `domain` (a classifier trained on the dataset, cached), `inception` or `random`.
        num_samples: generated images per evaluation; the real side uses as many training images (or all).
        every_n_epochs: evaluate at the end of validation every N epochs.
        batch_size: images per `sample()` call and per extractor batch.
        precision: inception extraction precision, fp32 | tf32 | bf16.
        weights_path: local inception weights (torch-fidelity's file) for machines without a network.
        cache_dir: where real-side features and the domain classifier are cached.
        seed: seed of the sampling noise (the same samples every evaluation for the same weights).
        settings: metric arguments (`MetricSettings`: is_splits, kid_subsets, kid_subset_size, pr_k, dc_k).
    """

    def __init__(
        self,
        metrics: Sequence[str] = ("fid", "is", "kid", "pr", "dc", "intra_fid", "accuracy"),
        extractor: str = "domain",
        num_samples: int = 5000,
        every_n_epochs: int = 1,
        batch_size: int = 500,
        precision: str = "tf32",
        weights_path: str | None = None,
        cache_dir: str | None = "outputs/cache",
        seed: int = 0,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        is_splits: int = 10,
        pr_k: int = 3,
        dc_k: int = 5,
        progress: bool = True,
    ) -> None:
        check_positive_int("num_samples", num_samples)
        check_positive_int("every_n_epochs", every_n_epochs)
        check_positive_int("batch_size", batch_size)
        self.metrics = check_metric_names(metrics)
        self.extractor_name, self.precision, self.weights_path = extractor, precision, weights_path
        self.num_samples, self.every_n_epochs, self.batch_size = num_samples, every_n_epochs, batch_size
        self.cache_dir, self.seed, self.progress = cache_dir, seed, progress
        self.settings = MetricSettings(is_splits, kid_subsets, kid_subset_size, pr_k, dc_k)
        self.extractor: FeatureExtractor | None = None
        self._real: FeatureSet | None = None
        self.evaluated_epoch = -1  # the last epoch scored, for BestFIDCheckpoint

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.due(trainer):
            return
        with isolate_rng():  # evaluation must not change the training run's random stream
            results = self.evaluate(trainer, pl_module)
        self.evaluated_epoch = trainer.current_epoch
        pl_module.log_dict({f"eval/{k}": v for k, v in results.items()}, sync_dist=False)
        summary = ", ".join(f"{k}={v:.4g}" for k, v in results.items())
        rank_zero_info(f"epoch {trainer.current_epoch} eval [{self.describe()}]: {summary}")

    def due(self, trainer: L.Trainer) -> bool:
        """Every `every_n_epochs` epochs, and at the last epoch so that a run always ends with its final numbers."""
        epoch = trainer.current_epoch + 1
        return epoch % self.every_n_epochs == 0 or (
            trainer.max_epochs not in (None, -1) and epoch >= trainer.max_epochs
        )

    def describe(self) -> str:
        e = self.extractor
        return f"{e.name} {e.weights_hash()} {self.precision}, {self.num_samples} samples"

    def setup_extractor(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.extractor is not None:
            return
        dm = trainer.datamodule
        self.extractor = (
            make_extractor(
                self.extractor_name,
                datamodule=dm,
                cache_dir=self.cache_dir,
                weights_path=self.weights_path,
                precision=self.precision,
                progress=self.progress and trainer.is_global_zero,
            )
            .to(pl_module.device)
            .eval()
        )
        info = {
            "eval/extractor": self.extractor.name,
            "eval/extractor_hash": self.extractor.weights_hash(),
            "eval/precision": self.precision,
            "eval/num_samples": self.num_samples,
        }
        for logger in trainer.loggers:
            logger.log_hyperparams(info)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        # Validation runs under inference mode; the domain classifier may have to be trained here first.
        with torch.inference_mode(False), torch.enable_grad():
            self.setup_extractor(trainer, pl_module)
        with torch.no_grad():
            return self.score(trainer, pl_module)

    def score(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        groups = [g for g in self.metrics if pl_module.num_classes or g not in CONDITIONAL_GROUPS]
        real = self.real_side(trainer, pl_module)
        fake = self.fake_side(trainer, pl_module)
        return compute_metrics(real, fake, groups, self.settings)

    def real_side(self, trainer: L.Trainer, pl_module: L.LightningModule) -> FeatureSet:
        if self._real is None:
            self._real = dataset_features(
                trainer.datamodule,
                self.extractor,
                self.num_samples,
                self.precision,
                self.cache_dir,
                pl_module.device,
                self.batch_size,
                self.progress and trainer.is_global_zero,
            )
        return self._real.to(pl_module.device)

    def fake_side(self, trainer: L.Trainer, pl_module: L.LightningModule) -> FeatureSet:
        world, rank = trainer.world_size, trainer.global_rank
        batch_size = min(self.batch_size, math.ceil(self.num_samples / world))  # every rank gets a batch
        mine = list(range(rank, len(batch_plan(self.num_samples, batch_size)), world))
        image_shape = tuple(trainer.datamodule.image_shape)
        sets = sample_features(
            pl_module,
            self.extractor,
            self.num_samples,
            batch_size,
            self.seed,
            image_shape,
            batches=mine,
            progress=self.progress and trainer.is_global_zero,
        )
        return gather_batches(sets, self.num_samples, batch_size, rank, world, trainer.strategy.all_gather)


class BestFIDCheckpoint(ModelCheckpoint):
    """Keeps the best model by `eval/fid`, considering only the epochs that `evaluation` scored: between
    evaluations `eval/fid` still holds an older model's number, which must not be credited to the current one."""

    def __init__(self, evaluation: GenerativeEval, **kwargs) -> None:
        super().__init__(monitor="eval/fid", mode="min", every_n_epochs=1, save_on_train_epoch_end=False, **kwargs)
        self.evaluation = evaluation

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.evaluation.evaluated_epoch == trainer.current_epoch:
            super().on_validation_end(trainer, pl_module)

"""Evaluation under faults: out of GPU memory (retried in halves), NaN or inf samples, features or metrics (never
logged, training goes on), and the progress bar over diffusion's solver steps."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn

from genlab.callbacks import BestFIDCheckpoint, GenerativeEval
from genlab.data import SyntheticDataModule
from genlab.evaluator import Evaluator
from genlab.feature_sets import NonFiniteError, sample_features
from genlab.features import RandomProjectionExtractor, random_extractor
from genlab.models import VAEModule
from genlab.models.diffusion import DiffusionModule

SHAPE = (1, 16, 16)


class StubModel(nn.Module):
    """Uniform noise images drawn from the generator, labels cycling over 4 classes. `sample(n)` runs out of
    memory for n > `max_batch`; `nan_first`: the first image of every call is NaN."""

    num_classes = 4
    device = torch.device("cpu")

    def __init__(self, max_batch: int | None = None, nan_first: bool = False) -> None:
        super().__init__()
        self.max_batch, self.nan_first = max_batch, nan_first

    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        if self.max_batch is not None and n > self.max_batch:
            raise torch.OutOfMemoryError(f"CUDA out of memory (simulated for a batch of {n})")
        x = torch.rand(n, *SHAPE, generator=generator)
        if self.nan_first:
            x[0] = float("nan")
        return x


def data() -> SyntheticDataModule:
    return SyntheticDataModule(num_samples=64, image_size=16, batch_size=16)


def evaluator(batch_size: int = 16, **kwargs) -> Evaluator:
    return Evaluator(random_extractor, ["fid"], num_samples=48, batch_size=batch_size, progress=False, **kwargs)


def test_out_of_memory_while_sampling_is_retried_with_half_the_batch(caplog, tmp_path) -> None:
    dm = data()
    cache = str(tmp_path)  # one real side for both: extracted in batches of 16 or of 8, its last bits can differ
    with caplog.at_level(logging.WARNING, logger="genlab"):
        retried = evaluator(16, cache_dir=cache).evaluate(dm, "cpu", model=StubModel(max_batch=8))
    assert "eval: out of memory at batch 16; retrying with 8" in caplog.text
    assert caplog.text.count("out of memory") == 1  # the smaller size is kept for the later batches
    plain = evaluator(8, cache_dir=cache).evaluate(dm, "cpu", model=StubModel())  # as if 8 from the start
    assert len(retried.fake) == 48 and torch.equal(retried.fake.labels, torch.arange(48) % 4)
    assert torch.equal(retried.fake.features, plain.fake.features)
    assert retried.metrics == plain.metrics


def test_out_of_memory_while_extracting_is_retried_down_to_one_then_raised(monkeypatch, caplog) -> None:
    dm, e = data(), evaluator(16)
    e.setup(dm, "cpu")  # the real side, before the extractor starts failing
    forward = e.extractor.forward

    def small_batches_only(x: Tensor):
        if len(x) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(x)

    monkeypatch.setattr(e.extractor, "forward", small_batches_only)
    with caplog.at_level(logging.WARNING, logger="genlab"):
        scores = e.evaluate(dm, "cpu", model=StubModel())
    assert len(scores.fake) == 48 and torch.equal(scores.fake.labels, torch.arange(48) % 4)
    lines = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
    assert lines == [f"eval: out of memory at batch {n}; retrying with {n // 2}" for n in (16, 8, 4)]  # 2 fits

    def never_fits(x: Tensor):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(e.extractor, "forward", never_fits)
    with pytest.raises(torch.OutOfMemoryError, match="even with a batch of 1 image"):
        e.evaluate(dm, "cpu", model=StubModel())


def test_nan_samples_or_features_raise_saying_how_many(monkeypatch) -> None:
    dm, e = data(), evaluator(16)
    with pytest.raises(NonFiniteError, match="3 of 48 generated samples hold NaN or inf") as caught:
        e.evaluate(dm, "cpu", model=StubModel(nan_first=True))  # the first image of each of 3 batches
    assert (caught.value.samples, caught.value.features) == (3, 0)
    forward = e.extractor.forward

    def nan_rows(x: Tensor):
        features, logits = forward(x)
        return features.index_fill(0, torch.tensor([1, 2]), float("inf")), logits

    monkeypatch.setattr(e.extractor, "forward", nan_rows)
    with pytest.raises(NonFiniteError, match="6 of 48 samples have NaN or inf features") as caught:
        e.evaluate(dm, "cpu", model=StubModel())
    assert (caught.value.samples, caught.value.features) == (0, 6)


def test_a_non_finite_metric_is_dropped_with_an_error_naming_it(monkeypatch, caplog) -> None:
    from genlab import metric_table

    monkeypatch.setattr(metric_table, "compute", lambda *args, **kwargs: {"fid": float("nan"), "is": 2.0})
    with caplog.at_level(logging.ERROR, logger="genlab"):
        scores = evaluator(16).evaluate(data(), "cpu", model=StubModel())
    assert scores.metrics == {"is": 2.0}
    assert "eval: fid came out as nan; it is not reported" in caplog.text


class NaNVAE(VAEModule):
    """A VAE whose first sample of every `sample()` call is NaN."""

    def sample(self, n, labels=None, generator=None):
        x = super().sample(n, labels, generator).clone()
        x[0] = float("nan")
        return x


def fit_with_eval(model: L.LightningModule, tmp_path: Path) -> tuple[L.Trainer, BestFIDCheckpoint]:
    """One epoch of two batches with the evaluation callback, a CSV logger and the best-FID checkpoint."""
    evaluation = GenerativeEval(
        random_extractor,
        ["fid", "is", "pr"],
        num_samples=48,
        batch_size=16,
        progress=False,
        cache_dir=None,
        every_n_epochs=1,
    )
    best = BestFIDCheckpoint(evaluation, dirpath=tmp_path / "checkpoints")
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        log_every_n_steps=1,
        logger=CSVLogger(tmp_path, name="csv"),
        callbacks=[evaluation, best],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=data())
    return trainer, best


def test_nan_samples_in_training_log_an_error_and_no_eval_number(tmp_path: Path, caplog) -> None:
    torch.manual_seed(0)
    with caplog.at_level(logging.ERROR, logger="genlab"):
        trainer, best = fit_with_eval(NaNVAE(image_size=16, channels=[8, 16], latent_dim=4), tmp_path)
    assert trainer.state.finished and trainer.current_epoch == 1  # training went on to its end
    assert "epoch 0 eval: 3 of 48 generated samples hold NaN or inf values" in caplog.text
    assert not [k for k in trainer.callback_metrics if k.startswith("eval/")]
    logged = (Path(trainer.logger.log_dir) / "metrics.csv").read_text()
    assert "val/loss" in logged and "eval/" not in logged
    assert best.best_model_path == "" and not list((tmp_path / "checkpoints").glob("*.ckpt"))


def test_a_nan_fid_in_training_is_not_logged_nor_checkpointed_on(monkeypatch, tmp_path: Path, caplog) -> None:
    from genlab import metric_table

    monkeypatch.setattr(metric_table, "compute", lambda *args, **kwargs: {"fid": float("inf"), "is": 2.0})
    with caplog.at_level(logging.ERROR, logger="genlab"):
        trainer, best = fit_with_eval(VAEModule(image_size=16, channels=[8, 16], latent_dim=4), tmp_path)
    assert "eval: fid came out as inf; it is not reported" in caplog.text
    assert trainer.callback_metrics["eval/is"] == 2.0 and "eval/fid" not in trainer.callback_metrics
    assert best.best_model_path == ""  # no eval/fid this epoch: nothing to rank the model by


class StepCounter:
    """Stands in for tqdm: records each bar's total, whether it is disabled, and how far it moved."""

    bars: list[StepCounter] = []

    def __init__(self, iterable=None, total=None, disable=False, **kwargs) -> None:
        self.iterable, self.total, self.disable, self.n = iterable, total, disable, 0
        StepCounter.bars.append(self)

    def __iter__(self):
        for item in self.iterable:
            self.n += 1
            yield item


def test_the_evaluation_turns_the_sampling_bar_on_or_off_and_restores_it(monkeypatch) -> None:
    import genlab.models.diffusion as diffusion

    monkeypatch.setattr(diffusion, "tqdm", StepCounter)
    StepCounter.bars = []
    model = DiffusionModule(image_size=16, channels=[8, 16], num_timesteps=20, sample_steps=3, attention=False)
    extractor = RandomProjectionExtractor(image_shape=SHAPE)
    for progress in (False, True):
        sample_features(model, extractor, 6, 4, seed=0, image_shape=SHAPE, progress=progress)
        assert model.sample_progress is None  # restored: the SampleGrid callback's sampling is left as it was
    assert [(b.total, b.n, b.disable) for b in StepCounter.bars] == [(3, 3, True)] * 2 + [(3, 3, False)] * 2
    model.sample(2)  # outside an evaluation: tqdm's own choice (shown on a terminal only)
    assert StepCounter.bars[-1].disable is None

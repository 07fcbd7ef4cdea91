"""The offline report of runs logged with `logger=tensorboard`: the same history and final metrics as a CSV run.

The event files are written by the loggers of configs/logger/*.yaml themselves: once by a real Lightning fit of a
tiny module logging to both loggers (the TensorBoard reading must agree with the CSV), once by calling the
TensorBoard logger by hand with known values.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import OmegaConf

from genlab.report import load_runs, read_run, write_report

ROOT = Path(__file__).resolve().parents[1]
# (step, epoch, metrics) as Lightning's logger connector passes them to `log_metrics`, which adds `epoch` last
CALLS = [
    (0, 0, {"train/loss": 4.0}),
    (1, 0, {"train/loss": 2.0}),
    (1, 0, {"val/loss": 3.0, "eval/fid": 40.0}),
    (1, 1, {"train/loss": 1.0}),  # another epoch at the same step: placed by the `epoch` written with it
    (2, 1, {"train/loss": 0.5}),
    (2, 1, {"val/loss": 1.5, "eval/fid": 20.0}),
]
HPARAMS = {"seed": 3, "model": {"_target_": "genlab.models.VAE"}, "eval/extractor": "random"}
HPARAMS |= {"eval/extractor_hash": "543907ee94de", "eval/precision": "tf32"}


def logger_from_config(name: str, run_dir: Path) -> Logger:
    """The logger of configs/logger/<name>.yaml, writing into `run_dir` as it does in a run."""
    cfg = OmegaConf.load(ROOT / "configs" / "logger" / f"{name}.yaml")[name]
    cfg.save_dir = str(run_dir)
    return instantiate(cfg)


def write_tensorboard_run(run_dir: Path) -> Path:
    """A run folder holding only what the TensorBoard logger writes for CALLS and HPARAMS."""
    logger = logger_from_config("tensorboard", run_dir)
    logger.log_hyperparams(HPARAMS)
    for step, epoch, metrics in CALLS:
        logger.log_metrics({**metrics, "epoch": epoch}, step=step)
    logger.finalize("success")
    return run_dir


class Tiny(L.LightningModule):
    """A linear layer whose loss is logged per step and per epoch, and once per validation."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train/loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.log("val/loss", self.layer(batch[0]).pow(2).mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder of a real 3-epoch fit (3 steps an epoch) logged to csv/ and to tensorboard/."""
    run_dir = tmp_path_factory.mktemp("fitted") / "run"
    L.seed_everything(0)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(12, 2)), batch_size=4)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=3,
        logger=[logger_from_config(name, run_dir) for name in ("csv", "tensorboard")],
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Tiny(), data, data)
    return run_dir


def test_a_tensorboard_only_run_reads_as_its_csv_does(fitted: Path, tmp_path: Path) -> None:
    csv_run = read_run(fitted)
    shutil.copytree(fitted / "tensorboard", tmp_path / "sweep" / "0" / "tensorboard")  # nothing else: no csv/
    (tensorboard_run,) = load_runs(tmp_path / "sweep")  # tensorboard/ alone marks a run folder
    assert set(csv_run.history) == {"train/loss_step", "train/loss_epoch", "val/loss"}
    assert [epoch for epoch, _ in csv_run.history["val/loss"]] == [0, 1, 2]
    assert tensorboard_run.history == csv_run.history  # both float32 values of the same calls
    assert tensorboard_run.final == csv_run.final
    assert tensorboard_run.problems == csv_run.problems == ["no status.json: whether this run finished is not known"]


def test_tensorboard_values_are_placed_by_their_epoch(tmp_path: Path) -> None:
    write_tensorboard_run(tmp_path / "0")
    (run,) = load_runs(tmp_path)
    assert run.history == {
        "train/loss": [(0, 3.0), (1, 0.75)],  # the epoch mean of its steps
        "val/loss": [(0, 3.0), (1, 1.5)],
        "eval/fid": [(0, 40.0), (1, 20.0)],
    }
    assert run.final == {"train/loss": 0.5, "val/loss": 1.5, "eval/fid": 20.0}
    assert (run.status, run.seed, run.model) == ("unknown", 3, "VAE")  # config from tensorboard/hparams.yaml
    assert run.extractor == "random 543907ee94de (tf32)"
    html = write_report(tmp_path).read_text()
    for metric in ("train_loss", "val_loss", "eval_fid"):
        assert f'src="report_files/plots/{metric}.png"' in html
        assert (tmp_path / f"report_files/plots/{metric}.png").stat().st_size > 0
    assert '<td class="num">20</td>' in html  # the final eval/fid in the runs table


def test_a_run_with_csv_and_tensorboard_is_read_from_its_csv(tmp_path: Path) -> None:
    run_dir = write_tensorboard_run(tmp_path / "0")
    (run_dir / "csv").mkdir()
    (run_dir / "csv/metrics.csv").write_text("epoch,step,val/loss\n0,1,7.0\n1,2,5.0\n2,3,6.0\n")
    run = read_run(run_dir)
    assert run.history == {"val/loss": [(0, 7.0), (1, 5.0), (2, 6.0)]}
    assert run.final == {"val/loss": 6.0}


def test_without_the_tensorboard_package_the_run_appears_with_one_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = write_tensorboard_run(tmp_path / "0")
    (run_dir / "status.json").write_text(json.dumps({"status": "completed", "metrics": {"eval/fid": 20.0}}))
    monkeypatch.setitem(sys.modules, "tensorboard.backend.event_processing.event_accumulator", None)
    (run,) = load_runs(tmp_path)
    problem = "tensorboard/ holds TensorBoard event files, but the tensorboard package is not installed"
    assert run.problems == [f"{problem}: pip install tensorboard"]
    assert (run.status, run.history, run.final) == ("completed", {}, {"eval/fid": 20.0})
    assert f"{problem}: pip install tensorboard" in write_report(tmp_path).read_text()

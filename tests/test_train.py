"""The composed training config end to end: one fast run, seeding, resume, loggers and bad input."""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException

from genlab.checks import ConfigError
from genlab.checks import ConfigError as CheckpointError
from genlab.train import train


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_one_fast_run_writes_metrics_grids_and_checkpoints(train_cfg, tmp_path: Path) -> None:
    metrics = train(train_cfg("run"))
    run = tmp_path / "run"
    for key in ("train/loss", "val/loss", "val/recon", "val/kl"):
        assert key in metrics and torch.isfinite(torch.tensor(metrics[key])), key
    assert metrics["val/loss"] == pytest.approx(metrics["val/recon"] + metrics["val/kl"], rel=1e-5)
    logged = {k for row in read_metrics(run) for k, v in row.items() if v}
    assert {"train/loss", "val/loss", "val/recon", "val/kl"} <= logged
    assert (run / "samples" / "epoch_000.png").stat().st_size > 0
    assert (run / "reconstructions" / "epoch_000.png").stat().st_size > 0
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "checkpoints").glob("best-epoch000.ckpt"))
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "completed" and status["metrics"] == metrics
    assert status["finished"] >= status["started"] and status["best_checkpoint"].endswith("best-epoch000.ckpt")


@pytest.mark.slow
def test_same_seed_same_losses_other_seed_other_losses(train_cfg) -> None:
    a = train(train_cfg("a", "seed=3"))
    b = train(train_cfg("b", "seed=3"))
    c = train(train_cfg("c", "seed=4"))
    assert a["train/loss"] == b["train/loss"] and a["val/loss"] == b["val/loss"]
    assert a["val/loss"] != c["val/loss"]


@pytest.mark.slow
def test_resume_equals_uninterrupted_training(train_cfg, tmp_path: Path) -> None:
    train(train_cfg("two", "trainer.max_epochs=2"))
    train(train_cfg("one", "trainer.max_epochs=1"))
    train(train_cfg("resumed", "trainer.max_epochs=2", f"ckpt_path={tmp_path / 'one/checkpoints/last.ckpt'}"))
    two = state_dict(tmp_path / "two/checkpoints/last.ckpt")
    resumed = state_dict(tmp_path / "resumed/checkpoints/last.ckpt")
    one = state_dict(tmp_path / "one/checkpoints/last.ckpt")
    assert two.keys() == resumed.keys()
    assert all(torch.equal(two[k], resumed[k]) for k in two)
    assert not all(torch.equal(two[k], one[k]) for k in two)  # the resumed epoch did train
    epochs = torch.load(tmp_path / "resumed/checkpoints/last.ckpt", weights_only=True)["epoch"]
    assert epochs == 1


def test_resuming_a_finished_run_says_so_and_does_no_more_work(train_cfg, tmp_path: Path) -> None:
    train(train_cfg("done", "trainer.max_epochs=1"))
    last = tmp_path / "done/checkpoints/last.ckpt"
    before = last.read_bytes()
    finished = r"already trained its 1 epoch\(s\) \(trainer.max_epochs=1\).*trainer.max_epochs=2"
    with pytest.raises(CheckpointError, match=finished):
        train(train_cfg("again", "trainer.max_epochs=1", f"ckpt_path={last}"))
    assert last.read_bytes() == before
    assert not (tmp_path / "again").exists()  # nothing written


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "garbage", "not_lightning", "missing"])
def test_bad_checkpoint_fails_clearly_and_overwrites_nothing(damage: str, train_cfg, tmp_path: Path) -> None:
    train(train_cfg("original"))
    original = tmp_path / "original"
    bad = original / "checkpoints" / "bad.ckpt"
    data = (original / "checkpoints" / "last.ckpt").read_bytes()
    if damage == "truncate":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        bad.write_bytes(b"not a checkpoint at all")
    elif damage == "not_lightning":
        torch.save({"weights": torch.zeros(3)}, bad)
    before = tree(original)
    cfg = train_cfg("original", f"ckpt_path={bad}")  # the same run folder, to catch any overwrite
    expected = {
        "truncate": "truncated or corrupt",
        "garbage": "truncated or corrupt",
        "not_lightning": "not a Lightning training checkpoint",
        "missing": "no such file",
    }[damage]
    with pytest.raises(CheckpointError, match=expected):
        train(cfg)
    assert tree(original) == before


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.latent_dim=-1", "latent_dim must be a positive integer, got -1"),
        ("data.batch_size=0", "batch_size must be a positive integer, got 0"),
        ("data.image_size=30", "image_size=30 cannot be handled"),
    ],
)
def test_bad_hyperparameters_fail_before_training(override: str, message: str, train_cfg, tmp_path: Path) -> None:
    with pytest.raises((InstantiationException, ConfigError), match=message):
        train(train_cfg("bad", override))
    assert not (tmp_path / "bad").exists()  # nothing was written


@pytest.mark.slow
def test_tensorboard_logger_writes_events(train_cfg, tmp_path: Path) -> None:
    train(train_cfg("tb", "logger=tensorboard"))
    assert list((tmp_path / "tb" / "tensorboard").rglob("events.out.tfevents.*"))


def wandb_records(run: Path, timeout: float = 20.0) -> bytes:
    """The bytes of an offline run's .wandb file once wandb's service process has flushed it: `finish()` returns
    before that process has written the last records."""
    deadline = time.monotonic() + timeout
    while True:
        records = b"".join(p.read_bytes() for p in run.glob("*.wandb"))
        if b"train/loss" in records or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


@pytest.mark.slow
def test_wandb_logger_runs_offline_without_an_account(train_cfg, tmp_path: Path, monkeypatch) -> None:
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    evaluation = ["eval=default", "eval/extractor=random", "eval.num_samples=32", "eval.batch_size=16"]
    evaluation += ["eval.kid_subsets=5", "eval.kid_subset_size=16", "eval.progress=false"]
    metrics = train(train_cfg("wb", "logger=wandb", "trainer.max_epochs=2", *evaluation))
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    records = wandb_records(runs[0])
    keys = (b"train/loss", b"val/loss", b"eval/fid", b"eval/precision", b"eval/copy_rate", b"best/eval_fid")
    for key in (*keys, b"images/samples", b"images/nearest"):  # the nearest-neighbour grid too
        assert key in records, key
    assert f"{metrics['eval/fid']}".encode()[:6] in records
    assert len(list((runs[0] / "files" / "media" / "images").rglob("*.png"))) >= 2  # a grid each epoch
    (table,) = (runs[0] / "files" / "media" / "table").glob("final_metrics_*.table.json")
    rows = dict(json.loads(table.read_text())["data"])
    assert rows["eval/fid"] == pytest.approx(metrics["eval/fid"]) and "val/loss" in rows
    assert b"genlab" in records and b"vae" in records  # project and the model tag


def test_cleanup_of_copied_run_is_possible(tmp_path: Path) -> None:
    # guards the helper above: tree() must see a change, else the no-overwrite test could not fail
    (tmp_path / "f").write_bytes(b"a")
    before = tree(tmp_path)
    (tmp_path / "f").write_bytes(b"b")
    assert tree(tmp_path) != before
    shutil.rmtree(tmp_path / "f", ignore_errors=True)


@pytest.mark.slow
def test_a_crash_leaves_a_checkpoint_to_resume_from(train_cfg, tmp_path: Path) -> None:
    crash = ["+callbacks.crash._target_=conftest.CrashAt", "+callbacks.crash.epoch=1", "+callbacks.crash.batch=1"]
    with pytest.raises(RuntimeError, match="planned crash"):
        train(train_cfg("crashed", "trainer.max_epochs=2", *crash))
    saved = tmp_path / "crashed" / "checkpoints" / "on_exception.ckpt"
    status = json.loads((tmp_path / "crashed" / "status.json").read_text())
    assert status["status"] == "failed" and "planned crash at epoch 1, batch 1" in status["error"]
    assert torch.load(saved, weights_only=True)["global_step"] == 2 + 1  # 86 images in batches of 32: 2 steps an epoch
    metrics = train(train_cfg("continued", "trainer.max_epochs=2", f"ckpt_path={saved}"))
    assert torch.isfinite(torch.tensor(metrics["val/loss"]))
    assert torch.load(tmp_path / "continued/checkpoints/last.ckpt", weights_only=True)["global_step"] == 4


@pytest.mark.slow
def test_a_requeued_run_resumes_in_its_own_folder(train_cfg, tmp_path: Path) -> None:
    """A preempted Slurm job is requeued with the same config and run folder: it must pick up from the newest
    checkpoint there and keep the metrics already logged."""
    crash = ["+callbacks.crash._target_=conftest.CrashAt", "+callbacks.crash.epoch=1", "+callbacks.crash.batch=1"]
    with pytest.raises(RuntimeError, match="planned crash"):
        train(train_cfg("job", "trainer.max_epochs=3", *crash))
    train(train_cfg("job", "trainer.max_epochs=3"))  # the requeued job: same folder, no ckpt_path
    run = tmp_path / "job"
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 6  # 3 epochs, not 4
    epochs = {row["epoch"] for row in read_metrics(run) if row["val/loss"]}
    assert epochs == {"0", "1", "2"}
    assert json.loads((run / "status.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_last_checkpoint_is_the_last_epoch_even_when_val_loss_stops_improving(train_cfg, tmp_path: Path) -> None:
    train(train_cfg("run", "trainer.max_epochs=3", "callbacks.model_checkpoint.mode=max"))  # best: epoch 0 only
    checkpoints = tmp_path / "run" / "checkpoints"
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == 2
    assert sorted(p.name for p in checkpoints.glob("*.ckpt")) == ["best-epoch000.ckpt", "last.ckpt"]

"""`python train.py ...` as a user runs it: the run folder it writes and Hydra's messages for bad choices."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import FAST, TINY_MODELS, Started, train_py


def run_train(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return train_py(tmp_path, *overrides).result()


@pytest.fixture(scope="module")
def runs(tiny_run: tuple[Started, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Started, Path]]:
    """The module's successful runs, started together: the shared tiny run and a two-process DDP one."""
    root = tmp_path_factory.mktemp("ddp")
    ddp = train_py(root, *FAST, *TINY_MODELS["vae"], "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    yield {"tiny": tiny_run, "ddp": (ddp, root)}
    ddp.stop()


@pytest.mark.slow
def test_train_py_writes_a_run_folder(runs: dict[str, tuple[Started, Path]]) -> None:
    started, root = runs["tiny"]
    result = started.result()
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (root / "outputs" / "runs").glob("*/*_vae_synthetic")
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "samples" / "epoch_000.png").is_file()
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "train.log").is_file()
    printed = result.stdout + result.stderr
    assert printed.count("Seed set to 42") == 1, printed[:2000]  # each log line once (Lightning's were twice)
    assert printed.index(f"run folder: {run}") < printed.index("Seed set to 42")  # named first
    assert "Seed set to 42" in (run / "train.log").read_text()


@pytest.mark.parametrize(
    ("override", "group", "valid"),
    [("model=vea", "model", "vae"), ("data=minst", "data", "mnist"), ("trainer=tpu", "trainer", "ddp")],
)
def test_unknown_choice_lists_the_valid_ones(override: str, group: str, valid: str, tmp_path: Path) -> None:
    result = run_train(tmp_path, override)
    assert result.returncode != 0
    assert f"Could not find '{group}/{override.split('=')[1]}'" in result.stderr
    assert f"Available options in '{group}'" in result.stderr and valid in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_bad_hyperparameter_message_reaches_the_user(tmp_path: Path) -> None:
    result = run_train(tmp_path, *FAST, *TINY_MODELS["vae"], "model.latent_dim=-2")
    assert result.returncode != 0
    assert "latent_dim must be a positive integer, got -2" in result.stderr


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(runs: dict[str, tuple[Started, Path]]) -> None:
    started, root = runs["ddp"]
    result = started.result()
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (root / "outputs" / "runs").glob("*/*_vae_synthetic")
    assert (run / "train_ddp_process_1.log").is_file()  # the second rank ran in the same run folder
    assert (run / "checkpoints" / "last.ckpt").is_file()

"""`python train.py ...` as a user runs it: the run folder it writes and Hydra's messages for bad choices."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import FAST, TINY_MODELS, UNLISTED, Started, train_py
from hydra.utils import instantiate
from omegaconf import OmegaConf

from genlab.models import load_model
from genlab.signatures import target_parameters
from genlab.train import CONFIG_DIR

# The DDP run's evaluation: every default metric, random features, at the end of its one epoch.
DDP_EVAL = ["eval=default", "eval/extractor=random", "eval.num_samples=64", "eval.batch_size=16"]
DDP_EVAL += ["eval.kid_subsets=10", "eval.kid_subset_size=32", "eval.progress=false"]


def run_train(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return train_py(tmp_path, *overrides).result()


@pytest.fixture(scope="module")
def runs(tiny_run: tuple[Started, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Started, Path]]:
    """The module's successful runs, started together: the shared tiny run and a two-process DDP one."""
    root = tmp_path_factory.mktemp("ddp")
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", *DDP_EVAL]
    ddp = train_py(root, *FAST, *TINY_MODELS["vae"], *ddp)
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


@pytest.mark.slow
def test_parameter_that_the_yaml_does_not_list_is_set_without_plus(tiny_run: tuple[Started, Path]) -> None:
    trainer_yaml = OmegaConf.load(CONFIG_DIR / "trainer" / "default.yaml")
    unlisted = set(target_parameters(trainer_yaml._target_).defaults) - set(trainer_yaml)
    data_yaml = OmegaConf.load(CONFIG_DIR / "data" / "synthetic.yaml")
    assert "gradient_clip_val" in unlisted and "root" not in data_yaml  # data.root: a base class's parameter
    started, root = tiny_run  # a run of train.py with the UNLISTED settings
    assert {o.format(root=root) for o in UNLISTED} == {"trainer.gradient_clip_val=1.0", f"data.root={root}"}
    assert {o.format(root=root) for o in UNLISTED} <= set(started.process.args)
    result = started.result()
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (root / "outputs" / "runs").glob("*/*_vae_synthetic")
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert saved.trainer.gradient_clip_val == 1.0 and saved.data.root == str(root)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


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


@pytest.mark.slow
def test_ddp_evaluation_gives_the_numbers_of_one_process(runs: dict[str, tuple[Started, Path]], tmp_path: Path) -> None:
    """The DDP run's eval/* (two ranks sampling and extracting their shares) against its last checkpoint scored by
    the same evaluation settings in this one process."""
    started, root = runs["ddp"]
    assert started.result().returncode == 0, started.result().stderr[-3000:]
    (run,) = (root / "outputs" / "runs").glob("*/*_vae_synthetic")
    two = {k: v for k, v in json.loads((run / "status.json").read_text())["metrics"].items() if k.startswith("eval/")}
    assert {"eval/fid", "eval/is", "eval/kid", "eval/precision", "eval/coverage", "eval/copy_rate"} <= set(two)
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    cfg.paths.output_dir = str(tmp_path)  # ${hydra:runtime.output_dir} resolves inside a run only
    cfg.eval.cache_dir = None  # the real side is extracted again, in this process
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    model = load_model(run / "checkpoints" / "last.ckpt")
    one = instantiate(cfg.eval).evaluator.evaluate(datamodule, "cpu", model=model).metrics
    assert {f"eval/{k}" for k in one} == set(two)
    for key, value in one.items():
        assert two[f"eval/{key}"] == pytest.approx(value, rel=1e-5, abs=1e-6), key

"""Shared fixtures: the real training config composed with fast CPU/synthetic overrides."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from genlab.train import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[1]

# The torch threads of each test process: pytest-xdist's workers (the README's `-n 2`) share the 2 cores, one
# thread each; more threads than cores makes OpenMP's waiting threads spin against each other (measured: a
# training test 12 s alone, 91 s with two workers of 2 threads). The processes the tests start get the same.
THREADS = max(1, 2 // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


FAST = [
    "data=synthetic",
    "data.num_samples=96",
    "data.batch_size=32",
    "trainer=cpu",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "+trainer.enable_progress_bar=false",
    "+trainer.enable_model_summary=false",
    "callbacks.sample_grid.num_samples=16",
    "callbacks.sample_grid.num_reconstructions=8",
    "eval=none",
]


def quiet_trainer(root: Path | None, **kwargs) -> L.Trainer:
    """A CPU Trainer without logger, checkpoints, progress bar or model summary, writing under `root`."""
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        **kwargs,
    )


# Overrides that make each model config tiny (8-16 channels), keyed by the model config's name.
TINY_MODELS: dict[str, list[str]] = {
    "gmm": ["model.num_components=3", "model.pca_dim=8"],
    "ae": ["model.channels=[8,16]", "model.latent_dim=4", "model.latent_components=2"],
    "vae": ["model.channels=[8,16]", "model.latent_dim=4"],
    "dvae": [
        "model.channels=[8,16]",
        "model.num_tokens=16",
        "model.code_dim=8",
        "model.prior_dim=16",
        "model.prior_layers=1",
        "model.prior_heads=2",
    ],
    "gan": ["model.channels=[8,16]", "model.latent_dim=8"],
    "cgan": ["model.channels=[8,16]", "model.latent_dim=8"],
    "diffusion": ["model.channels=[8,16]", "model.num_timesteps=20", "model.sample_steps=5", "model.attention=false"],
}


def model_choice(overrides: tuple[str, ...]) -> str:
    """The `model=<name>` among the overrides (the last one wins), else the default `vae`."""
    choices = [o.split("=", 1)[1] for o in overrides if o.startswith("model=")]
    return choices[-1] if choices else "vae"


def compose_train(run_dir: Path, *overrides: str, config_name: str = "train", tiny: bool = True) -> DictConfig:
    """The composed train.yaml (or another top config) with FAST overrides and the chosen model's TINY
    overrides (unless not `tiny`), then `overrides`, writing into `run_dir`."""
    GlobalHydra.instance().clear()
    fast = [*FAST, *TINY_MODELS[model_choice(overrides)]] if config_name == "train" and tiny else []
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, return_hydra_config=True, overrides=[*fast, *overrides])
    with open_dict(cfg):
        cfg.paths.root_dir = str(run_dir.parent)
        cfg.paths.output_dir = str(run_dir)
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)  # so ${hydra:...} interpolations resolve outside @hydra.main
    with open_dict(cfg):
        del cfg.hydra  # as under @hydra.main, the task's config has no hydra node
    return cfg


@pytest.fixture
def train_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """compose(run_name, *overrides) -> config whose run folder is tmp_path / run_name."""
    yield lambda name="run", *overrides: compose_train(tmp_path / name, *overrides)
    GlobalHydra.instance().clear()


class Started:
    """A command started now and waited for on first use, its output in temporary files (a full pipe would stall
    it). Independent `python train.py` runs of a module start together, so that one's imports overlap another's
    work; on 2 cores that saves a few seconds, not half (each process is some 9 CPU seconds of imports)."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> None:
        self.out, self.err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # noqa: SIM115 (as long as the run)
        env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": str(THREADS), **(env or {})}
        self.process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self.out, stderr=self.err, text=True)
        self.timeout, self.done = timeout, None

    def result(self) -> subprocess.CompletedProcess:
        """Its exit code and output once it has ended (killed, and the test failed, if it outlives the timeout)."""
        if self.done is None:
            try:
                self.process.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                pytest.fail(f"{' '.join(self.process.args[1:3])} did not end within {self.timeout} s: {self.read()[1]}")
            self.done = subprocess.CompletedProcess(self.process.args, self.process.returncode, *self.read())
        return self.done

    def read(self) -> tuple[str, str]:
        self.out.seek(0), self.err.seek(0)
        return self.out.read(), self.err.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def train_py(root: Path, *overrides: str, env: dict[str, str] | None = None) -> Started:
    """`python train.py *overrides` writing under `root` (paths.root_dir), started."""
    return Started([sys.executable, "train.py", *overrides, f"paths.root_dir={root}"], env)


# Two settings of classes' signatures that the YAML does not list (Trainer.gradient_clip_val, a data module base
# class's root): set without a +.
UNLISTED = ["trainer.gradient_clip_val=1.0", "data.root={root}"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Started, Path]:
    """One tiny VAE run of `python train.py` with the UNLISTED settings, shared by the tests that read a finished
    run, and its paths.root_dir."""
    root = tmp_path_factory.mktemp("tiny-run")
    return train_py(root, *FAST, *TINY_MODELS["vae"], *(o.format(root=root) for o in UNLISTED)), root


@pytest.fixture(autouse=True)
def _small_torch() -> None:
    torch.set_num_threads(THREADS)


MEMORY_LIMIT_KIB = 1 << 20  # no test allocates more than 1 GiB (in the test process; its own processes aside)


def _memory_kib(field: str) -> int:
    """VmRSS (resident now) or VmHWM (the peak since the last reset) of this process, in KiB."""
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith(f"{field}:")))


@contextlib.contextmanager
def peak_memory_within(limit_kib: int, what: str) -> Iterator[None]:
    """Fail `what` if this process's peak resident memory inside the block rises more than `limit_kib` above its
    size at the start, on Linux (writing 5 to /proc/self/clear_refs resets the peak); elsewhere check nothing."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        yield
        return
    start = _memory_kib("VmRSS")
    yield
    grew = _memory_kib("VmHWM") - start
    if grew > limit_kib:
        pytest.fail(f"{what} took {grew / 2**20:.2f} GiB of memory at its peak (limit: {limit_kib / 2**20:g} GiB)")


@pytest.fixture(autouse=True)
def _memory_limit(request: pytest.FixtureRequest) -> Iterator[None]:
    with peak_memory_within(MEMORY_LIMIT_KIB, request.node.nodeid):
        yield


class CrashAt:
    """A callback (instantiated from config in tests) that raises at a given epoch and batch."""

    def __new__(cls, epoch: int, batch: int):
        import lightning as L

        class _Crash(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch_data, batch_idx: int) -> None:
                if trainer.current_epoch == epoch and batch_idx == batch:
                    raise RuntimeError(f"planned crash at epoch {epoch}, batch {batch}")

        return _Crash()


class KillAt(L.Callback):
    """SIGKILL this process once the training step that brings `global_step` to `step` has finished (its
    checkpoints written): a crash that no handler sees, at a known point."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:  # every hook of step `step` has run, the next one has not started
            os.kill(os.getpid(), signal.SIGKILL)


class StallEvalSampling(L.Callback):
    """Make the evaluation's first `sample()` call write `marker` and then sleep for up to `seconds`: a test waits
    for the file and signals the process while it is sampling. Once the marker exists (a resumed run), nothing."""

    def __init__(self, marker: str, seconds: float = 60.0) -> None:
        self.marker, self.seconds = Path(marker), seconds

    def setup(self, trainer, pl_module, stage: str) -> None:
        sample = pl_module.sample

        def stalling_sample(*args, **kwargs):
            from_evaluator = sys._getframe(1).f_code.co_name == "sample_batch"  # genlab.feature_sets
            if from_evaluator and not self.marker.exists():
                self.marker.write_text(str(os.getpid()))
                deadline = time.monotonic() + self.seconds
                while time.monotonic() < deadline:
                    time.sleep(0.05)
            return sample(*args, **kwargs)

        pl_module.sample = stalling_sample


class PoisonAt(L.Callback):
    """Fill every parameter with NaN before the training steps that start at the given `global_step`s: the loss
    of those steps is NaN (as if the run had diverged there)."""

    def __init__(self, steps: list[int]) -> None:
        self.steps = set(steps)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step in self.steps:
            self.steps.discard(trainer.global_step)
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.fill_(float("nan"))

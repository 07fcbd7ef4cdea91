"""Runs survive what ends them early: a SIGKILL mid-epoch resumes to the weights of a run that never stopped, a
SIGTERM or Ctrl-C during the evaluation stops the run within seconds and leaves a command that resumes it, a NaN
loss rolls back once (a second one stops the run with no NaN checkpoint on disk), and resuming a finished run is a
one-line error that touches nothing.

The subprocess tests run `train.py` as a user does; the test callbacks they add (`conftest.KillAt`,
`conftest.StallEvalSampling`) are imported from tests/ through PYTHONPATH.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST, TINY_MODELS, compose_train
from hydra.core.global_hydra import GlobalHydra

from genlab.callbacks import DivergedError
from genlab.train import train

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

# 86 training images in batches of 16: 5 steps an epoch. last.ckpt is written after global steps 2 and 4 (every 2
# batches), 5 (epoch end), 7 and 9 (batches 2 and 4 of epoch 1) and 10.
MID_EPOCH = ["data.batch_size=16", "trainer.max_epochs=2", "callbacks.step_checkpoint.every_n_steps=2"]
NOT_RESUMABLE = ("not resumable", "unreliable results")  # Lightning's warning for a loader without state

EVAL = [
    "eval=default",
    "eval/extractor=random",
    "eval.metrics=[fid]",
    "eval.num_samples=32",
    "eval.batch_size=16",
    "eval.every_n_epochs=1",
    "eval.progress=false",
]


def command(root: Path, *overrides: str) -> list[str]:
    """`python train.py` with the fast CPU overrides, a tiny VAE and `overrides`, writing under `root`."""
    return [sys.executable, "train.py", *FAST, *TINY_MODELS["vae"], *overrides, f"paths.root_dir={root}"]


def start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT / "src")])}
    env["OMP_NUM_THREADS"] = "2"  # the threads of train_here's runs: equal weights need the same reductions
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of a started run (killed if it outlives `timeout`)."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        pytest.fail(f"the run did not end within {timeout} s: {stderr[-3000:]}")
    return process.returncode, stdout, stderr


def run(args: list[str]) -> tuple[int, str, str]:
    return finish(start(args))


def run_folder(root: Path) -> Path:
    (folder,) = (root / "outputs" / "runs").glob("*/*_vae_synthetic")
    return folder


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def train_here(folder: Path, *overrides: str) -> Path:
    """The run of command(root, *overrides) trained in this process into `folder`: the reference runs that are
    never interrupted need no process of their own (a `train.py` process costs some 9 s of imports), and they
    train while the tested run's process imports."""
    torch.set_num_threads(2)  # as in the tests' processes (module fixtures run before conftest's autouse one)
    train(compose_train(folder, *overrides))
    GlobalHydra.instance().clear()
    return folder


class Uninterrupted:
    """The MID_EPOCH run from start to end, trained on first use."""

    def __init__(self, root: Path) -> None:
        self.root, self.trained = root, None

    def folder(self) -> Path:
        self.trained = self.trained or train_here(self.root / "run", *MID_EPOCH)
        return self.trained


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Uninterrupted:
    return Uninterrupted(tmp_path_factory.mktemp("whole"))


@pytest.mark.slow
def test_sigkill_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_run(
    uninterrupted: Uninterrupted, tmp_path: Path
) -> None:
    killer = ["+callbacks.killer._target_=conftest.KillAt", "+callbacks.killer.step=7"]
    killed = start(command(tmp_path, *MID_EPOCH, *killer))
    uninterrupted.folder()  # while that run imports
    code, _, stderr = finish(killed)
    assert code == -signal.SIGKILL, stderr[-3000:]
    folder = run_folder(tmp_path)
    saved = load(folder / "checkpoints" / "last.ckpt")
    assert (saved["epoch"], saved["global_step"]) == (1, 7)  # 2 of epoch 1's 5 steps done
    assert not (folder / "checkpoints" / "on_exception.ckpt").exists()  # a SIGKILL runs no handler

    code, stdout, stderr = run(command(tmp_path, f"ckpt_path={folder}", *MID_EPOCH))
    assert code == 0, stderr[-3000:]
    printed = stdout + stderr
    assert not [w for w in NOT_RESUMABLE if w in printed], printed[-3000:]
    assert run_folder(tmp_path) == folder  # it went on in the same folder
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "completed" and status["resumed_from"] == str(folder / "checkpoints" / "last.ckpt")

    resumed = load(folder / "checkpoints" / "last.ckpt")
    whole = load(uninterrupted.folder() / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == whole["global_step"] == 10
    assert resumed["state_dict"].keys() == whole["state_dict"].keys()
    differ = [k for k, v in whole["state_dict"].items() if not torch.equal(v, resumed["state_dict"][k])]
    assert not differ
    assert not all(torch.equal(v, resumed["state_dict"][k]) for k, v in saved["state_dict"].items())  # it trained


def wait_for(marker: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if process.poll() is not None:
            _, stderr = process.communicate()
            pytest.fail(f"the run ended ({process.returncode}) before its evaluation sampled: {stderr[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the evaluation did not start sampling within {timeout} s")
        time.sleep(0.05)


def interrupt_evaluation(root: Path, signum: int, *overrides: str, meanwhile=lambda: None) -> tuple[Path, dict]:
    """Send `signum` to a run while its evaluation samples (`meanwhile()` is called after it starts); its run
    folder and status.json once it has stopped, which must be within seconds (20 s allows a loaded 2-core
    machine), with exit code 128 + the signal's number."""
    marker = root.parent / "sampling"
    stall = ["+callbacks.stall._target_=conftest.StallEvalSampling", f"+callbacks.stall.marker={marker}"]
    process = start(command(root, *EVAL, *stall, *overrides))
    meanwhile()
    wait_for(marker, process)
    sent = time.monotonic()
    process.send_signal(signum)
    code, stdout, stderr = finish(process, timeout=30)
    took = time.monotonic() - sent
    assert code == 128 + signum, stderr[-3000:]
    assert took < 20, f"the run took {took:.1f} s to stop"  # the stall never ends: without the signal, never
    folder = run_folder(root)
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "interrupted" and status["signal"] == signum
    assert (folder / "checkpoints" / "on_exception.ckpt").is_file()
    assert f"resume with: {status['resume']}" in stdout + stderr
    return folder, status


@pytest.mark.slow
def test_sigterm_during_evaluation_stops_the_run_within_seconds_and_its_command_resumes(tmp_path: Path) -> None:
    root = tmp_path / "a root with spaces"  # the resume command must survive the shell
    folder, status = interrupt_evaluation(root, signal.SIGTERM)
    resume = shlex.split(status["resume"])
    assert resume[:2] == ["python", "train.py"] and f"ckpt_path={folder}" in resume

    code, _, stderr = run([sys.executable, *resume[1:]])
    assert code == 0, stderr[-3000:]
    assert run_folder(root) == folder
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "completed" and status["resumed_from"].endswith("on_exception.ckpt")
    assert {"val/loss", "eval/fid"} <= set(status["metrics"])  # the interrupted validation and evaluation ran again
    assert status["best_fid"] == status["metrics"]["eval/fid"]


@pytest.mark.slow
def test_ctrl_c_during_evaluation_stops_the_run_and_it_resumes_to_the_uninterrupted_weights(tmp_path: Path) -> None:
    """Stopped by Ctrl-C in epoch 0's evaluation (within seconds), resumed for epoch 1: the validation runs again
    from the generators' state at its start, so epoch 1 trains exactly as in a run that never stopped."""
    whole = tmp_path / "whole" / "run"
    overrides = [*EVAL, "trainer.max_epochs=2"]
    folder, status = interrupt_evaluation(
        tmp_path / "stopped", signal.SIGINT, "trainer.max_epochs=2", meanwhile=lambda: train_here(whole, *overrides)
    )
    code, _, stderr = run([sys.executable, *shlex.split(status["resume"])[1:]])
    assert code == 0, stderr[-3000:]
    resumed = load(folder / "checkpoints" / "last.ckpt")
    uninterrupted = load(whole / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == uninterrupted["global_step"] and resumed["epoch"] == 1
    differ = [k for k, v in uninterrupted["state_dict"].items() if not torch.equal(v, resumed["state_dict"][k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


def poisoned(*steps: int) -> list[str]:
    return ["+callbacks.poison._target_=conftest.PoisonAt", f"+callbacks.poison.steps=[{','.join(map(str, steps))}]"]


def all_finite(state_dict: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(v).all() for v in state_dict.values() if v.is_floating_point())


# 86 training images in batches of 32: 2 steps an epoch; the poisoned step 2 is epoch 1's first. A checkpoint
# after every step, so that one written between the NaN step and the check would be caught.
NAN_RUN = ["trainer.max_epochs=2", "callbacks.step_checkpoint.every_n_steps=1"]


def test_one_nan_loss_rolls_back_with_half_the_learning_rate_and_training_goes_on(train_cfg, tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="genlab.callbacks.finite_loss"):
        metrics = train(train_cfg("run", *NAN_RUN, *poisoned(2)))
    (warning,) = [r.getMessage() for r in caplog.records if "not finite" in r.getMessage()]
    assert warning.startswith("the loss is not finite at step 3 (epoch 1, batch 0): loss=nan"), warning
    assert "Rolled back to the state of step 2 and multiplied the learning rate by 0.5 (rollback 1 of 1)" in warning
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    last = load(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 4 and all_finite(last["state_dict"])
    assert [g["lr"] for g in last["optimizer_states"][0]["param_groups"]] == [0.5e-3]  # the model's 1e-3, halved
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "completed"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (poisoned(2, 3), r"at step 4 \(epoch 1, batch 1\): loss=nan.* after 1 rollback\(s\)"),
        ([*poisoned(2), "callbacks.finite_loss.max_rollbacks=0"], r"at step 3 \(epoch 1, batch 0\): loss=nan"),
    ],
    ids=["twice", "no-rollbacks"],
)
def test_a_nan_loss_past_the_rollbacks_stops_with_no_nan_checkpoint(overrides, message, train_cfg, tmp_path) -> None:
    with pytest.raises(DivergedError, match=message):
        train(train_cfg("run", *NAN_RUN, *overrides))
    checkpoints = tmp_path / "run" / "checkpoints"
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and status["error"].startswith("DivergedError: the loss is not finite")
    assert not (checkpoints / "on_exception.ckpt").exists()
    for path in checkpoints.glob("*.ckpt"):
        assert all_finite(load(path)["state_dict"]), path.name
    assert load(checkpoints / "last.ckpt")["global_step"] < 4


@pytest.mark.slow
def test_resuming_a_finished_run_is_one_line_and_touches_nothing(uninterrupted: Uninterrupted) -> None:
    folder = uninterrupted.folder()
    before = tree(folder)
    code, stdout, stderr = run(command(uninterrupted.root, f"ckpt_path={folder}", *MID_EPOCH))
    assert code == 2, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    assert re.search(r"already trained its 2 epoch\(s\) \(trainer.max_epochs=2\); to train on, raise it: ", lines[0])
    train_on = shlex.split(lines[0].split("raise it: ", 1)[1])  # the same command line with more epochs
    assert train_on == ["python", "train.py", f"ckpt_path={folder / 'checkpoints' / 'last.ckpt'}"] + [
        o for o in command(uninterrupted.root, *MID_EPOCH)[2:] if not o.startswith("trainer.max_epochs=")
    ] + ["trainer.max_epochs=4"], lines[0]
    assert "Traceback" not in stdout + stderr
    after = tree(folder)
    assert [k for k in {*before, *after} if before.get(k) != after.get(k)] == []

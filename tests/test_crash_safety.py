"""Runs survive what ends them early: a SIGKILL mid-epoch resumes to the weights of a run that never stopped, a
SIGTERM or Ctrl-C during the evaluation stops the run within seconds and leaves a command that resumes it, a NaN
loss rolls back once (a second one stops the run with no NaN checkpoint on disk), and resuming a finished run is a
one-line error that touches nothing.

The subprocess tests run `train.py` as a user does; the test callbacks they add (`conftest.KillAt`,
`conftest.StallEvalSampling`) are imported from tests/ through PYTHONPATH.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import FAST, THREADS, TINY_MODELS, Started, compose_train
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


def start(args: list[str]) -> Started:
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT / "src")])}
    return Started(args, env, timeout=120)


def run_folder(root: Path) -> Path:
    (folder,) = (root / "outputs" / "runs").glob("*/*_vae_synthetic")
    return folder


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def train_here(folder: Path, *overrides: str) -> Path:
    """The run of command(root, *overrides) trained in this process into `folder`: the reference runs that are
    never interrupted need no process of their own (a `train.py` process costs some 9 s of imports)."""
    torch.set_num_threads(THREADS)  # as the processes' OMP_NUM_THREADS (Started): equal weights need equal reductions
    train(compose_train(folder, *overrides))
    GlobalHydra.instance().clear()
    return folder


@dataclass
class Stopped:
    """A run ended early, by a SIGKILL of its own (`signum` None) or by `signum` sent while its evaluation sampled
    (`took`: seconds from the signal to the exit); `at_stop`, a copy of its run folder then (the resume writes
    over it); and the run resumed from it."""

    root: Path
    first: Started
    signum: int | None = None
    took: float | None = None
    at_stop: Path | None = None
    resumed: Started | None = None

    @property
    def marker(self) -> Path:
        return self.root.parent / "sampling"  # written by conftest.StallEvalSampling

    def keep(self) -> bool:
        """Copy the stopped run's folder to `at_stop`; False if there is not exactly one."""
        folders = list((self.root / "outputs" / "runs").glob("*/*_vae_synthetic"))
        if len(folders) == 1:
            self.at_stop = shutil.copytree(folders[0], self.root.parent / "at-stop")
        return self.at_stop is not None

    def resume(self, args: list[str]) -> None:
        """Keep a copy of the stopped run's folder, then start `args`, the command that resumes it."""
        if self.keep():
            self.resumed = start(args)


def stalled(root: Path, signum: int, *overrides: str) -> Stopped:
    """A run whose evaluation stalls once it samples (the stall never ends: without the signal, never)."""
    marker = root.parent / "sampling"  # Stopped.marker
    stall = ["+callbacks.stall._target_=conftest.StallEvalSampling", f"+callbacks.stall.marker={marker}"]
    return Stopped(root, start(command(root, *EVAL, *stall, *overrides)), signum)


def signal_when_sampling(runs: list[Stopped], timeout: float = 120) -> None:
    """Send each run its signal as soon as its evaluation samples, and time it until it has exited. A run that
    ends before it samples, or outlives the timeout, keeps `took` None (its test says so; the module kills it)."""
    deadline, sent, done = time.monotonic() + timeout, {}, set()
    while len(done) < len(runs) and time.monotonic() < deadline:
        for i, run in enumerate(runs):
            if i in done:
                continue
            if run.first.process.poll() is not None:
                run.took = time.monotonic() - sent[i] if i in sent else None
                done.add(i)
            elif i not in sent and run.marker.exists():
                run.first.process.send_signal(run.signum)
                sent[i] = time.monotonic()
        time.sleep(0.05)


@dataclass
class Runs:
    """The runs of this module's subprocess tests. The three that are stopped start together, the two that are
    resumed are resumed together, and the two references train in this process while they import (51 s to 32 s
    on 2 cores):
    - `killed`: the MID_EPOCH run, SIGKILLed at step 7, then resumed; `whole`: its reference, start to end;
    - `sigint`: two epochs with an evaluation each under a root with spaces (the resume command must survive the
      shell), stopped by Ctrl-C in epoch 0's evaluation, then resumed with the command it printed; `evaluated`:
      its reference;
    - `sigterm`: one epoch, stopped by SIGTERM in its evaluation; not resumed (its command is the same code's as
      the Ctrl-C run's, which is)."""

    killed: Stopped
    sigint: Stopped
    sigterm: Stopped
    whole: Path
    evaluated: Path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    folder = tmp_path_factory.mktemp
    killer = ["+callbacks.killer._target_=conftest.KillAt", "+callbacks.killer.step=7"]
    root = folder("killed") / "root"
    killed = Stopped(root, start(command(root, *MID_EPOCH, *killer)))
    sigint = stalled(folder("sigint") / "a root with spaces", signal.SIGINT, "trainer.max_epochs=2")
    sigterm = stalled(folder("sigterm") / "stopped", signal.SIGTERM)
    whole = train_here(folder("whole") / "run", *MID_EPOCH)
    evaluated = train_here(folder("evaluated") / "run", *EVAL, "trainer.max_epochs=2")
    signal_when_sampling([sigint, sigterm])
    statuses = [json.loads(p.read_text()) for p in sigint.root.glob("outputs/runs/*/*_vae_synthetic/status.json")]
    if sigint.took is not None and len(statuses) == 1 and "resume" in statuses[0]:
        sigint.resume([sys.executable, *shlex.split(statuses[0]["resume"])[1:]])  # the command it printed
    sigterm.keep()
    killed.first.result()
    folders = list((killed.root / "outputs" / "runs").glob("*/*_vae_synthetic"))
    if len(folders) == 1:
        killed.resume(command(killed.root, f"ckpt_path={folders[0]}", *MID_EPOCH))
    yield Runs(killed, sigint, sigterm, whole, evaluated)
    for stopped in (killed, sigint, sigterm):
        for process in (stopped.first, stopped.resumed):
            if process is not None:
                process.stop()


def succeeded(started: Started | None) -> subprocess.CompletedProcess:
    assert started is not None, "it was not started: the run before it failed (its test says how)"
    result = started.result()
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_sigkill_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_run(runs: Runs) -> None:
    killed = runs.killed
    result = killed.first.result()
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    saved = load(killed.at_stop / "checkpoints" / "last.ckpt")
    assert (saved["epoch"], saved["global_step"]) == (1, 7)  # 2 of epoch 1's 5 steps done
    assert not (killed.at_stop / "checkpoints" / "on_exception.ckpt").exists()  # a SIGKILL runs no handler

    printed = succeeded(killed.resumed)
    printed = printed.stdout + printed.stderr
    assert not [w for w in NOT_RESUMABLE if w in printed], printed[-3000:]
    folder = run_folder(killed.root)  # it went on in the same folder: there is one
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "completed" and status["resumed_from"] == str(folder / "checkpoints" / "last.ckpt")

    resumed = load(folder / "checkpoints" / "last.ckpt")
    whole = load(runs.whole / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == whole["global_step"] == 10
    assert resumed["state_dict"].keys() == whole["state_dict"].keys()
    differ = [k for k, v in whole["state_dict"].items() if not torch.equal(v, resumed["state_dict"][k])]
    assert not differ
    assert not all(torch.equal(v, resumed["state_dict"][k]) for k, v in saved["state_dict"].items())  # it trained


def check_stopped(stopped: Stopped) -> tuple[Path, list[str]]:
    """A run sent `signum` while its evaluation sampled stopped within seconds (20 s allows a loaded 2-core
    machine), with exit code 128 + the signal's number, an on_exception.ckpt and the command that resumes it
    (`python train.py ... ckpt_path=<its folder>`); its run folder and that command, split as the shell would."""
    result = stopped.first.result()
    assert stopped.marker.exists(), f"the run ended ({result.returncode}) before its evaluation sampled"
    assert result.returncode == 128 + stopped.signum, result.stderr[-3000:]
    assert stopped.took is not None and stopped.took < 20, f"the run took {stopped.took} s to stop"
    status = json.loads((stopped.at_stop / "status.json").read_text())
    assert status["status"] == "interrupted" and status["signal"] == stopped.signum
    assert (stopped.at_stop / "checkpoints" / "on_exception.ckpt").is_file()
    assert f"resume with: {status['resume']}" in result.stdout + result.stderr
    folder, resume = run_folder(stopped.root), shlex.split(status["resume"])
    assert resume[:2] == ["python", "train.py"] and f"ckpt_path={folder}" in resume
    return folder, resume


@pytest.mark.slow
def test_sigterm_during_evaluation_stops_the_run_within_seconds_with_the_command_that_resumes_it(runs: Runs) -> None:
    check_stopped(runs.sigterm)


@pytest.mark.slow
def test_ctrl_c_during_evaluation_stops_the_run_and_it_resumes_to_the_uninterrupted_weights(runs: Runs) -> None:
    """Stopped by Ctrl-C in epoch 0's evaluation (within seconds), resumed for epoch 1: the validation runs again
    from the generators' state at its start, so epoch 1 trains exactly as in a run that never stopped. Its root
    has spaces: the command it printed, run as printed, must survive the shell."""
    folder, resume = check_stopped(runs.sigint)
    assert " " in str(folder)
    assert runs.sigint.resumed.process.args == [sys.executable, *resume[1:]]  # the command as printed
    succeeded(runs.sigint.resumed)
    assert run_folder(runs.sigint.root) == folder
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "completed" and status["resumed_from"].endswith("on_exception.ckpt")
    assert {"val/loss", "eval/fid"} <= set(status["metrics"])  # the interrupted validation and evaluation ran again
    with open(folder / "csv" / "metrics.csv") as f:
        fids = [float(row["eval/fid"]) for row in csv.DictReader(f) if row.get("eval/fid")]
    assert len(fids) == 2 and status["best_fid"] == pytest.approx(min(fids))  # epoch 0's evaluation, then 1's
    resumed = load(folder / "checkpoints" / "last.ckpt")
    uninterrupted = load(runs.evaluated / "checkpoints" / "last.ckpt")
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
def test_resuming_a_finished_run_is_one_line_and_touches_nothing(runs: Runs) -> None:
    folder, root = runs.whole, runs.whole.parent
    before = tree(folder)
    result = start(command(root, f"ckpt_path={folder}", *MID_EPOCH)).result()
    stdout, stderr = result.stdout, result.stderr
    assert result.returncode == 2, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    assert re.search(r"already trained its 2 epoch\(s\) \(trainer.max_epochs=2\); to train on, raise it: ", lines[0])
    train_on = shlex.split(lines[0].split("raise it: ", 1)[1])  # the same command line with more epochs
    assert train_on == ["python", "train.py", f"ckpt_path={folder / 'checkpoints' / 'last.ckpt'}"] + [
        o for o in command(root, *MID_EPOCH)[2:] if not o.startswith("trainer.max_epochs=")
    ] + ["trainer.max_epochs=4"], lines[0]
    assert "Traceback" not in stdout + stderr
    after = tree(folder)
    assert [k for k in {*before, *after} if before.get(k) != after.get(k)] == []

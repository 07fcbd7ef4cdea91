"""genlab.atomic: a writer SIGKILLed at random points leaves the previous checkpoint whole (and plain `torch.save`
does not), failed writes leave no trace, `AtomicCheckpointIO` is what a Trainer saves with, and the feature
cache cleans up after a killed write.

The killed writers are forked from the test process rather than started as `sys.executable -c ...`: a fresh
interpreter spends ~5 s importing Lightning, a fork a few milliseconds, so a dozen kills fit in two seconds."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import fsspec
import pytest
import torch
from conftest import quiet_trainer
from lightning.pytorch.demos.boring_classes import BoringModel

import genlab.atomic
from genlab.atomic import AtomicCheckpointIO, atomic_write, temp_files
from genlab.features import checked_load, load_or_compute

ROUNDS = 8
MAX_DELAY_S = 0.2  # a save of the ~5 MB checkpoint takes ~10 ms: kills land at every stage of one


def _weights(parity: int) -> dict[str, torch.Tensor]:
    """~5 MB of float32 filled with `parity`: consecutive versions differ in every byte of their tensors."""
    return {"w0": torch.full((1024, 1024), float(parity)), "w1": torch.full((256, 1024), float(parity))}


WEIGHTS = (_weights(0), _weights(1))  # built once, before any fork: the writers only serialise


def _version(step: int) -> dict:
    return {"state_dict": WEIGHTS[step % 2], "step": step, "step_tensor": torch.tensor(step)}


SAVERS = {
    "atomic": lambda checkpoint, path: AtomicCheckpointIO().save_checkpoint(checkpoint, path),
    "torch.save": lambda checkpoint, path: torch.save(checkpoint, path),
}


def _save_forever(path: str, how: str, first_step: int, started) -> None:
    """Save versions first_step, first_step + 1, ... to `path` until killed."""
    started.set()
    step = first_step
    while True:
        SAVERS[how](_version(step), path)
        step += 1


def _read_step(path: Path) -> int | str:
    """The step of the checkpoint at `path` if it loads and its content matches its step, else what is wrong."""
    try:
        checkpoint = torch.load(path, weights_only=True)
    except Exception as err:  # truncated: EOFError, RuntimeError from the zip reader, ...
        return f"{type(err).__name__}: {err}"
    step = checkpoint["step"]
    tensors_match = all(bool(w.eq(step % 2).all()) for w in checkpoint["state_dict"].values())
    if int(checkpoint["step_tensor"]) != step or not tensors_match:
        return f"step {step}: its tensors belong to another version"
    return step


def _kill_writers(path: Path, how: str, seed: int = 0) -> list[tuple[int | str, bool]]:
    """For each of ROUNDS writers saving with `how`, SIGKILLed after a random delay: `_read_step` of the file it
    leaves, and whether it was killed in the middle of an atomic save (its temporary file is there)."""
    rng, ctx = random.Random(seed), mp.get_context("fork")
    SAVERS[how](_version(0), path)  # a complete version to start from
    outcomes = []
    for r in range(1, ROUNDS + 1):
        started = ctx.Event()
        writer = ctx.Process(target=_save_forever, args=(str(path), how, 1000 * r, started), daemon=True)
        writer.start()
        assert started.wait(timeout=30)
        time.sleep(rng.uniform(0, MAX_DELAY_S))
        os.kill(writer.pid, signal.SIGKILL)
        writer.join(timeout=30)
        assert writer.exitcode == -signal.SIGKILL
        outcomes.append((_read_step(path), bool(temp_files(path))))
    return outcomes


@pytest.mark.slow
def test_a_killed_atomic_save_leaves_a_whole_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    steps, mid_save = zip(*_kill_writers(path, "atomic"), strict=True)
    assert all(isinstance(s, int) for s in steps), steps
    assert any(mid_save)  # the kills did hit saves in progress (4 in 5 do, when measured)
    assert list(steps) == sorted(steps)  # never an older version than one already seen
    # a kill mid-save leaves its temporary file; the next save of the path deletes it, so at most one remains
    assert [p for p in tmp_path.iterdir() if p != path] == temp_files(path)
    assert len(temp_files(path)) <= 1 and list(tmp_path.glob("*.ckpt")) == [path]


@pytest.mark.slow
def test_a_killed_plain_torch_save_can_leave_a_truncated_checkpoint(tmp_path: Path) -> None:
    """The control: the same kills break a file written in place (19 rounds in 20 when measured)."""
    outcomes = [outcome for outcome, _ in _kill_writers(tmp_path / "last.ckpt", "torch.save")]
    assert any(isinstance(o, str) for o in outcomes), outcomes


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "f.bin"
    atomic_write(path, lambda f: f.write(b"old"))

    def fail(f) -> None:
        f.write(b"half of the new")
        raise KeyboardInterrupt  # any BaseException

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old" and temp_files(path) == []
    assert path.stat().st_mode & 0o777 == 0o644  # readable by the group, not mkstemp's 0600


def test_checkpoint_io_saves_locally_and_delegates_the_rest(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "a" / "b" / "epoch=0.ckpt"
    leftover = path.with_name(f".{path.name}.killed.tmp")
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half")
    io.save_checkpoint(_version(3), path)
    assert _read_step(path) == 3 and io.load_checkpoint(path)["step"] == 3
    assert not leftover.exists()  # what an earlier killed save left is gone
    io.save_checkpoint(_version(4), f"file://{path}")
    assert _read_step(path) == 4
    io.save_checkpoint(_version(5), "memory://ckpts/last.ckpt")  # not local: Lightning's own fsspec save
    assert fsspec.filesystem("memory").exists("/ckpts/last.ckpt")
    with pytest.raises(TypeError, match="storage_options"):
        io.save_checkpoint(_version(6), path, storage_options={"x": 1})
    assert type(pickle.loads(pickle.dumps(io))) is AtomicCheckpointIO  # spawned DDP workers unpickle plugins


def _recording(calls: list[Path]) -> Callable:
    """`atomic_write`, appending each path it writes to `calls`."""

    def write(path, write_fn) -> None:
        calls.append(Path(path))
        atomic_write(path, write_fn)

    return write


def test_a_trainer_saves_through_it(tmp_path: Path, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(genlab.atomic, "atomic_write", _recording(calls))
    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0, plugins=[AtomicCheckpointIO()])
    trainer.fit(BoringModel())
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    assert calls == [tmp_path / "last.ckpt"]
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 1


def test_the_cache_writes_atomically_and_removes_what_a_killed_write_left(tmp_path: Path, monkeypatch) -> None:
    path, key = tmp_path / "features.pt", {"v": 1}
    leftover = tmp_path / ".features.pt.killed.tmp"
    leftover.write_bytes(b"half")
    calls = []
    monkeypatch.setattr("genlab.features.cache.atomic_write", _recording(calls))
    _, computed = load_or_compute(path, key, lambda: {"x": torch.arange(4)})
    assert computed and calls == [path] and torch.equal(checked_load(path, key)["x"], torch.arange(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.pt", "features.pt.lock"]

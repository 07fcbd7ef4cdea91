"""Atomic file writes: whoever reads a file (a resumed run, another process) finds the old one or the whole new
one, never half of one, even if the writer is killed mid-write.

`atomic_write` writes into a temporary file beside the target, flushes and fsyncs it, renames it over the target
(`os.replace`: atomic on POSIX within one file system) and fsyncs the folder so that the rename survives a power
cut too; on an error it removes the temporary file. The recipe of python-atomicwrites (untitaker) and of
torch hub's downloads. Nothing can clean up after a SIGKILL: the temporary file stays, named
`.<target name>.<random>.tmp` (hidden, and ending in `.tmp`, so no `*.ckpt` or `*.pt` glob and no Lightning
"last checkpoint" search ever takes it for the target); `temp_files` lists them, `remove_temp_files` deletes them.

`AtomicCheckpointIO` is Lightning's `TorchCheckpointIO` saving through `atomic_write`. Lightning's own save
(an fsspec transaction) writes to `tempfile.mkstemp()` in the system temp folder, without fsync, then
`shutil.move`s the file into place: a rename only if that folder is on the checkpoint's file system, otherwise
a copy that a kill can leave half done. The class is built on first access (a PEP 562 module `__getattr__`), so
that `atomic_write` alone, which the feature caches use, imports neither Lightning (~5 s) nor torch.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    # what type checkers see; the class itself is built by `__getattr__` below
    from lightning.fabric.plugins.io import TorchCheckpointIO as AtomicCheckpointIO

__all__ = ["AtomicCheckpointIO", "atomic_write", "remove_temp_files", "temp_files"]

TEMP_SUFFIX = ".tmp"
FILE_MODE = 0o644  # mkstemp's 0600 would hide a shared cache or checkpoint from the other users of a group


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call `write(f)` on a binary file that becomes `path` only once `write` has returned and the bytes are on
    disk; until then `path` is what it was (or absent). Creates missing parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), FILE_MODE)
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable; skipped where a folder cannot be opened or fsynced (Windows, some
    network file systems)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temp_files(path: str | os.PathLike) -> list[Path]:
    """The temporary files that writes of `path` left behind when they were killed (or are writing now)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    prefix = f".{path.name}."
    return sorted(p for p in path.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(TEMP_SUFFIX))


def remove_temp_files(path: str | os.PathLike) -> None:
    """Delete `temp_files(path)`. Only for a writer that knows it is the only one writing `path` (it holds a lock,
    or it is Lightning's rank 0): another writer's file in progress would go too."""
    for tmp in temp_files(path):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _checkpoint_io_class() -> type:
    """Define `AtomicCheckpointIO`; imports torch and Lightning."""
    import torch
    from fsspec.core import url_to_fs
    from fsspec.implementations.local import LocalFileSystem
    from lightning.fabric.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        """Lightning's `TorchCheckpointIO` whose local saves are atomic: a run killed while it saves a checkpoint
        leaves the previous one whole. Temporary files of earlier killed saves of the same path are deleted first
        (Lightning saves each path from one process only). Remote paths (s3://, gs://, ...) and `storage_options`
        go to Lightning's own save; loading and removing are Lightning's.

        Use: `Trainer(plugins=[AtomicCheckpointIO()])`.
        """

        def save_checkpoint(
            self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
        ) -> None:
            fs, local_path = url_to_fs(str(path))  # "file://x" -> "/abs/x"; plain paths become absolute
            if storage_options is not None or not isinstance(fs, LocalFileSystem):
                super().save_checkpoint(checkpoint, path, storage_options)
                return
            remove_temp_files(local_path)
            atomic_write(local_path, lambda f: torch.save(checkpoint, f))

    # pickle finds a class by module and name: this one is `genlab.atomic.AtomicCheckpointIO`, via __getattr__
    AtomicCheckpointIO.__module__, AtomicCheckpointIO.__qualname__ = __name__, "AtomicCheckpointIO"
    return AtomicCheckpointIO


def __getattr__(name: str) -> Any:
    """Build `AtomicCheckpointIO` on first access and keep it as a module attribute."""
    if name != "AtomicCheckpointIO":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = globals()[name] = _checkpoint_io_class()
    return cls

"""On-disk caches that several processes share safely: atomic writes, checked loads, a file lock.

A cache file is one JSON header line ({"key", "sha256", "size"}) followed by the `torch.save` bytes of the
payload (tensors, dicts, lists, strings, numbers: what `torch.load(weights_only=True)` accepts). `checked_load`
trusts nothing: a missing, truncated, corrupt or stale (other key) file gives None, and the caller recomputes.
Writes go through `genlab.atomic.atomic_write` (a temporary file in the same folder, fsynced, then renamed into
place), so no reader ever sees half a file; `file_lock` (an `fcntl.flock` on `<path>.lock`) lets one process
compute while the others wait, then read: the lock that pip and huggingface_hub take around shared caches.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from genlab.atomic import atomic_write, remove_temp_files

log = logging.getLogger(__name__)


def _canonical(key: dict) -> Any:
    """`key` as it reads back from JSON (tuples become lists, paths strings), so that equal keys compare equal."""
    return json.loads(json.dumps(key, sort_keys=True, default=str))


def atomic_save(obj: Any, path: str | os.PathLike, key: dict) -> None:
    """Write `obj` to `path` with its key and checksum, atomically: `path` is the old file or the whole new one."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)  # first, so that an object torch cannot save leaves no trace at all
    payload = buffer.getbuffer()
    header = {"key": _canonical(key), "sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}

    def write(f: IO[bytes]) -> None:
        f.write(json.dumps(header, sort_keys=True).encode() + b"\n")
        f.write(payload)

    atomic_write(path, write)


def checked_load(path: str | os.PathLike, key: dict, classes: tuple[type, ...] = ()) -> Any | None:
    """The payload saved at `path` under `key`, or None (with a log line saying why) if it cannot be trusted.
    `classes`: genlab classes the payload may hold besides what `weights_only` loading accepts."""
    path = Path(path)
    if not path.is_file():
        log.debug(f"cache {path} does not exist yet")
        return None
    try:
        with open(path, "rb") as f:
            header = json.loads(f.readline())
            payload = f.read()
        if not isinstance(header, dict):
            raise ValueError(f"header is a {type(header).__name__}, not a dict")
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        log.warning(f"cache {path} is unreadable ({err}): recomputing")
        return None
    if header.get("key") != _canonical(key):
        log.info(f"cache {path} was made for {header.get('key')}, not {_canonical(key)}: recomputing")
        return None
    if len(payload) != header.get("size") or hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        log.warning(f"cache {path} is truncated or corrupt ({len(payload)} of {header.get('size')} bytes): recomputing")
        return None
    try:
        with torch.serialization.safe_globals(list(classes)):
            return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as err:  # e.g. written by another torch version: recomputing is always safe
        log.warning(f"cache {path} cannot be loaded ({type(err).__name__}: {err}): recomputing")
        return None


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on `<path>.lock`; other processes block until it is released.

    The lock file is left in place: deleting it would let a waiting process lock an unlinked inode.
    """
    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def tensors_hash(*tensors: Tensor) -> str:
    """16 hex digits of the sha256 of the tensors' bytes, in order: a cache key for data (images and labels), so
    that another subset, seed or source is another key."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_or_compute(
    path: str | os.PathLike | None, key: dict, compute: Callable[[], Any], classes: tuple[type, ...] = ()
) -> tuple[Any, bool]:
    """(the valid cache at `path`, False), else (`compute()`, True) after saving it there; None: no cache.
    `classes` as in `checked_load`.

    Under `file_lock`: of several processes that start together, one computes and the others read its file.
    """
    if path is None:
        return compute(), True
    with file_lock(path):
        cached = checked_load(path, key, classes)
        if cached is not None:
            return cached, False
        obj = compute()
        remove_temp_files(path)  # of a write that was killed: under the lock, no other write is in progress
        atomic_save(obj, path, key)
        return obj, True

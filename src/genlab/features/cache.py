"""On-disk caches that several processes share safely: atomic writes, checked loads, a file lock.

A cache file is one JSON header line ({"key", "sha256", "size"}) followed by the `torch.save` bytes of the
payload. `checked_load` trusts nothing: a missing, truncated, corrupt or stale (other key) file gives None,
and the caller recomputes. Writes go to a temporary file in the same folder and are renamed into place, so
no reader ever sees half a file; `file_lock` lets one process compute while the others wait, then read.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def atomic_save(obj: Any, path: str | Path, key: dict) -> None:
    """Write `obj` (tensors, dicts, numbers, strings) to `path` with its key and checksum, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getvalue()
    header = {"key": key, "sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(header, sort_keys=True, default=str).encode() + b"\n")
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def checked_load(path: str | Path, key: dict) -> Any | None:
    """The payload saved at `path` under `key`, or None (with a log line saying why) if it cannot be trusted."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            header = json.loads(f.readline())
            payload = f.read()
    except (OSError, ValueError) as err:
        log.warning(f"cache {path} is unreadable ({err}): recomputing")
        return None
    if json.loads(json.dumps(key, sort_keys=True, default=str)) != header.get("key"):
        log.info(f"cache {path} was made for {header.get('key')}, not {key}: recomputing")
        return None
    if len(payload) != header.get("size") or hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        log.warning(f"cache {path} is truncated or corrupt: recomputing")
        return None
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on `<path>.lock` (other processes block until it is released)."""
    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)

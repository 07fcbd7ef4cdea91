"""Ctrl-C and SIGTERM (what Slurm sends before it kills a preempted job) stop a run within a moment, wherever it
is, evaluation and sampling included: the handler raises `Interrupted`, a KeyboardInterrupt, so Lightning shuts
down as for Ctrl-C and its on-exception checkpoint is written; the entry point then records the run as
`interrupted`, with the command that resumes it, and exits with 128 + the signal's number.
"""

from __future__ import annotations

import signal
from types import FrameType


class Interrupted(KeyboardInterrupt):
    """A SIGINT or SIGTERM arrived; `signum` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


received: list[int] = []  # the signals received by this process, in order


def _raise(signum: int, frame: FrameType | None) -> None:
    received.append(signum)
    raise Interrupted(signum)


def install() -> None:
    """Raise `Interrupted` on SIGINT and SIGTERM (Lightning's own SIGTERM handler, added later, calls this one
    after its own)."""
    received.clear()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise)


def exit_code() -> int | None:
    """128 + the first signal received, None without one."""
    return 128 + received[0] if received else None

"""Argument checks shared by data modules, models, callbacks and the config check: errors name the argument, the
value and what is allowed."""

from __future__ import annotations

import difflib
import socket
from collections.abc import Iterable
from urllib.parse import urlparse


class ConfigError(ValueError):
    """A setting the user can fix: its message is the whole story (the bad value, what is allowed, how to fix
    it), so the entry points print it as one line, without a traceback."""


class RunError(RuntimeError):
    """A run stopped for a reason its message tells in full (a diverged loss): printed as one line too."""


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """' (did you mean 'latent_dim'?)' for the closest valid name, or '' when none is close."""
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_positive_int(name: str, value: int, allow_zero: bool = False) -> None:
    """Raise a ConfigError naming `name` unless `value` is a positive (or, if allowed, zero) integer."""
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        allowed = "a non-negative integer" if allow_zero else "a positive integer"
        raise ConfigError(f"{name} must be {allowed}, got {value!r}")


def can_reach(url: str, timeout: float = 3.0) -> bool:
    """True if a TCP connection to the url's host opens within `timeout` seconds."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True

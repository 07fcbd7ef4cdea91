"""Argument checks shared by data modules, models and callbacks: errors name the argument, the value and what
is allowed."""

from __future__ import annotations


def check_positive_int(name: str, value: int, allow_zero: bool = False) -> None:
    """Raise a ValueError naming `name` unless `value` is a positive (or, if allowed, zero) integer."""
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        allowed = "a non-negative integer" if allow_zero else "a positive integer"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")

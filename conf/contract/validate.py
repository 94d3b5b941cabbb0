"""Value checks for frozen settings dataclasses (called from their ``__post_init__``).

Each check raises ``ValueError`` naming the field, the rule and the value; the config loader
prefixes the path (``process.seeding.std_size_um must be > 0, got -1.0``). Comparisons are
written so that NaN fails every rule.
"""

from __future__ import annotations

from typing import Any


def positive(obj: Any, *names: str) -> None:
    """Every named field is a number > 0."""
    for name in names:
        value = getattr(obj, name)
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")


def non_negative(obj: Any, *names: str) -> None:
    """Every named field is a number >= 0."""
    for name in names:
        value = getattr(obj, name)
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")


def within(obj: Any, name: str, low: float, high: float) -> None:
    """The named field lies in [low, high]."""
    value = getattr(obj, name)
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")

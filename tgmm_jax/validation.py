"""Checks of configuration values: each raises ValueError naming the field, e.g. ``check_int(n, "TaskSpec.dim", 1)``
raises "TaskSpec.dim must be an integer >= 1, got 0"."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable

import numpy as np


def is_int(value) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite real number (Python or NumPy), not a bool."""
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and (math.isfinite(value))
    )


def check_int(value, name: str, low: int | None = None, high: int | None = None, *, optional: bool = False):
    """``value`` is an integer in [low, high] (a bound of None is open); with ``optional``, None passes too."""
    if optional and value is None:
        return
    if is_int(value) and (low is None or value >= low) and (high is None or value <= high):
        return
    if high is None:
        bounds = "" if low is None else f" >= {low}"
    else:
        bounds = f" in [{low}, {high}]" if low is not None else f" <= {high}"
    raise ValueError(f"{name} must be {'None or ' if optional else ''}an integer{bounds}, got {value!r}")


def check_ints(obj, names: Iterable[str], where: str, low: int = 1) -> None:
    """``check_int(obj.<name>, "<where>.<name>", low)`` for every name."""
    for name in names:
        check_int(getattr(obj, name), f"{where}.{name}", low)


def check_bool(value, name: str, *, optional: bool = False) -> None:
    if type(value) is not bool and not (optional and value is None):
        raise ValueError(f"{name} must be {'None or ' if optional else ''}a bool, got {value!r}")


def check_number(value, name: str, low: float = -math.inf, high: float = math.inf, *, low_open: bool = False):
    """``value`` is a finite number in [low, high], or (low, high] with ``low_open``."""
    if is_number(value) and (value > low if low_open else value >= low) and value <= high:
        return
    if high == math.inf:
        bounds = f" {'>' if low_open else '>='} {low}" if low > -math.inf else ""
    else:
        bounds = f" in {'(' if low_open else '['}{low}, {high}]"
    raise ValueError(f"{name} must be a finite number{bounds}, got {value!r}")


def check_choice(value, name: str, choices: Iterable) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_fields(given: Iterable[str], known: Iterable[str], where: str, *, also=(), hint: str = "") -> None:
    """Every name in ``given`` is among ``known``, else ValueError naming the unknown ones, each with its closest
    known name ("did you mean"; ``also`` offers more names to guess from, e.g. the fields of nested groups),
    then ``hint``."""
    known = sorted(known)
    unknown = sorted(set(given) - set(known))
    if not unknown:
        return
    guesses = [
        f"{name!r}: did you mean {guess!r}?" for name in unknown if (guess := _closest(name, [*known, *also]))
    ]
    raise ValueError(
        f"{where}: unknown field(s) {unknown}"
        + (f" ({'; '.join(guesses)})" if guesses else "")
        + f"; known: {known}{hint}"
    )


def _closest(name: str, candidates: list[str]) -> str | None:
    """The candidate ending in ``.name`` (the field of a nested group), else the most similar one, if any."""
    nested = [c for c in candidates if c.rsplit(".", 1)[-1] == name]
    return (nested or difflib.get_close_matches(name, candidates, n=1) or [None])[0]

"""Argument checks shared by every module: each names the argument and what is wrong with it.

They accept Python and numpy numbers alike (never ``bool``) and return the value as a plain ``int`` or
``float``, so callers store what was checked.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

from crossscale.errors import ConfigurationError

__all__ = ["int_at_least", "number_in", "numbers_in", "optional_finite", "positive_int"]


def int_at_least(name: str, value: object, minimum: int) -> int:
    """``value`` as an ``int`` >= ``minimum``, else a :class:`ConfigurationError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        wanted = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ConfigurationError(f"{name} must be {wanted}, got {value!r}")
    return int(value)


def positive_int(name: str, value: object) -> int:
    """``value`` as an ``int`` >= 1, else a :class:`ConfigurationError` naming ``name``."""
    return int_at_least(name, value, 1)


def number_in(
    name: str, value: object, low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> float:
    """``value`` as a ``float`` in the interval ``[low, high]`` (``low_open``/``high_open``: excluding that end)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigurationError(f"{name} must be a number in {interval}, got {value!r}")
    number = float(value)
    above = low < number if low_open else low <= number
    below = number < high if high_open else number <= high
    if not (above and below):  # also refuses NaN
        raise ConfigurationError(f"{name} must be in {interval}, got {value!r}")
    return number


def numbers_in(
    name: str, values: object, low: float, high: float, *, low_open: bool = False, empty: bool = False
) -> tuple[float, ...]:
    """``values`` as a tuple of floats, each checked by :func:`number_in` as ``name[i]``; ``empty`` allows ``()``."""
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise ConfigurationError(f"{name} must be a sequence of numbers, got {values!r}")
    items = list(values)
    if not items and not empty:
        raise ConfigurationError(f"{name} must not be empty")
    return tuple(number_in(f"{name}[{i}]", v, low, high, low_open=low_open) for i, v in enumerate(items))


def optional_finite(name: str, value: object) -> float | None:
    """``None``, or ``value`` as a finite ``float``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ConfigurationError(f"{name} must be a finite number or None, got {value!r}")
    return float(value)

"""The checks every layer uses on values a user gives: one wording, one place.

Each raises ``ValueError`` naming the setting, what it got, and what is allowed; none
rewrites a value.  ``bool`` is refused where a number is asked for (``True`` is an
``int`` to Python, but nobody means rank 1 when they type True).
"""

from __future__ import annotations

import math
import numbers


def is_integer(value: object) -> bool:
    """An int (numpy's too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A finite real number (int or float, numpy's too), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def is_probability(p: object) -> bool:
    """A number (not a bool) in [0, 1): what a dropout probability may be."""
    return is_number(p) and 0 <= p < 1


def _say(name: str, what: str | None) -> str:
    return f"{name} ({what})" if what else name


def check_integer(name: str, value: object, minimum: int | None = None, what: str | None = None) -> None:
    """An integer, at least ``minimum`` when given."""
    if not is_integer(value) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else (" >= 0" if minimum == 0 else f" >= {minimum}")
        raise ValueError(f"{_say(name, what)} must be an integer{bound}, got {value!r}")


def check_positive_int(name: str, value: object, what: str | None = None) -> None:
    """An integer >= 1."""
    if not is_integer(value) or value < 1:
        raise ValueError(f"{_say(name, what)} must be a positive integer, got {value!r}")


def check_positive_number(name: str, value: object, what: str | None = None) -> None:
    """A finite number > 0."""
    if not is_number(value) or not value > 0:
        raise ValueError(f"{_say(name, what)} must be a positive number, got {value!r}")


def check_number(name: str, value: object, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, what: str | None = None) -> None:
    """A finite number in the interval given by ``low``/``high`` (closed unless ``*_open``)."""
    ok = is_number(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if low is None and high is None:
            rule = "a finite number"
        else:
            lo = "(-inf" if low is None else f"{'(' if low_open else '['}{low:g}"
            hi = "inf)" if high is None else f"{high:g}{')' if high_open else ']'}"
            rule = f"a number in {lo}, {hi}"
        raise ValueError(f"{_say(name, what)} must be {rule}, got {value!r}")


def check_probability(name: str, value: object, what: str | None = None) -> None:
    """A number in [0, 1) (a dropout probability)."""
    if not is_probability(value):
        raise ValueError(f"{_say(name, what)} must be in [0, 1), got {value!r}")


def check_bool(name: str, value: object) -> None:
    """True or False, not a truthy stand-in."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def check_choice(name: str, value: object, allowed: tuple) -> None:
    """One of ``allowed``; the error lists them."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}")

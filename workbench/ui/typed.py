"""Numbers typed as text: read a plain number, refuse anything else with what is allowed.

The panel's number boxes hand over what was typed.  A plain number ("0.001", "1e-3",
"150") is read as one; a decimal comma, letters or nothing stay text, and the settings
refuse them with ``number_problem``'s words.  Nothing typed is ever guessed at.
"""

from __future__ import annotations

import re
from typing import Any

# The choices that are numbers, and their kind: a text typed for one is read by ``read_number``.
NUMBER_CHOICES: dict[str, type] = {"rank": int, "alpha": float, "lr": float, "steps": int, "batch_size": int,
                                   "seed": int}
_EXAMPLES = {"rank": "8", "alpha": "16", "lr": "0.001 or 1e-3", "steps": "150", "batch_size": "16", "seed": "0"}
_WHAT = {"lr": "learning rate", "batch_size": "batch size"}
_INT_TEXT = re.compile(r"^[+-]?\d+$")
_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_COMMA_TEXT = re.compile(r"^[+-]?\d*,\d+([eE][+-]?\d+)?$")


def read_number(text: str, kind: type) -> Any:
    """A number typed as text: an int or float when it is one, else the text as typed (stripped).

    Only plain numbers are read ("0.001", "1e-3", "150"); a decimal comma ("0,001"), a
    thousands separator, letters or nothing stay text, and ``number_problem`` says why
    they are refused: "0,001" could mean 0.001 or 1 (as "1,000" means a thousand), and a
    guess would train a run the user never asked for.
    """
    t = text.strip()
    if kind is int and _INT_TEXT.match(t):
        return int(t)
    if kind is float and _FLOAT_TEXT.match(t):
        return float(t)
    return t


def number_problem(name: str, text: str) -> str:
    """Why a text typed for a number is refused, and what to type instead."""
    kind = NUMBER_CHOICES[name]
    label = f"{name} ({_WHAT[name]})" if name in _WHAT else name
    allowed = ("a whole number" if kind is int else "a number with a decimal point") + f", e.g. {_EXAMPLES[name]}"
    t = text.strip()
    if not t:
        return f"{label} is empty: type {allowed}"
    if _COMMA_TEXT.match(t) and kind is float:
        return (f"{label} must be {allowed}; got {t!r}, which has a decimal comma: type {t.replace(',', '.')} "
                "if that is what you mean")
    if kind is int and _FLOAT_TEXT.match(t.replace(",", "")):
        return f"{label} must be {allowed}; got {t!r}"
    return f"{label} must be {allowed}; got {t!r}, which is not a number"



__all__ = ["NUMBER_CHOICES", "number_problem", "read_number"]

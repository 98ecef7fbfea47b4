"""Units and number formats, declared once: every table and figure speaks the same units.

Memory is reported in decimal units (1 MB = 10**6 bytes, 1 GB = 10**9), as the LoRA
paper's "350GB" (175e9 parameters x 2 bytes) is.  The ml-stack guide's tables divide
by 2**20 instead: its "86.6 MB" is 86.6 MiB = 90.9 MB.
"""

from __future__ import annotations

import math

KIB = 2**10  # a binary kilobyte: what /proc/self/status means by "kB"
MIB = 2**20  # a binary megabyte: the unit of the ml-stack guide's tables
MB = 10**6  # a decimal megabyte: the unit this project prints and plots
GB = 10**9  # a decimal gigabyte

# Bytes per element of the dtypes the memory formulas name, beside the model's own dtype
# (torch's ``dtype.itemsize``, written here once so the bottom layer needs no torch).
FLOAT32_BYTES = 4  # float32: optimizer counters, bitsandbytes' absmax and quantile maps, fp32 upcasts
INT64_BYTES = 8  # int64: token ids, labels and index vectors


def _missing(n: object) -> bool:
    if n is None:
        return True
    try:
        return math.isnan(float(n))
    except (TypeError, ValueError):
        return True


def format_bytes(n: int | float | None, digits: int = 1, missing: str = "n/a") -> str:
    """``90855944 -> '90.9 MB'``: decimal megabytes; a GB and above in GB.

    ``None`` (or NaN, or pandas' NA) gives ``missing``.
    """
    if _missing(n):
        return missing
    n = float(n)
    if abs(n) >= GB:
        return f"{n / GB:.{digits}f} GB"
    return f"{n / MB:.{digits}f} MB"


def format_count(n: float) -> str:
    """A parameter count for people: 950, 12k, 1.5M, 22.7M, 1.1B (about 3 significant digits)."""
    n = float(n)
    if not math.isfinite(n):
        return ""
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            v = n / div
            return f"{v:.0f}{suffix}" if abs(v) >= 100 or v == round(v) else f"{v:.3g}{suffix}"
    return f"{n:.0f}"

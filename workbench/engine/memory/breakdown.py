"""The memory of one training step, itemised: what a run records and a figure shows.

Training memory has four parts, and LoRA changes each of them differently:

* **weights**      every parameter, trainable or frozen:            sum(numel) * bytes
* **gradients**    one ``.grad`` per *trainable* parameter:          trainable * bytes
* **optimizer**    AdamW keeps two moments per trainable number:     2 * trainable * bytes
* **activations**  tensors the forward pass saves for backward.

``MemoryBreakdown`` holds them, measured (``measure_train_step``, ``MemoryProbe``) or
estimated (``estimate_memory``) alike, beside a peak that was observed, not added up;
``compare_breakdowns`` sets a measurement beside an estimate, component by component.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from workbench.util.units import MB


@dataclass
class MemoryBreakdown:
    """The memory of one training step, in bytes.

    ``total`` is the sum of the four tensor terms (what the model, its gradients, the
    optimizer and the saved activations occupy).  ``peak`` is a separate, coarser
    observation: the allocator's high-water mark on CUDA, or the whole process's peak
    resident memory on CPU (Python, libraries, temporaries included), so it is larger
    than ``total`` and is not added into it.
    """

    weights: int = 0
    gradients: int = 0
    optimizer: int = 0
    activations: int = 0
    peak: int | None = None
    peak_kind: str = ""

    @property
    def total(self) -> int:
        """weights + gradients + optimizer + activations (bytes)."""
        return self.weights + self.gradients + self.optimizer + self.activations

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON-ready); ``total`` is included for readers, ignored on load."""
        d = asdict(self)
        d["total"] = self.total
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MemoryBreakdown":
        """Inverse of ``to_dict``; unknown keys (such as ``total``) are ignored."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        for key in ("weights", "gradients", "optimizer", "activations"):
            if key in kwargs:
                kwargs[key] = int(kwargs[key])
        if kwargs.get("peak") is not None:
            kwargs["peak"] = int(kwargs["peak"])
        return cls(**kwargs)

    def to_frame(self) -> pd.DataFrame:
        """A small table: one row per component (and ``total``, and ``peak`` when known).

        Columns: ``component``, ``bytes``, ``MB`` (bytes / 10**6, as ``format_bytes``).
        """
        rows = [
            ("weights", self.weights),
            ("gradients", self.gradients),
            ("optimizer", self.optimizer),
            ("activations", self.activations),
            ("total", self.total),
        ]
        if self.peak is not None:
            rows.append((f"peak ({self.peak_kind})" if self.peak_kind else "peak", self.peak))
        return pd.DataFrame(
            {
                "component": [name for name, _ in rows],
                "bytes": [int(b) for _, b in rows],
                "MB": [b / MB for _, b in rows],
            }
        )


#: The rows of a comparison, in the order a reader adds them up.
COMPONENTS: tuple[str, ...] = ("weights", "gradients", "optimizer", "activations", "total")


def compare_breakdowns(measured: MemoryBreakdown, estimated: MemoryBreakdown | None,
                       unestimated: Iterable[str] = ()) -> pd.DataFrame:
    """Measured beside estimated, one row per component: MB (10**6 bytes) and error in %.

    Columns, in this order: ``component``, ``measured MB``, ``estimated MB``, ``error %``
    = 100 * (estimated - measured) / measured (NaN when nothing was measured, or when
    there is no estimate).  ``unestimated``: components the estimate does not cover (the
    planner has no activation formula for some architectures): NaN there, and in the
    total.  A ``peak`` row follows when the measurement has one: it has no estimate (the
    peak includes memory that is not tensors; see ``MemoryBreakdown``).  Works for a
    ``RunResult``'s ``memory`` and ``memory_estimate`` too.
    """
    if not isinstance(measured, MemoryBreakdown):
        raise TypeError(f"measured must be a MemoryBreakdown, got {type(measured).__name__}")
    if estimated is not None and not isinstance(estimated, MemoryBreakdown):
        raise TypeError(f"estimated must be a MemoryBreakdown or None, got {type(estimated).__name__}")
    missing = set(unestimated)
    unknown = missing - set(COMPONENTS)
    if unknown:
        raise ValueError(f"unestimated must name components among {COMPONENTS}, got {sorted(unknown)}")
    if missing:
        missing.add("total")
    rows = []
    for name in COMPONENTS:
        m = getattr(measured, name)
        e = getattr(estimated, name) if estimated is not None and name not in missing else None
        rows.append({
            "component": name,
            "measured MB": m / MB,
            "estimated MB": np.nan if e is None else e / MB,
            "error %": np.nan if (e is None or m == 0) else 100.0 * (e - m) / m,
        })
    if measured.peak is not None:
        rows.append({"component": f"peak ({measured.peak_kind})" if measured.peak_kind else "peak",
                     "measured MB": measured.peak / MB, "estimated MB": np.nan, "error %": np.nan})
    return pd.DataFrame(rows, columns=["component", "measured MB", "estimated MB", "error %"])

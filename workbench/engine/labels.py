"""Names for several runs shown together: each says what sets it apart from the others.

``config.label()`` names a run by method, variant, rank and targets ("LoRA r=1
(query,value)"); five runs that differ only in learning rate would read identically in a
legend.  ``distinct_labels(configs)`` keeps that label and appends every setting whose
value is not the same across the runs shown::

    LoRA r=1 (query,value) · lr=0.001          LoRA r=1 (query,value) · lr=0.01

The settings compared (``DIFFERING``) are the run's own names: lr, steps, alpha, seed,
batch_size, rslora, model_dropout, dropout, model, data.  Method and variant are already
in ``label()``.  Runs whose settings are all equal get " #2", " #3" in order, so no two
labels are ever the same.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from workbench.engine.config import RunConfig

# Each setting that can tell runs apart: (name shown, how to read it from a config).
# LoRA settings read None for full fine-tuning and head-only runs, which have no LoRA.
DIFFERING: tuple[tuple[str, Callable[[RunConfig], Any]], ...] = (
    ("lr", lambda c: c.lr),
    ("steps", lambda c: c.steps),
    ("alpha", lambda c: c.lora.alpha if c.method == "lora" else None),
    ("seed", lambda c: c.seed),
    ("batch_size", lambda c: c.batch_size),
    ("dropout", lambda c: c.lora.dropout if c.method == "lora" else None),
    ("model_dropout", lambda c: c.model_dropout),
    ("model", lambda c: c.model),
    ("data", lambda c: c.data),
)
SEPARATOR = " · "


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def differing_settings(configs: Sequence[RunConfig]) -> list[str]:
    """The names in ``DIFFERING`` whose value is not the same for all ``configs`` it applies to
    (a LoRA setting is compared among the LoRA runs only)."""
    names = []
    for name, read in DIFFERING:
        values = {repr(v) for c in configs if (v := read(c)) is not None}
        if len(values) > 1:
            names.append(name)
    return names


def distinct_labels(configs: Sequence[RunConfig]) -> list[str]:
    """One label per config: ``label()`` plus ``name=value`` for every setting that differs among them.

    A LoRA setting is left out of a non-LoRA run's label (it has none).  Labels still equal
    after that (the same settings run twice) get " #2", " #3", ... in order.
    """
    configs = list(configs)
    for c in configs:
        if not isinstance(c, RunConfig):
            raise TypeError(f"distinct_labels needs RunConfigs, got {type(c).__name__}")
    differ = differing_settings(configs)
    readers = dict(DIFFERING)
    labels = []
    for c in configs:
        parts = [f"{n}={_text(v)}" for n in differ if (v := readers[n](c)) is not None]
        labels.append(c.label() + (SEPARATOR + " ".join(parts) if parts else ""))
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if labels.count(label) == 1 else f"{label} #{seen[label]}")
    return out


__all__ = ["distinct_labels", "differing_settings", "DIFFERING"]

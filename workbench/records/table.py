"""The runs table: one row per run, the columns ``wb.runs()`` and the panel's run list show.

The run store (``workbench.records.store``) keeps each run as files and loads them back as
``RunResult`` objects; this module turns results - stored or still in memory - into rows.
Two ideas, two files: how a run is kept (folders, atomic writes, damaged files skipped)
changes for other reasons than what a row shows (a new LoRA setting is a new column here,
read from ``LoRAConfig``'s fields).  ``workbench.records.store`` re-exports every name below,
so ``from workbench.records.store import runs_table`` keeps working.

Dtypes are nullable where a value may be missing: rank is meaningless for full fine-tuning,
a run that failed early has no memory figures.
"""

from __future__ import annotations

import typing
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.engine.config import RunResult
from workbench.engine.memory import MemoryBreakdown
from workbench.lora.config import LoRAConfig

ADAPTER_FOLDER = "adapter"  # a LoRA run's adapter in PEFT's format (written by workbench.records.recording)
MEMORY_FIELDS: tuple[str, ...] = ("weights", "gradients", "optimizer", "activations")


def _column_dtype(hint: Any) -> str:
    """The pandas dtype of a column holding a setting of this type (nullable: None is missing)."""
    kinds = [t for t in typing.get_args(hint) or (hint,) if t is not type(None)]
    if kinds == [bool]:
        return "boolean"
    if kinds == [int]:
        return "Int64"
    if kinds and all(t in (int, float) for t in kinds):
        return "float64"
    return "object"


# One column per LoRA setting, named as in LoRAConfig (so a setting added there shows up here),
# empty for full fine-tuning and head-only runs.
LORA_COLUMNS: dict[str, str] = {name: _column_dtype(hint) for name, hint in typing.get_type_hints(LoRAConfig).items()
                                if name in LoRAConfig.field_names()}

# The columns of ``runs()``, with their dtypes (nullable where a value may be missing:
# rank is meaningless for full fine-tuning, a run that failed early has no memory figures).
RUN_COLUMNS: dict[str, str] = {
    "run_id": "object",
    "label": "object",
    "method": "object",
    **LORA_COLUMNS,
    "model": "object",
    "task": "object",
    "data": "object",
    "model_dropout": "float64",
    "lr": "float64",
    "batch_size": "Int64",
    "seed": "Int64",
    "steps": "Int64",
    "steps_done": "Int64",
    "status": "object",
    "message": "object",
    "outcome": "object",
    "outcome_note": "object",
    "trainable": "Int64",
    "total": "Int64",
    "trainable_share": "float64",
    "final_loss": "float64",
    "eval_loss": "float64",
    "eval_accuracy": "float64",
    "eval_exact_match": "float64",  # a language model's run: share of held-out prompts answered exactly
    "last_answer": "object",  # a language model's run: its answer to the first sample prompt at its last evaluation
    "seconds_per_step": "float64",
    "tokens_per_second": "float64",
    "total_seconds": "float64",
    "peak_bytes": "Int64",
    "peak_kind": "object",
    "weights_bytes": "Int64",
    "gradients_bytes": "Int64",
    "optimizer_bytes": "Int64",
    "activations_bytes": "Int64",
    "created": "datetime64[ns]",
    "path": "object",
    "adapter_path": "object",
}


# --------------------------------------------------------------------------- reading a result


def _memory_to_dict(memory: MemoryBreakdown | None) -> dict[str, Any] | None:
    """A MemoryBreakdown as plain values for run.json (None stays None)."""
    if memory is None:
        return None
    if not isinstance(memory, MemoryBreakdown):
        raise TypeError(f"RunResult.memory must be a workbench.engine.memory.MemoryBreakdown or None, "
                        f"got {type(memory).__name__}")
    return memory.to_dict()


def _last(history: pd.DataFrame, column: str) -> float:
    """The last recorded (non-NaN) value of a history column, NaN if there is none."""
    if column not in history or not len(history):
        return float("nan")
    values = pd.to_numeric(history[column], errors="coerce").dropna()
    return float(values.iloc[-1]) if len(values) else float("nan")


def _steps_done(history: pd.DataFrame) -> int:
    """The last optimiser step the curve reached (0 before the first step)."""
    if "step" not in history or not len(history):
        return 0
    steps = pd.to_numeric(history["step"], errors="coerce").dropna()
    return int(steps.max()) if len(steps) else 0


def _created(result: RunResult) -> datetime | None:
    """Creation time as a naive local datetime (the record keeps it with its UTC offset)."""
    stamp = result.environment.get("started")
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(str(stamp)).astimezone().replace(tzinfo=None)
    except ValueError:
        return None


# --------------------------------------------------------------------------- the table


def _lora_cell(value: Any) -> Any:
    """A LoRA setting as a table cell: a list of names or block indices as 'query,value'."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return value


def summary_row(result: RunResult) -> dict[str, Any]:
    """One row of the ``runs()`` table for a result (saved or not).

    The LoRA settings (``LORA_COLUMNS``: rank, alpha, targets, layers, dropout, rslora,
    init, dora, loraplus_ratio) are left empty for full fine-tuning and head-only runs:
    those runs have no LoRA, and a table that said 'rank 8' would mislead.
    ``trainable_share`` = trainable / total parameters.  ``outcome`` is the verdict of
    ``workbench.engine.outcome.run_outcome`` ("learned", "did not learn", "diverged", ...),
    ``outcome_note`` its sentence; ``adapter_path`` the folder of a LoRA run's saved
    adapter (``<run folder>/adapter``), empty when there is none.
    """
    from workbench.engine.outcome import run_outcome

    c = result.config
    outcome = run_outcome(result)
    adapter = Path(result.path) / ADAPTER_FOLDER if result.path else None
    lora = c.lora.to_dict() if c.method == "lora" else {}
    mem = _memory_to_dict(result.memory) or {}
    t = result.timing
    return {
        "run_id": result.run_id,
        "label": c.label(),
        "method": c.method,
        **{name: _lora_cell(lora.get(name)) for name in LORA_COLUMNS},
        "model": c.model,
        "task": c.task,
        "data": c.data,
        "model_dropout": c.model_dropout,
        "lr": c.lr,
        "batch_size": c.batch_size,
        "seed": c.seed,
        "steps": c.steps,
        "steps_done": _steps_done(result.history),
        "status": result.status,
        "message": result.message,
        "outcome": outcome.verdict,
        "outcome_note": outcome.sentence,
        "trainable": result.params.trainable,
        "total": result.params.total,
        "trainable_share": result.params.share,
        "final_loss": result.final_loss,
        "eval_loss": _last(result.history, "eval_loss"),
        "eval_accuracy": result.eval_accuracy,
        "eval_exact_match": result.eval_exact_match,
        "last_answer": last_answer(result),
        "seconds_per_step": t.seconds_per_step if t is not None else None,
        "tokens_per_second": t.tokens_per_second if t is not None else None,
        "total_seconds": t.total_seconds if t is not None else None,
        "peak_bytes": mem.get("peak"),
        "peak_kind": mem.get("peak_kind"),
        **{f"{k}_bytes": mem.get(k) for k in MEMORY_FIELDS},
        "created": _created(result),
        "path": result.path,
        "adapter_path": str(adapter) if adapter is not None and adapter.is_dir() else None,
    }


def last_answer(result: RunResult) -> str | None:
    """A language model's run: its answer to the first sample prompt at its last evaluation,
    as exact match reads it (first line, stripped); None for a run without samples."""
    from workbench.engine.generation import normalize_answer

    if not result.samples:
        return None
    last = max(int(s.get("step", 0)) for s in result.samples)
    sample = next(s for s in result.samples if int(s.get("step", 0)) == last)
    return normalize_answer(str(sample.get("answer", "")))


def runs_table(results: list[RunResult]) -> pd.DataFrame:
    """The ``runs()`` table for results already in memory (same columns and dtypes)."""
    rows = [summary_row(r) for r in results]
    frame = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    for col, dtype in RUN_COLUMNS.items():
        if dtype.startswith("datetime"):
            frame[col] = pd.to_datetime(frame[col]).astype(dtype)
        elif dtype != "object":
            frame[col] = frame[col].astype(dtype)
    return frame.reset_index(drop=True)


__all__ = ["ADAPTER_FOLDER", "MEMORY_FIELDS", "LORA_COLUMNS", "RUN_COLUMNS", "summary_row", "last_answer", "runs_table"]

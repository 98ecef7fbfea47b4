"""Exporting a comparison for a report: the four figures and the runs table.

Used by the CLI's ``sweep``, the workbench panel's Export button and the sweep notebook,
so a figure in a report is the figure the user saw.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from workbench.engine.config import RunResult
from workbench.engine.memory import describe_peak
from workbench.util.fileio import atomic_write_text
from workbench.util.units import MB

# The columns a report table shows, in order, with readable headers.
REPORT_COLUMNS = {
    "label": "run",
    "method": "method",
    "rank": "rank",
    "alpha": "alpha",
    "targets": "targets",
    "trainable": "trainable params",
    "trainable_share": "trainable share (%)",
    "final_loss": "final train loss",
    "eval_accuracy": "val. accuracy",
    "seconds_per_step": "s / step",
    "peak_bytes": "peak memory (MB)",
    "peak_kind": "peak measured as",
    "status": "status",
}


def report_table(results: Sequence[RunResult]) -> pd.DataFrame:
    """The runs as a table with the report's columns (one row per run)."""
    from workbench.records.store import runs_table

    table = runs_table(list(results))
    cols = [c for c in REPORT_COLUMNS if c in table.columns]
    table = table[cols].copy()
    table["trainable_share"] = table["trainable_share"] * 100
    table["peak_bytes"] = table["peak_bytes"].astype("Float64") / MB  # decimal MB, as the plots
    return table.rename(columns=REPORT_COLUMNS)


def peak_notes(results: Sequence[RunResult]) -> list[str]:
    """What each kind of peak among the runs measures, one sentence per kind (for a note under a table)."""
    kinds = dict.fromkeys(r.memory.peak_kind for r in results if r.memory is not None and r.memory.peak is not None)
    return [f"peak ({kind}): {describe_peak(kind)}." for kind in kinds]


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""

    def cell(v) -> str:
        if v is None or (isinstance(v, float) and v != v) or v is pd.NA:
            return ""
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return str(v).replace("|", "\\|")

    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.astype(object).itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def export_report(
    results: Sequence[RunResult], out: str | os.PathLike = "reports", formats: Sequence[str] = ("png", "svg")
) -> list[Path]:
    """Write the comparison figures (each in ``formats``) and the table (CSV and Markdown) to ``out``."""
    from workbench.viz.plots import comparison_figures, save_figure

    results = list(results)
    if not results:
        raise ValueError("there are no runs to export; train at least one run first")
    out = Path(out)
    written: list[Path] = []
    for name, fig in comparison_figures(results).items():
        written += save_figure(fig, out / name, formats=formats)
    table = report_table(results)
    written.append(atomic_write_text(out / "runs.csv", table.to_csv(index=False)))
    notes = "".join(f"\n* {note}" for note in peak_notes(results))
    written.append(atomic_write_text(out / "runs.md", to_markdown(table) + (f"\nNotes:\n{notes}\n" if notes else "")))
    return written

"""Exporting a comparison for a report: the four figures and the runs table.

Used by the CLI's ``sweep``, the workbench panel's Export button and the sweep notebook,
so a figure in a report is the figure the user saw.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from workbench.engine.config import RunConfig, RunResult
from workbench.engine.labels import distinct_labels
from workbench.engine.memory import describe_peak
from workbench.lora.config import LoRAConfig
from workbench.util.fileio import atomic_write, atomic_write_text
from workbench.util.units import MB

# Every LoRA setting is a column headed by its own name, in ``LoRAConfig``'s order, so a
# setting added there shows up in reports as it does in the run store's table.
LORA_REPORT_COLUMNS: dict[str, str] = {name: name for name in LoRAConfig.field_names()}

# The columns a report table shows, in order, with readable headers: the run id, every
# setting (LoRA's empty for full fine-tuning and head only), the verdict, the results.
# Accuracy and shares are in percent here as in the panel.
REPORT_COLUMNS: dict[str, str] = {
    "run_id": "run id",
    "label": "run",
    "method": "method",
    **LORA_REPORT_COLUMNS,
    "model": "model",
    "task": "task",
    "data": "data",
    "model_dropout": "model_dropout",
    "lr": "lr",
    "steps": "steps",
    "steps_done": "steps done",
    "batch_size": "batch_size",
    "seed": "seed",
    "status": "status",
    "outcome": "outcome",
    "outcome_note": "outcome note",
    "trainable": "trainable params",
    "total": "total params",
    "trainable_share": "trainable share (%)",
    "final_loss": "final train loss",
    "eval_loss": "val. loss",
    "eval_accuracy": "val. accuracy (%)",
    "eval_exact_match": "exact match (%)",
    "last_answer": "last answer",
    "seconds_per_step": "s / step",
    "total_seconds": "run time (s)",
    "peak_bytes": "peak memory (MB)",
    "peak_kind": "peak measured as",
    "adapter_path": "adapter folder",
}
PERCENT_COLUMNS = ("trainable_share", "eval_accuracy", "eval_exact_match")
# Columns only a language model's run fills: left out of a report without one.
GENERATIVE_REPORT_COLUMNS = ("eval_exact_match", "last_answer")
BUNDLE_NAME = "report.zip"


def report_table(results: Sequence[RunResult]) -> pd.DataFrame:
    """The runs as a table with the report's columns (one row per run).

    The ``run`` column names each run by ``distinct_labels`` (its label plus the settings
    that differ among the runs exported), as the figures' legends do.
    """
    from workbench.records.store import runs_table

    results = list(results)
    table = runs_table(results)
    table["label"] = distinct_labels([r.config for r in results])
    generative = any(r.config.task == "causal-lm" for r in results)
    cols = [c for c in REPORT_COLUMNS if c in table.columns and (generative or c not in GENERATIVE_REPORT_COLUMNS)]
    table = table[cols].copy()
    for col in PERCENT_COLUMNS:
        if col in table:
            table[col] = table[col] * 100
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
    from workbench.viz.output import comparison_figures, save_figure  # matplotlib loads only when a report is made


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


def adapter_folder(result: RunResult) -> Path | None:
    """Where a run's adapter lives (``<run folder>/adapter``, PEFT's format), or None when it has none."""
    from workbench.records.store import ADAPTER_FOLDER

    if not result.path:
        return None
    folder = Path(result.path) / ADAPTER_FOLDER
    return folder if folder.is_dir() else None


LOAD_HOWTO = """How to load an adapter (a folder with adapter_config.json and adapter_model.safetensors):

    import workbench as wb
{load_base}
    wb.load_adapter(model, "adapters/<run id>")

or with PEFT and transformers:

    from peft import PeftModel
    model = PeftModel.from_pretrained(base_model, "adapters/<run id>")
"""


def load_base_call(config: RunConfig) -> str:
    """The ``wb.load_base(...)`` call that rebuilds a run's base model for its adapter.

    The model's name, its head (``num_labels=2`` for classification, ``task="causal-lm"``
    for a language model) and, for a QLoRA run, ``quantize=``: its adapter was trained on
    the quantized weights, so it belongs on the same quantized base (``load_base`` with the
    same ``quantize`` rebuilds exactly those codes from the float checkpoint).
    """
    args = [f'"{config.model}"', 'task="causal-lm"' if config.task == "causal-lm" else "num_labels=2"]
    if config.quantize is not None:
        args.append(f'quantize="{config.quantize}"')
    return f"wb.load_base({', '.join(args)})"


def load_howto(results: Sequence[RunResult]) -> str:
    """The bundle's README: how to load its adapters, with one ``load_base`` line per distinct
    base among the runs (each line naming its runs when there are several)."""
    calls: dict[str, list[str]] = {}
    for r in results:
        calls.setdefault(load_base_call(r.config), []).append(r.run_id or r.config.label())
    if not calls:
        calls = {load_base_call(RunConfig()): []}
    if len(calls) == 1:
        lines = [f"    model, tokenizer = {call}" for call in calls]
    else:
        lines = [f"    model, tokenizer = {call}  # for {', '.join(runs)}" for call, runs in calls.items()]
    return LOAD_HOWTO.format(load_base="\n".join(lines))


def export_bundle(report_files: Sequence[Path], results: Sequence[RunResult], out: str | os.PathLike) -> Path:
    """One zip to take home: the report's files at its top and each run's adapter under
    ``adapters/<run id>/``, with a README on how to load them.  Written atomically (mode
    ``0o666 & ~umask``, as every file here)."""
    import zipfile

    out = Path(out)
    results = list(results)

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
            # In the zip a run's adapter is at adapters/<run id>: its tables say so, not the server's folder.
            moved = {str(f): f"adapters/{r.run_id}" for r in results if (f := adapter_folder(r)) is not None}
            for f in report_files:
                if Path(f).name == out.name:
                    continue
                if Path(f).suffix in (".csv", ".md") and moved:
                    text = Path(f).read_text(encoding="utf-8")
                    for server, inside in moved.items():
                        text = text.replace(server, inside)
                    z.writestr(Path(f).name, text)
                else:
                    z.write(f, Path(f).name)
            for r in results:
                folder = adapter_folder(r)
                if folder is None:
                    continue
                for f in sorted(folder.rglob("*")):
                    if f.is_file():
                        z.write(f, f"adapters/{r.run_id}/{f.relative_to(folder)}")
            z.writestr("README.txt", load_howto([r for r in results if adapter_folder(r) is not None] or results))

    return atomic_write(out, write)

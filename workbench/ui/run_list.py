"""The panel's run list: the runs in the store, the table of them, selection, hiding, deleting, export.

``RunList`` keeps, in plain Python:

* the **runs** in the store (``refresh``), each with its verdict (learned or not), and
  the table shown of them (``table``): each run named by what sets it apart from the
  others shown (``labels``);
* the runs **selected** for comparison and export, runs **hidden** from view (``hide``)
  or deleted for good (``request_delete`` then ``confirm_delete``);
* ``export()`` of the selected runs' figures and table, with one zip to download (the
  report and the runs' adapters), and a run's answers over training (``samples_table``).

The table and the figures show the runs of the task chosen (the ``Settings`` in use).
"""

from __future__ import annotations

import math
import re
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from workbench.engine.config import RunConfig, RunResult
from workbench.engine.labels import compact_labels
from workbench.engine.outcome import Outcome, run_outcome
from workbench.records.store import last_answer
from workbench.ui.events import Messages
from workbench.ui.run_facts import time_cell, weights_bytes
from workbench.ui.settings import Settings
from workbench.util.units import format_bytes


def samples_frame(result: RunResult) -> pd.DataFrame:
    """A run's samples as a table: one row per prompt, its reference, then its answer at each evaluation step.

    Columns: ``prompt``, ``reference``, ``step N`` ... (answers as exact match reads them:
    first line, stripped), so the row reads how the answer changed over training.
    """
    from workbench.engine.generation import normalize_answer

    rows: dict[str, dict[str, Any]] = {}
    steps: list[int] = []
    for s in result.samples:
        step = int(s.get("step", 0))
        if step not in steps:
            steps.append(step)
        row = rows.setdefault(str(s.get("prompt", "")), {"prompt": str(s.get("prompt", "")),
                                                         "reference": normalize_answer(str(s.get("reference", "")))})
        row[f"step {step}"] = normalize_answer(str(s.get("answer", "")))
    columns = ["prompt", "reference"] + [f"step {n}" for n in sorted(steps)]
    return pd.DataFrame(list(rows.values()), columns=columns).fillna("")


def _fmt(value: Any, fmt: str) -> str:
    """Format a number, or a dash when it is missing (None, NA, NaN)."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, fmt)



class RunList:
    """The runs of the store as the panel shows them: table, selection, hiding, deleting, export.

    ``runs_dir``: the run store's folder (read by ``refresh``); ``reports_dir``: where
    ``export`` writes.  ``settings``: gives the ``Settings`` in use (its task picks the
    runs shown, its model names their targets); ``is_running``: whether a run trains
    (nothing is deleted meanwhile).
    """

    def __init__(self, runs_dir: str | Path, reports_dir: str | Path, messages: Messages,
                 settings: Callable[[], Settings], is_running: Callable[[], bool]) -> None:
        self.runs_dir = Path(runs_dir)
        self.reports_dir = Path(reports_dir)
        self.messages = messages
        self._settings = settings
        self._is_running = is_running
        self.results: list[RunResult] = []
        self.runs_frame: pd.DataFrame = pd.DataFrame()
        self.selected: tuple[str, ...] = ()
        self.last_export: Path | None = None
        self.last_bundle: Path | None = None  # the zip of the last export (report + adapters)
        self.hidden: set[str] = set()  # run ids kept out of the table and the figures (not deleted)
        self.pending_delete: tuple[str, ...] = ()  # run ids waiting for the user to confirm deletion
        self._outcomes: dict[str, Outcome] = {}  # run id -> verdict, computed once per refresh

    @property
    def task(self) -> str:
        """The task whose runs are shown."""
        return self._settings().task

    def refresh(self) -> None:
        """Reload every run from the store; select what was selected before plus every new run."""
        from workbench.records.store import RunStoreWarning, load_runs, runs_table

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RunStoreWarning)
            results = load_runs(self.runs_dir)
        skipped = [str(w.message) for w in caught if issubclass(w.category, RunStoreWarning)]
        known = {r.run_id for r in self.results}
        self.results = results
        self.runs_frame = runs_table(results)
        self._outcomes = dict(zip(self.runs_frame["run_id"], (Outcome(v, n) for v, n in zip(
            self.runs_frame["outcome"], self.runs_frame["outcome_note"]))))
        ids = {r.run_id for r in results}
        self.hidden &= ids
        self.selected = tuple(r.run_id for r in results if r.run_id not in self.hidden
                              and (r.run_id in self.selected or r.run_id not in known))
        self.messages.emit("runs")
        if skipped:
            self.messages.say(f"{len(skipped)} damaged run file(s) in the store were skipped: " + "; ".join(skipped),
                              "warn")

    def outcome(self, result: RunResult) -> Outcome:
        """A stored run's verdict (computed once per refresh, from its record)."""
        return self._outcomes.get(result.run_id) or run_outcome(result)

    def visible_results(self) -> list[RunResult]:
        """The runs the table and the compare list show: every stored run of the task not hidden, oldest first."""
        return [r for r in self.results if r.run_id not in self.hidden and r.config.task == self.task]

    def labels(self, results: list[RunResult] | None = None) -> dict[str, str]:
        """Run id -> a label naming what sets each run apart from the others shown (``compact_labels``:
        what they all share is left out and said once by ``shared_text``), as the figures' legends do."""
        results = self.visible_results() if results is None else results
        return dict(zip((r.run_id for r in results), compact_labels([r.config for r in results])[0]))

    def shared_text(self, results: list[RunResult] | None = None) -> str:
        """What every run shown shares and their labels leave out ("all runs: LoRA, r=8, ..."), or ""."""
        results = self.visible_results() if results is None else results
        return compact_labels([r.config for r in results])[1]

    def _check_ids(self, run_ids: tuple[str, ...] | list[str]) -> tuple[str, ...]:
        ids = (run_ids,) if isinstance(run_ids, str) else tuple(run_ids)
        known = {r.run_id for r in self.results}
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise ValueError(f"unknown run id(s) {', '.join(map(repr, unknown))}; the runs are: "
                             f"{', '.join(sorted(known)) or 'none yet'}")
        return ids

    def select(self, run_ids: tuple[str, ...] | list[str]) -> None:
        """Choose the runs to compare and export (run ids from ``results``; hidden runs are left out).

        Runs of the other task keep their selection (they come back with their task)."""
        ids = self._check_ids(run_ids)
        other = {r.run_id for r in self.results if r.config.task != self.task and r.run_id in self.selected}
        self.selected = tuple(r.run_id for r in self.results if r.run_id not in self.hidden
                              and (r.run_id in ids or r.run_id in other))
        self.messages.emit("selection")

    def select_all(self) -> None:
        """Select every run shown (not hidden) for comparison and export."""
        self.select([r.run_id for r in self.visible_results()])

    def select_none(self) -> None:
        """Select no run."""
        self.select([])

    def hide(self, run_ids: tuple[str, ...] | list[str]) -> None:
        """Keep runs out of the table, the compare list and the figures (their files stay; ``show_hidden`` brings them back)."""
        ids = self._check_ids(run_ids)
        if not ids:
            self.messages.say("Nothing to hide: tick the runs to hide first.", "warn")
            return
        self.hidden |= set(ids)
        self.selected = tuple(i for i in self.selected if i not in self.hidden)
        self.messages.emit("runs")
        self.messages.say(f"Hid {len(ids)} run(s); their files stay in {self.runs_dir}. "
                          "'Show hidden' brings them back.")

    def show_hidden(self) -> None:
        """Show every hidden run again (not selected for comparison)."""
        n, self.hidden = len(self.hidden), set()
        self.messages.emit("runs")
        self.messages.say(f"Showing {n} hidden run(s) again." if n else "No run is hidden.")

    def request_delete(self, run_ids: tuple[str, ...] | list[str]) -> None:
        """Ask to delete runs for good: nothing happens until ``confirm_delete()`` (``cancel_delete()`` drops it)."""
        ids = self._check_ids(run_ids)
        if not ids:
            self.messages.say("Nothing to delete: tick the runs to delete first.", "warn")
            return
        if self._is_running():
            self.messages.say("A run is training: delete runs once it has ended.", "warn")
            return
        self.pending_delete = ids
        labels = self.labels(self.results)
        names = "; ".join(f"{labels[i]} ({i})" for i in ids)
        self.messages.emit("pending")
        self.messages.say(f"Delete {len(ids)} run(s) for good, folders and adapters included? {names}. "
                          "Press 'Yes, delete' to confirm or 'Cancel'.", "warn")

    def cancel_delete(self) -> None:
        self.pending_delete = ()
        self.messages.emit("pending")
        self.messages.say("Nothing was deleted.")

    def confirm_delete(self) -> list[str]:
        """Delete the runs ``request_delete`` named (their folders, via the store); the ids deleted."""
        from workbench.records.store import delete_run

        ids, self.pending_delete = self.pending_delete, ()
        self.messages.emit("pending")
        if not ids:
            self.messages.say("Nothing was waiting to be deleted.", "warn")
            return []
        done, failed = [], []
        for run_id in ids:
            try:
                delete_run(run_id, self.runs_dir)
                done.append(run_id)
            except (OSError, ValueError) as e:
                failed.append(f"{run_id}: {e}")
        self.refresh()
        if failed:
            self.messages.say(f"Deleted {len(done)} run(s); could not delete " + "; ".join(failed), "error")
        else:
            self.messages.say(f"Deleted {len(done)} run(s) from {self.runs_dir}.", "ok")
        return done

    def selected_results(self) -> list[RunResult]:
        """The runs of the task selected for comparison and export, oldest first."""
        chosen = set(self.selected)
        return [r for r in self.results if r.run_id in chosen and r.config.task == self.task]

    def timing_note(self) -> str:
        """How long runs of this model and preset took here, measured (from the store), or how to find out."""
        settings = self._settings()
        steps = settings.defaults.steps
        runs = [r for r in self.results if r.config.model == settings.model.name and r.status == "completed"
                and r.config.steps == steps and r.timing is not None
                and math.isfinite(r.timing.total_seconds)]
        if not runs:
            return "Each run's time is measured and shown when it ends."

        def span(values: list[float]) -> str:
            values = sorted(values)
            return f"{values[0]:.1f} s" if len(values) == 1 else f"{values[0]:.1f}–{values[-1]:.1f} s"

        split = [r.timing for r in runs if math.isfinite(r.timing.train_seconds) and math.isfinite(r.timing.eval_seconds)]
        loads = [t.load_seconds for t in split if math.isfinite(t.load_seconds)]
        rest = (f", {span(loads)} loading, the rest between steps" if loads and len(loads) == len(split) else
                ", the rest loading and between steps")
        parts = (f": {span([t.train_seconds for t in split])} training, {span([t.eval_seconds for t in split])} "
                 f"evaluating{rest}" if split else "")
        return (f"Runs of {steps} steps took {span([r.timing.total_seconds for r in runs])} here from Train to done"
                f"{parts} ({len(runs)} measured).")

    def targets_text(self, cfg: RunConfig) -> str:
        """A run's targets as the panel names them ('query,value (layers 0-1)'); '–' when not LoRA."""
        if cfg.method != "lora":
            return "–"
        targets = cfg.lora.targets
        if isinstance(targets, str):  # a regex: name the kinds of this model it picks
            try:
                kinds = list(self._settings().model.targets_matching(targets))
            except re.error:
                kinds = []
            text = ",".join(kinds) if kinds else targets
        else:
            text = ",".join(targets)
        if cfg.lora.layers:
            lo, hi = min(cfg.lora.layers), max(cfg.lora.layers)
            text += f" (layer {lo})" if lo == hi else f" (layers {lo}-{hi})"
        return text

    def table(self) -> pd.DataFrame:
        """The runs table as shown: one row of text per run not hidden.

        ``run``: the label that tells it apart from the other runs shown; ``outcome``: the
        verdict (learned, did not learn, diverged, stopped, failed); every setting; accuracy
        and the trainable share in percent (as the export); for a language model's run its
        exact match (in percent) and its ``last answer`` (to the first sample prompt at its
        last evaluation); the run id last.
        """
        frame = self.runs_frame.set_index("run_id") if len(self.runs_frame) else None
        visible = self.visible_results()
        labels = self.labels(visible)
        rows = []
        for r in visible:
            row = frame.loc[r.run_id]
            c, lora = r.config, r.config.method == "lora"
            acc = r.eval_accuracy
            t = r.timing
            rows.append({
                "run": labels[r.run_id],
                "outcome": self.outcome(r).verdict,
                "method": c.method,
                "rank": str(c.lora.rank) if lora else "–",
                "alpha": f"{c.lora.alpha:g}" if lora else "–",
                "targets": self.targets_text(c),
                "lr": f"{c.lr:g}",
                "steps": f"{row['steps_done']}/{c.steps}",
                "batch_size": str(c.batch_size),
                "seed": str(c.seed),
                "status": r.status,
                "trainable": f"{r.params.trainable:,}",
                "trainable share": f"{100 * r.params.share:.3g}%",
                "final loss": _fmt(r.final_loss, ".4f"),
                "eval accuracy": _fmt(100 * acc, ".1f") + ("%" if math.isfinite(acc) else ""),
                "exact match": _fmt(100 * r.eval_exact_match, ".1f") + ("%" if math.isfinite(r.eval_exact_match)
                                                                         else ""),
                "last answer": last_answer(r) or "–",
                "s/step": _fmt(row["seconds_per_step"], ".3f"),
                "time": time_cell(t),
                "peak": format_bytes(row["peak_bytes"], missing="–"),
                "weights": format_bytes(weights_bytes(r), missing="–"),
                "run id": r.run_id,
            })
        return pd.DataFrame(rows)

    def samples_table(self, run_id: str) -> pd.DataFrame:
        """A run's answers over training (``samples_frame``): prompt, reference, its answer at each evaluation."""
        self._check_ids([run_id])
        return samples_frame(next(r for r in self.results if r.run_id == run_id))

    def export(self) -> Path | None:
        """Write the selected runs' figures (PNG, SVG) and table (CSV, Markdown) to a new report folder,
        and one zip of it all with the runs' adapters (``last_bundle``, for the download link)."""
        from workbench.records.report import BUNDLE_NAME, adapter_folder, export_bundle, export_report

        chosen = self.selected_results()
        if not chosen:
            self.messages.say("Nothing to export: tick at least one run under 'Runs' (or press 'Select all').",
                              "error")
            return None
        stamp = f"report-{datetime.now():%Y%m%d-%H%M%S}"
        folder, n = self.reports_dir / stamp, 2
        while folder.exists():
            folder, n = self.reports_dir / f"{stamp}-{n}", n + 1
        try:
            written = export_report(chosen, folder)
            # Named after its report (report-<date>-<time>.zip): downloads of two exports do not collide.
            bundle = export_bundle(written, chosen, folder / f"{folder.name}{Path(BUNDLE_NAME).suffix}")
        except Exception as e:  # noqa: BLE001 - said in the panel
            self.messages.say(f"Export failed: {type(e).__name__}: {e}", "error")
            return None
        self.last_export, self.last_bundle = folder, bundle
        labels = self.labels(chosen)
        adapters = [(labels[r.run_id], f) for r in chosen if (f := adapter_folder(r)) is not None]
        where = ("" if not adapters else
                 "Adapters: " + "; ".join(f"{name}: {f}" for name, f in adapters) +
                 " (in the zip under adapters/<run id>/); load one with wb.load_adapter(model, folder) or "
                 "PEFT's PeftModel.from_pretrained(base_model, folder).")
        self.messages.say(f"Wrote {len(written)} files ({len(chosen)} run(s): figures as PNG and SVG, the table as "
                          f"CSV and Markdown) and {bundle.name} to download.", "ok",
                          f"The report's folder: {folder}. {where}".strip())
        return folder


__all__ = ["RunList", "samples_frame"]

"""The panel's Runs tab: one checkbox per run, Select all / none, Hide, Delete (asks first), the table.

What is ticked is compared (the Compare tab) and exported (the Export tab).  In generate
mode the table shows exact match and each run's last answer, and a run's answers at each
evaluation are shown below it, step by step.
"""

from __future__ import annotations

import html
import re
from typing import Any

import ipywidgets as widgets

from workbench.ui.markup import ANSWER_CSS, safely
from workbench.ui.run_facts import qlora_why
from workbench.ui.run_list import samples_frame
from workbench.ui.state import PanelState

# The columns the panel's table shows (of ``PanelState.table()``; the export has them all):
# method and variant are in the run's name, the status in its outcome.
# The time is from Train to done, with its evaluating part; the weights' MB stand beside the peak.
PANEL_COLUMNS = ("run", "outcome", "rank", "alpha", "targets", "lr", "steps", "batch_size", "seed", "trainable",
                 "final loss", "eval accuracy", "time", "peak", "weights", "run id")
# Generate mode: exact match where accuracy was, and the run's last answer beside it (batch and
# seed are in the export, and in a run's name when they differ).
GENERATE_COLUMNS = ("run", "outcome", "rank", "alpha", "targets", "lr", "steps", "trainable",
                    "final loss", "exact match", "last answer", "time", "peak", "weights", "run id")
# The table wraps its text columns (run, outcome, targets, run id) so that it fits the width.
_TABLE_CSS = """<style>
table.workbench-runs { border-collapse: collapse; font-size: 11px; line-height: 1.25; width: 100%; }
table.workbench-runs th, table.workbench-runs td { white-space: nowrap; padding: 2px 4px; text-align: right;
                                                   vertical-align: top; }
table.workbench-runs th { border-bottom: 1px solid #999; white-space: normal; }
table.workbench-runs td:nth-child(1), table.workbench-runs td:nth-child(2), table.workbench-runs td:nth-child(5),
table.workbench-runs td:last-child { white-space: normal; text-align: left; }
table.workbench-runs td:last-child { word-break: break-all; min-width: 9em; }
table.workbench-runs th:nth-child(1), table.workbench-runs th:nth-child(5), table.workbench-runs th:last-child {
    text-align: left; }
table.workbench-runs tbody tr:nth-child(odd) { background: #f5f5f5; }
table.workbench-runs td.bad { color: #8a5a00; font-weight: bold; }
</style>"""
# ... and in generate mode the last answer wraps too (the column is GENERATE_COLUMNS' "last answer").
_TABLE_CSS = _TABLE_CSS.replace("</style>", (
    f"table.workbench-runs.generate td:nth-child({GENERATE_COLUMNS.index('last answer') + 1}) "
    "{ white-space: normal; text-align: left; min-width: 6em; max-width: 20em; }\n"
    # a language model's labels and targets name up to six roles: the cells may break anywhere, so the table
    # always fits the panel, but the label and the targets keep 6em and break after a comma first
    # (``_COMMA_BREAK``): without that floor the browser squeezed them to a letter a line.  The run id, which
    # breaks anywhere anyway, gives up the width they take (6em here, 9em in a classifier's table).
    "table.workbench-runs.generate td { overflow-wrap: anywhere; }\n"
    "table.workbench-runs.generate td:nth-child(1), table.workbench-runs.generate td:nth-child(5), "
    "table.workbench-runs.generate td:last-child { min-width: 6em; }\n</style>"))
#: A line may break after a comma in a text cell ("query,key,value,..."); number cells do not wrap (nowrap).
_COMMA_BREAK = ",<wbr>"


class RunsTab:
    """The Runs tab's widgets, bound to the state's run list.

    Its controls (``run_checks``: run id -> Checkbox, ``select_all_button``,
    ``select_none_button``, ``hide_button``, ``show_hidden_button``, ``delete_button``,
    ``confirm_delete_button``, ``cancel_delete_button``) and displays (``table``,
    ``confirm_box``, ``samples_box``, ``samples_run``, ``samples``) are attributes;
    ``page`` is the tab.
    """

    def __init__(self, state: PanelState) -> None:
        self.state = state
        self._syncing = False
        self.run_checks: dict[str, widgets.Checkbox] = {}
        small = widgets.Layout(width="auto")
        self.table = widgets.HTML(layout=widgets.Layout(width="100%"))
        self.run_list = widgets.VBox(layout=widgets.Layout(max_height="180px", overflow="auto", width="100%"))
        self.select_all_button = widgets.Button(description="Select all", layout=small,
                                                tooltip="tick every run shown: compare and export them all")
        self.select_none_button = widgets.Button(description="Select none", layout=small)
        self.hide_button = widgets.Button(description="Hide ticked", icon="eye-slash", layout=small,
                                          tooltip="keep the ticked runs out of the table and figures; files stay")
        self.show_hidden_button = widgets.Button(description="Show hidden", icon="eye", layout=small)
        self.delete_button = widgets.Button(description="Delete ticked…", icon="trash", button_style="warning",
                                            layout=small, tooltip="delete the ticked runs' folders (asks first)")
        self.confirm_delete_button = widgets.Button(description="Yes, delete", button_style="danger", layout=small)
        self.cancel_delete_button = widgets.Button(description="Cancel", layout=small)
        self.confirm_box = widgets.HBox([widgets.Label("Delete for good?"), self.confirm_delete_button,
                                         self.cancel_delete_button])
        self.samples_run = widgets.Dropdown(options=[], description="answers of", style={"description_width": "82px"},
                                            layout=widgets.Layout(width="480px"))
        self.samples = widgets.HTML()
        self.samples_box = widgets.VBox([
            widgets.HTML("<small><b>Answers over training</b>: at each evaluation a run answers a few held-out "
                         "prompts (greedy); here they are, step by step (✓: the reference exactly, ✗: not)."
                         "</small>"),
            self.samples_run, self.samples])
        row = widgets.Layout(flex_flow="row wrap", align_items="center")
        self.page = widgets.VBox([
            widgets.HBox([self.select_all_button, self.select_none_button, self.hide_button, self.show_hidden_button,
                          self.delete_button], layout=row),
            self.confirm_box,
            widgets.HTML("<small>Ticked runs are compared (tab Compare) and exported (tab Export).</small>"),
            self.run_list,
            self.table,
            self.samples_box,
        ])
        self._bind()

    def _bind(self) -> None:
        """User -> state: the buttons act on the ticked runs."""
        s, say = self.state, self.state.say
        self.samples_run.observe(lambda _change: self.show_samples(), names="value")
        self.select_all_button.on_click(lambda _b: safely(say, s.select_all))
        self.select_none_button.on_click(lambda _b: safely(say, s.select_none))
        self.hide_button.on_click(lambda _b: safely(say, s.hide, self._ticked()))
        self.show_hidden_button.on_click(lambda _b: safely(say, s.show_hidden))
        self.delete_button.on_click(lambda _b: safely(say, s.request_delete, self._ticked()))
        self.confirm_delete_button.on_click(lambda _b: safely(say, s.confirm_delete))
        self.cancel_delete_button.on_click(lambda _b: safely(say, s.cancel_delete))

    def _ticked(self) -> list[str]:
        return [run_id for run_id, box in self.run_checks.items() if box.value]

    def _on_check(self, _change: Any) -> None:
        if not self._syncing:
            safely(self.state.say, self.state.select, self._ticked())

    def enable(self) -> None:
        """Nothing is deleted while a run trains."""
        for w in (self.delete_button, self.confirm_delete_button):
            w.disabled = self.state.running

    # ------------------------------------------------------------------ state -> widgets

    def show_runs(self) -> None:
        """The table, the run checkboxes (ticked = selected) and the runs whose answers can be shown."""
        s = self.state
        visible = s.visible_results()
        hidden = f"; {len(s.hidden)} hidden" if s.hidden else ""
        if visible:
            columns = GENERATE_COLUMNS if s.task == "causal-lm" else PANEL_COLUMNS
            shown = s.table()[list(columns)].rename(columns={"batch_size": "batch", "eval accuracy": "accuracy"})
            classes = ["workbench-runs"] + (["generate"] if s.task == "causal-lm" else [])
            table = shown.to_html(index=False, escape=True, border=0, classes=classes)
            table = re.sub(r"<td>(did not learn|diverged|failed|stopped)</td>", r"<td class='bad'>\1</td>", table)
            if s.task == "causal-lm":  # six role names in the label and the targets
                table = table.replace(",", _COMMA_BREAK)
            self.table.value = (_TABLE_CSS + f"<div style='max-height:300px;overflow:auto'>{table}</div>"
                                "<div style='white-space:normal;line-height:1.3'>"  # the footnote wraps
                                f"<small>{len(visible)} run(s) shown{hidden}, in {html.escape(str(s.runs_dir))}"
                                + (f"; {html.escape(shared)} (left out of the names)" if (shared := s.shared_text(
                                    visible)) else "") + ". "
                                + ("Exact match: % of held-out prompts answered exactly (greedy); last answer: to "
                                   "the first of them at the last evaluation" if s.task == "causal-lm" else
                                   "Accuracy in % of the validation set")
                                + "; time: from Train to done (its evaluating part in brackets); peak: the memory "
                                  "high-water mark (on a CPU, of the run's process); weights: the model's weights "
                                  "as stored (a QLoRA base in 4 or 8 bits); the export has every column."
                                + (f" {html.escape(why)}" if (why := next(
                                    (w for r in visible if (w := qlora_why(r))), "")) else "")
                                + "</small></div>")
        else:
            self.table.value = (f"<i>No runs yet shown{hidden}: press Train (runs are saved in "
                                f"{html.escape(str(s.runs_dir))}).</i>")
        labels = s.labels(visible)
        self._syncing = True
        try:
            checks = {}
            for r in visible:
                verdict = s.outcome(r).verdict
                flag = "" if verdict == "learned" else f" [{verdict}]"
                text = f"{labels[r.run_id]}{flag} · {r.run_id}"
                box = self.run_checks.get(r.run_id) or widgets.Checkbox(indent=False,
                                                                         layout=widgets.Layout(width="auto"))
                box.description = text
                box.value = r.run_id in s.selected
                checks[r.run_id] = box
            for run_id, box in self.run_checks.items():
                if run_id not in checks:
                    box.close()
            for run_id, box in checks.items():
                if run_id not in self.run_checks:
                    box.observe(self._on_check, names="value")
            self.run_checks = checks
            self.run_list.children = tuple(checks.values())
            generative = s.task == "causal-lm"
            self.samples_box.layout.display = "flex" if generative else "none"
            runs = [r for r in visible if r.samples] if generative else []
            options = [(f"{labels[r.run_id]} · {r.run_id}", r.run_id) for r in reversed(runs)]  # newest first
            keep = self.samples_run.value if self.samples_run.value in {v for _, v in options} else None
            self.samples_run.options = options
            self.samples_run.value = keep if keep is not None else (options[0][1] if options else None)
        finally:
            self._syncing = False
        self.show_samples()

    def show_samples(self) -> None:
        """The chosen run's answers at each evaluation: a row per prompt, a column per step."""
        run_id = self.samples_run.value
        result = next((r for r in self.state.results if r.run_id == run_id), None)
        if result is None or not result.samples:
            self.samples.value = "<small><i>No answers yet: a run records them at each evaluation.</i></small>"
            return
        frame = samples_frame(result)
        frame["prompt"] = frame["prompt"].str.replace("\n", " ⏎ ", regex=False)
        for column in [c for c in frame.columns if c.startswith("step ")]:  # right or wrong, as exact match reads it
            frame[column] = [f"{a} ✓" if a == ref else (f"{a} ✗" if a else "") for a, ref in
                             zip(frame[column], frame["reference"])]
        table = frame.to_html(index=False, escape=True, border=0, classes="workbench-samples")
        self.samples.value = ANSWER_CSS + f"<div style='max-height:220px;overflow:auto'>{table}</div>"

    def show_selection(self) -> None:
        """Ticked = selected."""
        self._syncing = True
        try:
            for run_id, box in self.run_checks.items():
                box.value = run_id in self.state.selected
        finally:
            self._syncing = False

    def show_pending(self) -> None:
        """The confirmation row, while a deletion waits for it."""
        self.confirm_box.layout.display = "flex" if self.state.pending_delete else "none"


__all__ = ["RunsTab", "PANEL_COLUMNS", "GENERATE_COLUMNS"]

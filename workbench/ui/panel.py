"""The workbench panel: choose a fine-tuning method, see what it costs, train, compare, export.

``Workbench(model="minilm", preset="default")`` is an ipywidgets view of a
``workbench.ui.state.PanelState``, which holds the choices, builds the run, checks it,
trains it and keeps the runs::

    panel = Workbench()
    panel            # displays panel.widget in Jupyter or Voila
    panel.state      # the same panel without widgets (choices, config(), start(), runs, export())

What it shows: a header with the task (**classify** a sentence, or **generate**: a
language model that writes), the message line, then the tabs, each a module and a class
of its own, so that everything used while training fits one screen (1366 x 657):

* **Train** (``workbench.ui.train_tab``): the settings on the left, Train / Stop, the
  progress and the live loss curve on the right;
* **Try it** (``workbench.ui.try_tab``, generate only): a prompt, and the answers of the
  base model, the newest run and a chosen stored run side by side (greedy); redone by
  itself after each run;
* **Runs** (``workbench.ui.runs_tab``): one checkbox per run (what is ticked is compared
  and exported), Select all / none, Hide, Show hidden, Delete (asks first), and the runs
  table (in generate mode with exact match and each run's last answer, and a run's
  answers at each evaluation);
* **Compare** and **Export** (``workbench.ui.report_tabs``): the four comparison figures
  of the ticked runs; the report, offered with the runs' adapters as one zip to download.

Every mistake ends as a message in the panel, never as a traceback, and no run already
made is lost: the engine writes each run to the store as it goes.

The view only builds widgets, forwards what the user sets and clicks to the state, and
redraws what the state tells it changed (``PanelState.subscribe``).  Widgets updated from
the training thread work in ipywidgets 8 (JupyterLab, Voila).
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from workbench.ui.events import Event
from workbench.ui.markup import COLORS, SCROLL_JS, download_link, safely
from workbench.ui.report_tabs import CompareTab, ExportTab
from workbench.ui.run_control import TrainFn
from workbench.ui.runs_tab import RunsTab
from workbench.ui.state import TASK_LABELS, PanelState
from workbench.ui.train_tab import TrainTab
from workbench.ui.try_tab import TryTab

TAB_TITLES = ("Train", "Runs", "Compare", "Export")
GENERATE_TAB_TITLES = ("Train", "Try it", "Runs", "Compare", "Export")


def _from_state(name: str, doc: str) -> property:
    """A read-only attribute of the view that is the state's attribute ``name``."""
    return property(lambda self: getattr(self.state, name), doc=doc)


def _from_tab(tab: str, name: str) -> property:
    """A widget of the view that lives in one of its tabs (``panel.rank`` is ``panel.train_tab.rank``)."""
    return property(lambda self: getattr(getattr(self, tab), name), doc=f"``{tab}.{name}``")


class Workbench:
    """An interactive panel to train LoRA / full / head-only runs and compare them.

    ``model``: "minilm" (bundled), "tiny-bert", a local folder, ...; ``preset``: "default"
    (the bundled MiniLM; each run's time is measured and shown) or "tiny" (tests).  Runs go to
    ``runs_dir`` (and are loaded from it on construction), reports to ``reports_dir``.
    ``background=False`` trains inside the Train click (Stop then cannot be clicked
    during the run; for scripts and tests).  ``state``: a ``PanelState`` to show
    (the other arguments then come from it); ``train``: the function that trains and
    stores a run (default ``workbench.train``).

    Every control is an attribute, so a notebook or a test can drive the panel:
    ``method``, ``rank``, ``alpha``, ``rslora``, ``variant``, ``quantize``, ``targets``
    (dict: name -> ToggleButton), ``layer_range``, ``lr``, ``steps``, ``batch_size``,
    ``seed`` (text boxes for numbers), ``train_button``, ``stop_button``,
    ``export_button``, ``run_checks`` (dict: run id -> Checkbox), ``select_all_button``,
    ``select_none_button``, ``hide_button``, ``show_hidden_button``, ``delete_button``,
    ``confirm_delete_button``, ``cancel_delete_button``, ``prompt``, ``try_button``,
    ``try_run``; and the displays ``readout``, ``message``, ``progress``, ``live_plot``,
    ``table``, ``answers``, ``compare_plots``, ``download``, ``tabs``.  They live in the
    tabs (``train_tab``, ``try_tab``, ``runs_tab``, ``compare_tab``, ``export_tab``);
    ``state`` is the same panel without widgets.
    """

    def __init__(
        self,
        model: str = "minilm",
        runs_dir: str | Path = "runs",
        reports_dir: str | Path = "reports",
        preset: str = "default",
        background: bool = True,
        *,
        state: PanelState | None = None,
        train: TrainFn | None = None,
    ) -> None:
        if state is not None and train is not None:
            raise TypeError("give train= to the PanelState you pass as state=, not to the Workbench")
        self.state = state or PanelState(model=model, preset=preset, runs_dir=runs_dir, reports_dir=reports_dir,
                                         background=background, train=train)
        if self.state.control.background:  # a panel for people: the first Train click need not wait for the worker
            from workbench.engine.fork_server import prewarm

            prewarm()
        self._syncing = False
        s = self.state
        self.task = widgets.ToggleButtons(options=TASK_LABELS, value=s.task, style={"button_width": "80px"},
                                          tooltips=["a sentence classifier (the bundled task: who did it?)",
                                                    "a language model that writes: teach it a new skill"])
        self.task.add_class("workbench-task")
        self.train_tab = TrainTab(s)
        self.try_tab = TryTab(s)
        self.runs_tab = RunsTab(s)
        self.compare_tab = CompareTab(s)
        self.export_tab = ExportTab(s)
        self.message = widgets.HTML()
        self.header = widgets.HTML()
        self._show_header()
        self._tab_pages = {"Train": self.train_tab.page, "Try it": self.try_tab.page, "Runs": self.runs_tab.page,
                           "Compare": self.compare_tab.page, "Export": self.export_tab.page}
        self.tabs = widgets.Tab()
        self._show_tabs()
        top = widgets.HBox([widgets.Label("task", layout=widgets.Layout(width="36px")), self.task, self.header],
                           layout=widgets.Layout(flex_flow="row wrap", align_items="center", width="100%"))
        self.widget = widgets.VBox([top, self.message, self.tabs], layout=widgets.Layout(width="100%"))
        self.widget.add_class("workbench-panel")
        self.task.observe(lambda change: None if self._syncing else self._switch_task(change["new"]), names="value")
        s.subscribe(self._on_state)
        self._show_task()
        self._show_choices()
        self._show_runs()
        self._show_message()
        self._show_pending()

    # ------------------------------------------------------------------ what the state holds

    defaults = _from_state("defaults", "The preset's RunConfig for this model.")
    results = _from_state("results", "Every run in the store, oldest first.")
    runs_frame = _from_state("runs_frame", "The store's runs table (workbench.records.store.runs columns).")
    last_result = _from_state("last_result", "The result of the last run (None when it failed).")
    last_error = _from_state("last_error", "The last error message shown.")
    last_export = _from_state("last_export", "The folder the last export wrote.")
    last_bundle = _from_state("last_bundle", "The zip the last export wrote (offered for download).")
    running = _from_state("running", "True while a run trains.")
    runs_dir = _from_state("runs_dir", "The run store's folder.")
    reports_dir = _from_state("reports_dir", "Where Export writes reports.")

    # ------------------------------------------------------------------ the tabs' controls and displays

    method = _from_tab("train_tab", "method")
    method_note = _from_tab("train_tab", "method_note")
    rank = _from_tab("train_tab", "rank")
    alpha = _from_tab("train_tab", "alpha")
    rslora = _from_tab("train_tab", "rslora")
    variant = _from_tab("train_tab", "variant")
    quantize = _from_tab("train_tab", "quantize")
    targets = _from_tab("train_tab", "targets")
    layer_range = _from_tab("train_tab", "layer_range")
    lr = _from_tab("train_tab", "lr")
    steps = _from_tab("train_tab", "steps")
    batch_size = _from_tab("train_tab", "batch_size")
    seed = _from_tab("train_tab", "seed")
    lr_note = _from_tab("train_tab", "lr_note")
    readout = _from_tab("train_tab", "readout")
    train_button = _from_tab("train_tab", "train_button")
    stop_button = _from_tab("train_tab", "stop_button")
    progress = _from_tab("train_tab", "progress")
    progress_text = _from_tab("train_tab", "progress_text")
    live_plot = _from_tab("train_tab", "live_plot")
    prompt = _from_tab("try_tab", "prompt")
    examples = _from_tab("try_tab", "examples")
    try_button = _from_tab("try_tab", "try_button")
    try_run = _from_tab("try_tab", "try_run")
    answers = _from_tab("try_tab", "answers")
    run_checks = _from_tab("runs_tab", "run_checks")
    select_all_button = _from_tab("runs_tab", "select_all_button")
    select_none_button = _from_tab("runs_tab", "select_none_button")
    hide_button = _from_tab("runs_tab", "hide_button")
    show_hidden_button = _from_tab("runs_tab", "show_hidden_button")
    delete_button = _from_tab("runs_tab", "delete_button")
    confirm_delete_button = _from_tab("runs_tab", "confirm_delete_button")
    cancel_delete_button = _from_tab("runs_tab", "cancel_delete_button")
    confirm_box = _from_tab("runs_tab", "confirm_box")
    table = _from_tab("runs_tab", "table")
    samples_box = _from_tab("runs_tab", "samples_box")
    samples_run = _from_tab("runs_tab", "samples_run")
    samples = _from_tab("runs_tab", "samples")
    compare_plots = _from_tab("compare_tab", "compare_plots")
    export_button = _from_tab("export_tab", "export_button")
    download = _from_tab("export_tab", "download")

    def config(self):
        """The RunConfig the Train button would run now (raises with the panel's message when it cannot)."""
        return self.state.config()

    def parameter_estimate(self):
        """Trainable and total parameters of the current choice, from layer shapes alone."""
        return self.state.parameter_estimate()

    def selected_results(self):
        """The runs selected for comparison and export, oldest first."""
        return self.state.selected_results()

    def lock(self, values: dict[str, Any], reason: str) -> None:
        """Set these settings and keep them for an exercise (``PanelState.lock``): greyed out, the reason shown."""
        self.state.lock(values, reason)

    def unlock(self) -> None:
        """Every setting can be changed again."""
        self.state.unlock()

    def refresh(self) -> None:
        """Reload every run from the store and redraw the table and the comparison."""
        self.state.refresh()

    def stop(self) -> None:
        """Ask the current run to end after its current step (as the Stop button does)."""
        self.state.stop()

    def wait(self, timeout: float | None = None):
        """Block until the current background run has finished; return its result (None on error)."""
        return self.state.wait(timeout)

    @property
    def message_text(self) -> str:
        """The message as the panel shows it, without its markup (for tests and scripts)."""
        return html.unescape(re.sub(r"<[^>]+>", "", self.message.value))

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """Displaying the panel object displays its widget."""
        return self.widget._repr_mimebundle_(**kwargs)

    def show(self, scroll: bool = True) -> None:
        """Display the panel and, with ``scroll``, bring it into view once drawn.

        After Run All, JupyterLab leaves the last cell's top near the bottom of the window
        and the panel, drawn later, below the fold; Voila opens at the top of the page.
        A small script scrolls the panel's top into view (and makes the live plot's image
        fit its column).  Where scripts do not run (a headless run) it does nothing.
        """
        from IPython.display import Javascript, display

        display(self.widget)
        if scroll:
            display(Javascript(SCROLL_JS))

    # ------------------------------------------------------------------ the header, the task, the tabs

    def _show_header(self) -> None:
        """The model, preset and device, and how long runs took here (measured, from the store)."""
        from workbench.engine.hardware import resolve_device

        s = self.state
        device = resolve_device(s.defaults.device)
        n_blocks = f", {len(s.model.blocks)} layers" if s.model.blocks else ""
        head = " with its 2-label head" if s.task == "classification" else ""
        self.header.value = (
            f"<div style='font-size:12px;line-height:1.3' title='runs saved in {html.escape(str(s.runs_dir))}'>"
            f"model <b>{html.escape(s.model.name)}</b> ({s.model.base_parameters:,} parameters{head}{n_blocks}) · "
            f"preset <b>{html.escape(s.preset_name)}</b> · device <b>{device.type}</b> · "
            f"<span class='workbench-timing'>{html.escape(s.timing_note())}</span></div>")

    def _show_tabs(self) -> None:
        """The tabs of the task: Try it only where a model writes."""
        titles = GENERATE_TAB_TITLES if self.state.task == "causal-lm" else TAB_TITLES
        if tuple(self.tabs.titles) == titles:
            return
        self.tabs.children = [self._tab_pages[t] for t in titles]
        self.tabs.titles = titles
        self.tabs.selected_index = 0

    def _switch_task(self, task: str) -> None:
        """The task toggle: switch (the state says why when it cannot), and show the task the state is in."""
        safely(self.state.say, self.state.set_task, task)
        if self.task.value != self.state.task:  # refused (a run going) or failed (a model that cannot load)
            self._syncing = True
            try:
                self.task.value = self.state.task
            finally:
                self._syncing = False

    # ------------------------------------------------------------------ state -> widgets

    def _on_state(self, event: Event) -> None:
        {
            "choices": self._show_choices,
            "message": self._show_message,
            "running": self._show_running,
            "progress": self.train_tab.show_progress,
            "live": self.train_tab.show_live,
            "runs": self._show_runs,
            "selection": self._show_selection,
            "pending": self.runs_tab.show_pending,
            "task": self._show_task,
            "answers": self.try_tab.show_answers,
        }[event]()

    def _show_task(self) -> None:
        """A new task: its model's target toggles, its methods, the rank and layer limits, its prompts, its tabs."""
        self._syncing = True
        try:
            self.task.value = self.state.task
        finally:
            self._syncing = False
        self.train_tab.show_task()
        self.try_tab.show_task()
        self._show_tabs()
        self._show_header()
        self.try_tab.show_answers()

    def _show_choices(self) -> None:
        """Widgets, readout, learning-rate note and enabled controls from the state's choices."""
        self.train_tab.show_choices()
        self._update_enabled()

    def _update_enabled(self) -> None:
        self.task.disabled = self.state.running
        self.train_tab.enable()
        self.runs_tab.enable()
        self.export_tab.enable()

    def _show_message(self) -> None:
        """The message line; its details (folders, how to load) folded behind a toggle, so Train stays put."""
        m = self.state.message
        details = (f"<details class='workbench-details' style='font-size:11px;color:#444'><summary style='cursor:"
                   f"pointer'>details: folders and how to load</summary><div style='overflow-wrap:anywhere'>"
                   f"{html.escape(m.details)}</div></details>" if m.details else "")
        self.message.value = (f"<div class='workbench-message workbench-{m.kind}' style='color:{COLORS[m.kind]};"
                              f"margin:2px 0;font-size:13px;line-height:1.3'>{html.escape(m.text)}{details}</div>")

    def _show_running(self) -> None:
        if self.train_tab.show_start():  # a run has just started: the live curve is on the Train tab
            self.tabs.selected_index = 0
        else:
            self.train_tab.show_end()
        self._update_enabled()

    def _show_runs(self) -> None:
        """The header's timings, the Runs tab, the runs Try it can ask, and the comparison."""
        self._show_header()
        self.runs_tab.show_runs()
        self.try_tab.show_runs()
        self.compare_tab.show()

    def _show_selection(self) -> None:
        self.runs_tab.show_selection()
        self.compare_tab.show()

    def _show_pending(self) -> None:
        self.runs_tab.show_pending()


__all__ = ["Workbench", "PanelState", "download_link", "TAB_TITLES", "GENERATE_TAB_TITLES"]

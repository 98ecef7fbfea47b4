"""The workbench panel: choose a fine-tuning method, see what it costs, train, compare, export.

``Workbench(model="minilm", preset="default")`` is an ipywidgets view of a
``workbench.ui.state.PanelState``, which holds the choices, builds the run, checks it,
trains it and keeps the runs::

    panel = Workbench()
    panel            # displays panel.widget in Jupyter or Voila
    panel.state      # the same panel without widgets (choices, config(), start(), runs, export())

What it shows: a header with the task (**classify** a sentence, or **generate**: a
language model that writes), the message line, then the tabs, so that everything used
while training fits one screen (1366 x 657):

* **Train**: the settings on the left, Train / Stop, the progress and the live loss
  curve on the right;
* **Try it** (generate only): a prompt, and the answers of the base model, the newest run
  and a chosen stored run side by side (greedy); redone by itself after each run;
* **Runs**: one checkbox per run (what is ticked is compared and exported), Select all /
  none, Hide, Show hidden, Delete (asks first), and the runs table (in generate mode with
  exact match and each run's last answer, and a run's answers at each evaluation);
* **Compare**: the four comparison figures of the ticked runs;
* **Export**: writes the report and offers it, with the runs' adapters, as one zip to
  download (a data link: it works in JupyterLab and Voila alike).

The settings:

* **method**: LoRA (frozen base + low-rank updates + trained head), full fine-tuning
  (every weight trains) or head only (only the new classifier trains);
* **LoRA settings**, named as in ``LoRAConfig``: ``rank`` r, ``alpha`` (the update is
  scaled by s = alpha / r, or alpha / sqrt(r) with rsLoRA), the variant, the
  ``targets`` (one toggle per kind of layer the loaded model really has: query, key,
  value, ...) and the ``layers`` (blocks) they are adapted in;
* a **live readout** of the trainable parameters before anything runs, from the layer
  shapes alone: ``sum over chosen layers of r * (in + out)  +  head parameters``;
  and, when the settings cannot make a run, what is wrong and what is allowed;
* **Train / Stop**: a run goes in a background thread (so Stop can be clicked while it
  trains); the progress bar and the live loss curve follow it.  Numbers are typed as
  text, so a bad one ("0,001", "abc", 0) stays as typed and is refused with what is
  allowed.

Every mistake ends as a message in the panel, never as a traceback, and no run already
made is lost: the engine writes each run to the store as it goes.

The view only builds widgets, forwards what the user sets and clicks to the state, and
redraws what the state tells it changed (``PanelState.subscribe``).  Widgets updated from
the training thread work in ipywidgets 8 (JupyterLab, Voila).  Images are put into
``Output`` widgets by assigning ``Output.outputs`` (a PNG per figure), which works in a
browser and also outside a kernel, so tests can drive the panel in plain pytest.
"""

from __future__ import annotations

import base64
import html
import math
import re
import time
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import pandas as pd

from workbench.ui.state import (
    DEFAULT_LR,
    HEAD_NOT_FOR_LM,
    METHOD_LABELS,
    NUMBER_CHOICES,
    QUANTIZE_OPTIONS,
    RANK_CAP,
    TASK_LABELS,
    TRY_MAX_NEW_TOKENS,
    VARIANT_OPTIONS,
    Answer,
    Event,
    PanelState,
    TrainFn,
    read_number,
    samples_frame,
)

# The live curve is redrawn at most this often (seconds), and at the end of the run ...
LIVE_MIN_INTERVAL_S = 0.5
# ... and never more often than every LIVE_COST_FACTOR times the last redraw took, so
# drawing costs at most about 1 / LIVE_COST_FACTOR of the training time.
LIVE_COST_FACTOR = 5.0
PLOT_DPI = 90

# The columns the panel's table shows (of ``PanelState.table()``; the export has them all):
# method and variant are in the run's name, the status in its outcome.
PANEL_COLUMNS = ("run", "outcome", "rank", "alpha", "targets", "lr", "steps", "batch_size", "seed", "trainable",
                 "final loss", "eval accuracy", "time", "peak", "run id")
# Generate mode: exact match where accuracy was, and the run's last answer beside it.
GENERATE_COLUMNS = ("run", "outcome", "rank", "alpha", "targets", "lr", "steps", "batch_size", "seed", "trainable",
                    "final loss", "exact match", "last answer", "time", "run id")
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
    # a language model's labels and targets name up to six roles: let them break anywhere to fit the width
    "table.workbench-runs.generate td { overflow-wrap: anywhere; }\n</style>"))
TAB_TITLES = ("Train", "Runs", "Compare", "Export")
GENERATE_TAB_TITLES = ("Train", "Try it", "Runs", "Compare", "Export")
_METHOD_TIPS = {"lora": "frozen base + low-rank updates (+ the trained head of a classifier)",
                "full": "every weight trains", "head": "only the classifier head trains"}
_ANSWER_CSS = """<style>
.workbench-answers { display: flex; gap: 8px; flex-wrap: wrap; font-size: 12px; }
.workbench-answer { flex: 1 1 240px; border: 1px solid #ccc; border-radius: 4px; padding: 4px 6px; min-width: 200px; }
.workbench-answer .who { font-weight: bold; color: #1f4e79; }
.workbench-answer pre { white-space: pre-wrap; word-break: normal; overflow-wrap: break-word; margin: 3px 0;
                        font-size: 13px; line-height: 1.35; background: #f7f7f7; padding: 3px; }
.workbench-answer small { display: block; line-height: 1.3; }
.workbench-answer.right pre { background: #e6f4ea; } .workbench-answer.wrong pre { background: #fdecea; }
table.workbench-samples { border-collapse: collapse; font-size: 11px; width: 100%; }
table.workbench-samples th, table.workbench-samples td { padding: 2px 4px; text-align: left; vertical-align: top;
                                                         border-bottom: 1px solid #eee; white-space: pre-wrap; }
</style>"""
_COLORS = {"info": "#1f4e79", "ok": "#1e6b30", "warn": "#8a5a00", "error": "#a4161a"}


def _png_output(fig: Any, dpi: int = PLOT_DPI) -> dict[str, Any]:
    """One display_data output holding a figure as PNG (what Output.outputs takes)."""
    from workbench.viz.plots import figure_to_png_bytes

    png = figure_to_png_bytes(fig, dpi=dpi)
    title = fig.axes[0].get_title() if fig.axes else "figure"
    return {
        "output_type": "display_data",
        "data": {"image/png": base64.b64encode(png).decode("ascii"), "text/plain": f"<Figure: {title}>"},
        "metadata": {},
    }


def _text_output(text: str) -> dict[str, Any]:
    return {"output_type": "display_data", "data": {"text/plain": text}, "metadata": {}}


def download_link(path: Path, text: str | None = None) -> str:
    """An HTML link that downloads the file ``path`` from the page itself (a base64 data URI).

    It needs no server route, so it works alike in JupyterLab and in Voila (whose server
    serves no files outside the notebook's folder); it suits files of a few MB, as a
    report with its adapters is.
    """
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    size = Path(path).stat().st_size
    label = html.escape(text or f"Download {Path(path).name}")
    return (f"<a download='{html.escape(Path(path).name)}' href='data:application/zip;base64,{data}' "
            f"class='workbench-download' style='font-weight:bold;color:#1a5fb4;text-decoration:underline'>"
            f"{label}</a> <small>({size / 1e6:.2f} MB)</small>")


def _number_text(value: Any) -> str:
    """A number as its text box shows it (a text kept as typed is shown as typed)."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# Waits (up to 20 s) for the panel to be drawn, then scrolls its top into view once.
_SCROLL_JS = """
(function () {
  const style = document.createElement('style');
  style.textContent = '.workbench-live img { max-width: 100%; height: auto; }';
  document.head.appendChild(style);
  let tries = 0;
  const timer = setInterval(function () {
    const panels = document.querySelectorAll('.workbench-panel');
    const panel = panels[panels.length - 1];
    if (panel && panel.getBoundingClientRect().height > 100) {
      clearInterval(timer);
      setTimeout(function () { panel.scrollIntoView({block: 'start'}); }, 300);
    } else if (++tries > 100) {
      clearInterval(timer);
    }
  }, 200);
})();
"""


def _from_state(name: str, doc: str) -> property:
    """A read-only attribute of the view that is the state's attribute ``name``."""
    return property(lambda self: getattr(self.state, name), doc=doc)


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
    ``method``, ``rank``, ``alpha``, ``rslora``, ``variant``, ``targets`` (dict: name ->
    ToggleButton), ``layer_range``, ``lr``, ``steps``, ``batch_size``, ``seed`` (text
    boxes for numbers), ``train_button``, ``stop_button``, ``export_button``,
    ``run_checks`` (dict: run id -> Checkbox), ``select_all_button``,
    ``select_none_button``, ``hide_button``, ``show_hidden_button``, ``delete_button``,
    ``confirm_delete_button``, ``cancel_delete_button``; and the displays ``readout``,
    ``message``, ``progress``, ``live_plot``, ``table``, ``compare_plots``, ``download``,
    ``tabs``.  ``state`` is the same panel without widgets.
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
        self._syncing = False
        self._last_draw = 0.0
        self._draw_cost = 0.0
        self.run_checks: dict[str, widgets.Checkbox] = {}
        self._build_widgets()
        self._bind()
        self.state.subscribe(self._on_state)
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

    def config(self):
        """The RunConfig the Train button would run now (raises with the panel's message when it cannot)."""
        return self.state.config()

    def parameter_estimate(self):
        """Trainable and total parameters of the current choice, from layer shapes alone."""
        return self.state.parameter_estimate()

    def selected_results(self):
        """The runs selected for comparison and export, oldest first."""
        return self.state.selected_results()

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
            display(Javascript(_SCROLL_JS))

    # ------------------------------------------------------------------ building

    def _build_widgets(self) -> None:
        s, c = self.state, self.state.choices
        label_w = {"description_width": "48px"}
        box = lambda width: widgets.Layout(width=width)  # noqa: E731
        self.task = widgets.ToggleButtons(options=TASK_LABELS, value=s.task, style={"button_width": "80px"},
                                          tooltips=["a sentence classifier (the bundled task: who did it?)",
                                                    "a language model that writes: teach it a new skill"])
        self.task.add_class("workbench-task")
        methods = s.methods()
        self.method = widgets.ToggleButtons(options=methods, value=c.method, style={"button_width": "118px"},
                                            tooltips=[_METHOD_TIPS[v] for _, v in methods])
        self.method_note = widgets.HTML()
        self.rank = widgets.IntSlider(value=c.rank, min=1, max=max(s.rank_max(), c.rank), description="rank",
                                      continuous_update=False, style=label_w, layout=box("230px"))
        # Numbers are text boxes: what is typed reaches the state as typed, which reads a
        # plain number and refuses anything else with what is allowed (never rewritten).
        self.alpha = widgets.Text(value=_number_text(c.alpha), description="alpha", style=label_w, layout=box("110px"))
        self.rslora = widgets.Checkbox(value=c.rslora, description="rsLoRA (s = alpha/√r)", indent=False,
                                       layout=widgets.Layout(width="auto"))
        self.variant = widgets.Dropdown(options=VARIANT_OPTIONS, value=c.variant, description="variant",
                                        style=label_w, layout=box("205px"))
        # The base's storage (QLoRA): a dropdown's value cannot be None, so "float" is "none" here.
        self.quantize = widgets.Dropdown(options=[(label, v or "none") for label, v in QUANTIZE_OPTIONS],
                                         value=c.quantize or "none", description="quantize",
                                         style={"description_width": "60px"}, layout=box("242px"),
                                         tooltip="how the frozen base is stored: float, or quantized with "
                                                 "bitsandbytes (QLoRA: NF4; LLM.int8); LoRA trains in float on top")
        self.targets: dict[str, widgets.ToggleButton] = self._target_toggles()
        blocks = s.model.blocks or (0,)
        self.layer_range = widgets.IntRangeSlider(value=c.layer_range, min=blocks[0], max=blocks[-1],
                                                  description="layers", continuous_update=False, style=label_w,
                                                  layout=box("230px"),
                                                  tooltip="the blocks LoRA goes into (LoRAConfig.layers)")
        self.lr = widgets.Text(value=_number_text(c.lr), description="lr", style={"description_width": "20px"},
                               layout=box("120px"), tooltip="learning rate: a number with a decimal point, e.g. 0.001")
        self.steps = widgets.Text(value=_number_text(c.steps), description="steps", style={"description_width": "38px"},
                                  layout=box("110px"))
        self.batch_size = widgets.Text(value=_number_text(c.batch_size), description="batch",
                                       style={"description_width": "38px"}, layout=box("100px"),
                                       tooltip="batch size")
        self.seed = widgets.Text(value=_number_text(c.seed), description="seed", style={"description_width": "32px"},
                                 layout=box("90px"))
        self.lr_note = widgets.HTML()
        self.readout = widgets.HTML()
        self.train_button = widgets.Button(description="Train", button_style="success", icon="play",
                                           tooltip="train one run with these settings", layout=box("100px"))
        self.stop_button = widgets.Button(description="Stop", button_style="danger", icon="stop", layout=box("90px"),
                                          tooltip="end the run after the current step; it is kept as 'stopped'")
        self.export_button = widgets.Button(description="Export", icon="download",
                                            tooltip="write the comparison figures and the table of the ticked runs, "
                                                    "and offer them with the adapters as one zip")
        self.progress = widgets.IntProgress(value=0, min=0, max=max(1, s.defaults.steps), layout=box("150px"),
                                            tooltip="training steps done")
        self.progress_text = widgets.Label()
        self.message = widgets.HTML()
        self.live_plot = widgets.Output(layout=widgets.Layout(min_height="40px", width="100%"))
        self.live_plot.add_class("workbench-live")
        self.table = widgets.HTML(layout=widgets.Layout(width="100%"))
        self.run_list = widgets.VBox(layout=widgets.Layout(max_height="180px", overflow="auto", width="100%"))
        small = widgets.Layout(width="auto")
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
        self.compare_plots = widgets.Output()
        self.download = widgets.HTML()
        # Try it (generate mode) and a run's answers over training (the Runs tab).
        self.prompt = widgets.Textarea(value=s.prompt, placeholder="Statement: The cat is happy.\nQuestion:",
                                       layout=widgets.Layout(width="420px", height="52px"))
        self.examples = widgets.Dropdown(options=[], description="held-out", style={"description_width": "60px"},
                                         layout=box("330px"), tooltip="prompts the runs never trained on")
        self.try_button = widgets.Button(description="Try it", button_style="info", icon="comment",
                                         layout=box("100px"),
                                         tooltip=f"answer the prompt greedily (at most {TRY_MAX_NEW_TOKENS} tokens) "
                                                 "with the base model, the newest run and the chosen stored run")
        self.try_run = widgets.Dropdown(options=[("(none)", "")], value="", description="also ask",
                                        style={"description_width": "60px"}, layout=box("420px"),
                                        tooltip="a stored run whose adapter answers the prompt too")
        self.answers = widgets.HTML()
        self.samples_run = widgets.Dropdown(options=[], description="answers of", style={"description_width": "82px"},
                                            layout=box("480px"))
        self.samples = widgets.HTML()

        self.header = widgets.HTML()
        self._show_header()
        row = widgets.Layout(flex_flow="row wrap", align_items="center")
        # Every widget made stays in use: Voila loads every live widget model, and one that
        # refers to a closed widget would stop the whole page from drawing.
        self.targets_row = widgets.HBox([widgets.Label("targets", layout=box("56px")), *self.targets.values()],
                                        layout=row)
        self._targets_of = (s.model.name, s.task)
        self.lora_box = widgets.VBox([
            widgets.HBox([self.rank, self.layer_range], layout=row),
            widgets.HBox([self.alpha, self.variant, self.rslora], layout=row),
            widgets.HBox([self.quantize], layout=row),
            self.targets_row,
        ])
        settings = widgets.VBox([
            widgets.HBox([widgets.Label("method", layout=box("56px")), self.method, self.method_note], layout=row),
            self.lora_box,
            widgets.HBox([self.lr, self.steps, self.batch_size, self.seed], layout=row),
            self.lr_note,
            self.readout,
        ], layout=widgets.Layout(width="480px", min_width="440px", margin="0 12px 0 0"))
        running = widgets.VBox([
            widgets.HBox([self.train_button, self.stop_button, self.progress, self.progress_text], layout=row),
            self.live_plot,
        ], layout=widgets.Layout(flex="1 1 380px", min_width="360px", max_width="620px"))
        train_tab = widgets.HBox([settings, running], layout=widgets.Layout(flex_flow="row wrap", width="100%"))
        self.samples_box = widgets.VBox([
            widgets.HTML("<small><b>Answers over training</b>: at each evaluation a run answers a few held-out "
                         "prompts (greedy); here they are, step by step.</small>"),
            self.samples_run, self.samples])
        runs_tab = widgets.VBox([
            widgets.HBox([self.select_all_button, self.select_none_button, self.hide_button, self.show_hidden_button,
                          self.delete_button], layout=row),
            self.confirm_box,
            widgets.HTML("<small>Ticked runs are compared (tab Compare) and exported (tab Export).</small>"),
            self.run_list,
            self.table,
            self.samples_box,
        ])
        self.try_tab = widgets.VBox([
            widgets.HTML("<small>The same prompt, answered by the base model and by the adapted ones, side by side "
                         f"(greedy: temperature 0, at most {TRY_MAX_NEW_TOKENS} tokens; the answer's first line). "
                         "The newest run answers again by itself whenever a run ends.</small>"),
            widgets.HBox([self.prompt, widgets.VBox([self.examples, self.try_run])], layout=row),
            self.try_button,
            self.answers,
        ])
        export_tab = widgets.VBox([
            widgets.HTML("<small>Export writes the four figures (PNG, SVG) and the runs table (CSV, Markdown) of "
                         "the ticked runs to the reports folder, and one zip with them and each LoRA run's adapter "
                         "(PEFT's format) to download here.</small>"),
            self.export_button,
            self.download,
        ])
        self._tab_pages = {"Train": train_tab, "Try it": self.try_tab, "Runs": runs_tab,
                           "Compare": self.compare_plots, "Export": export_tab}
        self.tabs = widgets.Tab()
        self._show_tabs()
        top = widgets.HBox([widgets.Label("task", layout=box("36px")), self.task, self.header],
                           layout=widgets.Layout(flex_flow="row wrap", align_items="center", width="100%"))
        self.widget = widgets.VBox([top, self.message, self.tabs], layout=widgets.Layout(width="100%"))
        self.widget.add_class("workbench-panel")

    def _show_header(self) -> None:
        """The model, preset and device, and how long runs took here (measured, from the store)."""
        from workbench.engine.training import resolve_device

        s = self.state
        device = resolve_device(s.defaults.device)
        n_blocks = f", {len(s.model.blocks)} layers" if s.model.blocks else ""
        self.header.value = (
            f"<div style='font-size:12px;line-height:1.3' title='runs saved in {html.escape(str(s.runs_dir))}'>"
            f"model <b>{html.escape(s.model.name)}</b> ({s.model.base_parameters:,} parameters"
            f"{' with its 2-label head' if s.task == 'classification' else ''}{n_blocks}) · preset <b>{html.escape(s.preset_name)}</b> · device <b>{device.type}</b> · "
            f"<span class='workbench-timing'>{html.escape(s.timing_note())}</span></div>")

    def _target_toggles(self) -> dict[str, widgets.ToggleButton]:
        """One toggle per kind of layer (a language model: per role) the model has; fused roles say so."""
        s, c = self.state, self.state.choices
        toggles = {}
        for key, g in s.model.targets.items():
            fused = s.model.fused.get(key)
            tip = f"{g.pattern} ({g.type} {g.shape[0]} -> {g.shape[1]}, x{len(g.names)})"
            if fused:
                tip += f"; {', '.join(fused)} are one fused layer: they are adapted together"
            toggles[key] = widgets.ToggleButton(value=key in c.targets, description=key,
                                                icon="check" if key in c.targets else "", tooltip=tip,
                                                layout=widgets.Layout(width="auto", height="26px",
                                                                      margin="1px 3px 1px 0"))
        return toggles

    def _show_tabs(self) -> None:
        """The tabs of the task: Try it only where a model writes."""
        titles = GENERATE_TAB_TITLES if self.state.task == "causal-lm" else TAB_TITLES
        if tuple(self.tabs.titles) == titles:
            return
        self.tabs.children = [self._tab_pages[t] for t in titles]
        self.tabs.titles = titles
        self.tabs.selected_index = 0

    def _choice_widgets(self) -> dict[str, widgets.ValueWidget]:
        """The widget of each choice that has one widget (``targets`` has one toggle per kind)."""
        return {"method": self.method, "variant": self.variant, "rank": self.rank, "alpha": self.alpha,
                "rslora": self.rslora, "layer_range": self.layer_range, "lr": self.lr, "steps": self.steps,
                "batch_size": self.batch_size, "seed": self.seed}

    def _bind(self) -> None:
        """User -> state: every value change and click goes to the state."""
        for name, w in self._choice_widgets().items():
            w.observe(lambda change, name=name: self._set_choice(name, change["new"]), names="value")
        self._bind_targets()
        self.quantize.observe(lambda change: self._set_choice("quantize", None if change["new"] == "none"
                                                              else change["new"]), names="value")
        self.task.observe(lambda change: None if self._syncing else self._switch_task(change["new"]), names="value")
        self.prompt.observe(lambda change: self.state.set_prompt(change["new"]), names="value")
        self.examples.observe(self._on_example, names="value")
        self.try_button.on_click(lambda _b: self._safely(self.state.try_it, self.prompt.value))
        self.try_run.observe(lambda change: None if self._syncing else self._safely(self.state.choose_run,
                                                                                     change["new"] or None),
                             names="value")
        self.samples_run.observe(lambda _change: self._show_samples(), names="value")
        self.train_button.on_click(lambda _b: self.state.start())
        self.stop_button.on_click(lambda _b: self.state.stop())
        self.export_button.on_click(lambda _b: self._export())
        self.select_all_button.on_click(lambda _b: self._safely(self.state.select_all))
        self.select_none_button.on_click(lambda _b: self._safely(self.state.select_none))
        self.hide_button.on_click(lambda _b: self._safely(self.state.hide, self._ticked()))
        self.show_hidden_button.on_click(lambda _b: self._safely(self.state.show_hidden))
        self.delete_button.on_click(lambda _b: self._safely(self.state.request_delete, self._ticked()))
        self.confirm_delete_button.on_click(lambda _b: self._safely(self.state.confirm_delete))
        self.cancel_delete_button.on_click(lambda _b: self._safely(self.state.cancel_delete))

    def _bind_targets(self) -> None:
        for box in self.targets.values():
            box.observe(lambda _change: self._set_choice(
                "targets", tuple(k for k, b in self.targets.items() if b.value)), names="value")

    def _switch_task(self, task: str) -> None:
        """The task toggle: switch (the state says why when it cannot), and show the task the state is in."""
        self._safely(self.state.set_task, task)
        if self.task.value != self.state.task:  # refused (a run going) or failed (a model that cannot load)
            self._syncing = True
            try:
                self.task.value = self.state.task
            finally:
                self._syncing = False

    def _on_example(self, change: Any) -> None:
        if not self._syncing and change["new"]:
            self.prompt.value = change["new"]

    def _safely(self, action: Any, *args: Any) -> None:
        try:
            action(*args)
        except Exception as e:  # noqa: BLE001 - the panel must say it, not raise
            self.state.say(f"{type(e).__name__}: {e}", "error")

    def _ticked(self) -> list[str]:
        return [run_id for run_id, box in self.run_checks.items() if box.value]

    def _set_choice(self, name: str, value: Any) -> None:
        if not self._syncing:
            self.state.update(**{name: value})

    def _on_check(self, _change: Any) -> None:
        if not self._syncing:
            self._safely(self.state.select, self._ticked())

    def _export(self) -> None:
        folder = self.state.export()
        if folder is None or self.state.last_bundle is None:
            return
        try:
            self.download.value = download_link(self.state.last_bundle, "Download the report and adapters (zip)")
        except OSError as e:
            self.download.value = f"<i>The zip could not be read back: {html.escape(str(e))}</i>"

    # ------------------------------------------------------------------ state -> widgets

    def _on_state(self, event: Event) -> None:
        {
            "choices": self._show_choices,
            "message": self._show_message,
            "running": self._show_running,
            "progress": self._show_progress,
            "live": self._show_live,
            "runs": self._show_runs,
            "selection": self._show_selection,
            "pending": self._show_pending,
            "task": self._show_task,
            "answers": self._show_answers,
        }[event]()

    def _show_task(self) -> None:
        """A new task: its model's target toggles, its methods, the rank and layer limits, its tabs."""
        s = self.state
        self._syncing = True
        try:
            self.task.value = s.task
            if self._targets_of != (s.model.name, s.task):  # another model: its own toggles
                old, self.targets = self.targets, self._target_toggles()
                self._bind_targets()
                self.targets_row.children = (self.targets_row.children[0], *self.targets.values())
                for box in old.values():  # closed once nothing shows them any more
                    box.close()
                self._targets_of = (s.model.name, s.task)
            methods = s.methods()
            if tuple(self.method.options) != tuple(m for m in methods):
                self.method.options = methods
                self.method.tooltips = [_METHOD_TIPS[v] for _, v in methods]
            self.rank.max = max(s.rank_max(), s.choices.rank)
            blocks, rs = s.model.blocks or (0,), self.layer_range
            rs.max, rs.min = max(rs.max, blocks[-1]), min(rs.min, blocks[0])  # widen, set, then narrow
            rs.value = s.choices.layer_range
            rs.min, rs.max = blocks[0], blocks[-1]
            self.prompt.value = s.prompt
            examples = s.prompt_examples() if s.task == "causal-lm" else []
            self.examples.options = [("(pick one)", "")] + [(e.replace("\n", " ⏎ "), e) for e in examples]
            self.examples.value = ""
        finally:
            self._syncing = False
        self._show_tabs()
        self._show_header()
        self._show_answers()

    def _show_choices(self) -> None:
        """Widgets, readout, learning-rate note and enabled controls from the state's choices."""
        c = self.state.choices
        self._syncing = True
        try:
            for name, w in self._choice_widgets().items():
                value = getattr(c, name)
                if name in NUMBER_CHOICES and isinstance(w, widgets.Text):
                    # Leave the text as typed when it already says this value ("0.0010", "1e-3").
                    if read_number(w.value, NUMBER_CHOICES[name]) != value:
                        w.value = _number_text(value)
                elif w.value != value:
                    w.value = value
            for key, box in self.targets.items():
                box.value = key in c.targets
                box.icon = "check" if box.value else ""
            if self.quantize.value != (c.quantize or "none"):
                self.quantize.value = c.quantize or "none"
        finally:
            self._syncing = False
        self.method_note.value = ("" if self.state.task != "causal-lm" else
                                  f"<span title='{html.escape(HEAD_NOT_FOR_LM)}' style='font-size:11px;color:#555'>"
                                  "no head only here (why: hover)</span>")
        self.lr_note.value = (f"<div style='line-height:1.25;font-size:11px;margin:2px 0'>"
                              f"{html.escape(self.state.lr_note())}</div>")
        r = self.state.readout()
        problem = (f"<div class='workbench-problem' style='color:{_COLORS['error']};font-weight:bold'>"
                   f"{html.escape(r.problem)}</div>" if r.problem else "")
        self.readout.value = (f"<div style='margin:2px 0;font-size:12px;line-height:1.25'><b>{html.escape(r.headline)}"
                              f"</b><div style='font-size:11px'>{html.escape(r.detail)}</div>{problem}</div>")
        self._update_enabled()

    def _update_enabled(self) -> None:
        s = self.state
        running, lora = s.running, s.choices.method == "lora"
        for w in (self.task, self.method, self.lr, self.steps, self.batch_size, self.seed, self.train_button,
                  self.export_button, self.delete_button, self.confirm_delete_button):
            w.disabled = running
        for w in (self.rank, self.alpha, self.rslora, self.variant, self.quantize, *self.targets.values()):
            w.disabled = running or not lora
        self.layer_range.disabled = running or not lora or len(s.model.blocks) < 2
        self.stop_button.disabled = not running or s.stopping

    def _show_message(self) -> None:
        m = self.state.message
        self.message.value = (f"<div class='workbench-message workbench-{m.kind}' style='color:{_COLORS[m.kind]};"
                              f"margin:2px 0;font-size:13px;line-height:1.3'>{html.escape(m.text)}</div>")

    def _show_running(self) -> None:
        s = self.state
        if s.running and s.step is None and s.run_config is not None:  # a run has just started
            self.progress.max, self.progress.value = s.run_config.steps, 0
            self.progress_text.value = f"0 / {s.run_config.steps}"
            self._last_draw, self._draw_cost = 0.0, 0.0
            self.tabs.selected_index = 0  # the live curve is on the Train tab
        self._update_enabled()

    def _show_progress(self) -> None:
        """Progress after every step; the live curve at most every LIVE_MIN_INTERVAL_S."""
        info = self.state.step
        self.progress.value = info.step
        loss = f", loss {info.train_loss:.4f}" if math.isfinite(info.train_loss) else ""
        self.progress_text.value = f"{info.step} / {info.steps}{loss}"
        now = time.monotonic()
        interval = max(LIVE_MIN_INTERVAL_S, LIVE_COST_FACTOR * self._draw_cost)
        if now - self._last_draw >= interval and info.step < info.steps:
            try:
                self._draw_live(pd.DataFrame(info.history))
            except Exception:  # noqa: BLE001 - a drawing glitch must not end the run; the final draw reports
                pass
            self._last_draw = time.monotonic()
            self._draw_cost = self._last_draw - now

    def _show_live(self) -> None:
        history = self.state.live_history
        if history is None:
            self.live_plot.outputs = ()
        else:
            self._draw_live(history)

    def _draw_live(self, history: pd.DataFrame) -> None:
        from workbench.viz.plots import live_loss, run_color

        cfg = self.state.run_config
        fig = live_loss(history, f"Training loss: {cfg.label()} · lr={cfg.lr:g}", total_steps=cfg.steps,
                        color=run_color(cfg))
        self.live_plot.outputs = (_png_output(fig),)

    def _show_runs(self) -> None:
        """The table, the run checkboxes (ticked = selected) and the figures."""
        s = self.state
        self._show_header()
        visible = s.visible_results()
        hidden = f"; {len(s.hidden)} hidden" if s.hidden else ""
        if visible:
            columns = GENERATE_COLUMNS if s.task == "causal-lm" else PANEL_COLUMNS
            shown = s.table()[list(columns)].rename(columns={"batch_size": "batch", "eval accuracy": "accuracy"})
            classes = ["workbench-runs"] + (["generate"] if s.task == "causal-lm" else [])
            table = shown.to_html(index=False, escape=True, border=0, classes=classes)
            table = re.sub(r"<td>(did not learn|diverged|failed|stopped)</td>", r"<td class='bad'>\1</td>", table)
            self.table.value = (_TABLE_CSS + f"<div style='max-height:300px;overflow:auto'>{table}</div>"
                                f"<small>{len(visible)} run(s) shown{hidden}, in {html.escape(str(s.runs_dir))}. "
                                + ("Exact match: % of held-out prompts answered exactly (greedy); last answer: to "
                                   "the first of them at the last evaluation" if s.task == "causal-lm" else
                                   "Accuracy in % of the validation set")
                                + "; the export has every column.</small>")
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
            tries = [(f"{labels.get(r.run_id, r.config.label())} · {r.run_id}", r.run_id) for r in s.try_runs()]
            self.try_run.options = [("(none)", "")] + tries  # "": no run (None would show an empty box)
            self.try_run.value = s.try_run if s.try_run in {v for _, v in tries} else ""
        finally:
            self._syncing = False
        self._show_samples()
        self._show_compare()

    def _show_samples(self) -> None:
        """The chosen run's answers at each evaluation: a row per prompt, a column per step."""
        run_id = self.samples_run.value
        result = next((r for r in self.state.results if r.run_id == run_id), None)
        if result is None or not result.samples:
            self.samples.value = "<small><i>No answers yet: a run records them at each evaluation.</i></small>"
            return
        frame = samples_frame(result)
        frame["prompt"] = frame["prompt"].str.replace("\n", " ⏎ ", regex=False)
        table = frame.to_html(index=False, escape=True, border=0, classes="workbench-samples")
        self.samples.value = _ANSWER_CSS + f"<div style='max-height:220px;overflow:auto'>{table}</div>"

    def _show_answers(self) -> None:
        """Try it's answers side by side: base model, newest run, chosen stored run (right/wrong when known)."""
        a = self.state.answers
        if a is None:
            self.answers.value = ("<small><i>Press Try it to see the answers here.</i></small>"
                                  if self.state.task == "causal-lm" else "")
            return

        def card(title: str, answer: Answer | None, empty: str) -> str:
            if answer is None:
                return (f"<div class='workbench-answer'><div class='who'>{html.escape(title)}</div>"
                        f"<i>{html.escape(empty)}</i></div>")
            mark = {True: " right", False: " wrong", None: ""}[answer.correct]
            verdict = {True: " ✓ exact", False: " ✗ not the reference", None: ""}[answer.correct]
            who = f"{answer.who} · {answer.run_id}" if answer.run_id else ""
            return (f"<div class='workbench-answer{mark}' data-who='{html.escape(title)}'><div class='who'>"
                    f"{html.escape(title)}</div><small>{html.escape(who)}{verdict}</small>"
                    f"<pre>{html.escape(answer.text) or '(nothing)'}</pre></div>")

        ref = (f"<div style='font-size:12px'>reference: <code>{html.escape(a.reference)}</code></div>"
               if a.reference is not None else
               "<div style='font-size:12px'><i>not a held-out prompt: no reference answer to compare with</i></div>")
        self.answers.value = (
            _ANSWER_CSS + f"<div style='font-size:12px'>prompt: <code>{html.escape(a.prompt)}</code></div>{ref}"
            "<div class='workbench-answers'>"
            + card("base model", a.base, "")
            + card("newest run", a.adapted, "no run yet: press Train")
            + card("chosen stored run", a.stored, "choose one under 'also ask'")
            + "</div>")

    def _show_selection(self) -> None:
        self._syncing = True
        try:
            for run_id, box in self.run_checks.items():
                box.value = run_id in self.state.selected
        finally:
            self._syncing = False
        self._show_compare()

    def _show_pending(self) -> None:
        self.confirm_box.layout.display = "flex" if self.state.pending_delete else "none"

    def _show_compare(self) -> None:
        from workbench.viz.plots import comparison_figures

        chosen = self.state.selected_results()
        if not chosen:
            text = ("Tick runs under 'Runs' to compare them." if self.state.results
                    else "Train a run to see comparisons.")
            self.compare_plots.outputs = (_text_output(text),)
            return
        self.compare_plots.outputs = tuple(_png_output(fig) for fig in comparison_figures(chosen).values())


__all__ = ["Workbench", "PanelState", "RANK_CAP", "DEFAULT_LR", "download_link", "TAB_TITLES", "GENERATE_TAB_TITLES"]

"""The workbench panel: choose a fine-tuning method, see what it costs, train, compare, export.

``Workbench(model="minilm", preset="default")`` is an ipywidgets view of a
``workbench.ui.state.PanelState``, which holds the choices, builds the run, checks it,
trains it and keeps the runs::

    panel = Workbench()
    panel            # displays panel.widget in Jupyter or Voila
    panel.state      # the same panel without widgets (choices, config(), start(), runs, export())

What it shows, top to bottom:

* **method**: LoRA (frozen base + low-rank updates + trained head), full fine-tuning
  (every weight trains) or head only (only the new classifier trains);
* **LoRA settings**, named as in ``LoRAConfig``: ``rank`` r, ``alpha`` (the update is
  scaled by s = alpha / r, or alpha / sqrt(r) with rsLoRA), the variant, the
  ``targets`` (one toggle per kind of layer the loaded model really has: query, key,
  value, ...) and the ``layers`` (blocks) they are adapted in;
* a **live readout** of the trainable parameters before anything runs, from the layer
  shapes alone: ``sum over chosen layers of r * (in + out)  +  head parameters``;
  and, when the settings cannot make a run, what is wrong and what is allowed;
* **Train / Stop / Export**: a run goes in a background thread (so Stop can be clicked
  while it trains); the progress bar and the live loss curve follow it;
* the **runs table** (every run in the run store: runs survive a kernel restart) and the
  four **comparison figures** of the runs selected for comparison.

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
    METHOD_LABELS,
    RANK_CAP,
    VARIANT_OPTIONS,
    Event,
    PanelState,
    TrainFn,
)

# The live curve is redrawn at most this often (seconds), and at the end of the run ...
LIVE_MIN_INTERVAL_S = 0.5
# ... and never more often than every LIVE_COST_FACTOR times the last redraw took, so
# drawing costs at most about 1 / LIVE_COST_FACTOR of the training time.
LIVE_COST_FACTOR = 5.0
PLOT_DPI = 90

_TABLE_CSS = """<style>
table.workbench-runs { border-collapse: collapse; font-size: 12px; line-height: 1.35; }
table.workbench-runs th, table.workbench-runs td { white-space: nowrap; padding: 2px 8px; text-align: right; }
table.workbench-runs th { border-bottom: 1px solid #999; }
table.workbench-runs td:first-child, table.workbench-runs th:first-child,
table.workbench-runs td:nth-child(5), table.workbench-runs th:nth-child(5) { text-align: left; }
table.workbench-runs tbody tr:nth-child(odd) { background: #f5f5f5; }
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


def _from_state(name: str, doc: str) -> property:
    """A read-only attribute of the view that is the state's attribute ``name``."""
    return property(lambda self: getattr(self.state, name), doc=doc)


class Workbench:
    """An interactive panel to train LoRA / full / head-only runs and compare them.

    ``model``: "minilm" (bundled), "tiny-bert", a local folder, ...; ``preset``: "default"
    (15 to 30 seconds per run on 2 CPU cores) or "tiny" (seconds; tests).  Runs go to
    ``runs_dir`` (and are loaded from it on construction), reports to ``reports_dir``.
    ``background=False`` trains inside the Train click (Stop then cannot be clicked
    during the run; for scripts and tests).  ``state``: a ``PanelState`` to show
    (the other arguments then come from it); ``train``: the function that trains and
    stores a run (default ``workbench.train``).

    Every control is an attribute, so a notebook or a test can drive the panel:
    ``method``, ``rank``, ``alpha``, ``rslora``, ``variant``, ``targets`` (dict: name ->
    ToggleButton), ``layer_range``, ``lr``, ``steps``, ``batch_size``, ``seed``,
    ``train_button``, ``stop_button``, ``export_button``, ``compare_select``; and the
    displays ``readout``, ``message``, ``progress``, ``live_plot``, ``table``,
    ``compare_plots``.  ``state`` is the same panel without widgets.
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
        self._build_widgets()
        self._bind()
        self.state.subscribe(self._on_state)
        self._show_choices()
        self._show_runs()
        self._show_message()

    # ------------------------------------------------------------------ what the state holds

    defaults = _from_state("defaults", "The preset's RunConfig for this model.")
    results = _from_state("results", "Every run in the store, oldest first.")
    runs_frame = _from_state("runs_frame", "The store's runs table (workbench.records.store.runs columns).")
    last_result = _from_state("last_result", "The result of the last run (None when it failed).")
    last_error = _from_state("last_error", "The last error message shown.")
    last_export = _from_state("last_export", "The folder the last export wrote.")
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

    # ------------------------------------------------------------------ building

    def _build_widgets(self) -> None:
        s, c = self.state, self.state.choices
        wide = {"description_width": "initial"}
        short = widgets.Layout(width="180px")
        self.method = widgets.ToggleButtons(options=METHOD_LABELS, value=c.method, description="method",
                                            tooltips=["frozen base + low-rank updates + trained head",
                                                      "every weight trains", "only the classifier head trains"])
        self.rank = widgets.IntSlider(value=c.rank, min=1, max=max(s.rank_max(), c.rank), description="rank",
                                      continuous_update=False)
        # Text boxes without bounds: a bad value stays as typed and the panel says what is allowed.
        self.alpha = widgets.FloatText(value=c.alpha, description="alpha", layout=short)
        self.rslora = widgets.Checkbox(value=c.rslora, description="rsLoRA (s = alpha/√r)", indent=False,
                                       layout=widgets.Layout(width="auto"))
        self.variant = widgets.Dropdown(options=VARIANT_OPTIONS, value=c.variant, description="variant",
                                        layout=widgets.Layout(width="230px"))
        self.targets: dict[str, widgets.ToggleButton] = {
            key: widgets.ToggleButton(value=key in c.targets, description=key, icon="check" if key in c.targets else "",
                                      layout=widgets.Layout(width="auto", margin="2px 4px 2px 0"),
                                      tooltip=f"{g.pattern} ({g.type} {g.shape[0]} -> {g.shape[1]}, x{len(g.names)})")
            for key, g in s.model.targets.items()
        }
        blocks = s.model.blocks or (0,)
        self.layer_range = widgets.IntRangeSlider(value=c.layer_range, min=blocks[0], max=blocks[-1],
                                                  description="layers", continuous_update=False, style=wide,
                                                  tooltip="the blocks LoRA goes into (LoRAConfig.layers)")
        self.lr = widgets.FloatText(value=c.lr, step=1e-5, description="lr", layout=short)
        self.steps = widgets.IntText(value=c.steps, description="steps", layout=short)
        self.batch_size = widgets.IntText(value=c.batch_size, description="batch size", style=wide, layout=short)
        self.seed = widgets.IntText(value=c.seed, description="seed", layout=widgets.Layout(width="150px"))
        self.lr_note = widgets.HTML()
        self.readout = widgets.HTML()
        self.train_button = widgets.Button(description="Train", button_style="success", icon="play",
                                           tooltip="train one run with these settings")
        self.stop_button = widgets.Button(description="Stop", button_style="danger", icon="stop",
                                          tooltip="end the run after the current step; it is kept as 'stopped'")
        self.export_button = widgets.Button(description="Export", icon="download",
                                            tooltip="write the comparison figures and the table of the selected runs")
        self.progress = widgets.IntProgress(value=0, min=0, max=max(1, c.steps), description="progress")
        self.progress_text = widgets.Label()
        self.message = widgets.HTML()
        self.live_plot = widgets.Output(layout=widgets.Layout(min_height="40px"))
        self.table = widgets.HTML()
        self.compare_select = widgets.SelectMultiple(options=[], value=[], description="compare", rows=6,
                                                     layout=widgets.Layout(width="95%"))
        self.compare_plots = widgets.Output()

        from workbench.engine.training import resolve_device

        device = resolve_device(s.defaults.device)
        n_blocks = f", {len(s.model.blocks)} layers" if s.model.blocks else ""
        header = widgets.HTML(
            f"<div>model <b>{html.escape(s.model.name)}</b> ({s.model.base_parameters:,} parameters{n_blocks}) · "
            f"preset <b>{html.escape(s.preset_name)}</b> · device <b>{device.type}</b> · "
            f"runs saved in <code>{html.escape(str(s.runs_dir))}</code></div>"
        )
        section = lambda text: widgets.HTML(f"<h4 style='margin:10px 0 2px 0'>{text}</h4>")  # noqa: E731
        row = widgets.Layout(flex_flow="row wrap")
        self.lora_box = widgets.VBox([
            widgets.HBox([self.rank, self.alpha, self.rslora, self.variant], layout=row),
            widgets.HBox([widgets.Label("targets:"), *self.targets.values()], layout=row),
            self.layer_range,
        ])
        self.widget = widgets.VBox([
            header,
            self.method,
            self.lora_box,
            widgets.HBox([self.lr, self.steps, self.batch_size, self.seed], layout=row),
            self.lr_note,
            self.readout,
            widgets.HBox([self.train_button, self.stop_button, self.export_button, self.progress, self.progress_text],
                         layout=widgets.Layout(flex_flow="row wrap", align_items="center")),
            self.message,
            self.live_plot,
            section("Runs"),
            self.table,
            section("Compare"),
            self.compare_select,
            self.compare_plots,
        ])

    def _choice_widgets(self) -> dict[str, widgets.ValueWidget]:
        """The widget of each choice that has one widget (``targets`` has one toggle per kind)."""
        return {"method": self.method, "variant": self.variant, "rank": self.rank, "alpha": self.alpha,
                "rslora": self.rslora, "layer_range": self.layer_range, "lr": self.lr, "steps": self.steps,
                "batch_size": self.batch_size, "seed": self.seed}

    def _bind(self) -> None:
        """User -> state: every value change and click goes to the state."""
        for name, w in self._choice_widgets().items():
            w.observe(lambda change, name=name: self._set_choice(name, change["new"]), names="value")
        for box in self.targets.values():
            box.observe(lambda _change: self._set_choice(
                "targets", tuple(k for k, b in self.targets.items() if b.value)), names="value")
        self.compare_select.observe(self._on_select, names="value")
        self.train_button.on_click(lambda _b: self.state.start())
        self.stop_button.on_click(lambda _b: self.state.stop())
        self.export_button.on_click(lambda _b: self.state.export())

    def _set_choice(self, name: str, value: Any) -> None:
        if not self._syncing:
            self.state.update(**{name: value})

    def _on_select(self, change: Any) -> None:
        if self._syncing:
            return
        try:
            self.state.select(change["new"])
        except Exception as e:  # noqa: BLE001 - the panel must say it, not raise
            self.state.say(f"Could not draw the comparison: {type(e).__name__}: {e}", "error")

    # ------------------------------------------------------------------ state -> widgets

    def _on_state(self, event: Event) -> None:
        {
            "choices": self._show_choices,
            "message": self._show_message,
            "running": self._show_running,
            "progress": self._show_progress,
            "live": self._show_live,
            "runs": self._show_runs,
            "selection": self._show_compare,
        }[event]()

    def _show_choices(self) -> None:
        """Widgets, readout, learning-rate note and enabled controls from the state's choices."""
        c = self.state.choices
        self._syncing = True
        try:
            for name, w in self._choice_widgets().items():
                value = getattr(c, name)
                if w.value != value:
                    w.value = value
            for key, box in self.targets.items():
                box.value = key in c.targets
                box.icon = "check" if box.value else ""
        finally:
            self._syncing = False
        self.lr_note.value = f"<small>{html.escape(self.state.lr_note())}</small>"
        r = self.state.readout()
        problem = (f"<br><small style='color:{_COLORS['warn']}'>{html.escape(r.problem)}</small>"
                   if r.problem else "")
        self.readout.value = (f"<div style='margin:4px 0'><b>{html.escape(r.headline)}</b>"
                              f"<br><small>{html.escape(r.detail)}</small>{problem}</div>")
        self._update_enabled()

    def _update_enabled(self) -> None:
        s = self.state
        running, lora = s.running, s.choices.method == "lora"
        for w in (self.method, self.lr, self.steps, self.batch_size, self.seed, self.train_button,
                  self.export_button, self.compare_select):
            w.disabled = running
        for w in (self.rank, self.alpha, self.rslora, self.variant, *self.targets.values()):
            w.disabled = running or not lora
        self.layer_range.disabled = running or not lora or len(s.model.blocks) < 2
        self.stop_button.disabled = not running or s.stopping

    def _show_message(self) -> None:
        m = self.state.message
        self.message.value = f"<div style='color:{_COLORS[m.kind]};margin:4px 0'>{html.escape(m.text)}</div>"

    def _show_running(self) -> None:
        s = self.state
        if s.running and s.step is None and s.run_config is not None:  # a run has just started
            self.progress.max, self.progress.value = s.run_config.steps, 0
            self.progress_text.value = f"0 / {s.run_config.steps}"
            self._last_draw, self._draw_cost = 0.0, 0.0
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
        fig = live_loss(history, f"Training loss: {cfg.label()}", total_steps=cfg.steps, color=run_color(cfg))
        self.live_plot.outputs = (_png_output(fig),)

    def _show_runs(self) -> None:
        """The table, the comparison list (what the state selects) and the figures."""
        s = self.state
        if s.results:
            table = s.table().to_html(index=False, escape=True, border=0, classes="workbench-runs")
            self.table.value = (_TABLE_CSS + f"<div style='max-height:360px;overflow:auto'>{table}</div>"
                                f"<small>{len(s.results)} run(s) in {html.escape(str(s.runs_dir))}</small>")
        else:
            self.table.value = f"<i>No runs yet in {html.escape(str(s.runs_dir))}: press Train.</i>"
        options = [(f"{r.config.label()} [{r.status}] · {r.run_id}", r.run_id) for r in s.results]
        self._syncing = True
        try:
            self.compare_select.options = options
            self.compare_select.value = s.selected
            self.compare_select.rows = max(2, min(8, len(options)))
        finally:
            self._syncing = False
        self._show_compare()

    def _show_compare(self) -> None:
        from workbench.viz.plots import comparison_figures

        chosen = self.state.selected_results()
        if not chosen:
            text = "Select runs above to compare them." if self.state.results else "Train a run to see comparisons."
            self.compare_plots.outputs = (_text_output(text),)
            return
        self.compare_plots.outputs = tuple(_png_output(fig) for fig in comparison_figures(chosen).values())


__all__ = ["Workbench", "PanelState", "RANK_CAP", "DEFAULT_LR"]

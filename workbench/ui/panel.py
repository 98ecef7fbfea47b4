"""The workbench panel: choose a fine-tuning method, see what it costs, train, compare, export.

``Workbench(model="minilm", preset="default")`` builds an ipywidgets panel around the
training engine (``workbench.engine.training.train``) and the run store (``workbench.records.store``)::

    panel = Workbench()
    panel            # displays panel.widget in Jupyter or Voila

What it offers, top to bottom:

* **method**: LoRA (frozen base + low-rank updates + trained head), full fine-tuning
  (every weight trains) or head only (only the new classifier trains);
* **LoRA settings**: ``rank`` r, ``alpha`` (the update is scaled by s = alpha / r, or
  alpha / sqrt(r) with rsLoRA), which kinds of layer get LoRA (one checkbox per kind the
  loaded model really has: query, key, value, ...) and which blocks;
* a **live readout** of the trainable parameters before anything runs, from the layer
  shapes alone: a LoRA layer of shape in -> out trains r * (in + out) numbers (A is
  r x in, B is out x r), so the readout is
  ``sum over chosen layers of r * (in + out)  +  head parameters``;
  full fine-tuning trains every parameter, head-only the head's.  The engine counts the
  same thing on the real model after the run (``workbench.lora.params.count_parameters``);
* **Train / Stop / Export**: a run goes in a background thread (so Stop can be clicked
  while it trains); the progress bar and the live loss curve follow it;
* the **runs table** (every run in the run store: runs survive a kernel restart) and the
  four **comparison figures** of the runs selected for comparison.

Every mistake ends as a message in the panel, never as a traceback, and no run already
made is lost: the engine writes each run to the store as it goes.

Widgets updated from the training thread work in ipywidgets 8 (JupyterLab, Voila).  Images
are put into ``Output`` widgets by assigning ``Output.outputs`` (a PNG per figure), which
works in a browser and also outside a kernel, so tests can drive the panel in plain pytest.
"""

from __future__ import annotations

import base64
import html
import math
import re
import threading
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import pandas as pd

from workbench.engine.config import ParamCounts, RunConfig, RunResult, preset as make_preset
from workbench.lora.inject import LayerGroup, head_names, layer_groups, layer_index, targets_for
from workbench.lora.params import lora_parameter_count
from workbench.engine.sweep import VARIANTS

# The LoRA variants the panel offers (RunConfig overrides in workbench.engine.sweep.VARIANTS).
VARIANT_OPTIONS = [("LoRA", "lora"), ("DoRA (learned magnitude)", "dora"), ("PiSSA init (top-r SVD of W)", "pissa"),
                   ("LoRA+ (B's lr x16)", "loraplus")]

# The rank slider never goes above this, even for wide layers: beyond it a workshop run
# learns nothing new and the slider becomes hard to aim.
RANK_CAP = 64
# Starting learning rates per method.  Full fine-tuning moves weights the model already
# relies on, so it takes small steps; LoRA's B starts at zero and needs larger ones; a
# fresh head alone tolerates the largest.
DEFAULT_LR = {"full": 5e-5, "head": 1e-3}  # LoRA: the preset's lr
LR_WHY = {
    "lora": "LoRA's B matrices start at zero, so the update needs larger steps than full fine-tuning",
    "full": "every weight moves, and large steps would wreck what the model already knows",
    "head": "only a small new layer learns on top of frozen features, so larger steps are safe",
}
METHOD_LABELS = (("LoRA", "lora"), ("full fine-tuning", "full"), ("head only", "head"))
# The live curve is redrawn at most this often (seconds), and at the end of the run.
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


def _fmt(value: Any, fmt: str) -> str:
    """Format a number, or a dash when it is missing (None, NA, NaN)."""
    if value is None or value is pd.NA:
        return "–"
    try:
        if isinstance(value, float) and math.isnan(value):
            return "–"
    except TypeError:
        pass
    return format(value, fmt)


def _fmt_bytes(n: Any) -> str:
    if n is None or n is pd.NA or (isinstance(n, float) and math.isnan(n)):
        return "–"
    n = float(n)
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"  # decimal, as in the figures


@dataclass
class _Selection:
    """The LoRA layers the current settings pick: per group, the module paths in range."""

    group: LayerGroup
    names: list[str]


class Workbench:
    """An interactive panel to train LoRA / full / head-only runs and compare them.

    ``model``: "minilm" (bundled), "tiny-bert", a local folder, ...; ``preset``: "default"
    (15 to 30 seconds per run on 2 CPU cores) or "tiny" (seconds; tests).  Runs go to
    ``runs_dir`` (and are loaded from it on construction), reports to ``reports_dir``.
    ``background=False`` trains inside the Train click (Stop then cannot be clicked
    during the run; for scripts and tests).

    Every control is an attribute, so a notebook or a test can drive the panel:
    ``method``, ``rank``, ``alpha``, ``rslora``, ``targets`` (dict: kind -> ToggleButton),
    ``block_range``, ``lr``, ``steps``, ``batch_size``, ``seed``, ``train_button``,
    ``stop_button``, ``export_button``, ``compare_select``; and the displays ``readout``,
    ``message``, ``progress``, ``live_plot``, ``table``, ``compare_plots``.
    """

    def __init__(
        self,
        model: str = "minilm",
        runs_dir: str | Path = "runs",
        reports_dir: str | Path = "reports",
        preset: str = "default",
        background: bool = True,
    ) -> None:
        from workbench.engine.models import load_base
        from workbench.lora.params import count_parameters

        self.model_name = model
        self.preset_name = preset
        self.runs_dir = Path(runs_dir)
        self.reports_dir = Path(reports_dir)
        self.background = background
        self.defaults: RunConfig = make_preset(preset, model=model)  # raises on an unknown preset
        self.results: list[RunResult] = []
        self.runs_frame: pd.DataFrame = pd.DataFrame()
        self.last_result: RunResult | None = None
        self.last_error: str | None = None
        self.last_export: Path | None = None
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._running = False
        self._updating_selection = False
        self._last_draw = 0.0
        self._draw_cost = 0.0

        # The layer shapes are all the readout needs: load the base once, keep the shapes.
        base, _ = load_base(model, num_labels=2, task=self.defaults.task, seed=self.defaults.seed)
        heads = head_names(base)
        self.head_parameters = sum(p.numel() for h in heads for p in base.get_submodule(h).parameters())
        self.base_parameters = count_parameters(base).total
        self.groups: list[LayerGroup] = [
            g for g in layer_groups(base) if not any(n == h or n.startswith(h + ".") for n in g.names for h in heads)
        ]
        self.blocks: list[int] = sorted({i for g in self.groups for n in g.names if (i := layer_index(n)) is not None})
        del base

        self._build_widgets()
        self._wire()
        self._update_rank_bounds()
        self._update_enabled()
        self._update_readout()
        self.refresh()
        if not self.results:
            self._show(f"Ready. Choose a method and settings, then press <b>Train</b>. "
                       f"Runs are saved in <code>{html.escape(str(self.runs_dir))}</code>.", "info", raw=True)

    # ------------------------------------------------------------------ building

    def _build_widgets(self) -> None:
        d = self.defaults
        wide = {"description_width": "initial"}
        self.method = widgets.ToggleButtons(options=METHOD_LABELS, value=d.method, description="method",
                                            tooltips=["frozen base + low-rank updates + trained head",
                                                      "every weight trains", "only the classifier head trains"])
        self.rank = widgets.IntSlider(value=d.rank, min=1, max=RANK_CAP, description="rank", continuous_update=False)
        self.alpha = widgets.BoundedFloatText(value=float(d.alpha), min=0.0, max=4096.0, step=1.0, description="alpha",
                                              layout=widgets.Layout(width="180px"))
        self.rslora = widgets.Checkbox(value=d.rslora, description="rsLoRA (s = alpha/√r)", indent=False,
                                       layout=widgets.Layout(width="auto"))
        self.variant = widgets.Dropdown(options=VARIANT_OPTIONS, value="lora", description="variant",
                                        layout=widgets.Layout(width="230px"))
        self.targets: dict[str, widgets.ToggleButton] = {}
        wanted = self._default_groups(d.targets)
        for g in self.groups:
            key = g.kind if g.kind not in self.targets else g.pattern
            self.targets[key] = widgets.ToggleButton(
                value=g in wanted, description=key, icon="check" if g in wanted else "",
                layout=widgets.Layout(width="auto", margin="2px 4px 2px 0"),
                tooltip=f"{g.pattern} ({g.type} {g.shape[0]} -> {g.shape[1]}, x{len(g.names)})",
            )
        self._group_of = dict(zip(self.targets, self.groups))
        lo, hi = (self.blocks[0], self.blocks[-1]) if self.blocks else (0, 0)
        if d.layers:
            lo, hi = max(lo, min(d.layers)), min(hi, max(d.layers))
        self.block_range = widgets.IntRangeSlider(
            value=(lo, hi), min=self.blocks[0] if self.blocks else 0, max=self.blocks[-1] if self.blocks else 0,
            description="blocks", continuous_update=False, style=wide,
        )
        self.lr = widgets.BoundedFloatText(value=d.lr, min=1e-8, max=10.0, step=1e-5, description="lr",
                                           layout=widgets.Layout(width="180px"))
        self.steps = widgets.BoundedIntText(value=d.steps, min=1, max=100_000, description="steps",
                                            layout=widgets.Layout(width="180px"))
        self.batch_size = widgets.BoundedIntText(value=d.batch_size, min=1, max=1024, description="batch size",
                                                 style=wide, layout=widgets.Layout(width="180px"))
        self.seed = widgets.IntText(value=d.seed, description="seed", layout=widgets.Layout(width="150px"))
        self.lr_note = widgets.HTML()
        self.readout = widgets.HTML()
        self.train_button = widgets.Button(description="Train", button_style="success", icon="play",
                                           tooltip="train one run with these settings")
        self.stop_button = widgets.Button(description="Stop", button_style="danger", icon="stop",
                                          tooltip="end the run after the current step; it is kept as 'stopped'")
        self.export_button = widgets.Button(description="Export", icon="download",
                                            tooltip="write the comparison figures and the table of the selected runs")
        self.progress = widgets.IntProgress(value=0, min=0, max=max(1, d.steps), description="progress")
        self.progress_text = widgets.Label()
        self.message = widgets.HTML()
        self.live_plot = widgets.Output(layout=widgets.Layout(min_height="40px"))
        self.table = widgets.HTML()
        self.compare_select = widgets.SelectMultiple(options=[], value=[], description="compare", rows=6,
                                                     layout=widgets.Layout(width="95%"))
        self.compare_plots = widgets.Output()
        self._set_lr_note()

        from workbench.engine.training import resolve_device

        device = resolve_device(self.defaults.device)
        blocks = f", {len(self.blocks)} blocks" if self.blocks else ""
        header = widgets.HTML(
            f"<div>model <b>{html.escape(self.model_name)}</b> ({self.base_parameters:,} parameters{blocks}) · "
            f"preset <b>{html.escape(self.preset_name)}</b> · device <b>{device.type}</b> · "
            f"runs saved in <code>{html.escape(str(self.runs_dir))}</code></div>"
        )
        section = lambda text: widgets.HTML(f"<h4 style='margin:10px 0 2px 0'>{text}</h4>")  # noqa: E731
        self.lora_box = widgets.VBox([
            widgets.HBox([self.rank, self.alpha, self.rslora, self.variant], layout=widgets.Layout(flex_flow="row wrap")),
            widgets.HBox([widgets.Label("LoRA on:"), *self.targets.values()],
                         layout=widgets.Layout(flex_flow="row wrap")),
            self.block_range,
        ])
        self.widget = widgets.VBox([
            header,
            self.method,
            self.lora_box,
            widgets.HBox([self.lr, self.steps, self.batch_size, self.seed], layout=widgets.Layout(flex_flow="row wrap")),
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

    def _default_groups(self, targets: list[str] | str) -> list[LayerGroup]:
        """The groups the preset's targets select (by target, kind or name suffix)."""
        if isinstance(targets, str):
            if targets == "all-linear":
                return [g for g in self.groups if g.kind != "pooler"]
            pattern = re.compile(targets)
            return [g for g in self.groups if any(pattern.fullmatch(n) for n in g.names)]
        chosen = [g for g in self.groups
                  if any(t in (g.target, g.kind) or all(n == t or n.endswith("." + t) for n in g.names) for t in targets)]
        return chosen or self.groups[:1]

    def _wire(self) -> None:
        for box in self.targets.values():
            box.observe(self._on_targets, names="value")
        for w in (self.rank, self.rslora, self.block_range, self.alpha, self.variant):
            w.observe(lambda _change: self._update_readout(), names="value")
        self.method.observe(self._on_method, names="value")
        self.compare_select.observe(self._on_select, names="value")
        self.train_button.on_click(self._on_train)
        self.stop_button.on_click(self._on_stop)
        self.export_button.on_click(self._on_export)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """Displaying the panel object displays its widget."""
        return self.widget._repr_mimebundle_(**kwargs)

    # ------------------------------------------------------------------ settings

    def selected_layers(self) -> list[_Selection]:
        """The layers LoRA would wrap now, per group, as ``find_targets`` would pick them.

        With a block range narrower than the model, only paths whose block index lies in it
        count (layers outside the blocks, such as the pooler, then drop out).
        """
        layers = self.layers()
        out = []
        for key, box in self.targets.items():
            if not box.value:
                continue
            g = self._group_of[key]
            names = g.names if layers is None else [n for n in g.names if layer_index(n) in layers]
            out.append(_Selection(g, names))
        return out

    def layers(self) -> list[int] | None:
        """Block indices from the block range; None when it covers every block."""
        if not self.blocks:
            return None
        lo, hi = self.block_range.value
        chosen = [i for i in self.blocks if lo <= i <= hi]
        return None if chosen == self.blocks else chosen

    def parameter_estimate(self) -> ParamCounts:
        """Trainable and total parameters of the current choice, from layer shapes alone.

        LoRA: trainable = sum over chosen layers of r * (in + out) + head parameters, and
        the total grows by the LoRA part; full: everything; head only: the head.
        """
        method = self.method.value
        if method == "full":
            return ParamCounts(self.base_parameters, self.base_parameters)
        if method == "head":
            return ParamCounts(self.head_parameters, self.base_parameters)
        r, dora = self.rank.value, self.variant.value == "dora"
        lora = sum(len(s.names) * lora_parameter_count(*s.group.shape, r, dora=dora) for s in self.selected_layers())
        return ParamCounts(lora + self.head_parameters, self.base_parameters + lora)

    def config(self) -> RunConfig:
        """The RunConfig the Train button would run now (preset + the panel's settings)."""
        method = self.method.value
        over: dict[str, Any] = dict(model=self.model_name, method=method, lr=float(self.lr.value),
                                    steps=int(self.steps.value), batch_size=int(self.batch_size.value),
                                    seed=int(self.seed.value))
        if method == "lora":
            sel = [s for s in self.selected_layers() if s.names]
            layers = self.layers()
            over.update(rank=int(self.rank.value), alpha=float(self.alpha.value), rslora=bool(self.rslora.value),
                        layers=layers, targets=targets_for([s.group for s in sel]) if sel else [],
                        **VARIANTS[self.variant.value])
            if sel and (isinstance(over["targets"], str) or layers is not None):
                # A regex or a block range makes the default label unreadable: name the kinds.
                kinds = ",".join(s.group.kind for s in sel)
                where = "" if not layers else (f", block {layers[0]}" if len(layers) == 1
                                                else f", blocks {layers[0]}-{layers[-1]}")
                plain = make_preset(self.preset_name, **over).label()
                return make_preset(self.preset_name, **over, name=f"{plain.split(' (')[0]} ({kinds}{where})")
        return make_preset(self.preset_name, **over)

    def _problem(self) -> str | None:
        """What is wrong with the current settings, in words, or None."""
        from workbench.engine.training import validate

        if self.method.value == "lora":
            sel = self.selected_layers()
            if not sel:
                return ("LoRA needs at least one target layer: tick one of "
                        f"{', '.join(self.targets)} (or choose full fine-tuning / head only).")
            if not any(s.names for s in sel):
                lo, hi = self.block_range.value
                return (f"None of the ticked layers ({', '.join(s.group.kind for s in sel)}) lies in blocks "
                        f"{lo}-{hi}: widen the block range or tick layers inside the blocks.")
        try:
            validate(self.config())
        except ValueError as e:
            return f"Cannot train with these settings: {e}"
        return None

    # ------------------------------------------------------------------ reactions

    def _on_targets(self, change: Any = None) -> None:
        if change is not None:
            change["owner"].icon = "check" if change["new"] else ""
        self._update_rank_bounds()
        self._update_readout()

    def _update_rank_bounds(self) -> None:
        """rank <= min(in, out) of every chosen layer (a larger rank adds no capacity), <= RANK_CAP."""
        sel = self.selected_layers()
        if sel:
            self.rank.max = min(RANK_CAP, *(min(s.group.shape) for s in sel))

    def _on_method(self, change: Any) -> None:
        method = change["new"]
        self.lr.value = DEFAULT_LR.get(method, self.defaults.lr)
        self._set_lr_note()
        self._update_enabled()
        self._update_readout()

    def _set_lr_note(self) -> None:
        method = self.method.value
        name = dict((v, k) for k, v in METHOD_LABELS)[method]
        self.lr_note.value = (
            f"<small>Learning rate set to <b>{DEFAULT_LR.get(method, self.defaults.lr):g}</b> for {name}: "
            f"{LR_WHY[method]}. Switching the method resets it; change it freely.</small>"
        )

    def _update_readout(self) -> None:
        est = self.parameter_estimate()
        share = 100 * est.share
        head = f"classifier head {self.head_parameters:,}"
        method = self.method.value
        if method == "full":
            how = "full fine-tuning trains every parameter"
        elif method == "head":
            how = f"only the {head} trains; the rest is frozen"
        else:
            r, a = self.rank.value, self.alpha.value
            scale = a / math.sqrt(r) if self.rslora.value else a / r
            formula = "α/√r" if self.rslora.value else "α/r"
            dora = self.variant.value == "dora"
            plus = " + out" if dora else ""
            parts = [f"{s.group.kind} {len(s.names)} × ({r}·({s.group.shape[0]}+{s.group.shape[1]}){plus}) = "
                     f"{len(s.names) * lora_parameter_count(*s.group.shape, r, dora=dora):,}" if s.names else
                     f"{s.group.kind}: outside the chosen blocks, not adapted" for s in self.selected_layers()]
            how = (f"LoRA trains r·(in+out){plus} per layer: " + "; ".join(parts) + f"; + {head}"
                   if parts else "no target layer ticked")
            how += f" · scale s = {formula} = {scale:.3g}"
        self.readout.value = (
            f"<div style='margin:4px 0'><b>Trainable parameters: {est.trainable:,}</b> of {est.total:,} "
            f"({share:.3g}% of the model)<br><small>{html.escape(how)}</small></div>"
        )

    def _update_enabled(self) -> None:
        running = self._running
        lora = self.method.value == "lora"
        for w in (self.method, self.lr, self.steps, self.batch_size, self.seed, self.train_button,
                  self.export_button, self.compare_select):
            w.disabled = running
        for w in (self.rank, self.alpha, self.rslora, self.variant, *self.targets.values()):
            w.disabled = running or not lora
        self.block_range.disabled = running or not lora or len(self.blocks) < 2
        self.stop_button.disabled = not running

    def _show(self, text: str, kind: str = "info", raw: bool = False) -> None:
        """Put a message in the panel (``raw``: ``text`` is already HTML)."""
        body = text if raw else html.escape(text)
        self.message.value = f"<div style='color:{_COLORS[kind]};margin:4px 0'>{body}</div>"
        if kind == "error":
            self.last_error = text

    @property
    def message_text(self) -> str:
        """The message without its markup (for tests and scripts)."""
        return html.unescape(re.sub(r"<[^>]+>", "", self.message.value))

    # ------------------------------------------------------------------ training

    @property
    def running(self) -> bool:
        return self._running

    def _on_train(self, _button: Any = None) -> None:
        if self._running:
            self._show("A run is already going: wait for it or press Stop.", "warn")
            return
        try:
            problem = self._problem()
            cfg = None if problem else self.config()
        except Exception as e:  # noqa: BLE001 - the panel must show, not raise
            problem = f"{type(e).__name__}: {e}"
        if problem:
            self._show(problem, "error")
            return
        self.last_result, self.last_error = None, None
        self._stop_event = threading.Event()
        self._running = True
        self._update_enabled()
        self.progress.max, self.progress.value = cfg.steps, 0
        self.progress_text.value = f"0 / {cfg.steps}"
        self._last_draw, self._draw_cost = 0.0, 0.0
        self._draw_live(pd.DataFrame(columns=["step", "train_loss"]), cfg)
        self._show(f"Training {cfg.label()} for {cfg.steps} steps (loading the model and data first)…", "info")
        if self.background:
            self._thread = threading.Thread(target=self._run, args=(cfg,), name="workbench-train", daemon=True)
            self._thread.start()
        else:
            self._run(cfg)

    def _run(self, cfg: RunConfig) -> None:
        """Train (in the worker thread, or inline), then report and refresh."""
        from workbench.engine.training import train

        try:
            result = train(cfg, on_step=lambda info: self._on_step(info, cfg), stop=self._stop_event,
                           runs_dir=str(self.runs_dir), progress=False)
        except Exception as e:  # noqa: BLE001 - shown in the panel; the store keeps earlier runs
            result = None
            error = f"{type(e).__name__}: {e}"
        try:
            if result is not None:
                self.last_result = result
                self._draw_live(result.history, cfg)
            self.refresh()
        except Exception as e:  # noqa: BLE001
            if result is not None:
                result = None
                error = f"the run finished but the panel could not show it: {type(e).__name__}: {e}"
        finally:
            self._running = False
            self._update_enabled()
        if result is None:
            self.live_plot.outputs = ()
            self._show(error, "error")
        else:
            self._report(result)

    def _on_step(self, info: Any, cfg: RunConfig) -> None:
        """Progress after every step; the live curve at most every LIVE_MIN_INTERVAL_S."""
        self.progress.value = info.step
        loss = f", loss {info.train_loss:.4f}" if math.isfinite(info.train_loss) else ""
        self.progress_text.value = f"{info.step} / {info.steps}{loss}"
        now = time.monotonic()
        interval = max(LIVE_MIN_INTERVAL_S, LIVE_COST_FACTOR * self._draw_cost)
        if now - self._last_draw >= interval and info.step < info.steps:
            try:
                self._draw_live(pd.DataFrame(info.history), cfg)
            except Exception:  # noqa: BLE001 - a drawing glitch must not end the run; the final draw reports
                pass
            self._last_draw = time.monotonic()
            self._draw_cost = self._last_draw - now

    def _draw_live(self, history: pd.DataFrame, cfg: RunConfig) -> None:
        from workbench.viz.plots import live_loss, run_color

        fig = live_loss(history, f"Training loss: {cfg.label()}", total_steps=cfg.steps, color=run_color(cfg))
        self.live_plot.outputs = (_png_output(fig),)

    def _report(self, result: RunResult) -> None:
        if result.status == "completed":
            acc = result.eval_accuracy
            acc_text = f", validation accuracy {100 * acc:.1f}%" if math.isfinite(acc) else ""
            self._show(f"Done: {result.config.label()}: final loss {result.final_loss:.4f}{acc_text}, "
                       f"{result.timing.seconds_per_step:.3f} s/step, {result.params.trainable:,} trainable "
                       f"parameters. Added to the table below.", "ok")
        elif result.status == "stopped":
            self._show(f"Stopped: {result.message}. The run is kept in the table with status 'stopped'.", "warn")
        elif result.status == "diverged":
            hint = f"e.g. {result.config.lr / 10:g}"
            msg = result.message.rstrip(".")
            advice = f" ({hint})" if "lower learning rate" in msg else f". Try a lower learning rate, {hint}"
            self._show(f"The run diverged: {msg}{advice}. It is kept in the table with status 'diverged'.", "error")
        else:
            self._show(f"The run ended as '{result.status}': {result.message}", "error")

    def _on_stop(self, _button: Any = None) -> None:
        if not self._running:
            self._show("Nothing is training.", "info")
            return
        self._stop_event.set()
        self.stop_button.disabled = True
        self._show("Stopping after the current step…", "warn")

    def stop(self) -> None:
        """Ask the current run to end after its current step (as the Stop button does)."""
        self._on_stop()

    def wait(self, timeout: float | None = None) -> RunResult | None:
        """Block until the current background run has finished; return its result (None on error)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                raise TimeoutError(f"the run is still going after {timeout} s")
        return self.last_result

    # ------------------------------------------------------------------ runs

    def refresh(self) -> None:
        """Reload every run from the store; redraw the table, the selector and the comparison."""
        from workbench.records.store import RunStoreWarning, load_runs, runs_table

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RunStoreWarning)
            self.results = load_runs(self.runs_dir)
        skipped = [str(w.message) for w in caught if issubclass(w.category, RunStoreWarning)]
        self.runs_frame = runs_table(self.results)
        self.table.value = self._table_html()
        self._update_selector()
        self._draw_compare()
        if skipped:
            self._show(f"{len(skipped)} damaged run file(s) in the store were skipped: " + "; ".join(skipped), "warn")

    def _targets_text(self, cfg: RunConfig) -> str:
        if cfg.method != "lora":
            return "–"
        if isinstance(cfg.lora.targets, str):  # a regex: name the kinds of this model it picks
            try:
                pattern = re.compile(cfg.lora.targets)
                kinds = [g.kind for g in self.groups if any(pattern.fullmatch(n) for n in g.names)]
            except re.error:
                kinds = []
            text = ",".join(kinds) if kinds else cfg.lora.targets
        else:
            text = ",".join(cfg.lora.targets)
        if cfg.lora.layers:
            lo, hi = min(cfg.lora.layers), max(cfg.lora.layers)
            text += f" (block {lo})" if lo == hi else f" (blocks {lo}-{hi})"
        return text

    def _table_html(self) -> str:
        if not self.results:
            return f"<i>No runs yet in {html.escape(str(self.runs_dir))}: press Train.</i>"
        rows = []
        for r, row in zip(self.results, self.runs_frame.itertuples(index=False)):
            c = r.config
            lora = c.method == "lora"
            rows.append({
                "run": c.label(),
                "method": c.method,
                "rank": c.lora.rank if lora else "–",
                "alpha": f"{c.lora.alpha:g}" if lora else "–",
                "targets": self._targets_text(c),
                "lr": f"{c.lr:g}",
                "steps": f"{row.steps_done}/{c.steps}",
                "status": r.status,
                "trainable params": f"{r.params.trainable:,}",
                "share": f"{100 * r.params.share:.3g}%",
                "final loss": _fmt(r.final_loss, ".4f"),
                "val. accuracy": _fmt(100 * r.eval_accuracy, ".1f") + ("%" if math.isfinite(r.eval_accuracy) else ""),
                "s / step": _fmt(row.seconds_per_step, ".3f"),
                "peak memory": _fmt_bytes(row.peak_bytes),
                "run id": r.run_id,
            })
        frame = pd.DataFrame(rows)
        table = frame.to_html(index=False, escape=True, border=0, classes="workbench-runs")
        return (_TABLE_CSS + f"<div style='max-height:360px;overflow:auto'>{table}</div>"
                f"<small>{len(rows)} run(s) in {html.escape(str(self.runs_dir))}</small>")

    def _update_selector(self) -> None:
        """Options: every run; selection: what was selected before plus any new run."""
        old_options = set(v for _, v in self.compare_select.options)
        keep = set(self.compare_select.value)
        options = [(f"{r.config.label()} [{r.status}] · {r.run_id}", r.run_id) for r in self.results]
        value = tuple(rid for _, rid in options if rid in keep or rid not in old_options)
        self._updating_selection = True
        try:
            self.compare_select.options = options
            self.compare_select.value = value
            self.compare_select.rows = max(2, min(8, len(options)))
        finally:
            self._updating_selection = False

    def selected_results(self) -> list[RunResult]:
        """The runs selected for comparison and export, oldest first."""
        chosen = set(self.compare_select.value)
        return [r for r in self.results if r.run_id in chosen]

    def _on_select(self, _change: Any) -> None:
        if not self._updating_selection:
            try:
                self._draw_compare()
            except Exception as e:  # noqa: BLE001
                self._show(f"Could not draw the comparison: {type(e).__name__}: {e}", "error")

    def _draw_compare(self) -> None:
        from workbench.viz.plots import comparison_figures

        chosen = self.selected_results()
        if not chosen:
            text = "Select runs above to compare them." if self.results else "Train a run to see comparisons."
            self.compare_plots.outputs = ({"output_type": "display_data", "data": {"text/plain": text}, "metadata": {}},)
            return
        figures = comparison_figures(chosen)
        self.compare_plots.outputs = tuple(_png_output(fig) for fig in figures.values())

    def _on_export(self, _button: Any = None) -> None:
        from workbench.records.report import export_report

        chosen = self.selected_results()
        if not chosen:
            self._show("Nothing to export: select at least one run in the list under 'Compare'.", "error")
            return
        folder = self.reports_dir / f"report-{datetime.now():%Y%m%d-%H%M%S}"
        n = 2
        while folder.exists():
            folder = self.reports_dir / f"report-{datetime.now():%Y%m%d-%H%M%S}-{n}"
            n += 1
        try:
            written = export_report(chosen, folder)
        except Exception as e:  # noqa: BLE001
            self._show(f"Export failed: {type(e).__name__}: {e}", "error")
            return
        self.last_export = folder
        self._show(f"Wrote {len(written)} files to {folder} ({len(chosen)} run(s): figures as PNG and SVG, "
                   f"the table as CSV and Markdown).", "ok")


__all__ = ["Workbench", "RANK_CAP", "DEFAULT_LR"]

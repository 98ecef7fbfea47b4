"""The panel's Train tab: the settings on the left; Train / Stop, the progress and the live loss on the right.

The settings, named as in ``LoRAConfig`` and ``RunConfig``:

* **method**: LoRA (frozen base + low-rank updates + trained head), full fine-tuning
  (every weight trains) or head only (only the new classifier trains);
* **LoRA settings**: ``rank`` r, ``alpha`` (the update is scaled by s = alpha / r, or
  alpha / sqrt(r) with rsLoRA), the variant, the base's storage (QLoRA), the ``targets``
  (one toggle per kind of layer the loaded model really has: query, key, value, ...) and
  the ``layers`` (blocks) they are adapted in;
* a **live readout** of the trainable parameters before anything runs, from the layer
  shapes alone: ``sum over chosen layers of r * (in + out)  +  head parameters``;
  and, when the settings cannot make a run, what is wrong and what is allowed.

Numbers are typed as text, so a bad one ("0,001", "abc", 0) stays as typed and is
refused with what is allowed.  A run goes in a background thread (so Stop can be
clicked while it trains); the progress bar and the live loss curve follow it.
"""

from __future__ import annotations

import html
import math
import time
from typing import Any

import ipywidgets as widgets
import pandas as pd

from workbench.ui.markup import COLORS, number_text, png_output
from workbench.ui.settings import HEAD_NOT_FOR_LM, QUANTIZE_OPTIONS, VARIANT_OPTIONS
from workbench.ui.state import PanelState
from workbench.ui.typed import NUMBER_CHOICES, read_number

# The live curve is redrawn at most this often (seconds), and at the end of the run ...
LIVE_MIN_INTERVAL_S = 0.5
# ... and never more often than every LIVE_COST_FACTOR times the last redraw took, so
# drawing costs at most about 1 / LIVE_COST_FACTOR of the training time.  (The run waits
# while its curve is drawn: at 5, a default generate run drew 26 times, 0.19 s each, 4.7 of
# its 37.5 s, on AMD EPYC Zen 3; at 10 the curve still follows every 2 s or so.)
LIVE_COST_FACTOR = 10.0
# The bar and its "k / n, loss" label move at most this often (seconds), and at a run's first and
# last step.  Each move is a message through the Jupyter server to the browser, which lays the
# panel out and paints it, on the same CPUs the run trains on: a step's two threads then wait for
# each other.  Moved at every step, a default generate run in JupyterLab took 0.067 s a step
# (2-core AMD EPYC Zen 4; 0.038 s without a browser).
PROGRESS_MIN_INTERVAL_S = 0.25
_METHOD_TIPS = {"lora": "frozen base + low-rank updates (+ the trained head of a classifier)",
                "full": "every weight trains", "head": "only the classifier head trains"}


def _box(width: str) -> widgets.Layout:
    return widgets.Layout(width=width)


class TrainTab:
    """The Train tab's widgets, bound to the state's settings and run control.

    Its controls (``method``, ``rank``, ``alpha``, ``rslora``, ``variant``,
    ``quantize``, ``targets``: name -> ToggleButton, ``layer_range``, ``lr``, ``steps``,
    ``batch_size``, ``seed``, ``train_button``, ``stop_button``) and displays
    (``readout``, ``lr_note``, ``method_note``, ``progress``, ``live_plot``) are
    attributes; ``page`` is the tab.
    """

    def __init__(self, state: PanelState) -> None:
        self.state = state
        self._syncing = False
        self._last_draw = 0.0
        self._draw_cost = 0.0
        self._last_moved = 0.0
        s, c = state, state.choices
        label_w = {"description_width": "48px"}
        methods = s.methods()
        self.method = widgets.ToggleButtons(options=methods, value=c.method, style={"button_width": "118px"},
                                            tooltips=[_METHOD_TIPS[v] for _, v in methods])
        self.method_note = widgets.HTML()
        # min 0: a 0 typed into the slider's box reaches the state and is refused there (min 1 would
        # silently make it 1, a run nobody asked for).
        self.rank = widgets.IntSlider(value=c.rank, min=0, max=max(s.rank_max(), c.rank), description="rank",
                                      continuous_update=False, style=label_w, layout=_box("230px"))
        # Numbers are text boxes: what is typed reaches the state as typed, which reads a
        # plain number and refuses anything else with what is allowed (never rewritten).
        self.alpha = widgets.Text(value=number_text(c.alpha), description="alpha", style=label_w,
                                  layout=_box("110px"))
        self.rslora = widgets.Checkbox(value=c.rslora, description="rsLoRA (s = alpha/√r)", indent=False,
                                       layout=widgets.Layout(width="auto"))
        self.variant = widgets.Dropdown(options=VARIANT_OPTIONS, value=c.variant, description="variant",
                                        style=label_w, layout=_box("205px"))
        # The base's storage (QLoRA): a dropdown's value cannot be None, so "float" is "none" here.
        self.quantize = widgets.Dropdown(options=[(label, v or "none") for label, v in QUANTIZE_OPTIONS],
                                         value=c.quantize or "none", description="quantize",
                                         style={"description_width": "60px"}, layout=_box("242px"),
                                         tooltip="how the frozen base is stored: float, or quantized with "
                                                 "bitsandbytes (QLoRA: NF4; LLM.int8); LoRA trains in float on top")
        self.targets: dict[str, widgets.ToggleButton] = self._target_toggles()
        blocks = s.model.blocks or (0,)
        self.layer_range = widgets.IntRangeSlider(value=c.layer_range, min=blocks[0], max=blocks[-1],
                                                  description="layers", continuous_update=False, style=label_w,
                                                  layout=_box("230px"),
                                                  tooltip="the blocks LoRA goes into (LoRAConfig.layers)")
        self.lr = widgets.Text(value=number_text(c.lr), description="lr", style={"description_width": "20px"},
                               layout=_box("120px"), tooltip="learning rate: a number with a decimal point, e.g. 0.001")
        self.steps = widgets.Text(value=number_text(c.steps), description="steps",
                                  style={"description_width": "38px"}, layout=_box("110px"))
        self.batch_size = widgets.Text(value=number_text(c.batch_size), description="batch",
                                       style={"description_width": "38px"}, layout=_box("100px"),
                                       tooltip="batch size")
        self.seed = widgets.Text(value=number_text(c.seed), description="seed", style={"description_width": "32px"},
                                 layout=_box("90px"))
        self.lr_note = widgets.HTML()
        # The settings an instructor locked for an exercise, and why (empty when none).
        self.locked_note = widgets.HTML()
        self.readout = widgets.HTML()
        self.train_button = widgets.Button(description="Train", button_style="success", icon="play",
                                           tooltip="train one run with these settings", layout=_box("100px"))
        self.stop_button = widgets.Button(description="Stop", button_style="danger", icon="stop", layout=_box("90px"),
                                          tooltip="end the run after the current step; it is kept as 'stopped'")
        self.progress = widgets.IntProgress(value=0, min=0, max=max(1, s.defaults.steps), layout=_box("150px"),
                                            tooltip="training steps done")
        self.progress_text = widgets.Label()
        # Why Train is disabled (what to fix), beside it; empty when the settings can train.
        self.train_reason = widgets.HTML()
        self.train_reason.add_class("workbench-train-reason")
        self.live_plot = widgets.Output(layout=widgets.Layout(min_height="40px", width="100%"))
        self.live_plot.add_class("workbench-live")

        row = widgets.Layout(flex_flow="row wrap", align_items="center")
        # Every widget made stays in use: Voila loads every live widget model, and one that
        # refers to a closed widget would stop the whole page from drawing.
        self.targets_row = widgets.HBox([widgets.Label("targets", layout=_box("56px")), *self.targets.values()],
                                        layout=row)
        self._targets_of = (s.model.name, s.task)
        self.lora_box = widgets.VBox([
            widgets.HBox([self.rank, self.layer_range], layout=row),
            widgets.HBox([self.alpha, self.variant, self.rslora], layout=row),
            widgets.HBox([self.quantize], layout=row),
            self.targets_row,
        ])
        settings = widgets.VBox([
            widgets.HBox([widgets.Label("method", layout=_box("56px")), self.method, self.method_note], layout=row),
            self.lora_box,
            widgets.HBox([self.lr, self.steps, self.batch_size, self.seed], layout=row),
            self.lr_note,
            self.locked_note,
            self.readout,
        ], layout=widgets.Layout(width="480px", min_width="440px", margin="0 12px 0 0"))
        running = widgets.VBox([
            widgets.HBox([self.train_button, self.stop_button, self.progress, self.progress_text], layout=row),
            self.train_reason,
            self.live_plot,
        ], layout=widgets.Layout(flex="1 1 380px", min_width="360px", max_width="620px"))
        self.page = widgets.HBox([settings, running], layout=widgets.Layout(flex_flow="row wrap", width="100%"))
        self._bind()

    # ------------------------------------------------------------------ building and binding

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
        self.train_button.on_click(lambda _b: self.state.start())
        self.stop_button.on_click(lambda _b: self.state.stop())

    def _bind_targets(self) -> None:
        for box in self.targets.values():
            box.observe(lambda _change: self._set_choice(
                "targets", tuple(k for k, b in self.targets.items() if b.value)), names="value")

    def _set_choice(self, name: str, value: Any) -> None:
        if not self._syncing:
            self.state.update(**{name: value})

    # ------------------------------------------------------------------ state -> widgets

    def show_task(self) -> None:
        """A new task: its model's target toggles, its methods, the rank and layer limits."""
        s = self.state
        self._syncing = True
        try:
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
            if not s.running:  # the other task's progress is not this one's
                self.progress.value, self.progress_text.value = 0, ""
        finally:
            self._syncing = False

    def show_choices(self) -> None:
        """Widgets, readout and learning-rate note from the state's choices."""
        c = self.state.choices
        self._syncing = True
        try:
            for name, w in self._choice_widgets().items():
                value = getattr(c, name)
                if name in NUMBER_CHOICES and isinstance(w, widgets.Text):
                    # Leave the text as typed when it already says this value ("0.0010", "1e-3").
                    if read_number(w.value, NUMBER_CHOICES[name]) != value:
                        w.value = number_text(value)
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
        warning = self.state.lr_warning()
        self.lr_note.value = (f"<div style='line-height:1.25;font-size:11px;margin:2px 0'>"
                              f"{html.escape(self.state.lr_note())}"
                              + (f"<div class='workbench-lr-warning' style='color:{COLORS['warn']};font-weight:bold'>"
                                 f"{html.escape(warning)}</div>" if warning else "") + "</div>")
        self._mark_field()
        r = self.state.readout()
        problem = (f"<div class='workbench-problem' style='color:{COLORS['error']};font-weight:bold'>"
                   f"{html.escape(r.problem)}</div>" if r.problem else "")
        self.readout.value = (f"<div style='margin:2px 0;font-size:12px;line-height:1.25'><b>{html.escape(r.headline)}"
                              f"</b><div style='font-size:11px'>{html.escape(r.detail)}</div>{problem}</div>")

    def _mark_field(self) -> None:
        """The box the problem is about gets a red border; Train is disabled with the reason beside it."""
        field = self.state.problem_field()
        boxes = {"rank": self.rank, "alpha": self.alpha, "lr": self.lr, "steps": self.steps,
                 "batch_size": self.batch_size, "seed": self.seed, "layer_range": self.layer_range}
        for name, w in boxes.items():
            w.layout.border = f"2px solid {COLORS['error']}" if name == field else ""
        self.targets_row.layout.border = f"2px solid {COLORS['error']}" if field == "targets" else ""
        problem = self.state.problem()
        self.train_reason.value = ("" if problem is None else
                                   f"<div style='color:{COLORS['error']};font-size:12px;line-height:1.25'>Train is off "
                                   f"until this is fixed: {html.escape(problem.removeprefix('Cannot train with these settings: '))}"
                                   "</div>")
        self.enable()

    def enable(self) -> None:
        """Nothing to change while a run trains; the LoRA settings only for LoRA; Train only for settings that can train."""
        s = self.state
        running, lora = s.running, s.choices.method == "lora"
        for w in (self.method, self.lr, self.steps, self.batch_size, self.seed):
            w.disabled = running
        self.train_button.disabled = running or bool(self.train_reason.value)
        for w in (self.rank, self.alpha, self.rslora, self.variant, self.quantize, *self.targets.values()):
            w.disabled = running or not lora
        self.layer_range.disabled = running or not lora or len(s.model.blocks) < 2
        self.stop_button.disabled = not running or s.stopping
        self._show_locked()

    def _show_locked(self) -> None:
        """Locked choices greyed out, their reason as the tooltip and in one line under the settings."""
        locked = self.state.locked
        controls = {"method": self.method, "rank": self.rank, "alpha": self.alpha, "rslora": self.rslora,
                    "variant": self.variant, "quantize": self.quantize, "layer_range": self.layer_range,
                    "lr": self.lr, "steps": self.steps, "batch_size": self.batch_size, "seed": self.seed}
        plain = self.__dict__.setdefault("_plain_tips", {})  # id -> (widget, its own tooltip), while locked
        held = set()
        for name, reason in locked.items():
            for w in self.targets.values() if name == "targets" else [controls.get(name)]:
                if w is not None:
                    plain.setdefault(id(w), (w, w.tooltip))
                    held.add(id(w))
                    w.disabled, w.tooltip = True, f"locked for this exercise: {reason}"
        for key in [k for k in plain if k not in held]:  # unlocked: its own tooltip back
            w, tip = plain.pop(key)
            w.tooltip = tip
        reasons = sorted(set(locked.values()))
        self.locked_note.value = ("" if not locked else
                                  f"<div class='workbench-locked' style='font-size:11px;color:{COLORS['info']};"
                                  f"margin:2px 0'>locked for this exercise: {html.escape(', '.join(sorted(locked)))}"
                                  f" — {html.escape('; '.join(reasons))}</div>")

    def show_start(self) -> bool:
        """A run that has just started: an empty progress bar (True); False when none has."""
        s = self.state
        if not (s.running and s.step is None and s.run_config is not None):
            return False
        self.progress.max, self.progress.value = s.run_config.steps, 0
        self.progress_text.value = f"0 / {s.run_config.steps}"
        self._last_draw, self._draw_cost, self._last_moved = 0.0, 0.0, 0.0
        return True

    def show_progress(self) -> None:
        """Progress (or the evaluation going on): the bar at most every PROGRESS_MIN_INTERVAL_S, the live
        curve at most every LIVE_MIN_INTERVAL_S."""
        info = self.state.step
        if self.state.phase == "evaluating":  # no step runs meanwhile: say what does
            self.progress_text.value = self.state.phase_text
            self.progress.bar_style = "info"
            return
        if info is None:
            return
        now = time.monotonic()
        moved_lately = now - self._last_moved < PROGRESS_MIN_INTERVAL_S and self.progress.bar_style == ""
        if moved_lately and 1 < info.step < info.steps:
            return
        self._last_moved = now
        self._move(info)
        interval = max(LIVE_MIN_INTERVAL_S, LIVE_COST_FACTOR * self._draw_cost)
        if now - self._last_draw >= interval and info.step < info.steps:
            try:
                self._draw_live(pd.DataFrame(info.history))
            except Exception:  # noqa: BLE001 - a drawing glitch must not end the run; the final draw reports
                pass
            self._last_draw = time.monotonic()
            self._draw_cost = self._last_draw - now

    def show_end(self) -> None:
        """A run that has ended: the bar and its label at its last step (a stopped run's last move may have
        been skipped, see PROGRESS_MIN_INTERVAL_S); the final curve is ``show_live``'s."""
        info = self.state.step
        if not self.state.running and info is not None:
            self._move(info)

    def _move(self, info: Any) -> None:
        self.progress.bar_style = ""
        self.progress.value = info.step
        loss = f", loss {info.train_loss:.4f}" if math.isfinite(info.train_loss) else ""
        self.progress_text.value = f"{info.step} / {info.steps}{loss}"

    def show_live(self) -> None:
        history = self.state.live_history
        if history is None:
            self.live_plot.outputs = ()
        else:
            self._draw_live(history)

    def _draw_live(self, history: pd.DataFrame) -> None:
        from workbench.engine.labels import short_label
        from workbench.viz.run_figures import live_loss
        from workbench.viz.style import run_color

        cfg = self.state.run_config  # the whole label is in the message: a short title fits the column
        base = f" {cfg.quantize.upper()}" if cfg.quantize else ""
        fig = live_loss(history, f"Loss, {short_label(cfg)}{base}, lr={cfg.lr:g}", total_steps=cfg.steps,
                        color=run_color(cfg))
        self.live_plot.outputs = (png_output(fig),)


__all__ = ["TrainTab", "LIVE_MIN_INTERVAL_S", "LIVE_COST_FACTOR", "PROGRESS_MIN_INTERVAL_S"]

"""The workbench panel without its widgets: the choices, the run they make, the runs, export.

``PanelState`` holds everything the panel knows and does, in plain Python:

* the **choices** (``Choices``): method, LoRA variant, ``rank``, ``alpha``, ``rslora``,
  ``targets`` (the kinds of layer ticked), ``layer_range`` (the blocks, as LoRAConfig's
  ``layers``), ``lr``, ``steps``, ``batch_size``, ``seed``: the names of ``RunConfig``
  and ``LoRAConfig`` wherever the thing is the same;
* the **RunConfig** they make (``config()``, with its ``lora: LoRAConfig``), and what
  is wrong with them (``problem()``): a bad value is refused with a message that says
  what is allowed, never clamped or rewritten;
* the **parameter readout** from layer shapes alone: a LoRA layer of shape in -> out
  trains r * (in + out) numbers (A is r x in, B is out x r; DoRA adds out magnitudes):

      trainable = sum over chosen layers of r * (in + out)  +  head parameters;

* the **run lifecycle**: ``start()`` (in a background thread, or inline), ``stop()``,
  ``wait()``; the run ends completed, stopped, diverged or failed, and says so;
* the **runs** in the store, the table shown of them, the runs selected for
  comparison, and ``export()`` of the selected runs' figures and table.

It imports no widget library, so it can be tested with plain pytest and driven from a
script.  The widget view (``workbench.ui.panel.Workbench``) subscribes to its events
(``subscribe``) and forwards the user's clicks and values to it.
"""

from __future__ import annotations

import math
import re
import threading
import warnings
from dataclasses import dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Literal

import pandas as pd

from workbench.engine.config import METHODS, RunConfig, RunResult, preset as make_preset
from workbench.engine.sweep import FULL_LR, HEAD_LR, VARIANTS
from workbench.lora.config import LoRAConfig, lora_scaling
from workbench.lora.targets import LayerGroup, head_names, layer_groups, layer_index, targets_for
from workbench.lora.params import ParamCounts, lora_parameter_count
from workbench.util.checks import check_choice, check_integer, check_positive_int, check_positive_number, is_integer
from workbench.util.units import format_bytes

# The methods and LoRA variants the panel offers, as (label, value).  A variant is a set
# of LoRAConfig settings (workbench.engine.sweep.VARIANTS); rsLoRA has its own checkbox.
METHOD_LABELS: tuple[tuple[str, str], ...] = (("LoRA", "lora"), ("full fine-tuning", "full"), ("head only", "head"))
VARIANT_OPTIONS: tuple[tuple[str, str], ...] = (
    ("LoRA", "lora"), ("DoRA (learned magnitude)", "dora"), ("PiSSA init (top-r SVD of W)", "pissa"),
    ("LoRA+ (B's lr x16)", "loraplus"),
)
# The rank never goes above this, even for wide layers: beyond it a workshop run learns
# nothing new and a slider becomes hard to aim.
RANK_CAP = 64
# Starting learning rates per method (LoRA: the preset's lr).  Full fine-tuning moves
# weights the model already relies on, so it takes small steps; LoRA's B starts at zero
# and needs larger ones; a fresh head alone tolerates the largest.
DEFAULT_LR: dict[str, float] = {"full": FULL_LR, "head": HEAD_LR}
LR_WHY: dict[str, str] = {
    "lora": "LoRA's B matrices start at zero, so the update needs larger steps than full fine-tuning",
    "full": "every weight moves, and large steps would wreck what the model already knows",
    "head": "only a small new layer learns on top of frozen features, so larger steps are safe",
}
MessageKind = Literal["info", "ok", "warn", "error"]
# What changed, as told to subscribers: the choices, the message, running or not, the
# progress of the run, its live curve, the runs in the store, the comparison selection.
Event = Literal["choices", "message", "running", "progress", "live", "runs", "selection"]
TrainFn = Callable[..., RunResult]


def default_train(cfg: RunConfig, **kwargs: Any) -> RunResult:
    """``wb.train``: the engine's train with the run store attached (``workbench.records.recording``)."""
    from workbench.records import recording

    return recording.train(cfg, **kwargs)


# ---------------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ModelLayers:
    """What the panel needs of a model, read once from its layer shapes.

    ``targets``: the model's LoRA-capable layer groups (the classifier head left out),
    each under the name the panel shows for it: its kind ("query", "FFN out", ...), or
    its path pattern when two groups share a kind.  ``blocks``: the block indices.
    """

    name: str
    targets: dict[str, LayerGroup]
    blocks: tuple[int, ...]
    head_parameters: int
    base_parameters: int

    @classmethod
    def from_model(cls, name: str, model: Any) -> "ModelLayers":
        """Read the groups, blocks and counts of a loaded model (with its head)."""
        from workbench.lora.params import count_parameters

        heads = head_names(model)
        head_parameters = sum(p.numel() for h in heads for p in model.get_submodule(h).parameters())
        groups = [g for g in layer_groups(model)
                  if not any(n == h or n.startswith(h + ".") for n in g.names for h in heads)]
        targets: dict[str, LayerGroup] = {}
        for g in groups:
            targets[g.kind if g.kind not in targets else g.pattern] = g
        blocks = tuple(sorted({i for g in groups for n in g.names if (i := layer_index(n)) is not None}))
        return cls(name, targets, blocks, head_parameters, count_parameters(model).total)

    @classmethod
    def load(cls, name: str, task: str = "classification", seed: int = 0) -> "ModelLayers":
        """Load the base model once (two labels, as the bundled task has), keep its shapes."""
        from workbench.engine.models import load_base

        model, _ = load_base(name, num_labels=2, task=task, seed=seed)
        return cls.from_model(name, model)

    def targets_matching(self, targets: tuple[str, ...] | str) -> tuple[str, ...]:
        """The panel's target names that a LoRAConfig ``targets`` selects (by target, kind or name suffix)."""
        if isinstance(targets, str):
            if targets == "all-linear":
                return tuple(k for k, g in self.targets.items() if g.kind != "pooler")
            pattern = re.compile(targets)
            return tuple(k for k, g in self.targets.items() if any(pattern.fullmatch(n) for n in g.names))
        return tuple(k for k, g in self.targets.items()
                     if any(t in (g.target, g.kind) or all(n == t or n.endswith("." + t) for n in g.names)
                            for t in targets))


# ---------------------------------------------------------------------------------------------- the choices


@dataclass
class Choices:
    """The panel's controls as plain values, kept as the user gave them (checked by ``problem``).

    ``targets``: the names (``ModelLayers.targets``) of the layer kinds ticked;
    ``layer_range``: the first and last block LoRA goes into (LoRAConfig's ``layers``
    is the blocks in it, or None when it covers them all).
    """

    method: str
    variant: str
    rank: int
    alpha: float
    rslora: bool
    targets: tuple[str, ...]
    layer_range: tuple[int, int]
    lr: float
    steps: int
    batch_size: int
    seed: int

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class Selection:
    """One ticked layer group and the module paths of it inside the layer range."""

    key: str
    group: LayerGroup
    names: list[str]


class SettingsError(ValueError):
    """The choices cannot make a run; the message says what was given and what is allowed."""


@dataclass(frozen=True)
class Message:
    """What the panel says to the user now (plain text; the view adds the markup)."""

    text: str
    kind: MessageKind = "info"


@dataclass(frozen=True)
class Readout:
    """The live parameter readout: the counts (None when the settings give none), how, and what is wrong."""

    estimate: ParamCounts | None
    detail: str
    problem: str | None = None

    @property
    def headline(self) -> str:
        if self.estimate is None:
            return "Trainable parameters: –"
        e = self.estimate
        return f"Trainable parameters: {e.trainable:,} of {e.total:,} ({100 * e.share:.3g}% of the model)"


def _fmt(value: Any, fmt: str) -> str:
    """Format a number, or a dash when it is missing (None, NA, NaN)."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, fmt)


def _method_label(method: str) -> str:
    return dict((v, k) for k, v in METHOD_LABELS)[method]


# ---------------------------------------------------------------------------------------------- the state


class PanelState:
    """The panel's choices, runs and run lifecycle, with no widgets.

    ``model``: "minilm" (bundled), "tiny-bert", a local folder, ...; ``preset``: "default"
    or "tiny" (seconds; tests).  Runs go to ``runs_dir`` (and are loaded from it now),
    reports to ``reports_dir``.  ``background=False`` trains inside ``start()`` (for
    scripts and tests).  ``layers``: the model's ``ModelLayers`` when already read;
    ``train``: the function that trains and stores a run (default: ``wb.train``, i.e.
    ``workbench.records.recording.train``).
    """

    def __init__(
        self,
        model: str = "minilm",
        preset: str = "default",
        runs_dir: str | Path = "runs",
        reports_dir: str | Path = "reports",
        background: bool = True,
        layers: ModelLayers | None = None,
        train: TrainFn | None = None,
    ) -> None:
        self.preset_name = preset
        self.defaults: RunConfig = make_preset(preset, model=model)  # raises on an unknown preset
        if layers is not None and layers.name != model:
            raise ValueError(f"layers were read from model {layers.name!r}, not {model!r}")
        self.model = layers or ModelLayers.load(model, task=self.defaults.task, seed=self.defaults.seed)
        self.runs_dir = Path(runs_dir)
        self.reports_dir = Path(reports_dir)
        self.background = background
        self.train: TrainFn = train or default_train
        self.choices = self.default_choices()
        self.message = Message("")
        self.results: list[RunResult] = []
        self.runs_frame: pd.DataFrame = pd.DataFrame()
        self.selected: tuple[str, ...] = ()
        self.last_result: RunResult | None = None
        self.last_error: str | None = None
        self.last_export: Path | None = None
        self.run_config: RunConfig | None = None  # the config of the run going (or the last one)
        self.step: Any = None  # the engine's StepInfo after the last step of the run going
        self.live_history: pd.DataFrame | None = None  # the curve to show; None: nothing to show
        self._listeners: list[Callable[[Event], None]] = []
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._running = False
        self.stopping = False
        self.refresh()
        if not self.results:
            self.say(f"Ready. Choose a method and settings, then press Train. Runs are saved in {self.runs_dir}.")

    # ------------------------------------------------------------------ events

    def subscribe(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener(event)`` after every change (from the training thread too)."""
        self._listeners.append(listener)

    def _emit(self, event: Event) -> None:
        for listener in list(self._listeners):
            listener(event)

    def say(self, text: str, kind: MessageKind = "info") -> None:
        """Put a message in front of the user (an error is also kept as ``last_error``)."""
        check_choice("kind", kind, ("info", "ok", "warn", "error"))
        self.message = Message(text, kind)
        if kind == "error":
            self.last_error = text
        self._emit("message")

    # ------------------------------------------------------------------ choices

    def default_choices(self) -> Choices:
        """The preset's settings, as the panel's controls show them."""
        d, lo_hi = self.defaults, (self.model.blocks[0], self.model.blocks[-1]) if self.model.blocks else (0, 0)
        wanted = self.model.targets_matching(d.lora.targets) or tuple(self.model.targets)[:1]
        if d.lora.layers:
            lo_hi = (min(d.lora.layers), max(d.lora.layers))
        variant = next((v for _, v in VARIANT_OPTIONS
                        if VARIANTS[v] and all(getattr(d.lora, k) == x for k, x in VARIANTS[v].items())), "lora")
        return Choices(method=d.method, variant=variant, rank=d.lora.rank, alpha=d.lora.alpha, rslora=d.lora.rslora,
                       targets=wanted, layer_range=lo_hi, lr=self.starting_lr(d.method), steps=d.steps,
                       batch_size=d.batch_size, seed=d.seed)

    def update(self, **changes: Any) -> None:
        """Change some choices.  They are kept as given; ``problem()`` says what is wrong.

        Switching the method sets its starting learning rate (``starting_lr``), as the
        panel's note says; every other choice changes only the setting named.
        """
        unknown = sorted(set(changes) - set(Choices.names()))
        if unknown:
            raise TypeError(f"unknown choice(s) {', '.join(unknown)}; the choices are: {', '.join(Choices.names())}")
        if "targets" in changes and not isinstance(changes["targets"], str):
            changes["targets"] = tuple(changes["targets"])
        if "layer_range" in changes and not isinstance(changes["layer_range"], str):
            changes["layer_range"] = tuple(changes["layer_range"])
        if "method" in changes and changes["method"] != self.choices.method and "lr" not in changes:
            changes["lr"] = self.starting_lr(changes["method"])
        self.choices = replace(self.choices, **changes)
        self._emit("choices")

    def starting_lr(self, method: str) -> float:
        """The learning rate a method starts with: the preset's for LoRA (see ``LR_WHY``)."""
        return DEFAULT_LR.get(method, self.defaults.lr)

    def lr_note(self) -> str:
        """Why the learning rate starts where it does for the chosen method."""
        method = self.choices.method
        if method not in METHODS:
            return ""
        return (f"Learning rate set to {self.starting_lr(method):g} for {_method_label(method)}: {LR_WHY[method]}. "
                "Switching the method resets it; change it freely.")

    def rank_max(self) -> int:
        """The highest rank any choice of targets allows: the largest min(in, out), at most ``RANK_CAP``."""
        sizes = [min(g.shape) for g in self.model.targets.values()]
        return min(RANK_CAP, max(sizes)) if sizes else RANK_CAP

    def rank_limit(self) -> tuple[int, str]:
        """The highest rank for the ticked targets, and why.

        A rank above min(in, out) of a layer adds no capacity (B A has rank <= min(in, out))
        and leaves PiSSA's top-r singular directions undefined, so it is refused.
        """
        limit, why = RANK_CAP, f"the panel's cap is {RANK_CAP}"
        for s in self.selected_layers():
            size = min(s.group.shape)
            if size < limit:
                limit, why = size, (f"{s.key} is {s.group.shape[0]} -> {s.group.shape[1]}, and a rank above "
                                    f"min(in, out) = {size} adds no capacity")
        return limit, why

    def layers(self) -> tuple[int, ...] | None:
        """LoRAConfig's ``layers``: the blocks in ``layer_range``; None when it covers every block."""
        if not self.model.blocks:
            return None
        lo, hi = self.choices.layer_range
        chosen = tuple(i for i in self.model.blocks if lo <= i <= hi)
        return None if chosen == self.model.blocks else chosen

    def selected_layers(self) -> list[Selection]:
        """The layers LoRA would wrap now, per ticked group, as ``find_targets`` would pick them.

        With a layer range narrower than the model only paths whose block index lies in it
        count (layers outside the blocks, such as the pooler, then drop out).
        """
        layers, ticked = self.layers(), set(self.choices.targets)
        out = []
        for key, g in self.model.targets.items():  # in the model's order, whatever order they were ticked in
            if key not in ticked:
                continue
            names = g.names if layers is None else [n for n in g.names if layer_index(n) in layers]
            out.append(Selection(key, g, names))
        return out

    # ------------------------------------------------------------------ checks, config, readout

    def _choice_problem(self) -> str | None:
        """What is wrong with the choices themselves (before a RunConfig is built), or None."""
        c, m = self.choices, self.model
        try:
            check_choice("method", c.method, METHODS)
            if c.method == "lora":
                check_choice("variant", c.variant, tuple(v for _, v in VARIANT_OPTIONS))
                if isinstance(c.targets, str):
                    raise ValueError(f"targets must be a tuple of names from {', '.join(m.targets)}, got {c.targets!r}")
                unknown = [t for t in c.targets if t not in m.targets]
                if unknown:
                    raise ValueError(f"unknown target(s) {', '.join(map(repr, unknown))}; "
                                     f"this model has: {', '.join(m.targets)}")
                if not c.targets:
                    return ("LoRA needs at least one target layer: tick one of "
                            f"{', '.join(m.targets)} (or choose full fine-tuning / head only).")
                self._check_layer_range()
                if not any(s.names for s in self.selected_layers()):
                    lo, hi = c.layer_range
                    return (f"None of the ticked layers ({', '.join(c.targets)}) lies in layers {lo}-{hi}: "
                            "widen the layer range or tick layers inside it.")
                check_positive_int("rank", c.rank)
                limit, why = self.rank_limit()
                if c.rank > limit:
                    raise ValueError(f"rank must be at most {limit} for the ticked layers ({why}), got {c.rank}")
                self.lora_config()  # LoRAConfig's own checks: alpha > 0, ...
            check_positive_number("lr", c.lr, what="learning rate")
            check_positive_int("steps", c.steps)
            check_positive_int("batch_size", c.batch_size, what="batch size")
            check_integer("seed", c.seed)
        except ValueError as e:
            return f"Cannot train with these settings: {e}"
        return None

    def _check_layer_range(self) -> None:
        blocks = self.model.blocks
        lo_hi = self.choices.layer_range
        if not blocks:
            return
        ok = (isinstance(lo_hi, tuple) and len(lo_hi) == 2 and all(is_integer(i) for i in lo_hi)
              and blocks[0] <= lo_hi[0] <= lo_hi[1] <= blocks[-1])
        if not ok:
            raise ValueError(f"layer_range must be (first, last) with {blocks[0]} <= first <= last <= {blocks[-1]}, "
                             f"got {lo_hi!r}")

    def lora_config(self) -> LoRAConfig:
        """The LoRAConfig of the choices (checked by LoRAConfig itself: alpha > 0, ...)."""
        c = self.choices
        chosen = [s.group for s in self.selected_layers() if s.names]
        targets = targets_for(chosen) if chosen else ()
        return LoRAConfig(rank=c.rank, alpha=c.alpha, rslora=c.rslora, targets=targets, layers=self.layers(),
                          **VARIANTS[c.variant])

    def config(self) -> RunConfig:
        """The RunConfig the Train button would run now: the preset plus the choices.

        Raises ``SettingsError`` (a ValueError) with the message ``problem()`` gives when
        the choices are bad.
        """
        problem = self._choice_problem()
        if problem:
            raise SettingsError(problem)
        c = self.choices
        over: dict[str, Any] = dict(model=self.model.name, method=c.method, lr=c.lr, steps=c.steps,
                                    batch_size=c.batch_size, seed=c.seed)
        if c.method != "lora":
            return make_preset(self.preset_name, **over)
        lora = self.lora_config()
        cfg = make_preset(self.preset_name, **over, lora=lora)
        if isinstance(lora.targets, str) or lora.layers is not None:
            # A regex or a layer range makes the default label unreadable: name the kinds.
            kinds = ",".join(s.key for s in self.selected_layers() if s.names)
            layers = lora.layers
            where = "" if not layers else (f", layer {layers[0]}" if len(layers) == 1
                                           else f", layers {layers[0]}-{layers[-1]}")
            cfg = replace(cfg, name=f"{lora.label().split(' (')[0]} ({kinds}{where})")
        return cfg

    def problem(self) -> str | None:
        """What is wrong with the current choices, in words (what was given, what is allowed), or None."""
        from workbench.engine.training import validate

        try:
            validate(self.config())
        except SettingsError as e:
            return str(e)
        except ValueError as e:  # the engine's own check of the whole config
            return f"Cannot train with these settings: {e}"
        return None

    def parameter_estimate(self) -> ParamCounts:
        """Trainable and total parameters of the choices, from layer shapes alone.

        LoRA: trainable = sum over chosen layers of r * (in + out) (+ out for DoRA) + the
        head's parameters, and the total grows by the LoRA part; full: everything; head
        only: the head.  Raises ``ValueError`` when the rank is not a positive integer.
        """
        m, c = self.model, self.choices
        if c.method == "full":
            return ParamCounts(m.base_parameters, m.base_parameters)
        if c.method == "head":
            return ParamCounts(m.head_parameters, m.base_parameters)
        check_positive_int("rank", c.rank)
        dora = c.variant == "dora"
        lora = sum(len(s.names) * lora_parameter_count(*s.group.shape, c.rank, dora=dora)
                   for s in self.selected_layers())
        return ParamCounts(lora + m.head_parameters, m.base_parameters + lora)

    def readout(self) -> Readout:
        """The parameter readout with the closed form spelled out, and what is wrong (if anything)."""
        c, head = self.choices, f"classifier head {self.model.head_parameters:,}"
        problem = self.problem()
        try:
            estimate = self.parameter_estimate()
        except ValueError:
            return Readout(None, "", problem)
        if c.method == "full":
            return Readout(estimate, "full fine-tuning trains every parameter", problem)
        if c.method == "head":
            return Readout(estimate, f"only the {head} trains; the rest is frozen", problem)
        r, dora = c.rank, c.variant == "dora"
        plus = " + out" if dora else ""
        parts = [f"{s.key} {len(s.names)} × ({r}·({s.group.shape[0]}+{s.group.shape[1]}){plus}) = "
                 f"{len(s.names) * lora_parameter_count(*s.group.shape, r, dora=dora):,}" if s.names else
                 f"{s.key}: outside the chosen layers, not adapted" for s in self.selected_layers()]
        how = (f"LoRA trains r·(in+out){plus} per layer: " + "; ".join(parts) + f"; + {head}"
               if parts else "no target layer ticked")
        if isinstance(c.alpha, (int, float)) and not isinstance(c.alpha, bool) and math.isfinite(c.alpha):
            formula = "α/√r" if c.rslora else "α/r"
            how += f" · scale s = {formula} = {lora_scaling(r, c.alpha, bool(c.rslora)):.3g}"
        return Readout(estimate, how, problem)

    # ------------------------------------------------------------------ the run

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> bool:
        """Train one run with the choices (in a thread when ``background``); False when refused."""
        if self._running:
            self.say("A run is already going: wait for it or press Stop.", "warn")
            return False
        try:
            problem = self.problem()
            cfg = None if problem else self.config()
        except Exception as e:  # noqa: BLE001 - the panel must say it, not raise
            problem, cfg = f"{type(e).__name__}: {e}", None
        if problem or cfg is None:
            self.say(problem or "no config", "error")
            return False
        self.last_result, self.last_error = None, None
        self._stop_event = threading.Event()
        self._running, self.stopping = True, False
        self.run_config, self.step = cfg, None
        self.live_history = pd.DataFrame(columns=["step", "train_loss"])
        self._emit("running")
        self._emit("live")
        self.say(f"Training {cfg.label()} for {cfg.steps} steps (loading the model and data first)…")
        if self.background:
            self._thread = threading.Thread(target=self._run, args=(cfg,), name="workbench-train", daemon=True)
            self._thread.start()
        else:
            self._run(cfg)
        return True

    def _on_step(self, info: Any) -> None:
        self.step = info
        self._emit("progress")

    def _run(self, cfg: RunConfig) -> None:
        """Train (in the worker thread, or inline), then refresh the runs and report."""
        error = ""
        try:
            result = self.train(cfg, on_step=self._on_step, stop=self._stop_event, runs_dir=str(self.runs_dir),
                                progress=False)
        except Exception as e:  # noqa: BLE001 - said in the panel; the store keeps earlier runs
            result, error = None, f"{type(e).__name__}: {e}"
        try:
            if result is not None:
                self.last_result = result
                self.live_history = result.history
                self._emit("live")
            self.refresh()
        except Exception as e:  # noqa: BLE001
            if result is not None:
                result = None
                error = f"the run finished but the panel could not show it: {type(e).__name__}: {e}"
        finally:
            self._running, self.stopping = False, False
            self._emit("running")
        if result is None:
            self.live_history = None
            self._emit("live")
            self.say(error, "error")
        else:
            self.say(*self.verdict(result))

    @staticmethod
    def verdict(result: RunResult) -> tuple[str, MessageKind]:
        """What to tell the user about a finished run: completed, stopped, diverged or failed."""
        if result.status == "completed":
            acc = result.eval_accuracy
            acc_text = f", validation accuracy {100 * acc:.1f}%" if math.isfinite(acc) else ""
            return (f"Done: {result.config.label()}: final loss {result.final_loss:.4f}{acc_text}, "
                    f"{result.timing.seconds_per_step:.3f} s/step, {result.params.trainable:,} trainable "
                    f"parameters. Added to the table below.", "ok")
        if result.status == "stopped":
            return f"Stopped: {result.message}. The run is kept in the table with status 'stopped'.", "warn"
        if result.status == "diverged":
            hint = f"e.g. {result.config.lr / 10:g}"
            msg = result.message.rstrip(".")
            advice = f" ({hint})" if "lower learning rate" in msg else f". Try a lower learning rate, {hint}"
            return f"The run diverged: {msg}{advice}. It is kept in the table with status 'diverged'.", "error"
        return f"The run ended as '{result.status}': {result.message}", "error"

    def stop(self) -> None:
        """Ask the run going to end after its current step (it is kept as 'stopped')."""
        if not self._running:
            self.say("Nothing is training.")
            return
        self._stop_event.set()
        self.stopping = True
        self._emit("running")
        self.say("Stopping after the current step…", "warn")

    def wait(self, timeout: float | None = None) -> RunResult | None:
        """Block until the background run has finished; its result (None when it failed)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                raise TimeoutError(f"the run is still going after {timeout} s")
        return self.last_result

    # ------------------------------------------------------------------ runs, selection, export

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
        self.selected = tuple(r.run_id for r in results if r.run_id in self.selected or r.run_id not in known)
        self._emit("runs")
        if skipped:
            self.say(f"{len(skipped)} damaged run file(s) in the store were skipped: " + "; ".join(skipped), "warn")

    def select(self, run_ids: tuple[str, ...] | list[str]) -> None:
        """Choose the runs to compare and export (run ids from ``results``)."""
        ids = tuple(run_ids)
        known = {r.run_id for r in self.results}
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise ValueError(f"unknown run id(s) {', '.join(map(repr, unknown))}; the runs are: "
                             f"{', '.join(sorted(known)) or 'none yet'}")
        self.selected = tuple(r.run_id for r in self.results if r.run_id in ids)
        self._emit("selection")

    def selected_results(self) -> list[RunResult]:
        """The runs selected for comparison and export, oldest first."""
        chosen = set(self.selected)
        return [r for r in self.results if r.run_id in chosen]

    def targets_text(self, cfg: RunConfig) -> str:
        """A run's targets as the panel names them ('query,value (layers 0-1)'); '–' when not LoRA."""
        if cfg.method != "lora":
            return "–"
        targets = cfg.lora.targets
        if isinstance(targets, str):  # a regex: name the kinds of this model it picks
            try:
                kinds = list(self.model.targets_matching(targets))
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
        """The runs table as shown: one row of text per stored run, columns named as the store's."""
        rows = []
        for r, row in zip(self.results, self.runs_frame.itertuples(index=False)):
            c, lora = r.config, r.config.method == "lora"
            acc = r.eval_accuracy
            rows.append({
                "label": c.label(),
                "method": c.method,
                "rank": str(c.lora.rank) if lora else "–",
                "alpha": f"{c.lora.alpha:g}" if lora else "–",
                "targets": self.targets_text(c),
                "lr": f"{c.lr:g}",
                "steps": f"{row.steps_done}/{c.steps}",
                "status": r.status,
                "trainable": f"{r.params.trainable:,}",
                "trainable share": f"{100 * r.params.share:.3g}%",
                "final loss": _fmt(r.final_loss, ".4f"),
                "eval accuracy": _fmt(100 * acc, ".1f") + ("%" if math.isfinite(acc) else ""),
                "seconds per step": _fmt(row.seconds_per_step, ".3f"),
                "peak": format_bytes(row.peak_bytes, missing="–"),
                "run id": r.run_id,
            })
        return pd.DataFrame(rows)

    def export(self) -> Path | None:
        """Write the selected runs' figures (PNG, SVG) and table (CSV, Markdown) to a new report folder."""
        from workbench.records.report import export_report

        chosen = self.selected_results()
        if not chosen:
            self.say("Nothing to export: select at least one run in the list under 'Compare'.", "error")
            return None
        stamp = f"report-{datetime.now():%Y%m%d-%H%M%S}"
        folder, n = self.reports_dir / stamp, 2
        while folder.exists():
            folder, n = self.reports_dir / f"{stamp}-{n}", n + 1
        try:
            written = export_report(chosen, folder)
        except Exception as e:  # noqa: BLE001 - said in the panel
            self.say(f"Export failed: {type(e).__name__}: {e}", "error")
            return None
        self.last_export = folder
        self.say(f"Wrote {len(written)} files to {folder} ({len(chosen)} run(s): figures as PNG and SVG, "
                 f"the table as CSV and Markdown).", "ok")
        return folder


__all__ = ["PanelState", "Choices", "SettingsError", "ModelLayers", "Selection", "Message", "Readout", "default_train",
           "METHOD_LABELS", "VARIANT_OPTIONS", "RANK_CAP", "DEFAULT_LR", "LR_WHY"]

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
* the **runs** in the store, the table shown of them (each run named by what sets it
  apart from the others shown, with its verdict: learned or not), the runs selected for
  comparison, runs hidden from view (``hide``) or deleted for good (``request_delete``
  then ``confirm_delete``), and ``export()`` of the selected runs' figures and table,
  with one zip to download (the report and the runs' adapters);
* the **task** (``set_task``): "classification" (the panel's "classify": a sentence
  classifier, the bundled MiniLM) or "causal-lm" ("generate": a language model that
  writes, the bundled story-lm learning the bundled skill).  Each task has its own preset,
  model, target toggles (a language model's are its roles: query, key, value, attention
  output, FFN in, FFN out; never its output layer) and runs (the table and the figures
  show the runs of the task chosen);
* in generate mode, **Try it** (``try_it``): the same prompt answered by the base model,
  by the newest run (its trained model, or its stored adapter) and by a stored run chosen
  with ``choose_run``, greedily, side by side; redone by itself when a run ends.  A run's
  ``samples`` (prompts and its answers at each evaluation) are shown per run
  (``samples_table``) and as the table's "last answer".

Numbers may arrive as typed text (``update(lr="0,001")``): a plain number is read as
one; anything else (a decimal comma, letters, nothing) is kept as typed and refused by
``problem()`` with what is allowed.  A finished run gets a verdict
(``workbench.engine.outcome.run_outcome``): one that did not learn (loss ended above
its start, or accuracy at chance) is said so, never shown as a success.

It imports no widget library, so it can be tested with plain pytest and driven from a
script.  The widget view (``workbench.ui.panel.Workbench``) subscribes to its events
(``subscribe``) and forwards the user's clicks and values to it.
"""

from __future__ import annotations

import math
import re
import threading
import warnings
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Literal

import pandas as pd

from workbench.engine.config import METHODS, QUANTIZE_LABELS, RunConfig, RunResult, preset as make_preset
from workbench.engine.labels import distinct_labels
from workbench.engine.outcome import Outcome, run_outcome
from workbench.engine.sweep import FULL_LR, HEAD_LR, VARIANTS
from workbench.lora.config import LoRAConfig, lora_scaling
from workbench.lora.roles import model_roles
from workbench.lora.targets import OUTPUT_NAMES, LayerGroup, head_names, layer_groups, layer_index, targets_for
from workbench.lora.params import ParamCounts, lora_parameter_count
from workbench.lora.quantize import QUANTIZE_CHOICES, int8_bits_per_weight, nf4_bits_per_weight
from workbench.records.store import last_answer
from workbench.util.checks import check_choice, check_integer, check_positive_int, check_positive_number, is_integer
from workbench.util.units import format_bytes

# The methods and LoRA variants the panel offers, as (label, value).  A variant is a set
# of LoRAConfig settings (workbench.engine.sweep.VARIANTS); rsLoRA has its own checkbox.
METHOD_LABELS: tuple[tuple[str, str], ...] = (("LoRA", "lora"), ("full fine-tuning", "full"), ("head only", "head"))
VARIANT_OPTIONS: tuple[tuple[str, str], ...] = (
    ("LoRA", "lora"), ("DoRA (learned magnitude)", "dora"), ("PiSSA init (top-r SVD of W)", "pissa"),
    ("LoRA+ (B's lr x16)", "loraplus"),
)
# How the frozen base is stored under LoRA, as (label, RunConfig.quantize): QLoRA's choices.
QUANTIZE_OPTIONS: tuple[tuple[str, str | None], ...] = (
    ("float (no quantization)", None), ("NF4 (4-bit, QLoRA)", "nf4"), ("int8 (LLM.int8)", "int8"),
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
# progress of the run, its live curve, the runs in the store (or which are hidden), the
# comparison selection, a deletion waiting for confirmation (or no longer waiting).
# The task changed (model, toggles, methods, runs shown), and Try it's answers changed.
Event = Literal["choices", "message", "running", "progress", "live", "runs", "selection", "pending", "task",
                "answers"]
# The tasks, as (label, RunConfig.task): a classifier, or a language model that writes.
TASK_LABELS: tuple[tuple[str, str], ...] = (("classify", "classification"), ("generate", "causal-lm"))
TASKS: tuple[str, ...] = tuple(v for _, v in TASK_LABELS)
# What each task starts with, unless the panel is given its own: (model, preset).
TASK_SETUPS: dict[str, tuple[str, str]] = {"classification": ("minilm", "default"),
                                           "causal-lm": ("story-lm", "generate")}
# Why a language model gets no "head only": said where the method is chosen.
HEAD_NOT_FOR_LM = ("head only is for a classifier: a language model has no new head to train on its own (its "
                   "output layer is part of the pre-trained model and predicts the next word over the whole "
                   "vocabulary); choose LoRA or full fine-tuning")
# Try it: greedy answers (temperature 0) of at most this many tokens, as a run's evaluation writes them.
TRY_MAX_NEW_TOKENS = 24
# Try it keeps at most this many stored runs' models loaded (the base model besides); the oldest goes first.
TRY_CACHE_RUNS = 4
# The choices that are numbers, and their kind: a text typed for one is read by ``read_number``.
NUMBER_CHOICES: dict[str, type] = {"rank": int, "alpha": float, "lr": float, "steps": int, "batch_size": int,
                                   "seed": int}
_EXAMPLES = {"rank": "8", "alpha": "16", "lr": "0.001 or 1e-3", "steps": "150", "batch_size": "16", "seed": "0"}
_WHAT = {"lr": "learning rate", "batch_size": "batch size"}
_INT_TEXT = re.compile(r"^[+-]?\d+$")
_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_COMMA_TEXT = re.compile(r"^[+-]?\d*,\d+([eE][+-]?\d+)?$")
TrainFn = Callable[..., RunResult]


def default_train(cfg: RunConfig, **kwargs: Any) -> RunResult:
    """``wb.train``: the engine's train with the run store attached (``workbench.records.recording``)."""
    from workbench.records import recording

    return recording.train(cfg, **kwargs)


def quantize_note(quantize: str, model: "ModelLayers") -> str:
    """What a quantized base stores per weight, constants included (``workbench.lora.quantize``)."""
    if quantize == "nf4":
        bits = nf4_bits_per_weight()
        how = "4-bit codes + an 8-bit absmax per 64 weights + an fp32 scale per 256 absmax"
    else:
        widths = [g.shape[0] for g in model.targets.values() if g.type == "Linear"] or [1]
        bits = int8_bits_per_weight(min(widths))
        how = "8-bit codes + an fp32 scale per output row"
    return (f"QLoRA base: the frozen block linears stored in {quantize} ({how}: about {bits:.3g} bits, "
            f"{bits / 8:.3g} byte per weight, against 4 in fp32 and 2 in bf16); LoRA trains in float on top")


# ---------------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ModelLayers:
    """What the panel needs of a model, read once from its layer shapes.

    ``targets``: the model's LoRA-capable layer groups (the classifier head left out),
    each under the name the panel shows for it: its kind ("query", "FFN out", ...), or
    its path pattern when two groups share a kind.  ``blocks``: the block indices.

    A language model (``task`` "causal-lm") of a known family has its **roles** as
    targets (``workbench.lora.roles.model_roles``: query, key, value, attention output,
    FFN in, FFN out; ``roles`` is True), each group's target being the role's name, so the
    LoRAConfig the panel makes names roles; ``fused`` gives, per role, the roles computed
    by the same layer (GPT-2's query, key and value), which toggle together.  Its output
    layer (``lm_head``) is never a target, and it has no head of its own to train.
    """

    name: str
    targets: dict[str, LayerGroup]
    blocks: tuple[int, ...]
    head_parameters: int
    base_parameters: int
    task: str = "classification"
    roles: bool = False
    fused: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_model(cls, name: str, model: Any, task: str = "classification") -> "ModelLayers":
        """Read the groups, blocks and counts of a loaded model (with its head)."""
        from workbench.lora.params import count_parameters

        total = count_parameters(model).total
        if task == "causal-lm":
            roles = [r for r in model_roles(model) if r.names]
            if roles:
                targets = {r.role: _role_group(model, r) for r in roles}
                fused = {r.role: r.fused for r in roles if r.fused}
                return cls(name, targets, _blocks(targets.values()), 0, total, task, True, fused)
            # A family without known roles: its layers by name, the output layer left out.
            groups = [g for g in layer_groups(model) if not any(n.rsplit(".", 1)[-1] in OUTPUT_NAMES for n in g.names)]
            return cls(name, _by_kind(groups), _blocks(groups), 0, total, task)
        heads = head_names(model)
        head_parameters = sum(p.numel() for h in heads for p in model.get_submodule(h).parameters())
        groups = [g for g in layer_groups(model)
                  if not any(n == h or n.startswith(h + ".") for n in g.names for h in heads)]
        return cls(name, _by_kind(groups), _blocks(groups), head_parameters, total, task)

    @classmethod
    def load(cls, name: str, task: str = "classification", seed: int = 0) -> "ModelLayers":
        """Load the base model once (two labels, as the bundled task has), keep its shapes."""
        from workbench.engine.models import load_base

        model, _ = load_base(name, num_labels=2, task=task, seed=seed)
        return cls.from_model(name, model, task)

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


def _by_kind(groups: list[LayerGroup]) -> dict[str, LayerGroup]:
    targets: dict[str, LayerGroup] = {}
    for g in groups:
        targets[g.kind if g.kind not in targets else g.pattern] = g
    return targets


def _blocks(groups: Any) -> tuple[int, ...]:
    return tuple(sorted({i for g in groups for n in g.names if (i := layer_index(n)) is not None}))


def _role_group(model: Any, role: Any) -> LayerGroup:
    """One role of a language model as a layer group whose target is the role's name.

    Its shape is that of the role's first path (Llama's FFN in: gate_proj and up_proj,
    both hidden -> intermediate, so each of its layers counts r * (in + out)).
    """
    layer = model.get_submodule(role.names[0])
    layer = getattr(layer, "base_layer", layer)
    pattern = " + ".join(re.sub(r"\.\d+\.", ".N.", next(n for n in role.names if n.endswith(p))) for p in role.paths)
    return LayerGroup(pattern=pattern, kind=role.role, type=type(layer).__name__, shape=role.shapes[0],
                      names=list(role.names), target=role.role, is_regex=False, roles=role.fused or (role.role,))


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
    quantize: str | None = None  # QLoRA: the frozen base stored in "nf4" or "int8"; None: float (LoRA only)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class Selection:
    """One ticked layer group and the module paths of it inside the layer range.

    ``members``: the panel's target names it stands for (GPT-2's fused query, key and
    value are one Selection, "query/key/value (fused)", so its layers count once).
    """

    key: str
    group: LayerGroup
    names: list[str]
    members: tuple[str, ...] = ()


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
    base_parameters: int | None = None  # the model's own count (the header's), before LoRA adds any

    @property
    def headline(self) -> str:
        if self.estimate is None:
            return "Trainable parameters: –"
        e = self.estimate
        text = f"Trainable parameters: {e.trainable:,} of {e.total:,} ({100 * e.share:.3g}% of the model)"
        added = e.total - self.base_parameters if self.base_parameters is not None else 0
        if added > 0:
            text += f"; the total is the model's {self.base_parameters:,} plus the {added:,} LoRA adds"
        return text


@dataclass(frozen=True)
class Answer:
    """One model's answer to Try it's prompt.

    ``who``: "base model" or the run's label; ``text``: the answer (its first line,
    stripped, as exact match reads it); ``correct``: whether it equals the reference
    (exact match) when the prompt is one of the task's, else None.
    """

    who: str
    text: str
    run_id: str | None = None
    correct: bool | None = None


@dataclass(frozen=True)
class Answers:
    """The same prompt answered by the base model, the newest run and a chosen stored run, side by side."""

    prompt: str
    reference: str | None
    base: Answer
    adapted: Answer | None = None  # the newest run of the task (None before any)
    stored: Answer | None = None  # the stored run chosen with ``choose_run`` (None when none is)

    def all(self) -> list[Answer]:
        return [a for a in (self.base, self.adapted, self.stored) if a is not None]


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


def read_number(text: str, kind: type) -> Any:
    """A number typed as text: an int or float when it is one, else the text as typed (stripped).

    Only plain numbers are read ("0.001", "1e-3", "150"); a decimal comma ("0,001"), a
    thousands separator, letters or nothing stay text, and ``number_problem`` says why
    they are refused: "0,001" could mean 0.001 or 1 (as "1,000" means a thousand), and a
    guess would train a run the user never asked for.
    """
    t = text.strip()
    if kind is int and _INT_TEXT.match(t):
        return int(t)
    if kind is float and _FLOAT_TEXT.match(t):
        return float(t)
    return t


def number_problem(name: str, text: str) -> str:
    """Why a text typed for a number is refused, and what to type instead."""
    kind = NUMBER_CHOICES[name]
    label = f"{name} ({_WHAT[name]})" if name in _WHAT else name
    allowed = ("a whole number" if kind is int else "a number with a decimal point") + f", e.g. {_EXAMPLES[name]}"
    t = text.strip()
    if not t:
        return f"{label} is empty: type {allowed}"
    if _COMMA_TEXT.match(t) and kind is float:
        return (f"{label} must be {allowed}; got {t!r}, which has a decimal comma: type {t.replace(',', '.')} "
                "if that is what you mean")
    if kind is int and _FLOAT_TEXT.match(t.replace(",", "")):
        return f"{label} must be {allowed}; got {t!r}"
    return f"{label} must be {allowed}; got {t!r}, which is not a number"


def _method_label(method: str) -> str:
    return dict((v, k) for k, v in METHOD_LABELS)[method]


def _task_label(task: str) -> str:
    return dict((v, k) for k, v in TASK_LABELS)[task]


# ---------------------------------------------------------------------------------------------- the state


class PanelState:
    """The panel's choices, runs and run lifecycle, with no widgets.

    ``model``: "minilm" (bundled), "tiny-bert", a local folder, ...; ``preset``: "default"
    or "tiny" (seconds; tests).  Runs go to ``runs_dir`` (and are loaded from it now),
    reports to ``reports_dir``.  ``background=False`` trains inside ``start()`` (for
    scripts and tests).  ``layers``: the model's ``ModelLayers`` when already read;
    ``train``: the function that trains and stores a run (default: ``wb.train``, i.e.
    ``workbench.records.recording.train``).

    The task starts as the preset's (``preset="generate"`` starts in generate mode); the
    other task uses ``generate_model`` / ``generate_preset`` (for "causal-lm") or the
    bundled classifier's ``TASK_SETUPS`` (for "classification").  ``set_task`` switches.
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
        generate_model: str | None = None,
        generate_preset: str | None = None,
    ) -> None:
        self.preset_name = preset
        self.defaults: RunConfig = make_preset(preset, model=model)  # raises on an unknown preset
        if layers is not None and layers.name != model:
            raise ValueError(f"layers were read from model {layers.name!r}, not {model!r}")
        gen_model, gen_preset = TASK_SETUPS["causal-lm"]
        gen = (generate_model or gen_model, generate_preset or gen_preset)
        make_preset(gen[1], model=gen[0])  # an unknown preset is refused now, not at the switch
        self.setups: dict[str, tuple[str, str]] = {"classification": TASK_SETUPS["classification"], "causal-lm": gen}
        self.setups[self.defaults.task] = (model, preset)
        self._layers: dict[str, ModelLayers] = {}  # per task, read once
        self.model = layers or ModelLayers.load(model, task=self.defaults.task, seed=self.defaults.seed)
        self._layers[self.defaults.task] = self.model
        # Try it (generate mode): the prompt, the stored run chosen to answer it too, the last answers.
        self.prompt: str = ""
        self.try_run: str | None = None
        self.answers: Answers | None = None
        self._models: dict[str, Any] = {}  # "base:<model>" or a run id -> (model, tokenizer), loaded once
        self._try_lock = threading.Lock()
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
        self.last_bundle: Path | None = None  # the zip of the last export (report + adapters)
        self.hidden: set[str] = set()  # run ids kept out of the table and the figures (not deleted)
        self.pending_delete: tuple[str, ...] = ()  # run ids waiting for the user to confirm deletion
        self._outcomes: dict[str, Outcome] = {}  # run id -> verdict, computed once per refresh
        self.run_config: RunConfig | None = None  # the config of the run going (or the last one)
        self.step: Any = None  # the engine's StepInfo after the last step of the run going
        self.live_history: pd.DataFrame | None = None  # the curve to show; None: nothing to show
        self._listeners: list[Callable[[Event], None]] = []
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._running = False
        self.stopping = False
        self.refresh()
        if self.task == "causal-lm":
            self.prompt = self.default_prompt()
        if not self.results:
            self.say(f"Ready. Choose a method and settings, then press Train. Runs are saved in {self.runs_dir}.")

    # ------------------------------------------------------------------ the task

    @property
    def task(self) -> str:
        """"classification" (classify) or "causal-lm" (generate): the preset's ``task``."""
        return self.defaults.task

    def set_task(self, task: str) -> None:
        """Switch between classify ("classification") and generate ("causal-lm").

        The other task's preset and model come in (its layers read once), the choices
        start from that preset, and the table and figures show that task's runs.  Refused
        while a run trains.
        """
        check_choice("task", task, TASKS)
        if task == self.task:
            return
        if self._running:
            self.say("A run is training: switch the task once it has ended.", "warn")
            return
        model, preset = self.setups[task]
        defaults = make_preset(preset, model=model)
        if task not in self._layers:
            self._layers[task] = ModelLayers.load(model, task=task, seed=defaults.seed)
        self.preset_name, self.defaults, self.model = preset, defaults, self._layers[task]
        self.choices = self.default_choices()
        self.answers = None
        if task == "causal-lm" and not self.prompt:
            self.prompt = self.default_prompt()
        self._emit("task")
        self._emit("choices")
        self._emit("runs")
        self._emit("answers")
        what = ("a language model that writes: train it on the skill, then compare answers under 'Try it'"
                if task == "causal-lm" else "a sentence classifier")
        self.say(f"Task: {_task_label(task)}, {what} ({model}, preset {preset}).")

    def methods(self) -> tuple[tuple[str, str], ...]:
        """The methods offered for the task, as (label, value): no head only for a language model."""
        return tuple(m for m in METHOD_LABELS if not (self.task == "causal-lm" and m[1] == "head"))

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
                       batch_size=d.batch_size, seed=d.seed, quantize=d.quantize if d.method == "lora" else None)

    def update(self, **changes: Any) -> None:
        """Change some choices.  They are kept as given; ``problem()`` says what is wrong.

        Switching the method sets its starting learning rate (``starting_lr``), as the
        panel's note says; every other choice changes only the setting named.
        """
        unknown = sorted(set(changes) - set(Choices.names()))
        if unknown:
            raise TypeError(f"unknown choice(s) {', '.join(unknown)}; the choices are: {', '.join(Choices.names())}")
        for name, kind in NUMBER_CHOICES.items():
            if isinstance(changes.get(name), str):
                changes[name] = read_number(changes[name], kind)
        if "targets" in changes and not isinstance(changes["targets"], str):
            changes["targets"] = self._with_fused(tuple(changes["targets"]))
        if "layer_range" in changes and not isinstance(changes["layer_range"], str):
            changes["layer_range"] = tuple(changes["layer_range"])
        if "method" in changes and changes["method"] != self.choices.method and "lr" not in changes:
            changes["lr"] = self.starting_lr(changes["method"])
        self.choices = replace(self.choices, **changes)
        self._emit("choices")

    def _with_fused(self, targets: tuple[str, ...]) -> tuple[str, ...]:
        """Targets with each fused group (GPT-2's query, key, value) all ticked or all not.

        A group that gained a member is ticked whole; one that lost a member is unticked
        whole (one layer computes them all, so LoRA adapts all of them or none).
        """
        if not self.model.fused:
            return targets
        old, new = set(self.choices.targets) if isinstance(self.choices.targets, tuple) else set(), set(targets)
        for group in set(self.model.fused.values()):
            members = set(group)
            now = members & new
            if now and now != members:
                new = (new | members) if now - old else (new - members)
        known = tuple(k for k in self.model.targets if k in new)
        return known + tuple(t for t in targets if t not in self.model.targets)

    def starting_lr(self, method: str) -> float:
        """The learning rate a method starts with: the preset's for LoRA (see ``LR_WHY``)."""
        return DEFAULT_LR.get(method, self.defaults.lr)

    def lr_note(self) -> str:
        """Why the learning rate starts where it does for the chosen method."""
        method = self.choices.method
        if method not in METHODS:
            return ""
        start, lr = self.starting_lr(method), self.choices.lr
        if isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr == start:
            return (f"Learning rate set to {start:g} for {_method_label(method)}: {LR_WHY[method]}. "
                    "Switching the method resets it; change it freely.")
        shown = f"{lr:g}" if isinstance(lr, (int, float)) and not isinstance(lr, bool) else repr(lr)
        return (f"Learning rate {shown} as typed; {_method_label(method)} starts at {start:g}: {LR_WHY[method]}. "
                "Switching the method resets it.")

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
        out, seen = [], set()
        for key, g in self.model.targets.items():  # in the model's order, whatever order they were ticked in
            if key not in ticked:
                continue
            names = g.names if layers is None else [n for n in g.names if layer_index(n) in layers]
            members = self.model.fused.get(key, (key,))
            if members in seen:  # a fused layer already counted under its first role
                continue
            seen.add(members)
            label = key if len(members) == 1 else "/".join(members) + " (fused)"
            out.append(Selection(label, g, names, members))
        return out

    # ------------------------------------------------------------------ checks, config, readout

    def _choice_problem(self) -> str | None:
        """What is wrong with the choices themselves (before a RunConfig is built), or None."""
        c, m = self.choices, self.model
        lora_only = ("rank", "alpha")
        for name in NUMBER_CHOICES:
            value = getattr(c, name)
            if isinstance(value, str) and (c.method == "lora" or name not in lora_only):
                return f"Cannot train with these settings: {number_problem(name, value)}"
        try:
            check_choice("method", c.method, METHODS)
            if c.method == "head" and self.task == "causal-lm":
                return f"Cannot train with these settings: {HEAD_NOT_FOR_LM}."
            if c.method == "lora":
                check_choice("variant", c.variant, tuple(v for _, v in VARIANT_OPTIONS))
                if isinstance(c.targets, str):
                    raise ValueError(f"targets must be a tuple of names from {', '.join(m.targets)}, got {c.targets!r}")
                unknown = [t for t in c.targets if t not in m.targets]
                if unknown:
                    raise ValueError(f"unknown target(s) {', '.join(map(repr, unknown))}; "
                                     f"this model has: {', '.join(m.targets)}")
                if not c.targets:
                    others = "full fine-tuning" if self.task == "causal-lm" else "full fine-tuning / head only"
                    return ("LoRA needs at least one target layer: tick one of "
                            f"{', '.join(m.targets)} (or choose {others}).")
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
                quantize_problem = self._quantize_problem()
                if quantize_problem:
                    return f"Cannot train with these settings: {quantize_problem}"
            check_positive_number("lr", c.lr, what="learning rate")
            check_positive_int("steps", c.steps)
            check_positive_int("batch_size", c.batch_size, what="batch size")
            check_integer("seed", c.seed)
        except ValueError as e:
            return f"Cannot train with these settings: {e}"
        return None

    def _quantize_problem(self) -> str | None:
        """Why the quantize choice cannot go with the others (LoRA only), or None."""
        c = self.choices
        check_choice("quantize", c.quantize, tuple(v for _, v in QUANTIZE_OPTIONS))
        if c.quantize is None:
            return None
        if c.variant in ("dora", "pissa"):
            variant = "DoRA" if c.variant == "dora" else "PiSSA"
            return (f"{variant} reads and rewrites the base weight in full precision, which a {c.quantize} base "
                    "does not keep: choose plain LoRA or LoRA+ with a quantized base, or a float base")
        if not any(g.type == "Linear" for g in self.model.targets.values()):
            return (f"{self.model.name} computes with Conv1D layers (GPT-2 style), which bitsandbytes does not "
                    "quantize: choose a float base")
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
        if self.model.roles:  # a language model's roles: the config names them (all of a fused group)
            targets: Any = tuple(k for s in self.selected_layers() if s.names for k in s.members)
        else:
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
        cfg = make_preset(self.preset_name, **over, lora=lora, quantize=c.quantize)
        if isinstance(lora.targets, str) or lora.layers is not None:
            # A regex or a layer range makes the default label unreadable: name the kinds.
            kinds = ",".join(s.key for s in self.selected_layers() if s.names)
            layers = lora.layers
            where = "" if not layers else (f", layer {layers[0]}" if len(layers) == 1
                                           else f", layers {layers[0]}-{layers[-1]}")
            what = lora.label().split(" (")[0]
            if c.quantize:  # as RunConfig.label says it: QLoRA, and the base's storage
                what = f"Q{what}"
                where += f", {QUANTIZE_LABELS[c.quantize]} base"
            cfg = replace(cfg, name=f"{what} ({kinds}{where})")
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
                   for s in self.selected_layers())  # a fused layer is one Selection: counted once
        return ParamCounts(lora + m.head_parameters, m.base_parameters + lora)

    def readout(self) -> Readout:
        """The parameter readout with the closed form spelled out, and what is wrong (if anything)."""
        c, head = self.choices, f"classifier head {self.model.head_parameters:,}"
        lm = self.task == "causal-lm"  # no head: LoRA's layers are all that trains
        problem = self.problem()
        try:
            estimate = self.parameter_estimate()
        except ValueError:
            return Readout(None, "", problem)
        base = self.model.base_parameters
        if c.method == "full":
            return Readout(estimate, "full fine-tuning trains every parameter", problem, base)
        if c.method == "head":
            if lm:
                return Readout(None, "", problem, base)
            return Readout(estimate, f"only the {head} trains; the rest is frozen", problem, base)
        r, dora = c.rank, c.variant == "dora"
        plus = " + out" if dora else ""
        parts = [f"{s.key} {len(s.names)} × ({r}·({s.group.shape[0]}+{s.group.shape[1]}){plus}) = "
                 f"{len(s.names) * lora_parameter_count(*s.group.shape, r, dora=dora):,}" if s.names else
                 f"{s.key}: outside the chosen layers, not adapted" for s in self.selected_layers()]
        how = (f"LoRA trains r·(in+out){plus} per layer: " + "; ".join(parts) + ("" if lm else f"; + {head}")
               if parts else "no target layer ticked")
        if isinstance(c.alpha, (int, float)) and not isinstance(c.alpha, bool) and math.isfinite(c.alpha):
            formula = "α/√r" if c.rslora else "α/r"
            how += f" · scale s = {formula} = {lora_scaling(r, c.alpha, bool(c.rslora)):.3g}"
        if c.quantize in QUANTIZE_CHOICES:
            how += f" · {quantize_note(c.quantize, self.model)}"
        return Readout(estimate, how, problem, base)

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
        first = self.step is None
        self.step = info
        self._emit("progress")
        if first and self.run_config is not None and not self.stopping:  # loading is over: say what goes on now
            cfg = self.run_config
            self.say(f"Training {cfg.label()}: {cfg.steps} steps; the loss curve follows. Stop ends it early and keeps it.")

    def _run(self, cfg: RunConfig) -> None:
        """Train (in the worker thread, or inline), then refresh the runs and report."""
        error = ""
        # A language model's run hands back its trained model (about 4 MB for story-lm), so
        # Try it answers with it at once; only the last one is kept.
        keep = {"keep_model": True} if cfg.task == "causal-lm" else {}
        try:
            result = self.train(cfg, on_step=self._on_step, stop=self._stop_event, runs_dir=str(self.runs_dir),
                                progress=False, **keep)
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
            if result.config.task == "causal-lm" and self.task == "causal-lm" and self.prompt.strip():
                self.try_it(quiet=True)  # the newest run's answer to the prompt, without a click

    @staticmethod
    def verdict(result: RunResult, outcome: Outcome | None = None) -> tuple[str, MessageKind]:
        """What to tell the user about a finished run: learned, did not learn, stopped, diverged or failed.

        Only a completed run that learned (``run_outcome``) is told as a success ("Done",
        "ok"); one that did not is a warning that says why and what to try.  The time is
        the run's own measured wall time; a LoRA run's message says where its adapter is
        and how to load it.
        """
        from workbench.records.report import adapter_folder

        outcome = outcome or run_outcome(result)
        t = result.timing
        took = (f"trained in {t.total_seconds:.1f} s ({t.seconds_per_step:.3f} s/step, measured)"
                if t is not None and math.isfinite(t.total_seconds) else "")
        if result.status == "completed":
            if result.config.task == "causal-lm":
                em = result.eval_exact_match
                acc_text = f", exact match {100 * em:.1f}% on held-out prompts" if math.isfinite(em) else ""
            else:
                acc = result.eval_accuracy
                acc_text = f", validation accuracy {100 * acc:.1f}%" if math.isfinite(acc) else ""
            facts = (f"{result.config.label()}: final loss {result.final_loss:.4f}{acc_text}, {took}, "
                     f"{result.params.trainable:,} trainable parameters")
            if not outcome.ok:
                return (f"Finished, but it {outcome.sentence}. ({facts}.) It is kept in the table, marked "
                        f"'{outcome.verdict}'.", "warn")
            folder = adapter_folder(result)
            adapter = (f" Its adapter is in {folder}: load it with wb.load_adapter(model, \"{folder}\") or PEFT's "
                       f"PeftModel.from_pretrained(base_model, \"{folder}\")." if folder is not None else "")
            return f"Done: {facts}. Added to the table.{adapter}", "ok"
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

    # ------------------------------------------------------------------ runs, selection, hiding, deleting

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
        self._emit("runs")
        if skipped:
            self.say(f"{len(skipped)} damaged run file(s) in the store were skipped: " + "; ".join(skipped), "warn")

    def outcome(self, result: RunResult) -> Outcome:
        """A stored run's verdict (computed once per refresh, from its record)."""
        return self._outcomes.get(result.run_id) or run_outcome(result)

    def visible_results(self) -> list[RunResult]:
        """The runs the table and the compare list show: every stored run of the task not hidden, oldest first."""
        return [r for r in self.results if r.run_id not in self.hidden and r.config.task == self.task]

    def labels(self, results: list[RunResult] | None = None) -> dict[str, str]:
        """Run id -> a label naming what sets each run apart from the others shown (``distinct_labels``)."""
        results = self.visible_results() if results is None else results
        return dict(zip((r.run_id for r in results), distinct_labels([r.config for r in results])))

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
        self._emit("selection")

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
            self.say("Nothing to hide: tick the runs to hide first.", "warn")
            return
        self.hidden |= set(ids)
        self.selected = tuple(i for i in self.selected if i not in self.hidden)
        self._emit("runs")
        self.say(f"Hid {len(ids)} run(s); their files stay in {self.runs_dir}. 'Show hidden' brings them back.")

    def show_hidden(self) -> None:
        """Show every hidden run again (not selected for comparison)."""
        n, self.hidden = len(self.hidden), set()
        self._emit("runs")
        self.say(f"Showing {n} hidden run(s) again." if n else "No run is hidden.")

    def request_delete(self, run_ids: tuple[str, ...] | list[str]) -> None:
        """Ask to delete runs for good: nothing happens until ``confirm_delete()`` (``cancel_delete()`` drops it)."""
        ids = self._check_ids(run_ids)
        if not ids:
            self.say("Nothing to delete: tick the runs to delete first.", "warn")
            return
        if self._running:
            self.say("A run is training: delete runs once it has ended.", "warn")
            return
        self.pending_delete = ids
        labels = self.labels(self.results)
        names = "; ".join(f"{labels[i]} ({i})" for i in ids)
        self._emit("pending")
        self.say(f"Delete {len(ids)} run(s) for good, folders and adapters included? {names}. "
                 "Press 'Yes, delete' to confirm or 'Cancel'.", "warn")

    def cancel_delete(self) -> None:
        self.pending_delete = ()
        self._emit("pending")
        self.say("Nothing was deleted.")

    def confirm_delete(self) -> list[str]:
        """Delete the runs ``request_delete`` named (their folders, via the store); the ids deleted."""
        from workbench.records.store import delete_run

        ids, self.pending_delete = self.pending_delete, ()
        self._emit("pending")
        if not ids:
            self.say("Nothing was waiting to be deleted.", "warn")
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
            self.say(f"Deleted {len(done)} run(s); could not delete " + "; ".join(failed), "error")
        else:
            self.say(f"Deleted {len(done)} run(s) from {self.runs_dir}.", "ok")
        return done

    def selected_results(self) -> list[RunResult]:
        """The runs of the task selected for comparison and export, oldest first."""
        chosen = set(self.selected)
        return [r for r in self.results if r.run_id in chosen and r.config.task == self.task]

    def timing_note(self) -> str:
        """How long runs of this model and preset took here, measured (from the store), or how to find out."""
        runs = [r for r in self.results if r.config.model == self.model.name and r.status == "completed"
                and r.config.steps == self.defaults.steps and r.timing is not None
                and math.isfinite(r.timing.total_seconds)]
        if not runs:
            return "Each run's time is measured and shown when it ends."
        secs = sorted(r.timing.total_seconds for r in runs)
        span = f"{secs[0]:.1f} s" if len(secs) == 1 else f"{secs[0]:.1f}–{secs[-1]:.1f} s"
        return f"Runs of {self.defaults.steps} steps took {span} here ({len(secs)} measured)."

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
                "time": _fmt(t.total_seconds if t is not None else None, ".1f") + (" s" if t is not None else ""),
                "peak": format_bytes(row["peak_bytes"], missing="–"),
                "run id": r.run_id,
            })
        return pd.DataFrame(rows)

    # ------------------------------------------------------------------ Try it (generate mode)

    def prompt_examples(self, n: int = 8) -> list[str]:
        """The first ``n`` held-out prompts of the generative preset's data (validation split); [] when unreadable."""
        return list(self._held_out()[0][:n])

    def default_prompt(self) -> str:
        """The prompt Try it starts with: the first held-out prompt of the task's data ('' when there is none)."""
        examples = self.prompt_examples(1)
        return examples[0] if examples else ""

    def _held_out(self) -> tuple[list[str], list[str]]:
        from workbench.engine.sft import load_prompts

        data = self.setups["causal-lm"]
        try:
            ds = load_prompts(make_preset(data[1], model=data[0]).data, "validation")
        except Exception:  # noqa: BLE001 - a data set without a validation split: no examples, no reference
            return [], []
        return ds.prompts, ds.completions

    def reference(self, prompt: str) -> str | None:
        """The expected answer when ``prompt`` is one of the held-out prompts (exactly), else None."""
        from workbench.engine.generation import normalize_answer

        prompts, completions = self._held_out()
        return next((normalize_answer(c) for p, c in zip(prompts, completions) if p == prompt), None)

    def set_prompt(self, text: str) -> None:
        """The prompt Try it answers (kept as typed; the model sees exactly this text)."""
        if not isinstance(text, str):
            raise TypeError(f"the prompt must be text, got {type(text).__name__}")
        self.prompt = text

    def try_runs(self) -> list[RunResult]:
        """Stored runs of the generate task, on this model, with an adapter to load: what ``choose_run`` takes."""
        from workbench.records.report import adapter_folder

        return [r for r in self.visible_results() if r.config.task == "causal-lm"
                and r.config.model == self.model.name and adapter_folder(r) is not None]

    def choose_run(self, run_id: str | None) -> None:
        """The stored run (by id) whose adapter answers the prompt too; None for none.  Answers again."""
        if run_id is not None and run_id not in {r.run_id for r in self.try_runs()}:
            known = ", ".join(r.run_id for r in self.try_runs()) or "none yet"
            raise ValueError(f"run {run_id!r} is not a stored generative run of {self.model.name} with an adapter; "
                             f"those are: {known}")
        self.try_run = run_id
        if self.answers is not None or run_id is not None:
            self.try_it()

    def _base_lm(self) -> tuple[Any, Any]:
        """The base language model and its tokenizer, loaded once (story-lm: about 4 MB)."""
        from workbench.engine.models import load_base

        key = f"base:{self.model.name}"
        if key not in self._models:
            model, tokenizer = load_base(self.model.name, task="causal-lm", seed=self.defaults.seed)
            self._models[key] = (model.eval(), tokenizer)
        return self._models[key]

    def _run_lm(self, result: RunResult) -> Any:
        """A run's adapted model: the one it handed back (``keep_model``), else its stored adapter on the base."""
        from workbench.engine.models import load_base
        from workbench.lora.adapters import load_adapter
        from workbench.records.report import adapter_folder

        if result.model is not None:
            return result.model
        if result.run_id not in self._models:
            folder = adapter_folder(result)
            if folder is None:
                raise ValueError(f"run {result.run_id} has no stored adapter (a full fine-tuning run keeps none) "
                                 "and its trained model is gone: retrain it to ask it")
            # A QLoRA run's adapter goes onto the base quantized as it was when it trained.
            model, _ = load_base(result.config.model, task="causal-lm", seed=result.config.seed,
                                 quantize=result.config.quantize)
            load_adapter(model, folder)
            loaded = [k for k in self._models if not k.startswith("base:")]
            for key in loaded[:max(0, len(loaded) - TRY_CACHE_RUNS + 1)]:  # dicts keep insertion order
                del self._models[key]
            self._models[result.run_id] = model.eval()
        return self._models[result.run_id]

    def newest_run(self) -> RunResult | None:
        """The newest run of the generate task on this model that can answer (trained model or adapter)."""
        from workbench.records.report import adapter_folder

        last = self.last_result
        if last is not None and last.model is not None and last.config.task == "causal-lm" \
                and last.config.model == self.model.name:
            return last
        runs = [r for r in self.visible_results() if r.config.model == self.model.name
                and (r.model is not None or adapter_folder(r) is not None)]
        return runs[-1] if runs else None

    def try_it(self, prompt: str | None = None, quiet: bool = False) -> Answers | None:
        """Answer the prompt with the base model, the newest run and the chosen stored run (greedy).

        Greedy decoding (temperature 0), at most ``TRY_MAX_NEW_TOKENS`` new tokens, as a
        run's evaluation writes; each answer is its first line, stripped (what exact match
        compares).  Runs in the calling thread: a CPU run trains in a worker process of its
        own, so answering meanwhile does not touch it.  Returns None (and says why) when it
        cannot answer; ``quiet`` leaves the message alone when all went well.
        """
        from workbench.engine.generation import generate, normalize_answer

        if self.task != "causal-lm":
            self.say("Try it is for a language model: choose 'generate' first.", "warn")
            return None
        if prompt is not None:
            self.set_prompt(prompt)
        text = self.prompt
        if not text.strip():
            self.say("Type a prompt to try, e.g. " + repr(self.default_prompt() or "Statement: ...\nQuestion:"), "error")
            return None
        reference = self.reference(text)

        def answer(who: str, model: Any, tokenizer: Any, run_id: str | None = None) -> Answer:
            out = generate(model, tokenizer, [text], max_new_tokens=TRY_MAX_NEW_TOKENS, temperature=0.0)[0]
            said = normalize_answer(out)
            return Answer(who, said, run_id, None if reference is None else said == reference)

        try:
            with self._try_lock:
                base, tokenizer = self._base_lm()
                runs = self.visible_results()
                labels = self.labels(runs) if runs else {}
                newest = self.newest_run()
                adapted = stored = None
                if newest is not None:
                    adapted = answer(labels.get(newest.run_id, newest.config.label()), self._run_lm(newest),
                                     tokenizer, newest.run_id)
                chosen = next((r for r in self.results if r.run_id == self.try_run), None)
                if chosen is not None:
                    stored = answer(labels.get(chosen.run_id, chosen.config.label()), self._run_lm(chosen),
                                    tokenizer, chosen.run_id)
                self.answers = Answers(text, reference, answer("base model", base, tokenizer), adapted, stored)
        except Exception as e:  # noqa: BLE001 - said in the panel
            self.say(f"Try it failed: {type(e).__name__}: {e}", "error")
            return None
        self._emit("answers")
        if not quiet:
            self.say(f"Answered by {len(self.answers.all())} model(s), greedily (temperature 0, at most "
                     f"{TRY_MAX_NEW_TOKENS} tokens)." + ("" if newest is not None else
                                                         " Train a run to see the adapted model's answer beside it."))
        return self.answers

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
            self.say("Nothing to export: tick at least one run under 'Runs' (or press 'Select all').", "error")
            return None
        stamp = f"report-{datetime.now():%Y%m%d-%H%M%S}"
        folder, n = self.reports_dir / stamp, 2
        while folder.exists():
            folder, n = self.reports_dir / f"{stamp}-{n}", n + 1
        try:
            written = export_report(chosen, folder)
            bundle = export_bundle(written, chosen, folder / BUNDLE_NAME)
        except Exception as e:  # noqa: BLE001 - said in the panel
            self.say(f"Export failed: {type(e).__name__}: {e}", "error")
            return None
        self.last_export, self.last_bundle = folder, bundle
        labels = self.labels(chosen)
        adapters = [(labels[r.run_id], f) for r in chosen if (f := adapter_folder(r)) is not None]
        where = ("" if not adapters else
                 " Adapters: " + "; ".join(f"{name}: {f}" for name, f in adapters) +
                 " (also in the zip under adapters/<run id>/); load one with wb.load_adapter(model, folder) or "
                 "PEFT's PeftModel.from_pretrained(base_model, folder).")
        self.say(f"Wrote {len(written)} files to {folder} ({len(chosen)} run(s): figures as PNG and SVG, "
                 f"the table as CSV and Markdown) and {bundle.name} to download.{where}", "ok")
        return folder


__all__ = ["PanelState", "Choices", "SettingsError", "ModelLayers", "Selection", "Message", "Readout", "default_train",
           "Answer", "Answers", "last_answer", "samples_frame", "TASK_LABELS", "TASKS", "TASK_SETUPS",
           "HEAD_NOT_FOR_LM", "TRY_MAX_NEW_TOKENS",
           "read_number", "number_problem", "NUMBER_CHOICES",
           "METHOD_LABELS", "VARIANT_OPTIONS", "RANK_CAP", "DEFAULT_LR", "LR_WHY"]

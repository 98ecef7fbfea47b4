"""The workbench panel without its widgets: four pieces under one ``PanelState``.

``PanelState`` is what the panel knows and does, in plain Python, made of four pieces,
each a module and a class of its own:

* ``settings`` (``workbench.ui.settings.Settings``): the **choices** (method, variant,
  ``rank``, ``alpha``, ``targets``, ``layer_range``, ``lr``, ...), the ``RunConfig`` they
  make, what is wrong with them, and the parameter readout from layer shapes alone;
* ``control`` (``workbench.ui.run_control.RunControl``): the **run lifecycle**:
  ``start()`` (in a background thread, or inline), ``stop()``, ``wait()``; the run ends
  completed, stopped, diverged or failed, and says so;
* ``runs`` (``workbench.ui.run_list.RunList``): the **runs** in the store, the table of
  them, the selection, hiding and deleting, and ``export()`` with its zip to download;
* ``tryit`` (``workbench.ui.try_it.TryIt``): in generate mode, **Try it**: the same
  prompt answered by the base model, the newest run and a chosen stored run, side by side.

What ties them together lives here: the **task** (``set_task``): "classification" (the
panel's "classify": a sentence classifier, the bundled MiniLM) or "causal-lm"
("generate": a language model that writes, the bundled story-lm learning the bundled
skill), each with its own preset, model, settings and runs shown; and the one message
line and its listeners (``workbench.ui.events.Messages``).

The pieces' verbs are ``PanelState``'s too (``state.update(rank=4)``, ``state.start()``,
``state.table()``, ``state.try_it()``, ...): the panel, a script or a test drives one
object.  It imports no widget library, so it can be tested with plain pytest.  The widget
view (``workbench.ui.panel.Workbench``) subscribes to its events (``subscribe``) and
forwards the user's clicks and values to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workbench.engine.config import RunConfig, RunResult, preset as make_preset
from workbench.engine.data import TASKS
from workbench.ui.events import Message, Messages
from workbench.ui.model_layers import ModelLayers
from workbench.ui.run_control import RunControl, TrainFn
from workbench.ui.run_list import RunList
from workbench.ui.settings import Settings
from workbench.ui.try_it import TryIt
from workbench.util.checks import check_choice

# What the panel calls each of the engine's tasks (``workbench.engine.data.TASKS``).
_TASK_WORDS: dict[str, str] = {"classification": "classify", "causal-lm": "generate"}
# The tasks, as (label, RunConfig.task): a classifier, or a language model that writes.
TASK_LABELS: tuple[tuple[str, str], ...] = tuple((_TASK_WORDS[t], t) for t in TASKS)
# What each task starts with, unless the panel is given its own: (model, preset).
TASK_SETUPS: dict[str, tuple[str, str]] = {"classification": ("minilm", "default"),
                                           "causal-lm": ("story-lm", "generate")}


def _forward(piece: str, name: str, settable: bool = False) -> property:
    """``PanelState.<name>`` is the piece's ``<name>`` (read; written too when ``settable``)."""

    def get(self: "PanelState") -> Any:
        return getattr(getattr(self, piece), name)

    def put(self: "PanelState", value: Any) -> None:
        setattr(getattr(self, piece), name, value)

    return property(get, put if settable else None, doc=f"``{piece}.{name}``")


class PanelState:
    """The panel's settings, run control, run list and Try it, with no widgets.

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
        defaults = make_preset(preset, model=model)  # raises on an unknown preset
        if layers is not None and layers.name != model:
            raise ValueError(f"layers were read from model {layers.name!r}, not {model!r}")
        gen_model, gen_preset = TASK_SETUPS["causal-lm"]
        gen = (generate_model or gen_model, generate_preset or gen_preset)
        make_preset(gen[1], model=gen[0])  # an unknown preset is refused now, not at the switch
        self.setups: dict[str, tuple[str, str]] = {"classification": TASK_SETUPS["classification"], "causal-lm": gen}
        self.setups[defaults.task] = (model, preset)
        self._layers: dict[str, ModelLayers] = {}  # per task, read once
        self._layers[defaults.task] = layers or ModelLayers.load(model, task=defaults.task, seed=defaults.seed)
        self.messages = Messages()
        self.settings = Settings(self._layers[defaults.task], preset, defaults)
        self.runs = RunList(runs_dir, reports_dir, self.messages, lambda: self.settings, lambda: self.control.running)
        self.control = RunControl(self.messages, lambda: self.settings, runs_dir, self.runs.refresh, self._after_run,
                                  background, train)
        self.tryit = TryIt(self.messages, lambda: self.settings, gen, self.runs, lambda: self.control.last_result)
        self.refresh()
        if self.task == "causal-lm":
            self.tryit.prompt = self.tryit.default_prompt()
        if not self.results:
            self.say(f"Ready. Choose a method and settings, then press Train. Runs are saved in {self.runs_dir}.")

    # ------------------------------------------------------------------ the task

    @property
    def task(self) -> str:
        """"classification" (classify) or "causal-lm" (generate): the preset's ``task``."""
        return self.settings.task

    def set_task(self, task: str) -> None:
        """Switch between classify ("classification") and generate ("causal-lm").

        The other task's preset and model come in (its layers read once), the choices
        start from that preset, and the table and figures show that task's runs.  Refused
        while a run trains.
        """
        check_choice("task", task, TASKS)
        if task == self.task:
            return
        if self.running:
            self.say("A run is training: switch the task once it has ended.", "warn")
            return
        if self.settings.locked:
            self.say(f"The settings are locked for this exercise ({next(iter(self.settings.locked.values()))}): "
                     "the task stays.", "warn")
            return
        model, preset = self.setups[task]
        defaults = make_preset(preset, model=model)
        if task not in self._layers:
            self._layers[task] = ModelLayers.load(model, task=task, seed=defaults.seed)
        self.settings = Settings(self._layers[task], preset, defaults)
        self.tryit.answers = None
        self.control.clear()  # the other task's live curve and progress are not this task's
        if task == "causal-lm" and not self.tryit.prompt:
            self.tryit.prompt = self.tryit.default_prompt()
        for event in ("task", "choices", "runs", "answers", "live"):
            self.messages.emit(event)
        what = ("a language model that writes: train it on the skill, then compare answers under 'Try it'"
                if task == "causal-lm" else "a sentence classifier")
        self.say(f"Task: {_TASK_WORDS[task]}, {what} ({model}, preset {preset}).")

    def update(self, **changes: Any) -> None:
        """Change some choices (``Settings.update``) and tell the view.

        A refusal said in the message line ("Cannot train with these settings: ...") is
        taken back once the choices are fixed, so no red message outlives its cause.
        """
        self.settings.update(**changes)
        self.messages.emit("choices")
        m = self.messages.message
        if m.kind == "error" and m.text.startswith("Cannot train") and self.settings.problem() is None:
            self.say("Fixed: these settings can train. Press Train.")

    def lock(self, values: dict[str, Any], reason: str) -> None:
        """An instructor's exercise: set these choices and keep them (``Settings.lock``); the view greys them."""
        self.settings.lock(values, reason)
        self.messages.emit("choices")
        self.say(f"Locked for this exercise: {', '.join(sorted(values))} ({reason.strip()}).")

    def unlock(self) -> None:
        """End an exercise's lock: every choice can be changed again."""
        self.settings.unlock()
        self.messages.emit("choices")

    @property
    def locked(self) -> dict[str, str]:
        """The locked choices: name -> the reason the attendee is told (empty when none)."""
        return dict(self.settings.locked)

    def _after_run(self, result: RunResult) -> None:
        """A run has ended and is shown: a language model's run answers Try it's prompt, without a click."""
        if result.config.task == "causal-lm" and self.task == "causal-lm" and self.tryit.prompt.strip():
            self.tryit.ask(quiet=True)

    # ------------------------------------------------------------------ the pieces' verbs and facts, here too
    # What the view, scripts and tests use; the rest is on the piece (``state.settings.lora_config()``).

    # the message line
    message: Message = _forward("messages", "message")
    last_error: str | None = _forward("messages", "last_error")
    subscribe = _forward("messages", "subscribe")
    say = _forward("messages", "say")
    # settings
    model: ModelLayers = _forward("settings", "model")
    defaults: RunConfig = _forward("settings", "defaults")
    preset_name: str = _forward("settings", "preset_name")
    choices = _forward("settings", "choices")
    methods = _forward("settings", "methods")
    lr_note = _forward("settings", "lr_note")
    lr_warning = _forward("settings", "lr_warning")
    problem_field = _forward("settings", "problem_field")
    rank_max = _forward("settings", "rank_max")
    layers = _forward("settings", "layers")
    config = _forward("settings", "config")
    problem = _forward("settings", "problem")
    parameter_estimate = _forward("settings", "parameter_estimate")
    readout = _forward("settings", "readout")
    # run control
    train: TrainFn = _forward("control", "train", settable=True)
    running: bool = _forward("control", "running")
    stopping: bool = _forward("control", "stopping")
    last_result: RunResult | None = _forward("control", "last_result", settable=True)
    run_config: RunConfig | None = _forward("control", "run_config")
    step = _forward("control", "step")
    phase: str = _forward("control", "phase")
    phase_text: str = _forward("control", "phase_text")
    live_history = _forward("control", "live_history")
    start = _forward("control", "start")
    stop = _forward("control", "stop")
    wait = _forward("control", "wait")
    verdict = staticmethod(RunControl.verdict)
    # the run list
    runs_dir: Path = _forward("runs", "runs_dir")
    reports_dir: Path = _forward("runs", "reports_dir")
    results: list[RunResult] = _forward("runs", "results")
    runs_frame = _forward("runs", "runs_frame")
    selected: tuple[str, ...] = _forward("runs", "selected")
    hidden: set[str] = _forward("runs", "hidden")
    pending_delete: tuple[str, ...] = _forward("runs", "pending_delete")
    last_export: Path | None = _forward("runs", "last_export")
    last_bundle: Path | None = _forward("runs", "last_bundle")
    refresh = _forward("runs", "refresh")
    outcome = _forward("runs", "outcome")
    visible_results = _forward("runs", "visible_results")
    labels = _forward("runs", "labels")
    shared_text = _forward("runs", "shared_text")
    select = _forward("runs", "select")
    select_all = _forward("runs", "select_all")
    select_none = _forward("runs", "select_none")
    hide = _forward("runs", "hide")
    show_hidden = _forward("runs", "show_hidden")
    request_delete = _forward("runs", "request_delete")
    cancel_delete = _forward("runs", "cancel_delete")
    confirm_delete = _forward("runs", "confirm_delete")
    selected_results = _forward("runs", "selected_results")
    timing_note = _forward("runs", "timing_note")
    table = _forward("runs", "table")
    samples_table = _forward("runs", "samples_table")
    export = _forward("runs", "export")
    # Try it
    prompt: str = _forward("tryit", "prompt")
    try_run: str | None = _forward("tryit", "try_run")
    answers = _forward("tryit", "answers")
    prompt_examples = _forward("tryit", "prompt_examples")
    set_prompt = _forward("tryit", "set_prompt")
    try_runs = _forward("tryit", "try_runs")
    choose_run = _forward("tryit", "choose_run")
    try_it = _forward("tryit", "ask")


__all__ = ["PanelState", "TASK_LABELS", "TASK_SETUPS", "TASKS"]

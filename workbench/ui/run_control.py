"""The panel's run control: start a run, follow it step by step, stop it, say how it ended.

``RunControl`` trains the ``Settings``' config in a background thread (or inline, for
scripts and tests), so Stop can be clicked while it trains.  It keeps the run going's
config, its last step and its live curve, and when the run ends it says what happened:
completed (learned, or did not learn), stopped, diverged or failed
(``workbench.engine.outcome.run_outcome``): one that did not learn is said so, never
shown as a success.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from workbench.engine.config import RunConfig, RunResult
from workbench.engine.events import RunSink
from workbench.engine.outcome import Outcome, run_outcome
from workbench.ui.events import MessageKind, Messages
from workbench.ui.run_facts import memory_text, qlora_why, threads_text, time_text
from workbench.ui.settings import Settings

TrainFn = Callable[..., RunResult]


class _Phases(RunSink):
    """Hears when an evaluation begins (the loop's ``on_eval_start``) and tells the run control."""

    def __init__(self, on_eval_start: Callable[[int, int, int], None]) -> None:
        self._on_eval_start = on_eval_start

    def on_eval_start(self, step: int, steps: int, prompts: int) -> None:
        self._on_eval_start(step, steps, prompts)


def default_train(cfg: RunConfig, **kwargs: Any) -> RunResult:
    """``wb.train``: the engine's train with the run store attached (``workbench.records.recording``)."""
    from workbench.records import recording

    return recording.train(cfg, **kwargs)



class RunControl:
    """One run at a time: ``start()``, ``stop()``, ``wait()``, and what the run going shows.

    ``settings``: gives the ``Settings`` in use (its config is what ``start`` trains);
    ``train``: the function that trains and stores a run (default ``default_train``);
    runs go to ``runs_dir``.  ``refresh``: reloads the run list once a run has ended;
    ``after``: called with the result of a run that ended well enough to show (Try it
    answers with it).  ``background=False`` trains inside ``start()``.
    """

    def __init__(self, messages: Messages, settings: Callable[[], Settings], runs_dir: str | Path,
                 refresh: Callable[[], None], after: Callable[[RunResult], None], background: bool = True,
                 train: TrainFn | None = None) -> None:
        self.messages = messages
        self._settings = settings
        self.runs_dir = Path(runs_dir)
        self._refresh = refresh
        self._after = after
        self.background = background
        self.train: TrainFn = train or default_train
        self.last_result: RunResult | None = None
        self.run_config: RunConfig | None = None  # the config of the run going (or the last one)
        self.step: Any = None  # the engine's StepInfo after the last step of the run going
        self.live_history: pd.DataFrame | None = None  # the curve to show; None: nothing to show
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._running = False
        self.stopping = False
        # What the run going is doing: "loading", "training" or "evaluating", and that in words.
        self.phase: str = ""
        self.phase_text: str = ""

    @property
    def running(self) -> bool:
        return self._running

    def clear(self) -> None:
        """Forget the last run's live curve and progress (another task is shown); nothing while one trains."""
        if not self._running:
            self.live_history, self.step, self.phase, self.phase_text = None, None, "", ""

    def start(self) -> bool:
        """Train one run with the choices (in a thread when ``background``); False when refused."""
        if self._running:
            self.messages.say("A run is already going: wait for it or press Stop.", "warn")
            return False
        try:
            settings = self._settings()
            problem = settings.problem()
            cfg = None if problem else settings.config()
        except Exception as e:  # noqa: BLE001 - the panel must say it, not raise
            problem, cfg = f"{type(e).__name__}: {e}", None
        if problem or cfg is None:
            self.messages.say(problem or "no config", "error")
            return False
        self.last_result, self.messages.last_error = None, None
        self._stop_event = threading.Event()
        self._running, self.stopping = True, False
        self.run_config, self.step = cfg, None
        self.phase, self.phase_text = "loading", "loading the model and data"
        self.live_history = pd.DataFrame(columns=["step", "train_loss"])
        self.messages.emit("running")
        self.messages.emit("live")
        self.messages.say(f"Training {cfg.label()} for {cfg.steps} steps (loading the model and data first)…")
        if self.background:
            self._thread = threading.Thread(target=self._run, args=(cfg,), name="workbench-train", daemon=True)
            self._thread.start()
        else:
            self._run(cfg)
        return True

    def _on_step(self, info: Any) -> None:
        first, was = self.step is None, self.phase
        self.step = info
        self.phase, self.phase_text = "training", "training"
        self.messages.emit("progress")
        if (first or was == "evaluating") and self.run_config is not None and not self.stopping:
            cfg = self.run_config  # loading (or an evaluation) is over: say what goes on now
            self.messages.say(f"Training {cfg.label()}: {cfg.steps} steps; the loss curve follows. Stop ends it early "
                              "and keeps it.")

    def _on_eval_start(self, step: int, steps: int, prompts: int) -> None:
        """An evaluation begins: no step runs for a while, so say what happens instead."""
        what = (f"evaluating {prompts} held-out prompt{'s' if prompts != 1 else ''}" if prompts
                else "evaluating on the validation set")
        final = step >= steps
        self.phase, self.phase_text = "evaluating", f"{what}, step {step}…"
        self.messages.emit("progress")
        if not self.stopping:
            later = "" if final else "; training goes on after it"
            all_of_them = (" (the final evaluation answers every prompt)" if final and prompts else "")
            self.messages.say(f"Step {step} of {steps}: {what}{all_of_them}{later}…")

    def _run(self, cfg: RunConfig) -> None:
        """Train (in the worker thread, or inline), then refresh the runs and report."""
        error = ""
        # A language model's run hands back its trained model (about 4 MB for story-lm), so
        # Try it answers with it at once; only the last one is kept.
        keep = {"keep_model": True} if cfg.task == "causal-lm" else {}
        try:
            result = self.train(cfg, on_step=self._on_step, stop=self._stop_event, runs_dir=str(self.runs_dir),
                                progress=False, sinks=[_Phases(self._on_eval_start)], **keep)
        except Exception as e:  # noqa: BLE001 - said in the panel; the store keeps earlier runs
            result, error = None, f"{type(e).__name__}: {e}"
        try:
            if result is not None:
                self.last_result = result
                self.live_history = result.history
                self.messages.emit("live")
            self._refresh()
        except Exception as e:  # noqa: BLE001
            if result is not None:
                result = None
                error = f"the run finished but the panel could not show it: {type(e).__name__}: {e}"
        finally:
            self._running, self.stopping = False, False
            self.phase, self.phase_text = "", ""
            self.messages.emit("running")
        if result is None:
            self.live_history = None
            self.messages.emit("live")
            self.messages.say(error, "error")
        else:
            self.messages.say(*self.verdict(result))
            self._after(result)

    @staticmethod
    def verdict(result: RunResult, outcome: Outcome | None = None) -> tuple[str, MessageKind, str]:
        """What to tell the user about a finished run: (text, kind, details).

        Learned, did not learn, stopped, diverged or failed: only a completed run that
        learned (``run_outcome``) is told as a success ("Done", "ok"); one that did not is
        a warning that says why and what to try.  The time says what it counts (``time_text``:
        total, training, evaluating, loading, measured), the memory the peak beside the
        weights (``memory_text``), and a QLoRA run on a CPU why its peak and time rose
        while its weights shrank.  ``details`` (shown folded): where a LoRA run's adapter
        is and how to load it.
        """
        from workbench.records.report import adapter_folder

        outcome = outcome or run_outcome(result)
        took = time_text(result.timing)
        took = f"took {took}" if took else ""
        threads = threads_text(result)
        took = f"{took} ({threads})" if took and threads else took
        memory = memory_text(result)
        if result.status == "completed":
            if result.config.task == "causal-lm":
                em = result.eval_exact_match
                acc_text = f", exact match {100 * em:.1f}% on held-out prompts" if math.isfinite(em) else ""
            else:
                acc = result.eval_accuracy
                acc_text = f", validation accuracy {100 * acc:.1f}%" if math.isfinite(acc) else ""
            facts = "; ".join(x for x in (
                f"{result.config.label()}: final loss {result.final_loss:.4f}{acc_text}, "
                f"{result.params.trainable:,} trainable parameters", took, memory) if x)
            why = qlora_why(result)
            why = f" {why}" if why else ""
            if not outcome.ok:
                return (f"Finished, but it {outcome.sentence}. ({facts}.) It is kept in the table, marked "
                        f"'{outcome.verdict}'.{why}", "warn", "")
            folder = adapter_folder(result)
            adapter = (f"Its adapter is in {folder}: load it with wb.load_adapter(model, \"{folder}\") or PEFT's "
                       f"PeftModel.from_pretrained(base_model, \"{folder}\")." if folder is not None else "")
            return f"Done: {facts}. Added to the table.{why}", "ok", adapter
        if result.status == "stopped":
            return f"Stopped: {result.message}. The run is kept in the table with status 'stopped'.", "warn", ""
        if result.status == "diverged":
            hint = f"e.g. {result.config.lr / 10:g}"
            msg = result.message.rstrip(".")
            advice = f" ({hint})" if "lower learning rate" in msg else f". Try a lower learning rate, {hint}"
            return (f"The run diverged: {msg}{advice}. It is kept in the table with status 'diverged'.", "error",
                    "")
        return f"The run ended as '{result.status}': {result.message}", "error", ""

    def stop(self) -> None:
        """Ask the run going to end after its current step (it is kept as 'stopped')."""
        if not self._running:
            self.messages.say("Nothing is training.")
            return
        self._stop_event.set()
        self.stopping = True
        self.messages.emit("running")
        self.messages.say("Stopping after the current step…", "warn")

    def wait(self, timeout: float | None = None) -> RunResult | None:
        """Block until the background run has finished; its result (None when it failed)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                raise TimeoutError(f"the run is still going after {timeout} s")
        return self.last_result


__all__ = ["RunControl", "TrainFn", "default_train"]

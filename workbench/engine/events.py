"""The edges of a run: what the training loop tells the world, and who listens.

The loop in ``workbench.engine.training`` is only about training.  Whatever else a run
does - call the user's ``on_step``, draw a progress bar, checkpoint the record to the run
store (``workbench.records.recording.StoreSink``), relay events from a worker process to
the caller (``workbench.engine.worker``) - is a *sink*: an object with the hooks below,
which the loop calls at the edges of the run:

    on_start(result)           the model and data are ready, no step has run yet
    on_eval_start(step, steps, prompts)  an evaluation begins after this step (``prompts``:
                               held-out prompts a language model answers in it; 0 for a classifier)
    on_step(info)              after every optimizer step (and its evaluation, if any)
    on_eval(result)            after every evaluation, with the curve so far
    on_finish(result, model)   once, whatever the ending: completed, stopped, diverged, failed

``result`` is the run's ``RunResult`` (status "running" until ``on_finish``), the same
object from start to finish, so a sink may note things on it (the run store sets
``run_id`` and ``path``).  A sink that raises ends the run as "failed" (``on_finish``
still runs) - except ``KeyboardInterrupt``, which stops it as Ctrl-C does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

from workbench.engine.config import history_row

if TYPE_CHECKING:
    from torch import nn

    from workbench.engine.config import RunConfig, RunResult

_STEP_COLUMNS = ("step", "train_loss", "lr", "eval_loss", "eval_accuracy")  # StepInfo's own fields of a row


@dataclass
class StepInfo:
    """What ``on_step`` receives after every optimizer step (and its evaluation, if any)."""

    step: int
    steps: int
    train_loss: float
    lr: float
    seconds: float  # since the run started
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    history: list[dict] = field(default_factory=list)  # every row so far (step, train_loss, ...)
    metrics: dict[str, float] = field(default_factory=dict)  # a language model's evaluation: eval_exact_match, ...

    @classmethod
    def from_row(cls, row: dict, steps: int, seconds: float, history: list[dict]) -> "StepInfo":
        """The step's info from its row of the curve (``history_row``)."""
        return cls(row["step"], steps, row["train_loss"], row["lr"], seconds, row.get("eval_loss"),
                   row.get("eval_accuracy"), history, {k: v for k, v in row.items() if k not in _STEP_COLUMNS})

    def row(self) -> dict:
        """The step's row of the curve again (``history_row``): what a worker's caller or the
        Ray sweep's board keeps of each step they hear of."""
        evaluation = {} if self.eval_loss is None else {"eval_loss": self.eval_loss,
                                                        "eval_accuracy": self.eval_accuracy}
        return history_row(self.step, self.train_loss, self.lr, {**evaluation, **self.metrics})


class RunSink:
    """A listener on a run's edges.  Every hook does nothing: override the ones you need."""

    def needs_model(self, config: RunConfig) -> bool:
        """Whether ``on_finish`` needs the trained model (a run in a worker process then sends it back)."""
        return False

    def needs_adapter(self, config: RunConfig) -> bool:
        """Whether ``on_finish`` needs the trained LoRA adapter's files, as ``result.adapter``
        (``workbench.lora.adapters.AdapterFiles``): a run in a worker process then sends those
        (megabytes) instead of the whole model."""
        return False

    def on_start(self, result: RunResult) -> None:
        """The model and the data are ready; no step has run yet."""

    def on_eval_start(self, step: int, steps: int, prompts: int) -> None:
        """An evaluation begins after step ``step`` of ``steps`` (seconds, during which no step runs):
        ``prompts`` held-out prompts are answered by generation (0 for a classifier)."""

    def on_step(self, info: StepInfo) -> None:
        """After every optimizer step, and after its evaluation when the step evaluated."""

    def on_eval(self, result: RunResult) -> None:
        """After every evaluation: ``result.history`` holds the curve so far (a checkpoint moment)."""

    def on_finish(self, result: RunResult, model: nn.Module | None) -> None:
        """Once, at the end, whatever the status; ``model`` is None when it could not be had."""


class SinkGroup(RunSink):
    """Several sinks as one: each hook is passed to every sink, in the order given."""

    def __init__(self, sinks: Iterable[RunSink] = ()) -> None:
        self.sinks: list[RunSink] = []
        for sink in sinks:
            if not isinstance(sink, RunSink):
                raise TypeError(f"a sink must be a workbench.engine.events.RunSink, got {type(sink).__name__}")
            self.sinks.append(sink)

    def needs_model(self, config: RunConfig) -> bool:
        return any(s.needs_model(config) for s in self.sinks)

    def needs_adapter(self, config: RunConfig) -> bool:
        return any(s.needs_adapter(config) for s in self.sinks)

    def on_start(self, result: RunResult) -> None:
        for s in self.sinks:
            s.on_start(result)

    def on_eval_start(self, step: int, steps: int, prompts: int) -> None:
        for s in self.sinks:
            s.on_eval_start(step, steps, prompts)

    def on_step(self, info: StepInfo) -> None:
        for s in self.sinks:
            s.on_step(info)

    def on_eval(self, result: RunResult) -> None:
        for s in self.sinks:
            s.on_eval(result)

    def on_finish(self, result: RunResult, model: nn.Module | None) -> None:
        for s in self.sinks:
            s.on_finish(result, model)


class StepCallback(RunSink):
    """``train(on_step=f)``: calls ``f(info)`` after every step."""

    def __init__(self, callback: Callable[[StepInfo], None]) -> None:
        if not callable(callback):
            raise TypeError(f"on_step must be a function of one StepInfo, got {type(callback).__name__}")
        self.callback = callback

    def on_step(self, info: StepInfo) -> None:
        self.callback(info)


class ProgressBar(RunSink):
    """``train(progress=True)``: a tqdm bar over the steps (a widget in a notebook), with the loss."""

    def __init__(self) -> None:
        self.bar = None

    def on_start(self, result: RunResult) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=result.config.steps, desc=result.config.label(), leave=False)

    def on_step(self, info: StepInfo) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{info.train_loss:.4f}")

    def on_finish(self, result: RunResult, model: nn.Module | None) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def sinks_for(sinks: Iterable[RunSink] = (), on_step: Callable[[StepInfo], None] | None = None,
              progress: bool = False) -> SinkGroup:
    """The sinks of a ``train`` call: the caller's, then ``on_step``, then the progress bar."""
    group = list(sinks)
    if on_step is not None:
        group.append(StepCallback(on_step))
    if progress:
        group.append(ProgressBar())
    return SinkGroup(group)

"""Runs that keep their record: the engine's ``train`` and ``run_sweep`` with the run store attached.

``wb.train`` and ``wb.run_sweep`` are the functions here.  The engine trains and measures
and stores nothing (``workbench.engine.training``); the record is written by a sink, a
listener on the run's edges (``workbench.engine.events``):

* at every evaluation, the record and the curve so far (a checkpoint: a run that is
  stopped, interrupted, diverges, fails, or whose process dies keeps what it reached);
* at the end, the final record, and a LoRA run's adapter in PEFT's format under
  ``<run folder>/adapter`` (reloadable with ``wb.load_adapter``).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
from torch import nn

from workbench.engine import sweep as engine_sweep
from workbench.engine import training as engine
from workbench.engine.config import RunConfig, RunResult
from workbench.engine.events import RunSink, StepInfo
from workbench.lora.adapters import save_adapter
from workbench.records.store import ADAPTER_FOLDER, DEFAULT_ROOT, save_run

__all__ = ["StoreSink", "train", "run_sweep", "ADAPTER_FOLDER"]


@dataclass
class StoreSink(RunSink):
    """Writes a run into the run store under ``runs_dir`` as it goes (``workbench.records.store``)."""

    runs_dir: str | os.PathLike = DEFAULT_ROOT

    def needs_model(self, config: RunConfig) -> bool:
        return config.method == "lora"  # for the adapter

    def on_eval(self, result: RunResult) -> None:
        save_run(result, self.runs_dir)  # checkpoint: the record and the curve so far

    def on_finish(self, result: RunResult, model: nn.Module | None) -> None:
        save_run(result, self.runs_dir)
        if result.config.method == "lora" and model is not None and _steps_trained(result) > 0:
            save_adapter(model, os.path.join(result.path, ADAPTER_FOLDER))


def _steps_trained(result: RunResult) -> int:
    """Optimizer steps that changed the weights (a diverged step's loss is NaN and changed nothing)."""
    losses = pd.to_numeric(result.history.get("train_loss", pd.Series(dtype=float)), errors="coerce")
    return int(np.isfinite(losses).sum())


def _with_store(sinks: Iterable[RunSink], runs_dir: str | os.PathLike | None) -> list[RunSink]:
    """The store first, so that later sinks see ``result.path`` at the end."""
    return ([StoreSink(runs_dir)] if runs_dir is not None else []) + list(sinks)


def train(
    cfg: RunConfig,
    on_step: Callable[[StepInfo], None] | None = None,
    stop: threading.Event | None = None,
    runs_dir: str | os.PathLike | None = DEFAULT_ROOT,
    progress: bool = True,
    keep_model: bool = False,
    *,
    sinks: Iterable[RunSink] = (),
    fresh_process: bool | None = None,
) -> RunResult:
    """Run one fine-tuning as ``cfg`` says; return its result and store it under ``runs_dir``.

    ``on_step`` is called after each step with a ``StepInfo``.  Setting ``stop`` (a
    ``threading.Event``) or pressing Ctrl-C ends the run early as "stopped".
    ``runs_dir=None`` keeps the run out of the store.  A LoRA run's adapter is saved in
    PEFT's format beside its record (``<run folder>/adapter``).  ``keep_model=True``
    returns the trained model too, as ``result.model`` (for looking inside ΔW).
    ``sinks``: more listeners on the run (``workbench.engine.events.RunSink``).
    ``fresh_process``: on the CPU a run trains in a worker process of its own by default,
    so that its measured peak is its own (``workbench.engine.training.use_fresh_process``).
    """
    return engine.train(cfg, on_step, stop, progress, keep_model, sinks=_with_store(sinks, runs_dir),
                        fresh_process=fresh_process)


def run_sweep(
    configs: Sequence[RunConfig],
    runs_dir: str | os.PathLike | None = DEFAULT_ROOT,
    progress: bool = True,
    on_run: Callable[[int, RunResult], None] | None = None,
    *,
    sinks: Iterable[RunSink] = (),
    **train_kwargs: Any,
) -> list[RunResult]:
    """Train each config in turn, storing each run under ``runs_dir``; stop early if a run is stopped.

    ``on_run(i, result)`` is called after each run; ``train_kwargs`` go to every ``train``
    (``on_step``, ``stop``, ``keep_model``, ``fresh_process``).
    """
    return engine_sweep.run_sweep(configs, progress=progress, on_run=on_run, sinks=_with_store(sinks, runs_dir),
                                  **train_kwargs)

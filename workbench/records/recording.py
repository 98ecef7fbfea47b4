"""Runs that keep their record: the engine's ``train`` and ``run_sweep`` with the run store attached.

``wb.train`` and ``wb.run_sweep`` are the functions here.  The engine trains and measures
and stores nothing (``workbench.engine.launch``); the record is written by a sink, a
listener on the run's edges (``workbench.engine.events``):

* at every evaluation, the record and the curve so far (a checkpoint: a run that is
  stopped, interrupted, diverges, fails, or whose process dies keeps what it reached);
* at the end, the final record, and a LoRA run's adapter in PEFT's format under
  ``<run folder>/adapter`` (reloadable with ``wb.load_adapter``).
"""

from __future__ import annotations

import functools
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
from torch import nn

from workbench.engine import sweep as engine_sweep
from workbench.engine import launch as engine
from workbench.engine.config import RunConfig, RunResult
from workbench.engine.events import RunSink, StepInfo
from workbench.engine.ray_sweep import check_backend
from workbench.records.store import ADAPTER_FOLDER, DEFAULT_ROOT, save_run

__all__ = ["StoreSink", "train", "run_sweep", "check_store_visible", "ADAPTER_FOLDER"]


@dataclass
class StoreSink(RunSink):
    """Writes a run into the run store under ``runs_dir`` as it goes (``workbench.records.store``)."""

    runs_dir: str | os.PathLike = DEFAULT_ROOT
    # Write the record as soon as the run starts (status "running"), so that it has its
    # run id from the start: a Ray sweep marks the run of a worker that died under that id.
    save_at_start: bool = False

    def needs_adapter(self, config: RunConfig) -> bool:
        return config.method == "lora"

    def on_start(self, result: RunResult) -> None:
        if self.save_at_start:
            save_run(result, self.runs_dir)

    def on_eval(self, result: RunResult) -> None:
        save_run(result, self.runs_dir)  # checkpoint: the record and the curve so far

    def on_finish(self, result: RunResult, model: nn.Module | None) -> None:
        save_run(result, self.runs_dir)
        if result.adapter is not None and _steps_trained(result) > 0:
            result.adapter.write(os.path.join(result.path, ADAPTER_FOLDER))


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
    track: str | bool | None = None,
) -> RunResult:
    """Run one fine-tuning as ``cfg`` says; return its result and store it under ``runs_dir``.

    ``on_step`` is called after each step with a ``StepInfo``.  Setting ``stop`` (a
    ``threading.Event``) or pressing Ctrl-C ends the run early as "stopped".
    ``runs_dir=None`` keeps the run out of the store.  A LoRA run's adapter is saved in
    PEFT's format beside its record (``<run folder>/adapter``).  ``keep_model=True``
    returns the trained model too, as ``result.model`` (for looking inside ΔW).
    ``sinks``: more listeners on the run (``workbench.engine.events.RunSink``).
    ``fresh_process``: on the CPU a run trains in a worker process of its own by default,
    so that its measured peak is its own (``workbench.engine.launch.use_fresh_process``).
    ``track="mlflow"``: log the run to MLflow as well (None: when ``MLFLOW_TRACKING_URI`` is
    set; False: never); an unreachable tracker never fails the run (``workbench.records.tracking``).
    """
    from workbench.records.tracking import MlflowSink, tracker_for

    tracker = [MlflowSink()] if tracker_for(track) == "mlflow" else []  # after the store: it logs the stored files
    return engine.train(cfg, on_step, stop, progress, keep_model, sinks=_with_store(sinks, runs_dir) + tracker,
                        fresh_process=fresh_process)


def run_sweep(
    configs: Sequence[RunConfig],
    runs_dir: str | os.PathLike | None = DEFAULT_ROOT,
    progress: bool = True,
    on_run: Callable[[int, RunResult], None] | None = None,
    *,
    sinks: Iterable[RunSink] = (),
    backend: str = "local",
    address: str | None = None,
    track: str | bool | None = None,
    **train_kwargs: Any,
) -> list[RunResult]:
    """Train each config, storing each run under ``runs_dir``; stop early if a run is stopped.

    ``backend="local"``: one after another, here.  ``backend="ray"``: each run a Ray task
    (``workbench.engine.ray_sweep``), on the cluster at ``address`` or, without one, on a
    Ray instance started here for the sweep; the workers write to the same store, so on a
    cluster ``runs_dir`` must be a folder every node mounts at the same path (each task
    checks that it sees it).  ``on_run(i, result)`` is called as each run ends; the results
    come in the configs' order.  ``train_kwargs`` go to every ``train`` (``on_step`` -
    local only -, ``stop``, ``keep_model``, ``fresh_process``).  ``track``: as ``train``'s, each
    run of the sweep also an MLflow run of its own.
    """
    from workbench.records.tracking import MlflowEachRun, tracker_for

    sinks = list(sinks) + ([MlflowEachRun()] if tracker_for(track) == "mlflow" else [])  # after the store
    if check_backend(backend) == "ray":
        store = []
        if runs_dir is not None:
            # Absolute, so that every worker writes to the same place whatever its working folder.
            runs_dir = Path(runs_dir).resolve()
            runs_dir.mkdir(parents=True, exist_ok=True)
            store = [StoreSink(str(runs_dir), save_at_start=True)]
            train_kwargs["worker_check"] = functools.partial(check_store_visible, str(runs_dir))
        return engine_sweep.run_sweep(configs, progress=progress, on_run=on_run, backend="ray", address=address,
                                      sinks=store + list(sinks), **train_kwargs)
    return engine_sweep.run_sweep(configs, progress=progress, on_run=on_run, sinks=_with_store(sinks, runs_dir),
                                  backend=backend, address=address, **train_kwargs)


def check_store_visible(runs_dir: str) -> None:
    """In a Ray worker: refuse to train when the run store's folder is not there.

    The sweep created it on the machine that started the sweep; a node that does not see
    it would write its records into a folder of its own, which nobody reads."""
    if not Path(runs_dir).is_dir():
        raise FileNotFoundError(f"the run store {runs_dir} does not exist on the Ray node {socket.gethostname()}: "
                                "with backend 'ray' the runs_dir must be a folder every node sees at the same path "
                                "(a shared file system, e.g. NFS, mounted alike on every node)")

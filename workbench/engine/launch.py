"""Where a run lives: this process, or a worker process of its own; then the loop.

``train(cfg)`` is the engine's one entry for a run.  It checks the config, gathers the
listeners on the run's edges (the caller's sinks, ``on_step``, the progress bar:
``workbench.engine.events``), and picks the process the run trains in:

* this process: ``workbench.engine.training.train_here``, the loop itself;
* a fresh worker process (``workbench.engine.worker.train_in_worker``), forked for this run
  alone, whose child calls the same ``train_here``; the sinks still run here.

The choice is made here, above the loop, so that the loop's module knows nothing of
processes and the worker only of the loop: launch -> worker -> training, never back.
A Ray sweep's task (``workbench.engine.ray_sweep``) comes through here too.
"""

from __future__ import annotations

import sys
import threading
from typing import Callable, Iterable

from workbench.engine.config import RunConfig, RunResult, validate
from workbench.engine.events import RunSink, StepInfo, sinks_for
from workbench.engine.hardware import resolve_device
from workbench.engine.training import train_here
from workbench.util.checks import check_bool

__all__ = ["train", "use_fresh_process"]


def use_fresh_process(cfg: RunConfig, fresh_process: bool | None = None) -> bool:
    """Whether a run trains in a worker process of its own (``workbench.engine.worker``).

    None (the default) decides by the device.  On the CPU (Linux) yes: the only peak a CPU
    run has is the resident memory of a whole process, and a process that ran other runs
    keeps their memory (measured in one process, the same head-only run on the tiny preset
    peaked at 545 MB alone and at 665 MB right after a full fine-tuning).  On CUDA no:
    ``max_memory_allocated`` after a reset is the run's own in any process.
    """
    linux = sys.platform.startswith("linux")
    if fresh_process is None:
        return linux and resolve_device(cfg.device).type == "cpu"
    check_bool("fresh_process", fresh_process)
    if fresh_process and not linux:
        raise ValueError("fresh_process=True needs Linux (the worker is forked, and the peak read from /proc); "
                         "use fresh_process=False")
    return fresh_process


def train(
    cfg: RunConfig,
    on_step: Callable[[StepInfo], None] | None = None,
    stop: threading.Event | None = None,
    progress: bool = True,
    keep_model: bool = False,
    *,
    sinks: Iterable[RunSink] = (),
    fresh_process: bool | None = None,
) -> RunResult:
    """Run one fine-tuning as ``cfg`` says and return its result.  Nothing is stored here:
    ``wb.train`` (``workbench.records.recording.train``) is this with the run store attached.

    ``on_step`` is called after each step with a ``StepInfo``; ``progress`` shows a bar;
    ``sinks`` are further listeners on the run's edges (``workbench.engine.events``).
    Setting ``stop`` (a ``threading.Event``) or pressing Ctrl-C ends the run early as
    "stopped".  ``keep_model=True`` returns the trained model too, as ``result.model``.
    ``fresh_process``: train in a worker process of its own (see ``use_fresh_process``;
    the default: yes on the CPU, no on CUDA); the sinks and ``on_step`` run here either way.
    """
    validate(cfg)
    group = sinks_for(sinks, on_step, progress)
    if use_fresh_process(cfg, fresh_process):
        from workbench.engine.worker import train_in_worker  # starts its fork server only when wanted

        return train_in_worker(cfg, group, stop=stop, keep_model=keep_model)
    return train_here(cfg, group, stop=stop, keep_model=keep_model)

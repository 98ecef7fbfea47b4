"""How many threads a CPU run uses: no more than the CPUs other processes leave free.

Measured on a 2-core machine (AMD EPYC Zen 3, 2026-12-07) with one busy process in another
session, a story-lm LoRA step took 6.5 s with torch's 2 threads and 0.116 s with 1 thread
(quiet: 0.075 s with 2).  A step is a few thousand operations, and each one split between two
threads ends when both halves are done.  With one CPU taken, the scheduler gives the run's two
threads one CPU between them, so each operation waits for the other thread's next time slice.
One thread never waits for another.

So a run in a worker process of its own (``workbench.engine.worker``) watches, while it loads
its model and data (``CpuWatch``: at least a tenth of a second), how busy other processes keep
the CPUs it may run on, its own work taken off, and then trains with at most the CPUs left
free: never fewer than one thread, never more than it was given.  A CPU counts as taken when
other processes kept it busy for at least ``TAKEN_FROM`` (three quarters) of the window.  A
competing run keeps a CPU busy all the time; a panel's click does not: in JupyterLab on the
2-core Zen 4 machine (2026-12-08), the kernel drawing the empty curve and the browser painting
kept 0.5 of a CPU busy during the first tenth of a second after a Train click, which a rule of
"more than half", measured over that tenth before loading, read as a CPU taken: the panel's run
then trained with 1 thread (0.056 s a step against 0.038 s).  The choice is in the run's record
(``environment["threads"]`` and ``["threads_reason"]``).  A run given ``threads`` by its config
keeps them.  On the bundled models the loss curve is the same with 1 thread as with 2
(``tests/engine/test_cpu_share.py`` checks it), so the choice changes the time and not the
numbers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from workbench.util import procfs

__all__ = ["CpuWatch", "busy_cpus", "free_threads", "TAKEN_FROM"]

WINDOW_S = 0.1  # the shortest window a watch measures
TAKEN_FROM = 0.75  # the share of the window other processes must keep a CPU busy for it to count as taken


class CpuWatch:
    """How many CPUs other processes keep busy while this process works: made before the work, read after it.

    /proc/stat counts every process's time, this one's too; this process's own (every thread of
    it, /proc/self/stat) is taken off, so a run's own loading is not counted as load."""

    def __init__(self, cpus: Iterable[int] | None = None) -> None:
        self.cpus = sorted(os.sched_getaffinity(0)) if cpus is None else list(cpus)
        self.started = time.monotonic()
        self.times = procfs.cpu_times()
        self.own = procfs.own_cpu_ticks()

    def others(self, least: float = WINDOW_S) -> float | None:
        """CPUs' worth of other processes' work since the watch began (1.0: one CPU kept busy
        throughout); it waits until ``least`` seconds have passed.  None where /proc cannot be read."""
        time.sleep(max(0.0, least - (time.monotonic() - self.started)))
        times, own = procfs.cpu_times(), procfs.own_cpu_ticks()
        if own is None or self.own is None:
            return None
        busy = total = 0
        for cpu in self.cpus:
            if cpu not in self.times or cpu not in times:
                return None
            busy += times[cpu][0] - self.times[cpu][0]
            total += times[cpu][1] - self.times[cpu][1]
        if total <= 0:
            return 0.0
        return max(0.0, (busy - (own - self.own)) / (total / len(self.cpus)))


def busy_cpus(window: float = WINDOW_S, cpus: Iterable[int] | None = None) -> float | None:
    """How many of ``cpus`` (default: those this process may run on) other processes kept busy
    over the next ``window`` seconds, while this process sleeps.  None off Linux."""
    return CpuWatch(cpus).others(window)


def free_threads(given: int, busy: float | None = None) -> tuple[int, str]:
    """The threads a run should use (at most ``given``) and why, in words ("" when it is ``given``).

    ``busy``: the CPUs' worth of work other processes do (default: measured now, ``busy_cpus``).
    A CPU counts as taken from ``TAKEN_FROM`` of one: 0.8 takes one CPU, 0.5 none."""
    if given <= 1:
        return given, ""
    cpus = os.sched_getaffinity(0)
    busy = busy_cpus(cpus=cpus) if busy is None else busy
    taken = 0 if busy is None else int(busy + 1 - TAKEN_FROM)
    if taken == 0:  # a thread count above the CPUs is the caller's choice, kept
        return given, ""
    threads = max(1, min(given, len(cpus) - taken))
    if threads == given:
        return given, ""
    return threads, (f"{threads} of {given} threads: other processes kept {busy:.1f} of the {len(cpus)} CPUs "
                     "busy while the run loaded")

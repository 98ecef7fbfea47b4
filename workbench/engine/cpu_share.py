"""How many threads a CPU run uses: no more than the CPUs other processes leave free.

Measured on a 2-core machine (AMD EPYC Zen 3, 2026-12-07) with one busy process in another
session, a story-lm LoRA step took 6.5 s with torch's 2 threads and 0.116 s with 1 thread
(quiet: 0.075 s with 2).  A step is a few thousand operations, and each one split between two
threads ends when both halves are done.  With one CPU taken, the scheduler gives the run's two
threads one CPU between them, so each operation waits for the other thread's next time slice.
One thread never waits for another.

So a run in a worker process of its own (``workbench.engine.worker``) looks, just before it
loads its model, at how busy the CPUs it may run on were over a tenth of a second while it
slept, and trains with at most the CPUs left free: never fewer than one thread, never more than
it was given.  The choice is in the run's record (``environment["threads"]`` and
``["threads_reason"]``).  A run given ``threads`` by its config keeps them.  On the bundled
models the loss curve is the same with 1 thread as with 2 (``tests/engine/test_cpu_share.py``
checks it), so the choice changes the time and not the numbers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from workbench.util import procfs

__all__ = ["busy_cpus", "free_threads"]

WINDOW_S = 0.1


def busy_cpus(window: float = WINDOW_S, cpus: Iterable[int] | None = None) -> float | None:
    """How many of ``cpus`` (default: those this process may run on) were busy over ``window`` s.

    Busy is any process's work, this one's included, so this process sleeps while it measures.
    None where /proc/stat cannot be read (off Linux)."""
    cpus = sorted(os.sched_getaffinity(0)) if cpus is None else list(cpus)
    before = procfs.cpu_times()
    time.sleep(window)
    after = procfs.cpu_times()
    shares = []
    for cpu in cpus:
        if cpu not in before or cpu not in after:
            return None
        busy = after[cpu][0] - before[cpu][0]
        total = after[cpu][1] - before[cpu][1]
        shares.append(busy / total if total > 0 else 0.0)
    return sum(shares) if shares else None


def free_threads(given: int, busy: float | None = None) -> tuple[int, str]:
    """The threads a run should use (at most ``given``) and why, in words ("" when it is ``given``).

    ``busy``: the CPUs other processes keep busy (default: measured now, ``busy_cpus``).  A CPU
    busy for more than half the window counts as taken."""
    if given <= 1:
        return given, ""
    cpus = os.sched_getaffinity(0)
    busy = busy_cpus(cpus=cpus) if busy is None else busy
    if busy is None or round(busy) == 0:  # a thread count above the CPUs is the caller's choice, kept
        return given, ""
    threads = max(1, min(given, len(cpus) - round(busy)))
    if threads == given:
        return given, ""
    return threads, (f"{threads} of {given} threads: other processes kept {busy:.1f} of the {len(cpus)} CPUs "
                     "busy when the run started")

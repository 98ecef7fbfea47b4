"""Timing things fairly on a noisy machine: interleaved repeats, medians, ratios.

Running variant A ten times and then variant B ten times lets a burst of background load
land on one of them.  Interleaving (A, B, A, B, ...) spreads such bursts over both, and
the median ignores the odd slow repeat.  Report ratios from one run, never absolute
times across runs.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Mapping

import pandas as pd

from workbench.util.checks import check_integer, check_positive_int


def interleave(fns: Mapping[str, Callable[[], Any]], repeats: int = 5, warmup: int = 1,
               sync: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Seconds of each call: ``warmup`` untimed rounds, then ``repeats`` rounds calling each
    function once in turn.  ``sync`` (e.g. ``torch.cuda.synchronize``) runs before each
    clock read, so GPU work is counted."""
    if not fns:
        raise ValueError("nothing to time: pass at least one function")
    check_positive_int("repeats", repeats)
    check_integer("warmup", warmup, minimum=0)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if sync:
                sync()
            t0 = time.perf_counter()
            fn()
            if sync:
                sync()
            times[name].append(time.perf_counter() - t0)
    return times


def interleaved_timings(
    fns: Mapping[str, Callable[[], Any]],
    repeats: int = 5,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
) -> pd.DataFrame:
    """Time each function ``repeats`` times, alternating between them; one row per function.

    Columns: ``name``, ``median_ms``, ``min_ms``, ``max_ms``, ``ratio`` (median over the
    first function's median).  ``sync`` (e.g. ``torch.cuda.synchronize``) runs before
    each clock read, so GPU work is counted.
    """
    times = {name: [t * 1000 for t in ts] for name, ts in interleave(fns, repeats, warmup, sync).items()}
    first = statistics.median(next(iter(times.values())))
    rows = [
        {"name": name, "median_ms": statistics.median(ts), "min_ms": min(ts), "max_ms": max(ts),
         "ratio": statistics.median(ts) / first}
        for name, ts in times.items()
    ]
    return pd.DataFrame(rows)

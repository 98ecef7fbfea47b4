"""A run in its own process trains with no more threads than the CPUs other processes leave free.

Why (``workbench.engine.cpu_share``): with one of two CPUs busy elsewhere, two OpenMP threads
waited for each other at every operation (a story-lm step 6.5 s against 0.116 s with one
thread).  Checked here: the busy measure sees a process pinned to a CPU, the rule's cases, a
worker run under load choosing one thread and saying why, and that the thread count leaves the
loss curve of the bundled models unchanged (what makes the choice safe for reproducibility).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
import torch

from workbench.engine import cpu_share
from workbench.engine.config import preset
from workbench.engine.launch import train
from workbench.ui import cli
from workbench.ui.run_control import RunControl

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat and CPU affinity are Linux's")


@contextmanager
def busy_on(cpus: list[int]):
    """A process spinning on each of ``cpus`` (pinned there), for the block's length."""
    procs = [subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
             for cpu in cpus]
    try:
        time.sleep(0.5)  # started and spinning
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_a_process_spinning_on_a_cpu_is_seen_busy():
    cpu = min(os.sched_getaffinity(0))
    with busy_on([cpu]):
        busy = cpu_share.busy_cpus(window=0.3, cpus=[cpu])
    assert busy is not None and busy > 0.7


def test_this_process_own_work_is_not_counted_as_load():
    # While a run loads, its own process keeps a CPU busy: that is not another process's load.
    cpu = min(os.sched_getaffinity(0))
    watch = cpu_share.CpuWatch(cpus=[cpu])
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        end = time.monotonic() + 0.4
        while time.monotonic() < end:  # this process spinning on that CPU
            pass
    finally:
        os.sched_setaffinity(0, before)
    others = watch.others()
    assert others is not None and others < 0.3
    with busy_on([cpu]):  # and another process spinning there is
        watch = cpu_share.CpuWatch(cpus=[cpu])
        busy = watch.others(0.3)
    assert busy is not None and busy > 0.7


@pytest.mark.parametrize("given,busy,cpus,expected", [
    (2, 0.0, 2, 2),    # quiet: every thread given
    (2, 0.3, 2, 2),    # a CPU busy less than half the time is not taken
    (2, 0.6, 2, 2),    # nor one busy 0.6 of it (a click's drawing and painting, not a competing run)
    (2, 0.8, 2, 1),    # busy from three quarters of the time: taken
    (2, 1.0, 2, 1),    # one of two taken: one thread
    (2, 2.0, 2, 1),    # both taken: still one
    (8, 3.0, 8, 5),    # the CPUs left
    (2, 3.0, 8, 2),    # fewer threads given than CPUs left: kept
    (4, 0.0, 2, 4),    # more threads than CPUs, quiet: the caller's choice, kept
    (1, 2.0, 2, 1),    # one thread given: nothing to lower
])
def test_the_threads_are_the_cpus_others_leave_free(monkeypatch, given, busy, cpus, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
    threads, why = cpu_share.free_threads(given, busy=busy)
    assert threads == expected
    assert (why == "") == (threads == given)
    if why:
        assert why.startswith(f"{expected} of {given} threads") and f"{busy:.1f} of the {cpus} CPUs" in why


def test_a_worker_run_under_load_trains_with_the_free_cpus_and_says_why():
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # what the run is given (the worker takes the caller's count)
    try:
        with busy_on(cpus[1:]):  # every CPU but one spins
            result = train(preset("tiny", bf16=False, steps=3, eval_every=0), progress=False, fresh_process=True)
    finally:
        torch.set_num_threads(before)
    assert result.status == "completed"
    assert result.environment["threads"] == 1
    reason = result.environment["threads_reason"]
    assert reason.startswith("1 of 2 threads: other processes kept")
    # Said where the run's time is said: the panel's message and the command line's summary.
    text, _, _ = RunControl.verdict(result)
    assert f"(trained with {reason})" in text
    assert f"tokens/s (trained with {reason})" in cli._summary(result)


@pytest.mark.slow
@pytest.mark.parametrize("name,overrides", [
    ("default", dict(max_eval_examples=32)),
    ("generate", dict(max_eval_examples=16, max_generate_examples=2)),
])
def test_the_thread_count_leaves_the_loss_curve_of_the_bundled_models_unchanged(name, overrides):
    curves = {}
    for threads in (1, 2):
        cfg = preset(name, steps=6, eval_every=0, threads=threads, bf16=False, **overrides)
        curves[threads] = train(cfg, progress=False, fresh_process=True).history["train_loss"].tolist()
    assert curves[1] == curves[2]

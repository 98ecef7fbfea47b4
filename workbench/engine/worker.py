"""A run in a process of its own, so that the peak it measures is its own.

On a CPU the only peak memory there is is the resident memory of a whole process
(VmHWM), and a process that has run other things keeps their memory: its allocator holds
on to what it freed, and earlier results may hold models.  Measured in one notebook
kernel, the same head-only run peaked at 507 MB alone and at 578 MB right after a full
fine-tuning; notebook 02's peaks climbed run after run.  So ``train`` (on the CPU, by
default; the choice is ``workbench.engine.launch``'s) runs each run in a fresh worker
process and reports that process's peak.  This module knows the loop
(``workbench.engine.training.train_here``), and the loop knows nothing of it.

Each run's process is a child of the session's fork server (``workbench.engine.fork_server``),
which has imported torch and transformers once, so a run starts in tens of milliseconds.

The run itself is ``train_here`` in the child.  What it tells its sinks travels to this
process over a socket, where the caller's sinks (``on_step``, the progress bar, the run
store) hear it, in the same order and between the same steps as in-process: after each
event the child waits for a word back (go on, stop, interrupt, or fail because a sink
here failed).  At the end the child sends the result, with the trained model only when it
is wanted (``keep_model``, or a sink that asks for it) and the adapter's files when a sink
asks for those (the run store saves a LoRA adapter): a whole model through the socket
costs its copy, and this process the import of its classes to unpickle it (about 5 s for
the story-lm's ``modeling_llama``, at the end of a command-line run).

Ctrl-C here is passed on to the child, which ends its run as "stopped", as in-process; a
second Ctrl-C ends the child.  While a run is followed, Ctrl-C is not raised here as a
KeyboardInterrupt (raised between a message's header and its body, it would leave the
next read out of step): it is noted, passed on at once as SIGINT, and said again as the
answer to the child's next event, so that a signal the child lost still stops the run.
A child that dies (killed for memory, say) leaves a run recorded as "failed" with its
curve so far.  Warnings in the child are raised again here.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from multiprocessing.connection import Connection
from typing import Any

from workbench.engine.config import RunConfig, RunResult, history_frame
from workbench.engine.events import RunSink, StepInfo
from workbench.engine.fork_server import ForkServer, WorkerDied, fork_server
from workbench.lora.quantize import restore_quantized_weights

__all__ = ["train_in_worker", "WorkerDied"]


class CallerSinkFailed(RuntimeError):
    """Raised in the worker when a sink in the calling process failed: the run ends as "failed"."""


@dataclass
class _Job:
    """What the child needs to know besides the config: the caller's process settings."""

    config: RunConfig
    keep_model: bool
    send_model: bool
    send_adapter: bool
    threads: int
    cwd: str
    env: dict[str, str]
    sys_path: list[str]
    probe_only: bool = False  # measure bf16 "auto" for this config (and cache it), no run


# --------------------------------------------------------------------------- the calling side


def train_in_worker(cfg: RunConfig, sinks: RunSink | None = None, stop: threading.Event | None = None,
                    keep_model: bool = False) -> RunResult:
    """``train_here`` in a fresh worker process; ``sinks`` run in this process."""
    import torch

    sinks = sinks if sinks is not None else RunSink()
    job = _Job(config=cfg, keep_model=keep_model, send_model=keep_model or sinks.needs_model(cfg),
               send_adapter=sinks.needs_adapter(cfg), threads=torch.get_num_threads(), cwd=os.getcwd(),
               env=dict(os.environ), sys_path=list(sys.path))
    if _probe_wanted(cfg, job.threads):  # in a child of its own, so that its copies of the model never count
        _follow_child(replace(job, probe_only=True, keep_model=False, send_model=False, send_adapter=False),
                      RunSink(), None)
    return _follow_child(job, sinks, stop)


def _probe_wanted(cfg: RunConfig, threads: int) -> bool:
    """True when the run's bf16 "auto" needs a probe whose verdict is not cached yet."""
    from workbench.engine.bf16_probe import needs_probe, probe_key, read_cache
    from workbench.engine.hardware import resolve_device

    if not needs_probe(cfg.bf16, resolve_device(cfg.device), cfg.quantize is not None):
        return False
    return probe_key(cfg.model, cfg.method, cfg.threads or threads) not in read_cache()


def _follow_child(job: _Job, sinks: RunSink, stop: threading.Event | None) -> RunResult:
    """Fork a child for ``job`` and follow it to its end."""
    server = fork_server()
    ours, theirs = socket.socketpair()
    try:
        pid = server.fork(theirs)
    except BaseException:
        server.busy -= 1
        ours.close()
        raise
    finally:
        theirs.close()
    conn = Connection(ours.detach())
    follower = _Follower(conn, pid, server, sinks, stop, job)
    try:
        conn.send_bytes(pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL))
        return follower.follow()
    finally:
        conn.close()
        follower.end()
        server.busy -= 1


class _Follower:
    """The calling side of one run: hands the child's events to the sinks and answers it."""

    def __init__(self, conn: Connection, pid: int, server: ForkServer, sinks: RunSink,
                 stop: threading.Event | None, job: _Job) -> None:
        self.conn, self.pid, self.server, self.sinks, self.stop, self.job = conn, pid, server, sinks, stop, job
        self.result: RunResult | None = None
        self.history: list[dict] = []  # the curve as the steps arrive (kept if the child dies)
        self.finished = False
        self.interrupts = 0
        self.sink_error: BaseException | None = None
        self.exit_code: int | None = None

    def follow(self) -> RunResult:
        with _ctrl_c_passed_on(self._interrupt_child):
            return self._follow()

    def _follow(self) -> RunResult:
        while True:
            try:
                kind, payload = self._receive()
            except KeyboardInterrupt:  # only where Ctrl-C could not be taken over (a custom handler)
                self._interrupt_child()
                continue
            except (EOFError, OSError):
                return self._child_died()
            if kind == "warning":
                message, category = payload
                warnings.warn(message, category, stacklevel=2)
            elif kind in ("start", "step", "eval", "eval_start"):
                self.conn.send_bytes(pickle.dumps(self._hand_over(kind, payload)))
            elif kind == "finish":
                self._finish(*payload)
            elif kind == "returned":
                self._reap()
                return self.result
            elif kind == "raised":
                self._reap()
                raise self.sink_error if self.sink_error is not None else _rebuild(*payload)

    def _receive(self) -> tuple[str, Any]:
        return pickle.loads(self.conn.recv_bytes())

    def _hand_over(self, kind: str, payload: Any) -> Any:
        """Give an event to the sinks; return the word for the child."""
        try:
            if kind == "start":
                self.result = payload
                self.sinks.on_start(self.result)
            elif kind == "eval":
                _adopt(self.result, payload)
                self.sinks.on_eval(self.result)
            elif kind == "eval_start":
                self.sinks.on_eval_start(*payload)
            else:
                info: StepInfo = payload
                self.history.append(info.row())
                info.history = self.history
                self.sinks.on_step(info)
        except KeyboardInterrupt:
            self.interrupts += 1
            return "interrupt"
        except Exception as e:  # noqa: BLE001 - the run ends as "failed" in the child, then this is raised
            self.sink_error = e
            return ("fail", f"{type(e).__name__}: {e}")
        if self.interrupts:  # a Ctrl-C here already went to the child as SIGINT; say it again in words
            return "interrupt"
        return "stop" if self.stop is not None and self.stop.is_set() else "go"

    def _finish(self, result: RunResult, model: Any) -> None:
        self.finished = True
        if self.result is None:  # the child failed before its first event
            self.result = result
        else:
            _adopt(self.result, result)
        if model is not None:
            restore_quantized_weights(model)  # bitsandbytes' weight classes, lost in the pickle
        if self.job.keep_model:
            self.result.model = model
        self.sinks.on_finish(self.result, model)
        self.result.adapter = None  # as in-process: the sinks have had it

    def _interrupt_child(self) -> None:
        """Ctrl-C here: the first asks the child to stop (as Ctrl-C does in-process), the next ends it."""
        self.interrupts += 1
        try:
            os.kill(self.pid, signal.SIGINT if self.interrupts == 1 else signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _reap(self) -> int | None:
        if self.exit_code is None:
            self.exit_code = self.server.wait(self.pid)
        return self.exit_code

    def end(self) -> None:
        """Make sure the child is gone and waited for (it is, unless this side stopped following early)."""
        if self.exit_code is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._reap()

    def _child_died(self) -> RunResult:
        code = self._reap()
        if code is None:
            how = "how it ended is unknown"
        elif code >= 0:
            how = f"exit code {code}"
        else:
            how = f"killed by {signal.Signals(-code).name}"
            if code == -signal.SIGKILL and self.interrupts < 2:
                how += ", perhaps for lack of memory"
        if self.finished and self.result is not None:  # it died after reporting the end: the run is whole
            return self.result
        if self.result is None:
            raise WorkerDied(f"the training worker process ended before the run started ({how})")
        stopped = self.interrupts >= 2
        done = len(self.history)
        self.result.status = "stopped" if stopped else "failed"
        self.result.message = (f"interrupted after {done} of {self.result.config.steps} steps" if stopped else
                               f"the training worker process ended after {done} of "
                               f"{self.result.config.steps} steps ({how})")
        self.result.history = history_frame(self.history)
        self.sinks.on_finish(self.result, None)
        if stopped:
            return self.result
        raise WorkerDied(self.result.message)


@contextmanager
def _ctrl_c_passed_on(pass_on: Callable[[], None]) -> Iterator[None]:
    """While the block runs, Ctrl-C calls ``pass_on`` instead of raising KeyboardInterrupt here.

    Only in the main thread (the only one Python's signal handlers run in), and only in place
    of Python's own handler (``default_int_handler``, which a notebook kernel also uses), so a
    handler the user installed is left alone.  The previous handler is back afterwards.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    signal.signal(signal.SIGINT, lambda signum, frame: pass_on())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _adopt(mine: RunResult, theirs: RunResult) -> None:
    """Copy what the child measured into this side's result, keeping what sinks here set on it."""
    for f in fields(RunResult):
        if f.name not in ("run_id", "path", "model"):
            setattr(mine, f.name, getattr(theirs, f.name))


def _rebuild(exc_bytes: bytes | None, text: str, trace: str) -> BaseException:
    """The child's exception, as itself when it unpickles, with the child's traceback as a note."""
    exc: BaseException
    try:
        exc = pickle.loads(exc_bytes) if exc_bytes is not None else RuntimeError(text)
    except Exception:  # noqa: BLE001 - an exception class that does not unpickle
        exc = RuntimeError(text)
    if hasattr(exc, "add_note"):
        exc.add_note("raised in the training worker process:\n" + trace.rstrip())
    return exc


# --------------------------------------------------------------------------- the child


class _Relay(RunSink):
    """The child's only sink: each event goes to the calling process, which answers it."""

    def __init__(self, conn: Connection, send_model: bool, send_adapter: bool = False) -> None:
        self.conn, self.send_model, self.send_adapter = conn, send_model, send_adapter
        self.stop = threading.Event()

    def needs_adapter(self, config: RunConfig) -> bool:
        return self.send_adapter  # train_here then puts the adapter's files on the result it sends

    def send(self, kind: str, payload: Any) -> None:
        self.conn.send_bytes(pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL))

    def _ask(self, kind: str, payload: Any) -> None:
        self.send(kind, payload)
        word = pickle.loads(self.conn.recv_bytes())
        if word == "stop":
            self.stop.set()
        elif word == "interrupt":  # Ctrl-C in the caller, whether or not its SIGINT reached this process
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            raise KeyboardInterrupt
        elif isinstance(word, tuple) and word[0] == "fail":
            raise CallerSinkFailed(f"a sink in the calling process failed: {word[1]}")

    def on_start(self, result: RunResult) -> None:
        self._ask("start", result)

    def on_step(self, info: StepInfo) -> None:
        self._ask("step", replace(info, history=[]))  # the caller keeps the curve itself

    def on_eval(self, result: RunResult) -> None:
        self._ask("eval", result)

    def on_eval_start(self, step: int, steps: int, prompts: int) -> None:
        self._ask("eval_start", (step, steps, prompts))

    def on_finish(self, result: RunResult, model: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run is over: a late Ctrl-C must not cut the report
        self.send("finish", (replace(result, model=None), model if self.send_model else None))

    def warn(self, message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        try:
            pickle.dumps(category)
        except Exception:  # noqa: BLE001 - a warning class the caller could not import
            category = UserWarning
        self.send("warning", (f"{message} (in the training worker, {filename}:{lineno})", category))


def _interrupt_once(signum: int, frame: Any) -> None:
    """Ctrl-C, passed on by the caller: stop the run as KeyboardInterrupt does in-process, once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def run_child(fd: int) -> int:
    """Run one job in this freshly forked process (the fork server calls it); the exit code."""
    conn = Connection(fd)
    try:
        job: _Job = pickle.loads(conn.recv_bytes())
    except (EOFError, OSError):
        return 2  # the caller went away before sending the job
    relay = _Relay(conn, send_model=job.send_model, send_adapter=job.send_adapter)
    signal.signal(signal.SIGINT, _interrupt_once)
    try:
        os.chdir(job.cwd)
        os.environ.clear()
        os.environ.update(job.env)
        sys.path[:0] = [p for p in job.sys_path if p not in sys.path]
        warnings.showwarning = relay.warn
        import torch

        from workbench.engine.training import train_here

        torch.set_num_threads(job.threads)  # as the caller has it: the same speed and the same sums
        if job.probe_only:
            from workbench.engine.hardware import resolve_device
            from workbench.engine.training import run_bf16

            if job.config.threads:
                torch.set_num_threads(job.config.threads)  # as set_up does: the probe's key names the threads
            run_bf16(job.config, resolve_device(job.config.device))  # measures, and caches the verdict
        else:
            train_here(job.config, relay, stop=relay.stop, keep_model=job.keep_model, own_process=True)
    except BaseException as e:  # noqa: BLE001 - every ending is reported to the caller
        try:
            exc_bytes: bytes | None = pickle.dumps(e)
        except Exception:  # noqa: BLE001 - an exception that does not pickle travels as text
            exc_bytes = None
        try:
            relay.send("raised", (exc_bytes, f"{type(e).__name__}: {e}", traceback.format_exc()))
        except OSError:
            pass
        return 1
    relay.send("returned", None)
    return 0

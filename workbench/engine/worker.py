"""A run in a process of its own, so that the peak it measures is its own.

On a CPU the only peak memory there is is the resident memory of a whole process
(VmHWM), and a process that has run other things keeps their memory: its allocator holds
on to what it freed, and earlier results may hold models.  Measured in one notebook
kernel, the same head-only run peaked at 507 MB alone and at 578 MB right after a full
fine-tuning; notebook 02's peaks climbed run after run.  So ``train`` (on the CPU, by
default; the choice is ``workbench.engine.launch``'s) runs each run in a fresh worker
process and reports that process's peak.  This module knows the loop
(``workbench.engine.training.train_here``), and the loop knows nothing of it.

A fresh interpreter per run would cost several seconds (importing torch and
transformers), more than a tiny run takes.  Instead, once per session, a *fork server*
starts: a process that imports the libraries and then only waits.  Each run is a child
forked from it: every run starts from the same state, nothing that ran before is in it,
and the start costs a few tens of milliseconds.  (The fork server never runs a torch
operation, so no thread pool exists when it forks.)  It lives until the session ends,
and starts again when the package's source files change.

Its own start (importing torch and transformers) took about 6 s on these CPUs, paid by the
first run of a session.  ``prewarm()`` starts it in a background thread beforehand (the
panel calls it when it opens), so that the first Train click finds it ready; a run asked
for while it is still starting waits for that start instead of beginning another.

The run itself is ``train_here`` in the child.  What it tells its sinks travels to this
process over a socket, where the caller's sinks (``on_step``, the progress bar, the run
store) hear it, in the same order and between the same steps as in-process: after each
event the child waits for a word back (go on, stop, interrupt, or fail because a sink
here failed).  At the end the child sends the result, and the trained model when it is
wanted (``keep_model``, or a sink that asks for it: the run store saves a LoRA adapter).

Ctrl-C here is passed on to the child, which ends its run as "stopped", as in-process; a
second Ctrl-C ends the child.  A child that dies (killed for memory, say) leaves a run
recorded as "failed" with its curve so far.  Warnings in the child are raised again here.
"""

from __future__ import annotations

import atexit
import json
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import traceback
import warnings
from dataclasses import dataclass, fields, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from workbench.engine.config import RunConfig, RunResult, history_frame
from workbench.engine.events import RunSink, StepInfo
from workbench.lora.quantize import restore_quantized_weights

__all__ = ["train_in_worker", "WorkerDied", "close_fork_server", "prewarm"]

_PACKAGE_DIR = Path(__file__).resolve().parents[1]
_COMMAND = struct.Struct("!cq")  # to the fork server: b"F" (fork; a socket attached) or b"W" + pid (wait)
_NUMBER = struct.Struct("!q")  # from the fork server: a pid, or an exit code (-N: killed by signal N)
_BOOT = ("import json, sys; sys.path[:0] = json.loads(sys.argv[2]); "
         "from workbench.engine.worker import serve; serve(int(sys.argv[1]))")


class WorkerDied(RuntimeError):
    """The worker process of a run ended without reporting how the run ended."""


class CallerSinkFailed(RuntimeError):
    """Raised in the worker when a sink in the calling process failed: the run ends as "failed"."""


@dataclass
class _Job:
    """What the child needs to know besides the config: the caller's process settings."""

    config: RunConfig
    keep_model: bool
    send_model: bool
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
               threads=torch.get_num_threads(), cwd=os.getcwd(), env=dict(os.environ), sys_path=list(sys.path))
    if _probe_wanted(cfg, job.threads):  # in a child of its own, so that its copies of the model never count
        _follow_child(replace(job, probe_only=True, keep_model=False, send_model=False), RunSink(), None)
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
    server = _fork_server()
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

    def __init__(self, conn: Connection, pid: int, server: _ForkServer, sinks: RunSink,
                 stop: threading.Event | None, job: _Job) -> None:
        self.conn, self.pid, self.server, self.sinks, self.stop, self.job = conn, pid, server, sinks, stop, job
        self.result: RunResult | None = None
        self.history: list[dict] = []  # the curve as the steps arrive (kept if the child dies)
        self.finished = False
        self.interrupts = 0
        self.sink_error: BaseException | None = None
        self.exit_code: int | None = None

    def follow(self) -> RunResult:
        while True:
            try:
                kind, payload = self._receive()
            except KeyboardInterrupt:
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


# --------------------------------------------------------------------------- the fork server, from here


def _source_stamp() -> int:
    """The newest modification time of the package's source files: a change restarts the server."""
    return max((p.stat().st_mtime_ns for p in _PACKAGE_DIR.rglob("*.py")), default=0)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("the fork server closed its socket")
        data += chunk
    return data


class _ForkServer:
    """The fork server as seen from the calling process: start it, ask for a child, wait for one."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        self.sock = ours
        self.owner = os.getpid()
        self.stamp = _source_stamp()
        self.lock = threading.Lock()
        self.busy = 0  # runs in flight
        # Its own session: a Ctrl-C in a terminal reaches this process only, which passes it on.
        self.proc = subprocess.Popen([sys.executable, "-c", _BOOT, str(theirs.fileno()), json.dumps(sys.path)],
                                     pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, start_new_session=True)
        theirs.close()
        try:
            ready = _recv_exact(self.sock, 1)
        except (EOFError, OSError):
            ready = b""
        if ready != b"R":
            self.close()
            raise WorkerDied(f"the training worker could not start (exit code {self.proc.wait()}; its error is "
                             "printed above); fresh_process=False trains in this process instead")

    def usable(self) -> bool:
        return self.owner == os.getpid() and self.proc.poll() is None and self.stamp == _source_stamp()

    def fork(self, child_end: socket.socket) -> int:
        """A fresh child with ``child_end`` as its socket to us; its pid."""
        with self.lock:
            socket.send_fds(self.sock, [_COMMAND.pack(b"F", 0)], [child_end.fileno()])
            return _NUMBER.unpack(_recv_exact(self.sock, _NUMBER.size))[0]

    def wait(self, pid: int) -> int | None:
        """Wait for a child to end: its exit code, minus the signal that killed it, or None if unknown."""
        with self.lock:
            try:
                self.sock.sendall(_COMMAND.pack(b"W", pid))
                return _NUMBER.unpack(_recv_exact(self.sock, _NUMBER.size))[0]
            except (OSError, EOFError):
                return None

    def close(self) -> None:
        self.sock.close()  # the server sees the end of its socket and leaves
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


_server: _ForkServer | None = None
_retired: list[_ForkServer] = []  # out of date, closed once their runs have ended
_server_lock = threading.Lock()


def _fork_server() -> _ForkServer:
    """The session's fork server, started (or started again) when needed; counted as busy."""
    global _server
    with _server_lock:
        if _server is not None and not _server.usable():
            if _server.owner == os.getpid():
                _retired.append(_server)
            _server = None
        for old in [s for s in _retired if s.busy == 0]:
            old.close()
            _retired.remove(old)
        if _server is None:
            _server = _ForkServer()
        _server.busy += 1
        return _server


def _start_server_if_needed() -> None:
    """Start the session's fork server unless a usable one is there (not counted as busy)."""
    global _server
    with _server_lock:
        if _server is not None and _server.usable():
            return
        if _server is not None and _server.owner == os.getpid():
            _retired.append(_server)
        _server = None
        _server = _ForkServer()


_prewarming: threading.Thread | None = None
_prewarm_lock = threading.Lock()  # not _server_lock: that one is held while a server starts


def prewarm(wait: bool = False) -> threading.Thread | None:
    """Start the worker's fork server now, in a background thread, so that the first run
    does not wait for it to import torch and transformers (about 6 s on these CPUs).

    Returns the thread (``wait=True`` joins it first), or None when there is nothing to
    warm: not on Linux, where runs are not forked, or a usable server is already up.
    Calling it again while it starts returns the same thread.  It does not raise: a server
    that fails to start is tried again by the next run, which raises its error.
    ``launch.train`` decides per run whether a worker is used (on CUDA it is not); warming
    costs one idle process either way.
    """
    global _prewarming
    if not sys.platform.startswith("linux"):
        return None
    with _prewarm_lock:
        if _prewarming is not None and _prewarming.is_alive():
            thread = _prewarming
        elif _server is not None and _server.usable():
            return None
        else:
            thread = _prewarming = threading.Thread(target=_prewarm_quietly, name="workbench-prewarm", daemon=True)
            thread.start()
    if wait:
        thread.join()
    return thread


def _prewarm_quietly() -> None:
    try:
        _start_server_if_needed()
    except BaseException:  # noqa: BLE001 - the next run starts the server itself, and raises
        pass


def close_fork_server() -> None:
    """End the fork server now (it also ends with this process); the next run starts a new one."""
    global _server
    with _server_lock:
        for server in [_server, *_retired]:
            if server is not None and server.owner == os.getpid():
                server.close()
        _server = None
        _retired.clear()


atexit.register(close_fork_server)


# --------------------------------------------------------------------------- the fork server itself


def _preload() -> None:
    """Import what every run needs, once, so that a forked child starts with it."""
    import torch  # noqa: F401
    import transformers
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer  # noqa: F401

    import workbench.engine.generation  # noqa: F401
    import workbench.engine.training  # noqa: F401
    import workbench.lora.adapters  # noqa: F401

    transformers.logging.set_verbosity_error()
    for module in ("transformers.models.bert.modeling_bert", "transformers.models.gpt2.modeling_gpt2",
                   "transformers.models.llama.modeling_llama",  # the bundled story-lm
                   "transformers.models.bert.tokenization_bert", "transformers.tokenization_utils_fast"):
        try:
            __import__(module)
        except ImportError:
            pass


def serve(fd: int) -> None:
    """The fork server's loop: fork a child per request, wait for children when asked."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)  # Python 3.12+: we know
    sock = socket.socket(fileno=fd)
    _preload()
    sock.sendall(b"R")
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, _COMMAND.size, 1)
            if not data:
                return  # the calling process has gone
            data += _recv_exact(sock, _COMMAND.size - len(data))
        except (OSError, EOFError):
            return
        command, pid = _COMMAND.unpack(data)
        if command == b"F":
            child_pid = os.fork()
            if child_pid == 0:
                sock.close()
                code = 1
                try:
                    code = _child(fds[0])
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            os.close(fds[0])
            sock.sendall(_NUMBER.pack(child_pid))
        elif command == b"W":
            for extra in fds:
                os.close(extra)
            _, status = os.waitpid(pid, 0)
            sock.sendall(_NUMBER.pack(os.waitstatus_to_exitcode(status)))


# --------------------------------------------------------------------------- the child


class _Relay(RunSink):
    """The child's only sink: each event goes to the calling process, which answers it."""

    def __init__(self, conn: Connection, send_model: bool) -> None:
        self.conn, self.send_model = conn, send_model
        self.stop = threading.Event()

    def send(self, kind: str, payload: Any) -> None:
        self.conn.send_bytes(pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL))

    def _ask(self, kind: str, payload: Any) -> None:
        self.send(kind, payload)
        word = pickle.loads(self.conn.recv_bytes())
        if word == "stop":
            self.stop.set()
        elif word == "interrupt":
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


def _child(fd: int) -> int:
    """Run one job in this freshly forked process; the exit code."""
    conn = Connection(fd)
    try:
        job: _Job = pickle.loads(conn.recv_bytes())
    except (EOFError, OSError):
        return 2  # the caller went away before sending the job
    relay = _Relay(conn, send_model=job.send_model)
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

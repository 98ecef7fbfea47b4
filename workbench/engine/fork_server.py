"""The fork server: one process per session that has imported torch and transformers, and forks a child per run.

A fresh interpreter per run would cost several seconds (importing torch and
transformers), more than a tiny run takes.  Instead, once per session, a *fork server*
starts: a process that imports the libraries and then only waits.  Each run is a child
forked from it: every run starts from the same state, nothing that ran before is in it,
and the start costs a few tens of milliseconds.  (The fork server never runs a torch
operation, so no thread pool exists when it forks.)  It lives until the session ends,
and starts again when the package's source files change.

Its own start (importing torch and transformers) took 6 to 8.5 s on these CPUs, paid by the
first run of a session.  ``prewarm()`` starts it in a background thread beforehand
(``import workbench`` calls it, before its own imports, in a notebook kernel and for the
command line's training commands; the panel calls it when it opens), so that the first
Train click finds it ready; a run asked for while it is still starting waits for that
start instead of beginning another.

What a child does with its run is ``workbench.engine.worker``'s (``run_child``); this
module only starts children and waits for them.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import warnings
from pathlib import Path

__all__ = ["WorkerDied", "prewarm", "close_fork_server"]

_PACKAGE_DIR = Path(__file__).resolve().parents[1]
_COMMAND = struct.Struct("!cq")  # to the fork server: b"F" (fork; a socket attached) or b"W" + pid (wait)
_NUMBER = struct.Struct("!q")  # from the fork server: a pid, or an exit code (-N: killed by signal N)
_BOOT = ("import os; os.setpgid(0, 0); import json, sys; sys.path[:0] = json.loads(sys.argv[2]); "
         "from workbench.engine.fork_server import serve; serve(int(sys.argv[1]))")


class WorkerDied(RuntimeError):
    """The worker process of a run ended without reporting how the run ended."""


# --------------------------------------------------------------------------- the fork server, from the caller


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


class ForkServer:
    """The fork server as seen from the calling process: start it, ask for a child, wait for one."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        self.sock = ours
        self.owner = os.getpid()
        self.stamp = _source_stamp()
        self.lock = threading.Lock()
        self.busy = 0  # runs in flight
        # Its own process group (_BOOT's first statement): a Ctrl-C in a terminal reaches this process
        # only, which passes it on.  Not its own session: Linux shares the CPUs out between sessions
        # (autogroups), so on a loaded machine a run in a session of its own got a share too small for
        # its OpenMP threads, which then waited for each other (a story-lm step 3.1 s, 0.39 s here).
        self.proc = subprocess.Popen([sys.executable, "-c", _BOOT, str(theirs.fileno()), json.dumps(sys.path)],
                                     pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        _starting.add(self.proc)  # close_fork_server() kills it there rather than wait for its imports
        try:
            ready = _recv_exact(self.sock, 1)
        except (EOFError, OSError):
            ready = b""
        finally:
            _starting.discard(self.proc)
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


_server: ForkServer | None = None
_starting: set[subprocess.Popen] = set()  # servers still importing: not yet usable, killed on close
_retired: list[ForkServer] = []  # out of date, closed once their runs have ended
_server_lock = threading.Lock()


def fork_server() -> ForkServer:
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
            _server = ForkServer()
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
        _server = ForkServer()


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
    """End the fork server now (it also ends with this process); the next run starts a new one.

    A server still importing is killed first, without the lock its start holds: a process
    that warmed the worker and then ends at once (``python -m workbench train --help``)
    does not wait seconds for imports it will never use."""
    global _server
    for proc in list(_starting):
        proc.kill()  # its start then fails (WorkerDied), which a background warm-up ignores
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
    import workbench.engine.worker  # noqa: F401 - its run_child is what a forked child runs
    import workbench.lora.adapters  # noqa: F401

    transformers.logging.set_verbosity_error()
    for module in ("transformers.models.bert.modeling_bert", "transformers.models.gpt2.modeling_gpt2",
                   "transformers.models.llama.modeling_llama",  # the bundled story-lm
                   "transformers.models.bert.tokenization_bert", "transformers.tokenization_utils_fast"):
        try:
            __import__(module)
        except ImportError:
            pass
    # transformers builds its table of checkpoint renamings (about a thousand regular
    # expressions) at the first from_pretrained of a process and keeps it: built here once,
    # every child has it (0.15 s off each run's loading on AMD EPYC Zen 3).
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping

        get_checkpoint_conversion_mapping("llama")
    except (ImportError, AttributeError):  # a transformers without that table: nothing to build
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
                    from workbench.engine.worker import run_child  # imported by _preload already

                    code = run_child(fds[0])
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

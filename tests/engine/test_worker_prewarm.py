"""``fork_server.prewarm()``: the fork server starts in the background, and the next run uses it.

No timing is asserted (the machine is shared); what is checked is which process the run's
worker was forked from, and that warming twice starts one server."""

from __future__ import annotations

import sys
import threading

import pytest

from workbench.engine import fork_server
from workbench.engine.config import preset
from workbench.engine.launch import train

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the worker process is Linux's")


def _children(pid: int) -> list[int]:
    return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]


def test_prewarm_returns_at_once_and_the_next_run_is_forked_from_its_server():
    fork_server.close_fork_server()
    thread = fork_server.prewarm()
    assert isinstance(thread, threading.Thread) and thread.daemon
    assert thread.is_alive()  # returned while the server still imports torch (seconds): it did not wait
    # Asked again while it starts: the same thread, not a second server.
    assert fork_server.prewarm() in (thread, None)
    thread.join(timeout=120)
    assert not thread.is_alive()
    server = fork_server._server
    assert server is not None and server.usable() and server.busy == 0
    assert fork_server.prewarm() is None  # warm already: nothing to do

    parents = []

    def who_runs_me(info):
        parents.append(_children(server.proc.pid))  # the run's child is the warmed server's child

    result = train(preset("tiny", bf16=False, steps=2, eval_every=0), on_step=who_runs_me, progress=False,
                   fresh_process=True)
    assert result.status == "completed"
    assert fork_server._server is server and server.proc.poll() is None  # the same server, still up
    assert len(parents) == 2 and all(len(p) == 1 for p in parents)


def test_a_run_asked_for_while_the_server_starts_waits_for_that_server():
    fork_server.close_fork_server()
    thread = fork_server.prewarm()
    assert thread is not None
    result = train(preset("tiny", bf16=False, steps=1, eval_every=0), progress=False, fresh_process=True)
    thread.join(timeout=120)
    assert result.status == "completed"
    assert fork_server._retired == []  # one server was started, not two


def test_prewarm_on_a_platform_without_the_worker_does_nothing(monkeypatch):
    monkeypatch.setattr(fork_server.sys, "platform", "darwin")
    assert fork_server.prewarm() is None


def test_a_notebook_kernel_starts_the_worker_at_import_and_a_script_does_not():
    # In a notebook (ipykernel loaded) ``import workbench`` starts the fork server in the
    # background, so the first Train click finds it warm; a script starts it at its first run.
    import subprocess

    probe = ("{pre}import workbench; from workbench.engine import fork_server; "
             "t = fork_server._prewarming; print(t is not None and t.daemon); t and t.join(120); "
             "print(fork_server._server is not None and fork_server._server.usable())")
    for pre, expected in (("import ipykernel; ", ["True", "True"]), ("", ["False", "False"])):
        out = subprocess.run([sys.executable, "-c", probe.format(pre=pre)], capture_output=True, text=True,
                             timeout=240)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.split() == expected, (pre, out.stdout, out.stderr[-2000:])


@pytest.mark.parametrize("argv, modules, wanted", [
    (["-m", "train", "--preset", "generate"], {}, True),  # python -m workbench train ...
    (["-m", "sweep"], {}, True),
    (["-m", "search", "--trials", "4"], {}, True),
    (["-m", "runs"], {}, False),  # lists runs: trains nothing
    (["-m"], {}, False),
    (["/home/me/script.py", "train"], {}, False),  # a script's own arguments are not the CLI's
    (["-c", "train"], {}, False),
    ([], {"ipykernel": object()}, True),  # a notebook kernel: someone will click Train
])
def test_the_worker_is_warmed_at_import_only_where_a_run_will_be_asked_for(argv, modules, wanted):
    import workbench

    assert workbench._worker_wanted_soon(argv, modules) is wanted


def test_the_command_line_warms_the_worker_before_importing_torch():
    # While ``python -m workbench train`` imports the package, the worker's server is started
    # before torch is imported, so the two imports run side by side.
    import subprocess

    probe = ("import sys\n"
             "order = []\n"
             "class Log:\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        order.append(name)\n"
             "sys.meta_path.insert(0, Log())\n"
             "sys.argv = ['-m', 'train']\n"
             "import workbench\n"
             "from workbench.engine import fork_server\n"
             "t = fork_server._prewarming\n"
             "print(t is not None)\n"
             "print(order.index('workbench.engine.fork_server') < order.index('torch'))\n"
             "t.join(240)\n"
             "print(fork_server._server is not None and fork_server._server.usable())\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "True", "True"], (out.stdout, out.stderr[-2000:])


def test_closing_while_the_server_still_imports_kills_it_instead_of_waiting():
    fork_server.close_fork_server()
    thread = fork_server.prewarm()
    assert thread is not None
    for _ in range(2000):  # until its Popen is made (milliseconds; the imports take seconds)
        if fork_server._starting:
            break
        threading.Event().wait(0.005)
    starting = list(fork_server._starting)
    assert len(starting) == 1 and starting[0].poll() is None  # importing, not ready
    fork_server.close_fork_server()
    assert starting[0].wait(timeout=30) == -9  # killed (SIGKILL), not left to finish its imports
    thread.join(timeout=30)
    assert not thread.is_alive() and fork_server._server is None and not fork_server._starting


def test_the_worker_has_its_own_process_group_in_the_callers_session():
    # Its own group: a terminal's Ctrl-C reaches the caller only, which passes it on.  The
    # caller's session: Linux schedules each session as one group (autogroup), and a worker in
    # a session of its own trained several times slower on a loaded machine.
    import os

    server = fork_server.fork_server()
    try:
        pid = server.proc.pid
        assert os.getpgid(pid) == pid != os.getpgid(0)
        assert os.getsid(pid) == os.getsid(0)
    finally:
        server.busy -= 1

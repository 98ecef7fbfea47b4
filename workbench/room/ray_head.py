"""The room's Ray head: started so that it comes up on a loaded machine too.

Why this exists: Ray's raylet waits for its dashboard agent (a Python process that imports
much of Ray) to write its port files, gives up after a fixed 15 s and takes the whole start
down with it (``The current node timed out during startup``; the raylet's log says
``Timed out waiting for file .../metrics_agent_port_...``; ray-project/ray#65983).  On two
busy cores the agent's imports alone took 21 s, so ``ray.init()`` never started here, and
neither ``include_dashboard=False`` nor ``RAY_agent_register_timeout_ms`` changes that wait.
The raylet waits only for a port it was not given.  ``ray start`` takes every agent port
(``--dashboard-agent-grpc-port``, ``--dashboard-agent-listen-port``, ``--metrics-export-port``,
``--runtime-env-agent-port``) but hands the raylet all of them except the listen port (Ray
2.60's ``services.start_raylet`` leaves out the raylet's own ``--dashboard_agent_listen_port``
flag), so with all four given the raylet still waited for that one file and failed the same
way.  The head is therefore ``ray start --head`` with every agent port fixed, run through a
few lines (``LAUNCHER``) that add the missing flag to the raylet's command; the agents then
come up in their own time.  ``ray.init`` cannot fix those ports at all, so the room's kernels
join this head by address.  ``make hub`` starts it with ``python -m workbench.room.ray_head``.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

AGENT_PORTS = ("dashboard-agent-grpc-port", "dashboard-agent-listen-port", "metrics-export-port",
               "runtime-env-agent-port")
OBJECT_STORE_BYTES = 80 * 1024 * 1024  # Ray's minimum is 75 MB; the queue moves only small tuples
READY = "Ray runtime started"

# ``ray start ...`` (its arguments follow), with the listen port handed to the raylet too.
LAUNCHER = """
import sys
from ray._private import ray_constants, services
from ray.scripts.scripts import main
port = next(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--dashboard-agent-listen-port="))
plain = services.start_ray_process
def start_ray_process(command, process_type, *args, **kwargs):
    if process_type == ray_constants.PROCESS_TYPE_RAYLET:
        command = [*command, f"--dashboard_agent_listen_port={port}"]
    return plain(command, process_type, *args, **kwargs)
services.start_ray_process = start_ray_process
sys.argv = ["ray", *sys.argv[1:]]
main()
"""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def head_command(port: int, cpus: int, agent_ports: dict[str, int], block: bool = True) -> list[str]:
    """``ray start --head`` with the GCS port and every agent port fixed (see the module's docstring)."""
    missing = [name for name in AGENT_PORTS if not agent_ports.get(name)]
    if missing:
        raise ValueError(f"every agent port must be given (a port left to Ray makes its raylet wait 15 s for the "
                         f"agent, and fail on a busy machine); missing: {', '.join(missing)}")
    return ([sys.executable, "-c", LAUNCHER, "start", "--head", f"--port={port}", f"--num-cpus={cpus}",
             "--include-dashboard=false", "--disable-usage-stats", f"--object-store-memory={OBJECT_STORE_BYTES}"]
            + [f"--{name}={agent_ports[name]}" for name in AGENT_PORTS] + (["--block"] if block else []))


@dataclass
class RayHead:
    """A Ray head this process started (``ray start --head --block`` in a process group of its own)."""

    address: str
    process: subprocess.Popen
    log: Path
    seconds_to_start: float
    _stopped: bool = field(default=False, repr=False)

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the head and every process it started (its process group), not other Ray instances
        of this user (``ray stop`` would stop those too)."""
        if self._stopped:
            return
        self._stopped = True
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            if sig == signal.SIGTERM:  # its children (GCS, raylet, agents, workers) share the group
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            break
        _forget_as_current(self.address)


def _forget_as_current(address: str) -> None:
    """Remove Ray's note of the machine's current cluster when it names this head: ``ray stop`` does
    that, killing the processes does not, and a later ``ray.init()`` would try to join the dead head."""
    note = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    try:
        if note.read_text().strip().rpartition(":")[2] == address.rpartition(":")[2]:
            note.unlink()
    except OSError:
        pass


def start_head(cpus: int = 1, log: str | Path | None = None, timeout_s: float = 180.0) -> RayHead:
    """Start a Ray head on free ports and wait until it says it runs; the error names its log otherwise."""
    agent_ports = {name: free_port() for name in AGENT_PORTS}
    port = free_port()
    log = Path(log) if log is not None else Path(f"/tmp/workbench-ray-head-{port}.log")
    began = time.monotonic()
    with log.open("w") as out:
        process = subprocess.Popen(head_command(port, cpus, agent_ports), stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    head = RayHead(f"127.0.0.1:{port}", process, log, 0.0)
    while True:
        text = log.read_text(errors="replace")
        if READY in text:
            found = re.search(r"ray start --address='([^']+)'", text)
            if found:  # the node's own address (its IP, as the GCS knows it)
                head.address = found.group(1)
            head.seconds_to_start = time.monotonic() - began
            return head
        if process.poll() is not None or time.monotonic() - began > timeout_s:
            head.stop()
            raise RuntimeError(f"the room's Ray head did not start in {time.monotonic() - began:.0f} s "
                               f"(exit code {process.poll()}); its output is in {log}:\n{text[-1500:]}")
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> None:
    """``make hub``'s head: this process becomes ``ray start --head --block`` on fixed ports."""
    parser = argparse.ArgumentParser(prog="python -m workbench.room.ray_head",
                                     description="the workshop room's Ray head, every agent port fixed")
    parser.add_argument("--port", type=int, default=6379, help="the head's (GCS) port")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="runs at once: the queue's slots")
    parser.add_argument("--agent-ports", type=int, default=6380,
                        help="the first of four consecutive ports for Ray's agents")
    args = parser.parse_args(argv)
    command = head_command(args.port, args.cpus, {name: args.agent_ports + i for i, name in enumerate(AGENT_PORTS)})
    os.execv(command[0], command)


if __name__ == "__main__":
    main()


__all__ = ["RayHead", "start_head", "head_command", "free_port", "main", "AGENT_PORTS", "LAUNCHER"]

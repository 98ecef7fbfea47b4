"""The room's fair run queue: first come first served, at most ``limit`` runs at once, at most
one running run per attendee.

The queue's state lives in one place for the whole room: a named Ray actor on the server's
Ray instance (``RayQueue``), which every attendee's kernel reaches by name, so thirty
notebooks in thirty processes share one line.  The rules are plain Python in ``FairQueue``
(the actor's body; ``LocalQueue`` uses it in-process for one notebook or a test):

* a run asks for a turn (``enqueue``) and waits; the waiting list is in arrival order;
* whenever a turn ends or a run arrives, the queue walks the list from the front and lets
  each run start while fewer than ``limit`` run and its attendee has none running (a run
  whose attendee is busy keeps its place and the next one goes: one person's second run
  never holds up everybody else);
* ``wait`` answers "running" or "queued, N ahead of you" (N: runs waiting in front of it);
* ``cancel`` takes a waiting run out of the line (Stop while queued), ``release`` ends a
  running one's turn;
* a running turn is a lease: the kernel renews it every few seconds while its run trains; a
  kernel that dies (its server stopped, its kernel restarted) stops renewing, and after
  ``lease_s`` its turn is marked "lost" and its slot goes to the next run, so one closed
  notebook never shrinks the room.  Every turn's times (queued, started, ended) are kept for the
  instructor's view and for checking the limit afterwards.

The run itself trains where it was asked for (the attendee's kernel, in its worker
process, on the same server's cores): the queue decides *when*, so the server never runs
more than ``limit`` at once.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from workbench.room.people import check_name

QUEUE_NAME = "workbench-room-queue"
NAMESPACE = "workbench-room"
WAIT_SLICE_S = 0.5  # a waiting client wakes at least this often to look at its Stop button
# A running turn not renewed for this long is the turn of a kernel that died: reclaimed.  The hub
# may set it for the room (WORKBENCH_ROOM_LEASE_S); the kernel renews every third of it.
LEASE_S = float(os.environ.get("WORKBENCH_ROOM_LEASE_S") or 60.0)


class StoppedWhileQueued(RuntimeError):
    """Stop was pressed before the run's turn came: nothing was trained or stored."""


def default_limit() -> int:
    """Runs at once: the hub's setting (``WORKBENCH_ROOM_LIMIT``, ``make hub``'s ``HUB_CPUS``), else one
    per core (a CPU run trains with one thread in the room)."""
    given = os.environ.get("WORKBENCH_ROOM_LIMIT")
    if given:
        if not given.isdigit() or int(given) < 1:
            raise ValueError(f"WORKBENCH_ROOM_LIMIT must be a whole number of runs >= 1, got {given!r}")
        return int(given)
    return max(1, os.cpu_count() or 1)


class FairQueue:
    """The queue's rules and state (thread-safe): the Ray actor's body, or used directly."""

    def __init__(self, limit: int, lease_s: float = LEASE_S) -> None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(f"the queue's limit must be a whole number of runs >= 1, got {limit!r}")
        self.limit = limit
        self.lease_s = float(lease_s)
        self._cond = threading.Condition()
        self._next = 0
        self._waiting: list[int] = []
        self._running: set[int] = set()
        self._turns: dict[int, dict[str, Any]] = {}

    def enqueue(self, attendee: str) -> tuple[int, float]:
        with self._cond:
            self._next += 1
            ticket = self._next
            self._turns[ticket] = {"ticket": ticket, "attendee": attendee, "queued": time.time(),
                                   "started": None, "ended": None, "renewed": None,
                                   "state": "queued"}
            self._waiting.append(ticket)
            self._admit()
            return ticket, self._turns[ticket]["queued"]

    def _reclaim(self) -> None:
        """Running turns whose kernel stopped renewing them: lost, their slots freed."""
        now = time.time()
        for ticket in [t for t in self._running if now - self._turns[t]["renewed"] > self.lease_s]:
            self._running.discard(ticket)
            self._turns[ticket].update(state="lost", ended=self._turns[ticket]["renewed"])

    def _admit(self) -> None:
        self._reclaim()
        busy = {self._turns[t]["attendee"] for t in self._running}
        for ticket in list(self._waiting):
            if len(self._running) >= self.limit:
                break
            turn = self._turns[ticket]
            if turn["attendee"] in busy:
                continue
            self._waiting.remove(ticket)
            self._running.add(ticket)
            busy.add(turn["attendee"])
            turn.update(state="running", started=time.time(), renewed=time.time())
        self._cond.notify_all()

    def wait(self, ticket: int, timeout: float) -> tuple[str, float | int | None]:
        """("running", start time), ("queued", runs ahead) after at most ``timeout`` s, or (state, None)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                turn = self._turns.get(ticket)
                if turn is None or turn["state"] not in ("queued", "running"):
                    return (turn["state"] if turn else "unknown"), None
                if turn["state"] == "running":
                    return "running", turn["started"]
                left = deadline - time.monotonic()
                if left <= 0:
                    return "queued", self._waiting.index(ticket)
                self._cond.wait(left)

    def renew(self, ticket: int) -> bool:
        """The kernel of a running turn is alive; False when the turn was already lost or ended."""
        with self._cond:
            turn = self._turns.get(ticket)
            if turn is None or turn["state"] != "running":
                return False
            turn["renewed"] = time.time()
            return True

    def release(self, ticket: int) -> None:
        with self._cond:
            turn = self._turns.get(ticket)
            if turn is not None and turn["state"] == "running":
                self._running.discard(ticket)
                turn.update(state="ended", ended=time.time())
                self._admit()

    def cancel(self, ticket: int) -> bool:
        """Take a waiting run out of the line; False when it had already started (release it then)."""
        with self._cond:
            if ticket in self._waiting:
                self._waiting.remove(ticket)
                self._turns[ticket].update(state="cancelled", ended=time.time())
                self._admit()
                return True
            return False

    def snapshot(self) -> dict[str, Any]:
        """Who runs and who waits now (in line order), and the limit."""
        with self._cond:
            self._admit()  # a lost turn shows as lost, and its slot is given, at the next look
            return {"limit": self.limit,
                    "running": [dict(self._turns[t]) for t in sorted(self._running)],
                    "queued": [dict(self._turns[t], ahead=i) for i, t in enumerate(self._waiting)]}

    def lease(self) -> float:
        return self.lease_s

    def turns(self) -> list[dict[str, Any]]:
        """Every turn so far, with its times (for the limit check and the waits)."""
        with self._cond:
            return [dict(t) for t in self._turns.values()]


class LocalQueue:
    """The queue in this process (one notebook, or a test): ``FairQueue`` called directly."""

    def __init__(self, limit: int | None = None, lease_s: float = LEASE_S) -> None:
        self._queue = FairQueue(limit or default_limit(), lease_s)

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self._queue, method)(*args)


def _send_the_token() -> None:
    """Ray 2.60's head checks a token by default (``~/.ray/auth_token``), but a process that joins
    it by address sends none unless ``RAY_AUTH_MODE=token`` (it is refused: "InvalidAuthToken").
    When a token is at hand and no mode was chosen, choose token."""
    if os.environ.get("RAY_AUTH_MODE"):
        return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(path):
        try:  # the mode is read once into Ray's cached config: set it and refresh that, as ray.init does
            from ray._private.authentication.authentication_token_setup import _enable_token_auth
        except ImportError:  # a Ray without token auth: nothing to send
            return
        _enable_token_auth()


class RayQueue:
    """The room's one queue: a named actor on the Ray instance at ``address``; every kernel that
    names the same actor shares it.  Without an address (and Ray not yet running in this
    process) a head is started here (``ray_head.start_head``: every agent port fixed, so it
    starts on a busy machine too) and stopped with ``close()`` or when this process ends.
    ``limit`` applies when this call creates the actor."""

    def __init__(self, limit: int | None = None, address: str | None = None, name: str = QUEUE_NAME) -> None:
        try:
            import ray
        except ImportError as e:
            raise ImportError("the room's queue runs on Ray: pip install 'ray>=2.9' (requirements.txt has it)") from e
        self.head = None
        _send_the_token()
        if not ray.is_initialized():
            if not address:
                from workbench.room.ray_head import start_head

                self.head = start_head(cpus=1)
                atexit.register(self.close)
                address = self.head.address
            ray.init(address=address, namespace=NAMESPACE, logging_level=logging.ERROR)
        self._ray = ray
        actor = ray.remote(num_cpus=0, max_concurrency=1000)(FairQueue)
        self.actor = actor.options(name=name, namespace=NAMESPACE, get_if_exists=True).remote(limit or default_limit())

    def close(self) -> None:
        """Disconnect; and stop the head when this queue started it (the actor ends with it)."""
        if self.head is not None:
            if getattr(self, "_ray", None) is not None:
                self._ray.shutdown()
            self.head.stop()
            self.head = None

    def call(self, method: str, *args: Any) -> Any:
        return self._ray.get(getattr(self.actor, method).remote(*args))


@dataclass
class Turn:
    """A run's turn in the queue: when it asked and when it was let in (seconds since the epoch)."""

    ticket: int
    attendee: str
    queued: float
    started: float

    @property
    def wait_s(self) -> float:
        return self.started - self.queued


class RoomQueue:
    """What a kernel uses: wait for a turn (saying how many are ahead), run, give the turn back."""

    def __init__(self, backend: LocalQueue | RayQueue) -> None:
        self.backend = backend

    @contextlib.contextmanager
    def turn(self, attendee: str, stop: threading.Event | None = None,
             on_wait: Callable[[int], None] | None = None) -> Iterator[Turn]:
        """Block until ``attendee``'s run may start; ``on_wait(ahead)`` is told each time the
        count of runs ahead changes.  Stop set while waiting raises ``StoppedWhileQueued``;
        the turn is given back when the block ends, however it ends."""
        attendee = check_name(attendee)
        ticket, queued = self.backend.call("enqueue", attendee)
        said: int | None = None
        try:
            while True:
                state, value = self.backend.call("wait", ticket, WAIT_SLICE_S)
                if state == "running":
                    break
                if state != "queued":
                    raise RuntimeError(f"the room's queue lost this run's turn (state {state!r})")
                if stop is not None and stop.is_set():
                    if self.backend.call("cancel", ticket):
                        raise StoppedWhileQueued(f"stopped while queued ({value} ahead): nothing was trained")
                    continue  # it started just now: run it, Stop then ends it after its first step
                if on_wait is not None and value != said:
                    said = value
                    on_wait(int(value))
        except BaseException:
            if not self.backend.call("cancel", ticket):  # it had started: give the turn back
                self.backend.call("release", ticket)
            raise
        done = threading.Event()
        beat = threading.Thread(target=self._renew, args=(ticket, done), name="room-queue-lease", daemon=True)
        beat.start()
        try:
            yield Turn(ticket, attendee, queued, float(value))
        finally:
            done.set()
            beat.join()
            self.backend.call("release", ticket)

    def _renew(self, ticket: int, done: threading.Event) -> None:
        """Renew the turn's lease while the run trains (a third of the lease apart)."""
        every = max(0.05, self.lease_s / 3)
        while not done.wait(every):
            try:
                self.backend.call("renew", ticket)
            except Exception:  # noqa: BLE001 - a missed renewal is retried; the lease allows two
                pass

    @property
    def lease_s(self) -> float:
        return float(self.backend.call("lease"))

    def snapshot(self) -> dict[str, Any]:
        return self.backend.call("snapshot")

    def turns(self) -> list[dict[str, Any]]:
        return self.backend.call("turns")


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most intervals (start, end) open at one moment: a run ending at t and one starting at t do not overlap."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    most = now = 0
    for _, delta in events:
        now += delta
        most = max(most, now)
    return most


__all__ = ["FairQueue", "LocalQueue", "RayQueue", "RoomQueue", "Turn", "StoppedWhileQueued", "default_limit",
           "most_at_once", "QUEUE_NAME", "NAMESPACE"]

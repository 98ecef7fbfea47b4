"""The room: its store, its queue and its exercise, and the train function the panel calls.

``Room.train_for(name)`` gives a function with ``wb.train``'s signature (the panel's
``RunControl(train=...)`` takes it): it checks the exercise's locked settings, waits for
the attendee's turn in the fair queue (telling ``on_wait`` how many runs are ahead), trains
through ``wb.train`` into the attendee's folder of the room, and enters the run in the
ledger with its queue times.  Stop while queued ends the wait (``StoppedWhileQueued``);
nothing is stored then, because nothing ran.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from workbench.engine.config import RunConfig, RunResult
from workbench.engine.events import StepInfo
from workbench.lora.config import LoRAConfig
from workbench.records import recording
from workbench.records import store as run_store
from workbench.records.recording import StoreSink
from workbench.room.ledger import Exercise
from workbench.room.people import check_name
from workbench.room.queue import LocalQueue, RayQueue, RoomQueue
from workbench.room.store import RoomStore


def queued_text(ahead: int) -> str:
    """What an attendee whose run waits is told."""
    return f"queued: {ahead} ahead of you (Stop leaves the queue)"


class LockedSetting(ValueError):
    """A run asked for a setting the instructor fixed for this exercise."""


def setting_value(cfg: RunConfig, name: str) -> Any:
    """A setting by the name the config, the CLI and the panel give it ('rank' lives in cfg.lora)."""
    if name in LoRAConfig.field_names():
        return getattr(cfg.lora, name)
    if not hasattr(cfg, name):
        raise ValueError(f"unknown setting {name!r} to lock; settings: run settings (steps, lr, ...) or LoRA "
                         f"settings ({', '.join(LoRAConfig.field_names())})")
    return getattr(cfg, name)


class Room:
    """One workshop room: ``store`` (the runs and their owners) and ``queue`` (whose turn it is)."""

    def __init__(self, store: RoomStore, queue: RoomQueue, train: Callable[..., RunResult] = recording.train) -> None:
        self.store = store
        self.queue = queue
        self._train = train
        self._waiting: dict[str, int] = {}  # attendee -> runs ahead of their waiting run (this process)
        self._lock = threading.Lock()

    @classmethod
    def create(cls, folder: str | Path, instructor: str, limit: int | None = None, ray: bool = True,
               address: str | None = None, db: str | None = None) -> "Room":
        """Make a room at ``folder`` with ``instructor`` as its instructor (the instructor, once);
        ``db``: the ledger's PostgreSQL URL (``None``: ``WORKBENCH_ROOM_DB``, else ``<folder>/room.db``)."""
        store = RoomStore(folder, create=True, db=db)
        store.add_instructor(instructor)
        return cls(store, RoomQueue(RayQueue(limit, address) if ray else LocalQueue(limit)))

    @classmethod
    def join(cls, folder: str | Path, ray: bool | None = None, address: str | None = None,
             db: str | None = None) -> "Room":
        """An existing room (an attendee's kernel): the store must be there; the queue is the room's
        Ray actor at ``address`` (shared by name), or - without an address - one in this process,
        which orders only this process's runs (``ray=True`` without an address: a Ray started here).
        ``db`` as for ``create``: a hub sets ``WORKBENCH_ROOM_DB`` beside ``WORKBENCH_ROOM``."""
        use_ray = address is not None if ray is None else ray
        return cls(RoomStore(folder, db=db), RoomQueue(RayQueue(None, address) if use_ray else LocalQueue()))

    # ------------------------------------------------------------------ exercises and locks

    def exercise(self) -> Exercise:
        return self.store.exercise()

    def locked(self) -> pd.DataFrame:
        """The settings this exercise fixes, with the reason: what the panel shows as locked."""
        ex = self.exercise()
        return pd.DataFrame([{"setting": k, "value": v, "reason": ex.reason} for k, v in ex.locked.items()],
                            columns=["setting", "value", "reason"])

    def check_locks(self, cfg: RunConfig) -> None:
        """Refuse a config that changes a locked setting, saying which, its value and why it is locked."""
        ex = self.exercise()
        wrong = [f"{name} is locked at {value!r} (asked: {setting_value(cfg, name)!r})"
                 for name, value in ex.locked.items() if setting_value(cfg, name) != value]
        if wrong:
            raise LockedSetting(f"{ex.name}: {'; '.join(wrong)}. Why: {ex.reason}")

    # ------------------------------------------------------------------ training

    def train_for(self, attendee: str, on_wait: Callable[[str, int], None] | None = None) -> Callable[..., RunResult]:
        """``wb.train`` for ``attendee`` in this room (the panel's ``RunControl(train=...)``)."""
        attendee = check_name(attendee)

        def train(cfg: RunConfig, on_step: Callable[[StepInfo], None] | None = None,
                  stop: threading.Event | None = None, runs_dir: Any = None, progress: bool = False,
                  **kwargs: Any) -> RunResult:
            # runs_dir: the panel passes its own; in a room the attendee's folder of the room is the place.
            self.check_locks(cfg)
            exercise = self.exercise()

            def waiting(ahead: int) -> None:
                with self._lock:
                    self._waiting[attendee] = ahead
                if on_wait is not None:
                    on_wait(attendee, ahead)

            try:
                with self.queue.turn(attendee, stop, waiting) as turn:
                    with self._lock:
                        self._waiting.pop(attendee, None)
                    folder = self.store.runs_dir(attendee)
                    sinks = [StoreSink(str(folder), save_at_start=True),
                             self.store.sink(attendee, exercise.id, turn.queued, turn.started),
                             *kwargs.pop("sinks", ())]
                    return self._train(cfg, on_step=on_step, stop=stop, runs_dir=None, progress=progress,
                                       sinks=sinks, **kwargs)
            finally:
                with self._lock:
                    self._waiting.pop(attendee, None)

        return train

    def panel_train(self, attendee: str, say: Callable[[str], None]) -> Callable[..., RunResult]:
        """``train_for`` whose waits are said on the panel's message line ("queued: N ahead of you").

        Give it to the panel: ``Workbench(runs_dir=room.store.runs_dir(me), train=room.panel_train(me,
        lambda text: panel.state.messages.say(text)))``; Stop while queued leaves the queue."""
        return self.train_for(attendee, on_wait=lambda who, ahead: say(queued_text(ahead)))

    def queued_message(self, attendee: str) -> str | None:
        """'queued: N ahead of you' while ``attendee``'s run waits (in this kernel), else None."""
        with self._lock:
            ahead = self._waiting.get(check_name(attendee))
        return None if ahead is None else queued_text(ahead)

    def mark_lost(self) -> list[str]:
        """Runs the ledger says are running whose attendee holds no running turn in the queue:
        their kernel died mid-run (server stopped, kernel restarted), so their lease ran out.
        Each is recorded as "failed" with its curve so far (the last checkpoint) and a message
        saying so; returns their ids.  Only meaningful with the room's shared (Ray) queue:
        a queue in this process knows only this process's turns."""
        running = {t["attendee"] for t in self.queue.snapshot()["running"]}
        lost = [row for row in self.store.ledger.rows() if row["status"] == "running" and row["attendee"] not in running]
        for row in lost:
            try:
                result = run_store.load_run(row["folder"])
            except (OSError, ValueError):
                result = None
            if result is not None and result.status == "running":
                result.status = "failed"
                result.message = ("lost: the attendee's server stopped while the run trained (its turn in the queue "
                                  "was not renewed); the curve is what it reached at its last checkpoint")
                run_store.save_run(result, self.store.runs_dir(row["attendee"]))
            self.store.ledger.record_end(row["run_id"], "failed", time.time())
        return [row["run_id"] for row in lost]

    def who(self) -> pd.DataFrame:
        """Who is running and who is queued now, in line order (the queue's view, live)."""
        snap = self.queue.snapshot()
        rows = [{"attendee": t["attendee"], "state": "running", "ahead": None, "since": t["started"]}
                for t in snap["running"]]
        rows += [{"attendee": t["attendee"], "state": "queued", "ahead": t["ahead"], "since": t["queued"]}
                 for t in snap["queued"]]
        frame = pd.DataFrame(rows, columns=["attendee", "state", "ahead", "since"])
        frame["since"] = pd.to_datetime(frame["since"], unit="s", utc=True).dt.tz_convert(None)
        frame["ahead"] = frame["ahead"].astype("Int64")
        return frame


__all__ = ["Room", "LockedSetting", "setting_value", "queued_text"]

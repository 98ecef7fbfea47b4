"""The room's runs: each attendee's in a folder of their own, the ledger saying whose is whose.

Layout of a room folder (made by the instructor, ``RoomStore(folder, create=True)``)::

    <room>/
      room.db               the ledger (workbench.room.ledger): owners, times, exercises;
                            or, for a hub over several machines, a PostgreSQL database
                            (``db=`` or WORKBENCH_ROOM_DB), the runs then on a shared volume
      runs/<attendee>/<run id>/run.json, history.csv, adapter/   (workbench.records.store)

An attendee's runs are the project's ordinary run store under ``runs/<attendee>``, so the
panel given that folder lists, shows and compares exactly their runs; the instructor reads
every attendee's.  Deleting goes through ``delete``, which asks the ledger whose the run is
and refuses anyone else's with a message.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from workbench.engine.config import RunResult
from workbench.engine.events import RunSink
from workbench.records import store as run_store
from workbench.room.ledger import Exercise, Ledger, RoomStoreUnavailable
from workbench.room.people import check_name

RUNS_FOLDER = "runs"
INSTRUCTOR = "instructor"
ATTENDEE = "attendee"
#: The columns the room adds in front of ``wb.runs()``'s.
ROOM_COLUMNS = ("attendee", "exercise", "queued", "started", "ended", "wait_s")


class NotYours(PermissionError):
    """An attendee asked to change a run that is someone else's."""


class RoomStore:
    """The room's runs at ``folder``.  ``create=True``: make the room (the instructor, once).
    ``db``: the ledger's PostgreSQL URL (``None``: ``WORKBENCH_ROOM_DB``, else ``<folder>/room.db``)."""

    def __init__(self, folder: str | Path, create: bool = False, db: str | None = None) -> None:
        self.folder = Path(folder)
        self.ledger = Ledger(self.folder, create=create, db=db)

    # ------------------------------------------------------------------ people

    def add_instructor(self, name: str) -> None:
        self.ledger.add_person(check_name(name, "instructor"), INSTRUCTOR)

    def is_instructor(self, name: str) -> bool:
        return self.ledger.role(check_name(name)) == INSTRUCTOR

    def runs_dir(self, attendee: str) -> Path:
        """Where ``attendee``'s runs are stored (the panel's ``runs_dir`` for them)."""
        return self.folder / RUNS_FOLDER / check_name(attendee)

    # ------------------------------------------------------------------ exercises

    def new_exercise(self, by: str, name: str, locked: dict | None = None, reason: str = "") -> Exercise:
        """A fresh round (earlier rounds' runs stay); only an instructor may start one."""
        if not self.is_instructor(by):
            raise NotYours(f"{by!r} is not an instructor of this room: only an instructor starts a new exercise")
        locked = dict(locked or {})
        if locked and not reason.strip():
            raise ValueError("say why the settings are locked (reason=...): attendees see the reason beside them")
        return self.ledger.new_exercise(name, locked, reason)

    def exercise(self) -> Exercise:
        return self.ledger.current_exercise()

    # ------------------------------------------------------------------ recording

    def sink(self, attendee: str, exercise: int, queued: float, started: float) -> "RoomSink":
        """The listener that enters a run in the ledger when it starts and when it ends."""
        return RoomSink(str(self.folder), check_name(attendee), exercise, queued, started, self.ledger.db or "")

    # ------------------------------------------------------------------ reading and deleting

    def runs(self, viewer: str) -> pd.DataFrame:
        """The runs ``viewer`` may see as one table: their own, or everyone's for an instructor.

        ``wb.runs()``'s columns with the room's in front (``ROOM_COLUMNS``: whose, which
        exercise, when it queued, started and ended, and how long it waited in the queue)."""
        viewer = check_name(viewer)
        ledger = self.ledger.rows(None if self.is_instructor(viewer) else viewer)
        results: list[RunResult] = []
        for attendee in sorted({row["attendee"] for row in ledger}):
            with warnings.catch_warnings():  # a run still being written is skipped now, seen at the next look
                warnings.simplefilter("ignore", run_store.RunStoreWarning)
                results += run_store.load_runs(self.runs_dir(attendee))
        table = run_store.runs_table(results)
        room = pd.DataFrame(ledger, columns=["run_id", "attendee", "exercise", "queued", "started", "ended"])
        room["wait_s"] = room["started"] - room["queued"]
        for col in ("queued", "started", "ended"):
            room[col] = pd.to_datetime(room[col], unit="s", utc=True).dt.tz_convert(None)
        merged = room.merge(table, on="run_id", how="inner")
        return merged[["run_id", *ROOM_COLUMNS, *[c for c in table.columns if c != "run_id"]]].reset_index(drop=True)

    def delete(self, run_id: str, viewer: str) -> None:
        """Delete one run: its owner may, an instructor may; anyone else is refused, saying whose it is."""
        viewer = check_name(viewer)
        owner = self.ledger.owner(run_id)
        if owner is None:
            raise FileNotFoundError(f"no run {run_id!r} in this room")
        if owner != viewer and not self.is_instructor(viewer):
            raise NotYours(f"run {run_id!r} is {owner}'s: you ({viewer}) can delete only your own runs")
        run_store.delete_run(run_id, self.runs_dir(owner))
        self.ledger.forget(run_id)


@dataclass
class RoomSink(RunSink):
    """Enters a run in the room's ledger: at its start (with its queue times) and at its end.

    It comes after the run store's sink, which has named the run and saved it by then.  ``db`` is the
    ledger's PostgreSQL URL as the store resolved it ("": the room's SQLite file), so a run's rows go
    to the store's ledger whatever the environment of the process that trains it says."""

    folder: str
    attendee: str
    exercise: int
    queued: float
    started: float
    db: str = field(default="", repr=False)  # a URL may hold a password: never in a repr or a log

    def on_start(self, result: RunResult) -> None:
        Ledger(self.folder, db=self.db).record_start(result.run_id, self.attendee, self.exercise,
                                                     result.config.label(), self.queued, self.started,
                                                     str(result.path))

    def on_finish(self, result: RunResult, model: object) -> None:
        if result.run_id:
            Ledger(self.folder, db=self.db).record_end(result.run_id, result.status, time.time())


__all__ = ["RoomStore", "RoomSink", "NotYours", "RoomStoreUnavailable", "ROOM_COLUMNS", "INSTRUCTOR", "ATTENDEE"]

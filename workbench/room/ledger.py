"""The room's ledger: one SQLite database (WAL mode) that says whose each run is.

Why SQLite in WAL mode, beside the run folders (docs/workshop-room.md says it for people):

* a run's curve and record stay in the project's run store (``workbench.records.store``:
  one folder per run, written atomically by the one process that trains it), so nothing
  two attendees do can overwrite the other's files, and ``wb.runs``, the panel's run list
  and the reports read a room's runs unchanged;
* what is shared - who owns which run, when it queued, started and ended, which exercise
  it belongs to, which settings the exercise locks - is a few rows that many processes
  write at the same moment (thirty kernels finishing together).  SQLite gives each write a
  transaction: it lands whole or not at all, a run id is a primary key (a run cannot be
  recorded twice), and in WAL mode readers (the instructor's view) never block writers;
  writers wait their turn (``BUSY_TIMEOUT_S``) instead of failing.  It needs one server's
  local disk: WAL does not work over a network file system.  A hub beyond one machine
  would put these rows in PostgreSQL (the same few statements).

Every call opens its own connection, so the ledger is safe from any thread or process;
an unreachable or damaged database raises ``RoomStoreUnavailable`` naming the file and the
reason.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

DB_FILE = "room.db"
BUSY_TIMEOUT_S = 30.0  # a writer waits this long for another's transaction before giving up
SCHEMA = """
CREATE TABLE IF NOT EXISTS exercises (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    locked TEXT NOT NULL,          -- JSON: {setting: value}
    reason TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    attendee TEXT NOT NULL,
    exercise INTEGER NOT NULL REFERENCES exercises(id),
    label TEXT NOT NULL,
    status TEXT NOT NULL,
    queued REAL NOT NULL,          -- seconds since the epoch: asked to run
    started REAL NOT NULL,         -- the queue let it run
    ended REAL,                    -- null while running
    folder TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_attendee ON runs(attendee);
CREATE TABLE IF NOT EXISTS people (name TEXT PRIMARY KEY, role TEXT NOT NULL);
"""
LEDGER_COLUMNS = ("run_id", "attendee", "exercise", "label", "status", "queued", "started", "ended", "folder")


class RoomStoreUnavailable(RuntimeError):
    """The room's store cannot be reached (missing, unreadable, locked for too long, damaged)."""


@dataclass(frozen=True)
class Exercise:
    """One round of the workshop: its settings fixed by the instructor, and why."""

    id: int
    name: str
    locked: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


class Ledger:
    """The room's database at ``<room>/room.db``.  ``create=True`` makes it (the instructor's
    side); otherwise it must exist already (an attendee joins a room, never makes one)."""

    def __init__(self, folder: str | Path, create: bool = False) -> None:
        self.path = Path(folder) / DB_FILE
        if create:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise RoomStoreUnavailable(f"the room's store {self.path.parent} cannot be created: "
                                           f"{e.strerror or e}") from e
            with self._connect() as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(SCHEMA)
                if db.execute("SELECT COUNT(*) FROM exercises").fetchone()[0] == 0:
                    db.execute("INSERT INTO exercises (name, locked, reason, created) VALUES (?, '{}', '', ?)",
                               ("exercise 1", time.time()))
        elif not self.path.is_file():
            raise RoomStoreUnavailable(
                f"the room's store cannot be reached: {self.path} does not exist (is the room folder mounted, "
                "and was the room created by the instructor with Room.create?)")
        else:
            with self._connect() as db:  # a damaged or foreign file fails here, not mid-run
                db.execute("SELECT COUNT(*) FROM runs").fetchone()

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """One connection, one transaction: committed when the block ends, rolled back on an error."""
        try:
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)
        except sqlite3.Error as e:
            raise RoomStoreUnavailable(f"the room's store {self.path} cannot be opened: {e}") from e
        try:
            with db:
                yield db
        except sqlite3.IntegrityError:
            raise
        except sqlite3.DatabaseError as e:
            raise RoomStoreUnavailable(f"the room's store {self.path} cannot be used: {e}") from e
        finally:
            db.close()

    # ------------------------------------------------------------------ people and exercises

    def add_person(self, name: str, role: str) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO people (name, role) VALUES (?, ?)", (name, role))

    def role(self, name: str) -> str | None:
        with self._connect() as db:
            row = db.execute("SELECT role FROM people WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def new_exercise(self, name: str, locked: dict[str, Any], reason: str) -> Exercise:
        with self._connect() as db:
            cur = db.execute("INSERT INTO exercises (name, locked, reason, created) VALUES (?, ?, ?, ?)",
                             (name, json.dumps(locked), reason, time.time()))
            return Exercise(int(cur.lastrowid), name, dict(locked), reason)

    def exercises(self) -> list[Exercise]:
        with self._connect() as db:
            rows = db.execute("SELECT id, name, locked, reason FROM exercises ORDER BY id").fetchall()
        return [Exercise(int(i), n, json.loads(lk), r) for i, n, lk, r in rows]

    def current_exercise(self) -> Exercise:
        return self.exercises()[-1]

    # ------------------------------------------------------------------ runs

    def record_start(self, run_id: str, attendee: str, exercise: int, label: str, queued: float, started: float,
                     folder: str) -> None:
        """A run the queue let start; its id is the primary key, so a second insert fails loudly."""
        with self._connect() as db:
            db.execute("INSERT INTO runs (run_id, attendee, exercise, label, status, queued, started, ended, folder) "
                       "VALUES (?, ?, ?, ?, 'running', ?, ?, NULL, ?)",
                       (run_id, attendee, exercise, label, queued, started, folder))

    def record_end(self, run_id: str, status: str, ended: float) -> None:
        with self._connect() as db:
            db.execute("UPDATE runs SET status = ?, ended = ? WHERE run_id = ?", (status, ended, run_id))

    def owner(self, run_id: str) -> str | None:
        with self._connect() as db:
            row = db.execute("SELECT attendee FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return row[0] if row else None

    def rows(self, attendee: str | None = None) -> list[dict[str, Any]]:
        """The ledger's rows (one attendee's, or all), in the order the runs started."""
        query = f"SELECT {', '.join(LEDGER_COLUMNS)} FROM runs"
        args: tuple = ()
        if attendee is not None:
            query, args = query + " WHERE attendee = ?", (attendee,)
        with self._connect() as db:
            found = db.execute(query + " ORDER BY started, run_id", args).fetchall()
        return [dict(zip(LEDGER_COLUMNS, row)) for row in found]

    def forget(self, run_id: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))


__all__ = ["Ledger", "Exercise", "RoomStoreUnavailable", "DB_FILE", "LEDGER_COLUMNS", "BUSY_TIMEOUT_S"]

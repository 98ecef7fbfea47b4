"""The room's ledger: the few shared rows that say whose each run is, in SQLite or PostgreSQL.

Why a database beside the run folders (docs/workshop-room.md says it for people):

* a run's curve and record stay in the project's run store (``workbench.records.store``:
  one folder per run, written atomically by the one process that trains it), so nothing
  two attendees do can overwrite the other's files, and ``wb.runs``, the panel's run list
  and the reports read a room's runs unchanged;
* what is shared - who owns which run, when it queued, started and ended, which exercise
  it belongs to, which settings the exercise locks - is a few rows that many processes
  write at the same moment (thirty kernels finishing together).  A database gives each
  write a transaction: it lands whole or not at all, a run id is a primary key (a run
  cannot be recorded twice: ``LedgerIntegrityError``), and readers (the instructor's view)
  never block writers.

Two back ends, one class and one set of statements:

* **SQLite in WAL mode** at ``<room>/room.db`` (the default): nothing to run, and writers
  wait their turn (``BUSY_TIMEOUT_S``) instead of failing.  WAL needs one machine's local
  disk (it does not work over a network file system), so it serves a hub on one machine.
* **PostgreSQL**, given by a URL (``db=`` or ``WORKBENCH_ROOM_DB``, e.g.
  ``postgresql://room:secret@db.example:5432/room``): a server every machine of a hub
  spread over several reaches; the run folders then go on a shared (ReadWriteMany) volume,
  which is safe because each run's files are written by the one process that trains it.
  ``psycopg`` (the ``room`` extra) is imported only then: an attendee's SQLite room needs
  no database driver.

What differs between the two is a handful of words (``DIALECTS``): the parameter mark, the
numbered id column, the upsert, how an insert hands back its id, and SQLite's pragmas.
Every call opens its own connection, so the ledger is safe from any thread or process; an
unreachable, wrong or damaged database raises ``RoomStoreUnavailable`` naming the file, or
the server and database (never the password), and what to check.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlsplit

DB_FILE = "room.db"
#: The room's PostgreSQL database, when it has one: how a hub tells every kernel (like ``WORKBENCH_ROOM``).
DB_ENV = "WORKBENCH_ROOM_DB"
BUSY_TIMEOUT_S = 30.0  # a writer waits this long for another's transaction before giving up
CONNECT_TIMEOUT_S = 10  # a PostgreSQL server that does not answer by then is reported, not waited on
# Times are DOUBLE PRECISION, not REAL: PostgreSQL's REAL is 4 bytes, which rounds seconds since
# the epoch to minutes; SQLite reads the name as its 8-byte REAL, so one schema serves both.
SCHEMA = """
CREATE TABLE IF NOT EXISTS exercises (
    id {serial},
    name TEXT NOT NULL,
    locked TEXT NOT NULL,          -- JSON: {{setting: value}}
    reason TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    attendee TEXT NOT NULL,
    exercise INTEGER NOT NULL REFERENCES exercises(id),
    label TEXT NOT NULL,
    status TEXT NOT NULL,
    queued DOUBLE PRECISION NOT NULL,   -- seconds since the epoch: asked to run
    started DOUBLE PRECISION NOT NULL,  -- the queue let it run
    ended DOUBLE PRECISION,             -- null while running
    folder TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_attendee ON runs(attendee);
CREATE TABLE IF NOT EXISTS people (name TEXT PRIMARY KEY, role TEXT NOT NULL)
"""
LEDGER_COLUMNS = ("run_id", "attendee", "exercise", "label", "status", "queued", "started", "ended", "folder")


class RoomStoreUnavailable(RuntimeError):
    """The room's store cannot be reached (missing, unreadable, locked for too long, damaged, refused)."""


class LedgerIntegrityError(sqlite3.IntegrityError):
    """A write the ledger's keys refuse (a run id entered twice), from either back end.

    A subclass of ``sqlite3.IntegrityError``, so code written for the SQLite ledger catches it
    unchanged when the room's ledger is in PostgreSQL."""


@dataclass(frozen=True)
class Dialect:
    """The words in which the two back ends differ; every statement is written once, with ``?`` marks."""

    mark: str                     # the driver's parameter mark, put where the statements say ``?``
    serial: str                   # an id column the database numbers itself
    upsert: tuple[str, str]       # "insert, or replace the row with this key": before and after the values
    returning: bool               # an insert hands back its id by RETURNING (else the cursor's lastrowid)
    on_connect: tuple[str, ...]   # said on every connection
    on_create: tuple[str, ...]    # said once, when the room is made


DIALECTS = {
    "sqlite": Dialect("?", "INTEGER PRIMARY KEY AUTOINCREMENT", ("INSERT OR REPLACE INTO", ""), False,
                      ("PRAGMA foreign_keys = ON",), ("PRAGMA journal_mode=WAL",)),
    "postgresql": Dialect("%s", "INTEGER GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
                          ("INSERT INTO", " ON CONFLICT (name) DO UPDATE SET role = EXCLUDED.role"), True, (), ()),
}


def safe_url(url: str) -> str:
    """``url`` as a message may show it: user, host, port and database, never the password."""
    parts = urlsplit(url)
    user = f"{unquote(parts.username)}@" if parts.username else ""
    return f"{parts.scheme}://{user}{parts.netloc.rpartition('@')[2] or 'localhost'}{parts.path}"


@dataclass(frozen=True)
class Exercise:
    """One round of the workshop: its settings fixed by the instructor, and why."""

    id: int
    name: str
    locked: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


class Ledger:
    """The room's database: ``<folder>/room.db``, or the PostgreSQL database at ``db`` (a URL;
    ``None`` reads ``WORKBENCH_ROOM_DB``, and an empty value means the file).  ``create=True``
    makes it (the instructor's side); otherwise it must exist already (an attendee joins a
    room, never makes one)."""

    def __init__(self, folder: str | Path, create: bool = False, db: str | None = None) -> None:
        self.db = (os.environ.get(DB_ENV, "") if db is None else db).strip() or None
        self.path = Path(folder) / DB_FILE  # the SQLite file (unused when the ledger is in PostgreSQL)
        if self.db is None:
            self.kind, self.where = "sqlite", str(self.path)
        elif urlsplit(self.db).scheme in ("postgresql", "postgres"):
            self.kind, self.where = "postgresql", safe_url(self.db)
        else:
            raise RoomStoreUnavailable(f"the room's database {self.db.split('@')[-1]!r} is not a PostgreSQL URL: "
                                       f"give db= (or {DB_ENV}) as postgresql://user:password@host:5432/database, "
                                       "or leave it empty for the SQLite file in the room's folder")
        self.dialect = DIALECTS[self.kind]
        if create:
            if self.kind == "sqlite":
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise RoomStoreUnavailable(f"the room's store {self.path.parent} cannot be created: "
                                               f"{e.strerror or e}") from e
            with self._connect() as db:
                for statement in self.dialect.on_create + tuple(SCHEMA.format(serial=self.dialect.serial).split(";")):
                    db.execute(statement)
                if db.execute("SELECT COUNT(*) FROM exercises").fetchone()[0] == 0:
                    db.execute("INSERT INTO exercises (name, locked, reason, created) VALUES (?, '{}', '', ?)",
                               ("exercise 1", time.time()))
        elif self.kind == "sqlite" and not self.path.is_file():
            raise RoomStoreUnavailable(
                f"the room's store cannot be reached: {self.path} does not exist (is the room folder mounted, "
                "and was the room created by the instructor with Room.create?)")
        else:
            with self._connect() as db:  # a damaged, foreign or empty database fails here, not mid-run
                db.execute("SELECT COUNT(*) FROM runs").fetchone()

    # ------------------------------------------------------------------ connections

    def _driver(self) -> Any:
        """PostgreSQL's driver, imported only for a PostgreSQL ledger (the attendee's install may lack it)."""
        try:
            import psycopg
        except ImportError as e:
            raise RoomStoreUnavailable(f"the room's store {self.where} needs the PostgreSQL driver psycopg, which "
                                       "is not installed: pip install 'lora-workbench[room]' (or 'psycopg[binary]')"
                                       ) from e
        return psycopg

    def _open(self) -> Any:
        """A connection of the back end's driver."""
        if self.kind == "sqlite":
            return sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)
        return self._driver().connect(self.db, connect_timeout=CONNECT_TIMEOUT_S)

    def _errors(self) -> tuple[type[Exception], type[Exception]]:
        """The driver's (integrity error, any database error)."""
        driver = sqlite3 if self.kind == "sqlite" else self._driver()
        return driver.IntegrityError, driver.Error

    def _reason(self, e: Exception) -> str:
        """The driver's message on one line, with the password taken out should a driver ever echo it."""
        text = " ".join(str(e).split())
        password = urlsplit(self.db).password if self.db else None
        for secret in {password, unquote(password)} if password else ():
            text = text.replace(secret, "***")
        return text

    def _check(self) -> str:
        """What to look at when PostgreSQL fails (a SQLite message names its file, which says enough)."""
        if self.kind == "sqlite":
            return ""
        return (f" (check {DB_ENV} or db=: that the server at that host and port runs and accepts connections "
                "from here, the user and password, that the database exists, and that the room was created by "
                "the instructor with Room.create)")

    @contextlib.contextmanager
    def _connect(self) -> Iterator["_Session"]:
        """One connection, one transaction: committed when the block ends, rolled back on an error."""
        integrity, error = self._errors()
        try:
            db = self._open()
        except error as e:
            raise RoomStoreUnavailable(f"the room's store {self.where} cannot be opened: {self._reason(e)}"
                                       f"{self._check()}") from e
        try:
            with db:  # sqlite3 and psycopg alike: commit on leaving, roll back on an exception
                session = _Session(db, self.dialect.mark)
                for statement in self.dialect.on_connect:
                    session.execute(statement)
                yield session
        except integrity as e:
            raise LedgerIntegrityError(f"the room's store {self.where} refused a write: {self._reason(e)}") from e
        except error as e:
            raise RoomStoreUnavailable(f"the room's store {self.where} cannot be used: {self._reason(e)}"
                                       f"{self._check()}") from e
        finally:
            db.close()

    # ------------------------------------------------------------------ people and exercises

    def add_person(self, name: str, role: str) -> None:
        before, after = self.dialect.upsert
        with self._connect() as db:
            db.execute(f"{before} people (name, role) VALUES (?, ?){after}", (name, role))

    def role(self, name: str) -> str | None:
        with self._connect() as db:
            row = db.execute("SELECT role FROM people WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def new_exercise(self, name: str, locked: dict[str, Any], reason: str) -> Exercise:
        returning = self.dialect.returning
        with self._connect() as db:
            cur = db.execute("INSERT INTO exercises (name, locked, reason, created) VALUES (?, ?, ?, ?)"
                             + (" RETURNING id" if returning else ""), (name, json.dumps(locked), reason, time.time()))
            return Exercise(int(cur.fetchone()[0] if returning else cur.lastrowid), name, dict(locked), reason)

    def exercises(self) -> list[Exercise]:
        with self._connect() as db:
            rows = db.execute("SELECT id, name, locked, reason FROM exercises ORDER BY id").fetchall()
        return [Exercise(int(i), n, json.loads(lk), r) for i, n, lk, r in rows]

    def current_exercise(self) -> Exercise:
        return self.exercises()[-1]

    # ------------------------------------------------------------------ runs

    def record_start(self, run_id: str, attendee: str, exercise: int, label: str, queued: float, started: float,
                     folder: str) -> None:
        """A run the queue let start; its id is the primary key, so a second insert fails loudly
        (``LedgerIntegrityError``, a ``sqlite3.IntegrityError``, from either back end)."""
        with self._connect() as db:
            db.execute("INSERT INTO runs (run_id, attendee, exercise, label, status, queued, started, ended, folder) "
                       "VALUES (?, ?, ?, ?, 'running', ?, ?, NULL, ?)",
                       (run_id, attendee, int(exercise), label, float(queued), float(started), folder))

    def record_end(self, run_id: str, status: str, ended: float) -> None:
        with self._connect() as db:
            db.execute("UPDATE runs SET status = ?, ended = ? WHERE run_id = ?", (status, float(ended), run_id))

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


class _Session:
    """A connection that takes the statements as written (``?`` marks) and says them in its driver's marks."""

    def __init__(self, db: Any, mark: str) -> None:
        self._db, self._mark = db, mark

    def execute(self, sql: str, args: tuple = ()) -> Any:
        return self._db.execute(sql if self._mark == "?" else sql.replace("?", self._mark), args)


__all__ = ["Ledger", "Exercise", "RoomStoreUnavailable", "LedgerIntegrityError", "DB_FILE", "DB_ENV",
           "LEDGER_COLUMNS", "BUSY_TIMEOUT_S", "DIALECTS", "safe_url"]

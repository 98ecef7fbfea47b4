"""The room's ledger on both of its back ends: SQLite (the room folder's file) and PostgreSQL.

Every check runs over one table of back ends (``BACKENDS``): rows round-trip, a duplicate run
id is refused with the same error, exercises and people, eight threads recording ten runs each
at once, and a ledger that cannot be reached refused with a message that names where it looked
and never the password.  Then the room's store end to end on PostgreSQL (a tiny run recorded,
the instructor sees it, another attendee's delete refused), reusing the store tests' helpers.

The PostgreSQL server is real: the fixture runs ``initdb`` and ``pg_ctl`` on a free port of
127.0.0.1 in a temporary folder (as the ``postgres`` user when the tests run as root, since
PostgreSQL refuses to run as root), with password authentication, and stops it afterwards.
Without PostgreSQL's server programs (``make test`` installs Debian's ``postgresql``) the
PostgreSQL cases are skipped, saying so.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from workbench.room.ledger import DB_ENV, Ledger, LedgerIntegrityError, RoomStoreUnavailable, safe_url
from workbench.room.room import Room
from workbench.room.store import NotYours, RoomStore

sys.path.insert(0, str(Path(__file__).parent))
from test_room_store import tiny  # noqa: E402  the store tests' tiny-preset run

BACKENDS = ["sqlite", "postgresql"]
PASSWORD = "pw-Kx7-not-in-messages"


def _server_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (Debian's newest version, else on PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).resolve().parent if on_path and shutil.which("initdb") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A throwaway PostgreSQL server: ``url(db)`` for a database, ``new_db()`` for a fresh one."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="room-pg-"))
        self.data, self.port = self.root / "data", _free_port()
        self.as_user: list[str] = []
        if os.getuid() == 0:  # PostgreSQL will not run as root: its folder belongs to the postgres user
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
            if shutil.which("runuser") is None:
                pytest.skip("running as root and runuser (to run PostgreSQL as 'postgres') is not installed")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._count = 0

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{args[0]} failed:\n{done.stdout}\n{done.stderr}\n{self.log()}"

    def log(self) -> str:
        log = self.root / "server.log"
        return log.read_text(errors="replace")[-3000:] if log.is_file() else ""

    def start(self) -> None:
        (self.root / "pw").write_text(PASSWORD)
        if self.as_user:
            os.chown(self.root / "pw", pwd.getpwnam("postgres").pw_uid, -1)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=scram-sha-256",
                  f"--pwfile={self.root / 'pw'}", "-E", "UTF8", "--locale=C", "--no-sync")
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-o", options, "-w", "-t", "90", "start")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                            "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, db: str, password: str = PASSWORD, port: int | None = None) -> str:
        return f"postgresql://postgres:{password}@127.0.0.1:{port or self.port}/{db}"

    def new_db(self) -> str:
        """A fresh, empty database: one room."""
        import psycopg

        self._count += 1
        name = f"room_{self._count}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        return self.url(name)


@pytest.fixture(scope="module")
def postgres():
    bin_dir = _server_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server programs (initdb, pg_ctl) found in /usr/lib/postgresql/*/bin or on PATH: "
                    "`make test` installs Debian's postgresql package")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver psycopg (the `room` extra) is not installed")
    server = PostgresServer(bin_dir)
    began = time.perf_counter()
    try:
        server.start()
        print(f"\nPostgreSQL ({bin_dir}) on 127.0.0.1:{server.port} started in {time.perf_counter() - began:.1f} s")
        yield server
    finally:
        server.stop()


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path, monkeypatch):
    """(kind, make): ``make(create)`` gives a ledger of one fresh room on that back end."""
    monkeypatch.delenv(DB_ENV, raising=False)
    if request.param == "sqlite":
        return "sqlite", lambda create=False: Ledger(tmp_path / "room", create=create)
    url = request.getfixturevalue("postgres").new_db()
    return "postgresql", lambda create=False: Ledger(tmp_path / "room", create=create, db=url)


# --------------------------------------------------------------------------- the table, both back ends


def test_rows_round_trip_in_the_order_the_runs_started(backend):
    kind, make = backend
    ledger = make(create=True)
    assert ledger.kind == kind
    ledger.record_start("r2", "bob", 1, "rank=4", 1_796_000_010.25, 1_796_000_012.5, "/room/runs/bob/r2")
    ledger.record_start("r1", "ada", 1, "rank=2", 1_796_000_000.125, 1_796_000_001.75, "/room/runs/ada/r1")
    ledger.record_end("r1", "completed", 1_796_000_030.5)
    joined = make()  # an attendee's side: the same room, not made again
    assert joined.rows() == [
        dict(run_id="r1", attendee="ada", exercise=1, label="rank=2", status="completed", queued=1_796_000_000.125,
             started=1_796_000_001.75, ended=1_796_000_030.5, folder="/room/runs/ada/r1"),
        dict(run_id="r2", attendee="bob", exercise=1, label="rank=4", status="running", queued=1_796_000_010.25,
             started=1_796_000_012.5, ended=None, folder="/room/runs/bob/r2")]  # times to the millisecond
    assert [r["run_id"] for r in joined.rows("bob")] == ["r2"] and joined.rows("carol") == []
    assert joined.owner("r1") == "ada" and joined.owner("nope") is None
    joined.forget("r1")
    assert [r["run_id"] for r in ledger.rows()] == ["r2"]


def test_a_duplicate_run_id_is_refused_with_the_same_error_on_both(backend):
    _, make = backend
    ledger = make(create=True)
    ledger.record_start("r1", "ada", 1, "x", 1.0, 2.0, "/a")
    with pytest.raises(LedgerIntegrityError, match="refused a write") as e:
        ledger.record_start("r1", "bob", 1, "y", 3.0, 4.0, "/b")
    assert isinstance(e.value, sqlite3.IntegrityError)  # what code written for the SQLite ledger catches
    assert ledger.owner("r1") == "ada" and len(ledger.rows()) == 1  # the first stays, nothing half-written
    with pytest.raises(sqlite3.IntegrityError):  # a run of an exercise that does not exist
        ledger.record_start("r2", "ada", 99, "x", 1.0, 2.0, "/a")


def test_exercises_and_people(backend):
    _, make = backend
    ledger = make(create=True)
    assert [(e.id, e.name, e.locked) for e in ledger.exercises()] == [(1, "exercise 1", {})]
    ex = ledger.new_exercise("ranks", {"steps": 2, "lr": 0.001}, "only the rank differs")
    assert ex.id == 2 and make().current_exercise() == ex
    ledger.add_person("teacher", "instructor")
    ledger.add_person("ada", "attendee")
    ledger.add_person("ada", "instructor")  # again: the role is replaced, not added twice
    assert (ledger.role("teacher"), ledger.role("ada"), ledger.role("nobody")) == ("instructor", "instructor", None)
    again = make(create=True)  # making the room again keeps what is there
    assert [e.id for e in again.exercises()] == [1, 2] and again.role("teacher") == "instructor"


def test_eight_writers_at_once_record_all_eighty_runs_once(backend):
    _, make = backend
    ledger = make(create=True)
    start, failures = threading.Barrier(8), []

    def attendee(n: int) -> None:
        try:
            start.wait()
            for k in range(10):  # each write its own connection and transaction, as each kernel's are
                Ledger(ledger.path.parent, db=ledger.db or "").record_start(
                    f"a{n}-r{k}", f"a{n}", 1, "x", time.time(), time.time(), f"/runs/a{n}/{k}")
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append(repr(e))

    threads = [threading.Thread(target=attendee, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures
    ids = [r["run_id"] for r in ledger.rows()]
    assert len(ids) == 80 and set(ids) == {f"a{n}-r{k}" for n in range(8) for k in range(10)}


def test_a_room_never_created_is_refused_saying_so(backend):
    kind, make = backend
    with pytest.raises(RoomStoreUnavailable, match="created by the instructor") as e:
        make()  # an empty database, or no file
    assert PASSWORD not in str(e.value)


# --------------------------------------------------------------------------- PostgreSQL's own failures


@pytest.mark.parametrize("wrong", ["stopped server", "wrong password", "no such database"])
def test_an_unreachable_postgresql_is_refused_naming_it_without_the_password(postgres, tmp_path, wrong):
    url = {"stopped server": postgres.url("room_x", port=_free_port()),
           "wrong password": postgres.url("postgres", password="wrong-Zq9-secret"),
           "no such database": postgres.url("no_such_room")}[wrong]
    began = time.perf_counter()
    with pytest.raises(RoomStoreUnavailable) as e:
        Ledger(tmp_path, create=True, db=url)
    text = str(e.value)
    assert safe_url(url) in text and "127.0.0.1" in text and "WORKBENCH_ROOM_DB" in text, text
    assert PASSWORD not in text and "wrong-Zq9-secret" not in text and ":wrong" not in text, text
    assert {"stopped server": "refused", "wrong password": "password authentication failed",
            "no such database": 'database "no_such_room" does not exist'}[wrong] in text, text
    assert time.perf_counter() - began < 15  # reported, not waited on


def test_a_url_that_is_not_postgresql_is_refused_without_its_password(tmp_path):
    with pytest.raises(RoomStoreUnavailable, match="not a PostgreSQL URL") as e:
        Ledger(tmp_path, create=True, db="mysql://room:hunter2@db:3306/room")
    assert "hunter2" not in str(e.value)


def test_the_sqlite_room_never_imports_the_postgresql_driver(tmp_path, monkeypatch):
    monkeypatch.delenv(DB_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` fails as if it were not installed
    ledger = Ledger(tmp_path, create=True)
    ledger.record_start("r1", "ada", 1, "x", 1.0, 2.0, "/a")
    assert Ledger(tmp_path).owner("r1") == "ada"
    with pytest.raises(RoomStoreUnavailable, match=r"needs the PostgreSQL driver psycopg.*lora-workbench\[room\]"):
        Ledger(tmp_path, db="postgresql://room:secret@db:5432/room")


# --------------------------------------------------------------------------- the room's store on PostgreSQL


def test_the_room_works_end_to_end_on_postgresql(postgres, tmp_path, monkeypatch):
    url = postgres.new_db()
    monkeypatch.setenv(DB_ENV, url)  # as the hub tells every kernel, beside WORKBENCH_ROOM
    room = Room.create(tmp_path / "room", instructor="teacher", ray=False, limit=1)
    assert room.store.ledger.kind == "postgresql" and not (tmp_path / "room" / "room.db").exists()
    monkeypatch.delenv(DB_ENV)
    attendee = Room.join(tmp_path / "room", ray=False, db=url)  # another kernel, told by argument
    mine = attendee.train_for("ada")(tiny(2), fresh_process=False)
    assert mine.status == "completed", mine.message
    teacher = Room.join(tmp_path / "room", ray=False, db=url).store.runs("teacher")
    assert list(teacher["run_id"]) == [mine.run_id] and list(teacher["attendee"]) == ["ada"]
    assert teacher["ended"].notna().all() and (teacher["wait_s"] >= 0).all()
    with pytest.raises(NotYours, match=rf"run '{mine.run_id}' is ada's: you \(bob\) can delete only your own"):
        attendee.store.delete(mine.run_id, "bob")
    assert RoomStore(tmp_path / "room", db=url).ledger.owner(mine.run_id) == "ada"
    attendee.store.delete(mine.run_id, "ada")
    assert room.store.runs("teacher").empty and not (room.store.runs_dir("ada") / mine.run_id).exists()

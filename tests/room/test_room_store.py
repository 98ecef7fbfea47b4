"""The room's store: runs kept with their attendee's name, each attendee seeing and deleting
only their own, the instructor reading all; locked settings; bad names and an unreachable
store refused with a message.  Real tiny-preset runs, trained in this process, through the
room's train function (``Room.train_for``), a local queue (the Ray queue: test_room_queue.py).
"""

from __future__ import annotations

import json
import sqlite3

import pytest

import workbench as wb
from workbench.records import store as run_store
from workbench.room.ledger import RoomStoreUnavailable
from workbench.room.people import BadName, check_name
from workbench.room.room import LockedSetting, Room
from workbench.room.store import ROOM_COLUMNS, NotYours, RoomStore

TINY = dict(steps=2, eval_every=2, max_train_examples=32, max_eval_examples=16, threads=1)


def tiny(rank: int, **kw) -> wb.RunConfig:
    return wb.preset("tiny", rank=rank, **{**TINY, **kw})


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    """A room with an instructor, ada's two runs and bob's one."""
    r = Room.create(tmp_path_factory.mktemp("room"), instructor="teacher", ray=False, limit=2)
    for who, rank in (("ada", 1), ("bob", 4), ("ada", 8)):
        result = r.train_for(who)(tiny(rank), fresh_process=False)
        assert result.status == "completed", result.message
    return r


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("name, says", [("../ada", "'/'"), ("a/b", "'/'"), ("a\\b", "a '\\'"), (".ada", "leading '.'"),
                                        ("ada lovelace", "spaces"), ("..", "'..'"), ("", "allowed"), ("Ada", "allowed")])
def test_a_name_that_could_point_elsewhere_is_refused_saying_what_is_allowed(name, says):
    with pytest.raises(BadName) as e:
        check_name(name)
    assert says in str(e.value) and "lowercase letters, digits" in str(e.value)


def test_hub_style_names_pass():
    assert [check_name(n) for n in ("ada", "j.smith", "user-7", "x_1")] == ["ada", "j.smith", "user-7", "x_1"]


def test_a_bad_name_is_refused_before_anything_is_trained_or_written(room):
    before = len(room.store.ledger.rows())
    with pytest.raises(BadName, match="'/'"):
        room.train_for("../teacher")
    with pytest.raises(BadName):
        room.store.runs("a/b")
    assert len(room.store.ledger.rows()) == before
    assert sorted(p.name for p in (room.store.folder / "runs").iterdir()) == ["ada", "bob"]


# --------------------------------------------------------------------------- who sees what


def test_each_run_is_stored_with_its_attendees_name_in_their_folder(room):
    rows = room.store.ledger.rows()
    assert [(r["attendee"], r["status"]) for r in rows] == [("ada", "completed"), ("bob", "completed"),
                                                           ("ada", "completed")]
    for r in rows:
        record = json.loads((room.store.runs_dir(r["attendee"]) / r["run_id"] / "run.json").read_text())
        assert record["run_id"] == r["run_id"] and record["status"] == "completed"
        assert r["queued"] <= r["started"] <= r["ended"]
    # The attendee's folder is an ordinary run store: wb.runs reads it as it is.
    assert sorted(run_store.runs(room.store.runs_dir("ada"))["rank"]) == [1, 8]


def test_an_attendee_sees_only_their_own_runs_and_the_instructor_all(room):
    ada, bob, teacher = (room.store.runs(n) for n in ("ada", "bob", "teacher"))
    assert list(ada.columns[:len(ROOM_COLUMNS) + 1]) == ["run_id", *ROOM_COLUMNS]
    assert set(ada["attendee"]) == {"ada"} and sorted(ada["rank"]) == [1, 8]
    assert list(bob["attendee"]) == ["bob"] and list(bob["rank"]) == [4]
    assert sorted(teacher["attendee"]) == ["ada", "ada", "bob"] and len(teacher) == 3
    assert (teacher["wait_s"] >= 0).all() and teacher["final_loss"].notna().all()
    assert room.store.runs("carol").empty  # someone with no runs sees an empty table, not another's


def test_deleting_another_attendees_run_is_refused_with_whose_it_is(room, tmp_path):
    ada_run = room.store.runs("ada")["run_id"].iloc[0]
    with pytest.raises(NotYours, match=rf"run '{ada_run}' is ada's: you \(bob\) can delete only your own runs"):
        room.store.delete(ada_run, "bob")
    assert ada_run in set(room.store.runs("ada")["run_id"])  # still there, record and all
    with pytest.raises(FileNotFoundError, match="no run 'nope' in this room"):
        room.store.delete("nope", "ada")


def test_an_attendee_deletes_their_own_run(tmp_path):
    r = Room.create(tmp_path / "room", instructor="teacher", ray=False, limit=1)
    mine = r.train_for("ada")(tiny(2), fresh_process=False)
    r.store.delete(mine.run_id, "ada")
    assert r.store.runs("ada").empty and r.store.ledger.owner(mine.run_id) is None
    assert not (r.store.runs_dir("ada") / mine.run_id).exists()


# --------------------------------------------------------------------------- exercises and locks


def test_a_new_exercise_locks_settings_with_a_reason_and_keeps_earlier_rounds(room):
    with pytest.raises(NotYours, match="only an instructor starts a new exercise"):
        room.store.new_exercise("ada", "ranks", {"steps": 2})
    with pytest.raises(ValueError, match="say why"):
        room.store.new_exercise("teacher", "ranks", {"steps": 2})
    ex = room.store.new_exercise("teacher", "only the rank", {"steps": 2, "lr": 1e-3},
                                 reason="so that only the rank differs")
    assert room.locked().to_dict("records") == [
        {"setting": "steps", "value": 2, "reason": "so that only the rank differs"},
        {"setting": "lr", "value": 1e-3, "reason": "so that only the rank differs"}]
    with pytest.raises(LockedSetting, match=r"steps is locked at 2 \(asked: 3\).*Why: so that only the rank differs"):
        room.train_for("bob")(tiny(2, steps=3), fresh_process=False)
    done = room.train_for("bob")(tiny(16), fresh_process=False)
    table = room.store.runs("teacher")
    assert table.set_index("run_id").loc[done.run_id, "exercise"] == ex.id
    assert ex.id == 2 and sorted(table["exercise"]) == [1, 1, 1, 2]  # round 1's runs stay


# --------------------------------------------------------------------------- unreachable store


def test_a_room_that_is_not_there_is_refused_with_a_message(tmp_path):
    with pytest.raises(RoomStoreUnavailable, match="does not exist.*created by the instructor"):
        RoomStore(tmp_path / "no-room")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RoomStoreUnavailable, match="cannot be created"):
        RoomStore(blocker / "room", create=True)


def test_a_damaged_ledger_is_refused_with_a_message_and_nothing_is_trained(tmp_path):
    r = Room.create(tmp_path / "room", instructor="teacher", ray=False, limit=1)
    (tmp_path / "room" / "room.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(RoomStoreUnavailable, match="room.db cannot be used"):
        Room.join(tmp_path / "room", ray=False)
    with pytest.raises(RoomStoreUnavailable):
        r.train_for("ada")(tiny(2), fresh_process=False)
    assert not (tmp_path / "room" / "runs").exists()


def test_the_ledger_is_in_wal_mode_and_refuses_a_duplicate_run(room):
    db = sqlite3.connect(room.store.ledger.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    row = room.store.ledger.rows()[0]
    with pytest.raises(sqlite3.IntegrityError):
        room.store.ledger.record_start(row["run_id"], "bob", 1, "x", 0.0, 0.0, "/elsewhere")
    assert room.store.ledger.owner(row["run_id"]) == row["attendee"]

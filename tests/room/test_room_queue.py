"""The fair run queue: its rules by hand (first come first served, at most ``limit`` at once,
at most one running run per attendee, Stop while queued), then the room's load test on Ray:
twenty attendees, three tiny-preset runs each, through the panel's own run control.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter

import pytest

import workbench as wb
from workbench.room.queue import (QUEUE_NAME, FairQueue, LocalQueue, RayQueue, RoomQueue, StoppedWhileQueued,
                                  most_at_once)
from workbench.room.room import Room
from workbench.ui.events import Messages
from workbench.ui.run_control import RunControl

# --------------------------------------------------------------------------- the rules, by hand


def test_first_come_first_served_within_the_limit_and_one_run_per_attendee():
    q = FairQueue(limit=2)
    a1, _ = q.enqueue("ada")
    a2, _ = q.enqueue("ada")    # ada's second: must wait for her first
    b1, _ = q.enqueue("bob")    # bob is behind ada's second, but ada is busy: bob goes
    c1, _ = q.enqueue("cy")     # the limit (2) is reached: cy waits
    assert q.wait(a1, 0)[0] == "running" and q.wait(b1, 0)[0] == "running"
    assert q.wait(a2, 0) == ("queued", 0) and q.wait(c1, 0) == ("queued", 1)
    q.release(b1)               # a slot frees; ada still runs, so her second keeps waiting and cy goes
    assert q.wait(c1, 0)[0] == "running" and q.wait(a2, 0) == ("queued", 0)
    q.release(a1)               # now ada's second may start
    assert q.wait(a2, 0)[0] == "running"
    snap = q.snapshot()
    assert [t["attendee"] for t in snap["running"]] == ["ada", "cy"] and snap["queued"] == []


def test_a_waiting_run_is_cancelled_and_the_next_one_moves_up():
    q = FairQueue(limit=1)
    a, _ = q.enqueue("ada")
    b, _ = q.enqueue("bob")
    c, _ = q.enqueue("cy")
    assert q.wait(c, 0) == ("queued", 1)
    assert q.cancel(b) is True and q.wait(b, 0) == ("cancelled", None)
    assert q.wait(c, 0) == ("queued", 0)
    assert q.cancel(a) is False  # running: not cancelled (its run is stopped, then its turn released)


def test_stop_while_queued_ends_the_wait_and_says_how_many_were_ahead():
    queue = RoomQueue(LocalQueue(limit=1))
    stop, told = threading.Event(), []
    with queue.turn("ada"):
        def on_wait(ahead: int) -> None:
            told.append(ahead)
            stop.set()
        with pytest.raises(StoppedWhileQueued, match=r"stopped while queued \(0 ahead\): nothing was trained"):
            with queue.turn("bob", stop, on_wait):
                pytest.fail("bob's run must not start")
    assert told == [0]
    assert queue.snapshot()["queued"] == [] and queue.snapshot()["running"] == []


def test_the_panel_says_how_many_are_ahead_and_stop_while_queued_leaves_the_queue(tmp_path):
    """The panel's own run control, with the room's train: queued, told, stopped; nothing stored."""
    room = Room.create(tmp_path / "room", instructor="teacher", limit=1, ray=False)
    messages = Messages()
    said: list[str] = []
    train = room.panel_train("bob", lambda text: (said.append(text), messages.say(text)))
    control = RunControl(messages, lambda: _Chosen(wb.preset("tiny", rank=2, steps=2, threads=1)),
                         room.store.runs_dir("bob"), refresh=lambda: None, after=lambda r: None,
                         train=lambda c, **kw: train(c, fresh_process=False, **kw))
    with room.queue.turn("ada"):  # ada's run holds the only slot
        assert control.start()
        for _ in range(200):
            if said:
                break
            time.sleep(0.05)
        assert said == ["queued: 0 ahead of you (Stop leaves the queue)"]
        assert room.queued_message("bob") == said[0] and messages.message.text == said[0]
        assert [(r["attendee"], r["state"]) for r in room.who().to_dict("records")] == [("ada", "running"),
                                                                                       ("bob", "queued")]
        control.stop()
        assert control.wait(timeout=60) is None
    assert "stopped while queued (0 ahead): nothing was trained" in messages.last_error
    assert room.queued_message("bob") is None and room.who().empty
    assert room.store.runs("bob").empty and not room.store.runs_dir("bob").exists()


def test_a_turn_whose_kernel_died_is_reclaimed_and_its_run_recorded_as_failed_with_its_curve(tmp_path):
    """A kernel that dies mid-run stops renewing its lease: its slot goes to the next run, and
    its run - left 'running' at its last checkpoint - is recorded as failed with that curve."""
    import pandas as pd

    from workbench.records import store as run_store
    from workbench.records.recording import StoreSink

    room = Room(Room.create(tmp_path / "room", instructor="teacher", ray=False).store,
                RoomQueue(LocalQueue(limit=1, lease_s=0.3)))
    ticket, queued = room.queue.backend.call("enqueue", "ada")  # ada's kernel got the slot ...
    cfg = wb.preset("tiny", rank=2, steps=4)
    result = wb.RunResult(config=cfg, status="running", params=wb.ParamCounts(10, 100), memory=None, timing=None,
                          history=pd.DataFrame({"step": [1, 2], "train_loss": [0.7, 0.6]}))
    folder = room.store.runs_dir("ada")
    StoreSink(str(folder), save_at_start=True).on_start(result)  # ... and checkpointed two steps,
    room.store.sink("ada", 1, queued, queued).on_start(result)
    time.sleep(0.5)                                               # ... then died: no renewal
    other, _ = room.queue.backend.call("enqueue", "bob")
    assert room.queue.backend.call("wait", other, 0)[0] == "running"  # the slot was given on
    assert [t["state"] for t in room.queue.turns()] == ["lost", "running"]
    assert room.mark_lost() == [result.run_id]
    stored = run_store.load_run(folder / result.run_id)
    assert stored.status == "failed" and "server stopped" in stored.message
    assert stored.history["train_loss"].tolist() == [0.7, 0.6]
    assert room.store.ledger.rows()[0]["status"] == "failed" and room.mark_lost() == []


def test_a_running_turn_is_renewed_while_its_run_trains():
    queue = RoomQueue(LocalQueue(limit=1, lease_s=0.3))
    with queue.turn("ada"):
        time.sleep(0.8)  # longer than the lease: the heartbeat keeps it
        assert [t["state"] for t in queue.snapshot()["running"]] == ["running"]
    assert [t["state"] for t in queue.turns()] == ["ended"]


@pytest.mark.parametrize("limit", [0, -1, 1.5, True])
def test_a_limit_that_is_not_a_whole_number_of_runs_is_refused(limit):
    with pytest.raises(ValueError, match="whole number of runs >= 1"):
        FairQueue(limit)


def test_most_at_once_by_hand():
    assert most_at_once([]) == 0
    assert most_at_once([(0, 2), (2, 4)]) == 1          # one ends as the next starts
    assert most_at_once([(0, 3), (1, 4), (2, 5), (4, 6)]) == 3


# --------------------------------------------------------------------------- the load test, on Ray

ATTENDEES, RUNS_EACH, LIMIT = 20, 3, 2
RANKS = (1, 2, 4, 8)


class _Chosen:
    """The panel's settings as RunControl reads them: a config, no problem."""

    def __init__(self, cfg: wb.RunConfig) -> None:
        self.cfg = cfg

    def problem(self) -> None:
        return None

    def config(self) -> wb.RunConfig:
        return self.cfg


@pytest.fixture()
def local_room(tmp_path):
    """The room with its queue in this process (the same FairQueue rules the Ray actor runs)."""
    return Room.create(tmp_path / "room", instructor="teacher", limit=LIMIT, ray=False)


@pytest.fixture()
def ray_room(tmp_path):
    """The room with its queue as a named actor on a Ray head started here (every agent port
    fixed: workbench/room/ray_head.py says why), stopped after."""
    ray = pytest.importorskip("ray", reason="the room's queue runs on Ray: pip install ray")
    if ray.is_initialized():
        ray.shutdown()
    room = Room.create(tmp_path / "room", instructor="teacher", limit=LIMIT)
    print(f"\nRay head up in {room.queue.backend.head.seconds_to_start:.1f} s at {room.queue.backend.head.address}")
    yield room
    room.queue.backend.close()


def _attendee(room: Room, name: str, index: int, results: list, waits: dict) -> None:
    """One attendee at the panel: three runs, one after another, each waiting its turn."""
    seen: list[int] = []
    train = room.train_for(name, on_wait=lambda who, ahead: seen.append(ahead))
    for k in range(RUNS_EACH):
        cfg = wb.preset("tiny", rank=RANKS[(index + k) % len(RANKS)], steps=2, eval_every=2, max_train_examples=32,
                        max_eval_examples=16, threads=1, seed=index)
        control = RunControl(Messages(), lambda: _Chosen(cfg), room.store.runs_dir(name), refresh=lambda: None,
                             after=lambda r: None, train=lambda c, **kw: train(c, fresh_process=False, **kw))
        assert control.start()
        results.append(control.wait(timeout=600))
        assert control.messages.last_error is None, control.messages.last_error
    waits[name] = seen


def test_twenty_attendees_three_runs_each_all_recorded_and_the_limit_kept(local_room):
    """Through the queue in this process: the store and the rules under sixty concurrent runs."""
    _load_test(local_room, "local queue")


@pytest.mark.slow
def test_the_load_test_on_the_rooms_ray_queue(ray_room):
    """The same, with the queue as the named Ray actor every attendee's kernel shares."""
    second = RayQueue(name=QUEUE_NAME)  # a second kernel naming the queue reaches the same actor
    assert second.call("snapshot")["limit"] == LIMIT
    _load_test(ray_room, "Ray queue")


def _load_test(ray_room: Room, where: str) -> None:
    names = [f"attendee-{i:02d}" for i in range(ATTENDEES)]
    results: list = []
    seen_ahead: dict[str, list[int]] = {}
    began = time.time()
    threads = [threading.Thread(target=_attendee, args=(ray_room, n, i, results, seen_ahead)) for i, n in enumerate(names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    took = time.time() - began
    assert not any(t.is_alive() for t in threads)

    # All sixty recorded, none lost or duplicated: the runs returned, the ledger and the folders agree.
    table = ray_room.store.runs("teacher")
    ledger = ray_room.store.ledger.rows()
    ids = [r.run_id for r in results]
    assert len(results) == len(ledger) == len(table) == ATTENDEES * RUNS_EACH
    assert len(set(ids)) == len(ids) and set(ids) == {r["run_id"] for r in ledger} == set(table["run_id"])
    assert Counter(table["attendee"]) == {n: RUNS_EACH for n in names}
    assert (table["status"] == "completed").all() and table["final_loss"].notna().all()
    for name in names:  # each folder holds exactly its attendee's runs
        folders = {p.name for p in ray_room.store.runs_dir(name).iterdir()}
        assert folders == set(table.loc[table["attendee"] == name, "run_id"])

    # The limit, from the runs' own start and end times (their records); and it was reached.
    spans = [(r.environment["started"], r.environment["ended"]) for r in results]
    from datetime import datetime
    spans_s = [(datetime.fromisoformat(s).timestamp(), datetime.fromisoformat(e).timestamp()) for s, e in spans]
    assert most_at_once(spans_s) <= LIMIT
    turns = [(t["started"], t["ended"]) for t in ray_room.queue.turns()]
    assert len(turns) == ATTENDEES * RUNS_EACH and most_at_once(turns) == LIMIT
    # At most one running run per attendee: an attendee's turns never overlap.
    for name in names:
        mine = [(t["started"], t["ended"]) for t in ray_room.queue.turns() if t["attendee"] == name]
        assert most_at_once(mine) == 1

    # The figures (printed: pytest -s shows them; the README quotes a run of it).
    waits = table.groupby("attendee")["wait_s"].agg(["mean", "max"])
    run_s = table["total_seconds"]
    slot_s = took * LIMIT / len(table)  # a slot's seconds per run, queue hand-overs included
    print(f"\nroom load test ({where}): {ATTENDEES} attendees x {RUNS_EACH} tiny runs (2 steps, in the kernel's "
          f"process), limit {LIMIT} at once: {len(table)} recorded in {took:.1f} s; training time median "
          f"{run_s.median():.2f} s; {60 / slot_s:.1f} runs a minute per slot; queue wait median "
          f"{statistics.median(table['wait_s']):.1f} s, longest {table['wait_s'].max():.1f} s; "
          f"{60 / slot_s:.0f} attendees per slot keep a run's wait under a minute")
    for name, row in waits.iterrows():
        print(f"  {name}: wait mean {row['mean']:.1f} s, longest {row['max']:.1f} s; 'ahead' shown: {seen_ahead[name][:6]}")


def test_a_stopped_head_is_no_longer_rays_current_cluster(tmp_path, monkeypatch):
    """Killing a head leaves Ray's note of the current cluster behind, and a later ``ray.init()`` would
    try to join the dead head: the head's stop removes the note when it names that head, and only then."""
    from workbench.room.ray_head import _forget_as_current

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    note = tmp_path / "ray" / "ray_current_cluster"
    note.parent.mkdir()
    note.write_text("192.0.2.2:41234")
    _forget_as_current("127.0.0.1:6379")  # another head's note stays
    assert note.read_text() == "192.0.2.2:41234"
    _forget_as_current("127.0.0.1:41234")
    assert not note.exists()
    _forget_as_current("127.0.0.1:41234")  # nothing there: nothing to do

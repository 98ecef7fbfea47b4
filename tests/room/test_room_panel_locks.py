"""An exercise's locked settings in the attendee's panel (the panel's lock, fed from the room):
set to the locked values, greyed out with the reason beside them, kept after a run, and a
run through the room with them accepted; the room itself refuses a run that changes one."""

from __future__ import annotations

import pytest

import workbench as wb
from workbench.room.room import LockedSetting, Room
from workbench.ui.panel import Workbench
from workbench.ui.settings import SettingsError

REASON = "same steps and learning rate for everyone: only the rank differs"


@pytest.fixture()
def room_panel(tmp_path):
    """ada's panel in a room whose exercise locks steps and lr (as deploy/attendee.ipynb sets it up)."""
    room = Room.create(tmp_path / "room", instructor="teacher", ray=False, limit=1)
    room.store.new_exercise("teacher", "ranks", {"steps": 4, "lr": 0.002}, reason=REASON)
    panel = Workbench(model="tiny-bert", preset="tiny", runs_dir=room.store.runs_dir("ada"),
                      reports_dir=tmp_path / "reports", background=False,
                      train=lambda cfg, **kw: room.train_for("ada")(cfg, fresh_process=False, **kw))
    exercise = room.exercise()
    panel.lock(exercise.locked, exercise.reason)
    return room, panel


def test_locked_settings_are_set_greyed_out_and_say_why(room_panel):
    room, panel = room_panel
    tab = panel.train_tab
    assert (tab.steps.value, tab.lr.value) == ("4", "0.002")
    assert tab.steps.disabled and tab.lr.disabled
    assert not tab.rank.disabled and not tab.batch_size.disabled and not tab.seed.disabled
    assert tab.steps.tooltip == tab.lr.tooltip == f"locked for this exercise: {REASON}"
    assert f"locked for this exercise: lr, steps — {REASON}" in tab.locked_note.value
    cfg = panel.state.settings.config()  # the panel's settings are the locked values: the room accepts them
    assert (cfg.steps, cfg.lr) == (4, 0.002)
    room.check_locks(cfg)
    with pytest.raises(SettingsError, match=f"steps is locked for this exercise: {REASON}"):
        panel.state.settings.update(steps=6)


def test_a_run_keeps_them_locked_and_is_stored_in_the_room_with_them(room_panel):
    room, panel = room_panel
    tab = panel.train_tab
    tab.rank.value = 2
    assert panel.state.control.start()
    panel.state.control.wait(timeout=300)
    stored = room.store.runs("ada")
    assert stored[["rank", "steps", "lr", "status"]].to_dict("records") == [
        {"rank": 2, "steps": 4, "lr": 0.002, "status": "completed"}]
    assert tab.steps.disabled and tab.lr.disabled and not tab.rank.disabled  # the run's end left them off


def test_a_run_that_changes_a_locked_setting_is_refused_by_the_room_with_the_reason(room_panel):
    room, _ = room_panel
    with pytest.raises(LockedSetting, match=r"steps is locked at 4 \(asked: 6\).*Why: same steps"):
        room.train_for("ada")(wb.preset("tiny", lr=0.002), fresh_process=False)
    assert room.store.runs("teacher").empty

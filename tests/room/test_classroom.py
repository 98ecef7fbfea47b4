"""The instructor's view: the rank table's numbers against a hand computation, the figures
(points per attendee, the room's error bar, the curves), the exercises with their locks.
A room of five tiny runs by three attendees, stored through the room's train function."""

from __future__ import annotations

import statistics

import pytest

import workbench as wb
from workbench.room import classroom
from workbench.room.room import Room
from workbench.viz import style
from workbench.viz.output import save_figure

TINY = dict(steps=2, eval_every=2, max_train_examples=32, max_eval_examples=16, threads=1)


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    r = Room.create(tmp_path_factory.mktemp("class"), instructor="teacher", ray=False, limit=2)
    for who, rank, seed in (("ada", 2, 0), ("bob", 2, 1), ("cy", 2, 2), ("ada", 8, 0), ("bob", 8, 1)):
        assert r.train_for(who)(wb.preset("tiny", rank=rank, seed=seed, **TINY), fresh_process=False).status == "completed"
    return r


def test_rank_table_is_the_rooms_mean_and_spread(room):
    table = room.store.runs("teacher")
    ranks = classroom.rank_table(table)
    at2 = table[table["rank"] == 2]["eval_accuracy"].tolist()
    row = ranks.set_index("rank").loc[2]
    assert (row["runs"], row["attendees"]) == (3, 3)
    assert row["mean"] == pytest.approx(statistics.mean(at2)) and row["spread"] == pytest.approx(statistics.stdev(at2))
    assert (row["lowest"], row["highest"]) == (min(at2), max(at2))
    assert list(ranks["rank"]) == [2, 8] and ranks.set_index("rank").loc[8, "attendees"] == 2
    sentence = classroom.spread_sentence(ranks)
    widest = ranks.loc[ranks["spread"].idxmax()]
    assert f"rank {int(widest['rank'])}" in sentence and f"{widest['spread']:.3f}" in sentence


def test_score_by_rank_draws_one_colour_per_attendee_and_the_error_bar(room, tmp_path):
    table = room.store.runs("teacher")
    fig = classroom.score_by_rank(table)
    ax = fig.axes[0]
    labels = ax.get_legend().get_texts()
    assert [t.get_text() for t in labels] == ["ada", "bob", "cy", "room mean ± 1 sd"]
    points = sum(len(c.get_offsets()) for c in ax.collections if c.get_label() in ("ada", "bob", "cy"))
    assert points == 5
    assert ax.get_xscale() == "log" and [t.get_text() for t in ax.get_xticklabels()] == ["2", "8"]
    assert all(p.stat().st_size > 1000 for p in save_figure(fig, tmp_path / "score"))  # exported as the panel does


def test_loss_curves_one_line_per_run_coloured_by_attendee(room):
    table = room.store.runs("teacher")
    fig = classroom.loss_curves(room.store, table)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 5
    by_color = {line.get_color() for line in lines}
    assert len(by_color) == 3
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["ada", "bob", "cy", "rank 2", "rank 8"]


def test_the_rooms_runs_one_row_each_with_the_attendees_name(room):
    table = room.store.runs("teacher")
    runs = classroom.room_runs(table)
    assert sorted(zip(runs["attendee"], runs["rank"])) == [("ada", 2), ("ada", 8), ("bob", 2), ("bob", 8), ("cy", 2)]
    assert set(runs["run_id"]) == set(table["run_id"]) and (runs["status"] == "completed").all()
    by_id = table.set_index("run_id")
    assert all(runs["score"] == [by_id.loc[r, "eval_accuracy"] for r in runs["run_id"]])
    assert list(runs["run_id"]) == list(table.sort_values("started", ascending=False)["run_id"])  # newest first
    assert classroom.room_runs(table.iloc[:0]).empty


def test_empty_room_gives_message_figures(tmp_path):
    empty = Room.create(tmp_path / "empty", instructor="teacher", ray=False, limit=1)
    table = empty.store.runs("teacher")
    assert style.is_message_figure(classroom.score_by_rank(table))
    assert style.is_message_figure(classroom.loss_curves(empty.store, table))
    assert classroom.rank_table(table).empty


def test_a_new_exercise_keeps_the_earlier_one_and_shows_its_locks(room):
    room.store.new_exercise("teacher", "only the rank", {"steps": 2}, reason="same steps for everyone")
    ex = classroom.exercises_table(room.store)
    assert ex.to_dict("records") == [
        {"exercise": 1, "name": "exercise 1", "locked": "nothing", "reason": "", "runs": 5},
        {"exercise": 2, "name": "only the rank", "locked": "steps=2", "reason": "same steps for everyone", "runs": 0}]
    assert style.is_message_figure(classroom.score_by_rank(room.store.runs("teacher"), exercise=2))

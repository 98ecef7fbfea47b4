"""The instructor's view of the room: tables and figures of everyone's runs.

``notebooks/classroom.ipynb`` shows these, refreshed by a button; the figures are
``matplotlib.figure.Figure`` objects in the house style (``workbench.viz.style``), saved for
the workshop's slides with ``workbench.viz.output.save_figure`` as the panel's are.

* ``score_by_rank``: each run's final score (validation accuracy, or exact match for a
  language model) against its rank, one colour per attendee; with the mean and the spread
  (standard deviation) of the attendees who chose the same rank - the room's own error bar,
  wider than one person's single run could ever show;
* ``rank_table``: the same numbers as a table (per exercise and rank: runs, attendees,
  mean, spread, lowest, highest);
* ``loss_curves``: the room's training-loss curves, coloured by attendee;
* ``Room.who()`` (``workbench.room.room``): who is running and who is queued now;
* ``exercises_table``: the rounds so far, with the settings each locks and why;
* ``room_runs``: every run of the room, one row each, with its attendee's name.
"""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from workbench.records import store as run_store
from workbench.room.store import RoomStore
from workbench.viz import style

METRICS = {"classification": ("eval_accuracy", "validation accuracy"),
           "causal-lm": ("eval_exact_match", "exact match on held-out prompts")}


def metric_of(table: pd.DataFrame) -> tuple[str, str]:
    """(column, words) of the score the room's runs report: accuracy, or exact match when every run writes."""
    tasks = set(table["task"].dropna()) if "task" in table else set()
    return METRICS["causal-lm"] if tasks == {"causal-lm"} else METRICS["classification"]


def _current(table: pd.DataFrame, exercise: int | None) -> pd.DataFrame:
    chosen = table if exercise is None else table[table["exercise"] == exercise]
    return chosen[(chosen["method"] == "lora") & chosen["rank"].notna()]


def rank_table(table: pd.DataFrame, exercise: int | None = None) -> pd.DataFrame:
    """Per exercise and rank: completed LoRA runs, attendees, and their score's mean, spread, range.

    ``spread`` is the sample standard deviation across the runs at that rank (NaN for one run)."""
    column, _ = metric_of(table)
    done = _current(table, exercise)
    done = done[done["status"] == "completed"]
    cols = ["exercise", "rank", "runs", "attendees", "mean", "spread", "lowest", "highest"]
    if done.empty:
        return pd.DataFrame(columns=cols)
    grouped = done.groupby(["exercise", "rank"])
    out = pd.DataFrame({"runs": grouped.size(), "attendees": grouped["attendee"].nunique(),
                        "mean": grouped[column].mean(), "spread": grouped[column].std(ddof=1),
                        "lowest": grouped[column].min(), "highest": grouped[column].max()}).reset_index()
    out["rank"] = out["rank"].astype("int64")
    return out[cols]


def _attendee_colors(names: list[str]) -> dict[str, str]:
    palette = style.RUN_PALETTE
    return {name: palette[i % len(palette)] for i, name in enumerate(sorted(names))}


def score_by_rank(table: pd.DataFrame, exercise: int | None = None) -> Figure:
    """Each completed LoRA run's score against its rank (log scale), coloured by attendee, with
    the mean of each rank and a bar of one standard deviation across the room."""
    column, words = metric_of(table)
    done = _current(table, exercise)
    done = done[(done["status"] == "completed") & done[column].notna()]
    title = f"The room's {words} by rank" + (f" (exercise {exercise})" if exercise is not None else "")
    if done.empty:
        return style.message_figure("No completed LoRA run yet: the points appear as attendees' runs finish.", title)
    fig, ax = style.new_figure()
    colors = _attendee_colors(list(done["attendee"].unique()))
    ranks = sorted(done["rank"].astype(int).unique())
    jitter = {name: (i - (len(colors) - 1) / 2) * 0.012 for i, name in enumerate(sorted(colors))}
    for name, rows in done.groupby("attendee"):
        x = rows["rank"].astype(float) * 2 ** jitter[name]  # side by side, not on top of each other
        ax.scatter(x, rows[column], s=26, color=colors[name], label=name, alpha=0.9, zorder=3)
    per_rank = done.groupby(done["rank"].astype(int))[column]
    mean, spread = per_rank.mean(), per_rank.std(ddof=1).fillna(0.0)
    ax.errorbar(mean.index, mean.values, yerr=spread.values, fmt="_", markersize=18, color=style.STYLE["text_color"],
                capsize=4, linewidth=1.2, zorder=4, label="room mean ± 1 sd")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ranks, [str(r) for r in ranks])
    ax.minorticks_off()
    style.label_axes(ax, title, "rank r", words)
    style.legend_below(ax)
    return fig


def loss_curves(store: RoomStore, table: pd.DataFrame, exercise: int | None = None) -> Figure:
    """The room's training-loss curves, one colour per attendee (the line style marks the rank)."""
    runs = table if exercise is None else table[table["exercise"] == exercise]
    title = "The room's training loss" + (f" (exercise {exercise})" if exercise is not None else "")
    if runs.empty:
        return style.message_figure("No run yet.", title)
    fig, ax = style.new_figure()
    colors = _attendee_colors(list(runs["attendee"].unique()))
    ranks = sorted({int(r) for r in runs["rank"].dropna()})
    seen: set[str] = set()
    for row in runs.itertuples():
        history = run_store.load_run(row.path).history
        if history.empty:
            continue
        rank = None if row.rank is None or (isinstance(row.rank, float) and math.isnan(row.rank)) else int(row.rank)
        ls = style.LINESTYLES[ranks.index(rank) % len(style.LINESTYLES)] if rank in ranks else "-"
        ax.plot(history["step"], history["train_loss"], color=colors[row.attendee], linestyle=ls, linewidth=1.3,
                alpha=0.85, label=None if row.attendee in seen else row.attendee)
        seen.add(row.attendee)
    style.label_axes(ax, title, "step", "training loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = ax.get_legend_handles_labels()
    for i, r in enumerate(ranks):  # the line styles' key, after the attendees
        handles.append(Line2D([], [], color=style.STYLE["text_color"], linestyle=style.LINESTYLES[i % len(style.LINESTYLES)]))
        labels.append(f"rank {r}")
    style.legend_below(ax, handles, labels)
    return fig


def room_runs(table: pd.DataFrame) -> pd.DataFrame:
    """The room's runs, one row each, newest first: whose, which round, rank, how far it got,
    its status and score, and how long it waited in the queue (what the instructor reads
    while the room trains; a run still training shows its steps so far)."""
    column, _ = metric_of(table)
    cols = ["attendee", "exercise", "rank", "status", "steps_done", "steps", "final_loss", column, "wait_s", "run_id"]
    out = table.sort_values("started", ascending=False)[cols] if len(table) else pd.DataFrame(columns=cols)
    return out.rename(columns={column: "score", "steps_done": "steps done"}).reset_index(drop=True)


def exercises_table(store: RoomStore) -> pd.DataFrame:
    """The rounds so far: number, name, the settings it locks and why, and how many runs it has."""
    counts = pd.Series([r["exercise"] for r in store.ledger.rows()], dtype="int64").value_counts()
    rows = [{"exercise": ex.id, "name": ex.name,
             "locked": ", ".join(f"{k}={v}" for k, v in ex.locked.items()) or "nothing",
             "reason": ex.reason, "runs": int(counts.get(ex.id, 0))} for ex in store.ledger.exercises()]
    return pd.DataFrame(rows, columns=["exercise", "name", "locked", "reason", "runs"])


def spread_sentence(ranks: pd.DataFrame) -> str:
    """One sentence from ``rank_table``: where the room agreed least (formatted from the table)."""
    spread = ranks.dropna(subset=["spread"])
    if spread.empty:
        return "No rank has two completed runs yet: the spread across the room appears with the second."
    widest = spread.loc[spread["spread"].idxmax()]
    return (f"The widest spread is at rank {int(widest['rank'])}: {int(widest['runs'])} runs by "
            f"{int(widest['attendees'])} attendees, from {widest['lowest']:.3f} to {widest['highest']:.3f} "
            f"(sd {widest['spread']:.3f}).")


__all__ = ["room_runs", "rank_table", "score_by_rank", "loss_curves", "exercises_table", "metric_of", "spread_sentence"]

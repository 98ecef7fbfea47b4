"""Figures that compare runs: loss curves, trainable parameters against rank, accuracy
against parameters, and the small live curve the panel redraws while a run trains.

Each function takes a list of ``RunResult`` and returns a ``matplotlib.figure.Figure`` in
the house style (``workbench.viz.style``: built without pyplot, one palette colour per
run, a message figure when there is nothing to draw, ``TypeError`` for input of the wrong
kind).  Runs are named in legends by ``run_names``: the naming module's
``compact_labels`` (what sets each run apart; what all share is said once, under the
title) plus the verdict of a run that did not learn.  Legends sit under the axes, never
on the data, and the figures keep their width (``FIGSIZE``), so the panel shows them at
the size they were drawn.

Units: steps are optimiser steps; losses are mean cross-entropy in nats; parameters are
counts of numbers; accuracies are shown in percent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter, PercentFormatter

from workbench.engine.config import RunConfig, RunResult
from workbench.engine.labels import compact_labels, short_label
from workbench.engine.outcome import Outcome, run_outcome
from workbench.util.checks import check_positive_int
from workbench.viz.style import (
    FULL_COLOR, HEAD_COLOR, LINESTYLES, LIVE_FIGSIZE, MARKERS, RUN_PALETTE, STYLE, WARNING_COLOR, check_results,
    dodge_offsets, label_axes, legend_below, legend_options, log_count_axis, message_figure, human_count, new_figure,
    palette_cues, rank_color, run_colors, shifted, title_with_shared,
)

# Fixed margins of the live curve (fractions of the figure), sized for its title and labels.
_LIVE_MARGINS = {"left": 0.115, "right": 0.88, "bottom": 0.165, "top": 0.74}
_LIVE_LEGEND_LINE_PT = 22.0  # the title's distance above the axes: the legend's line fits under it

# --------------------------------------------------------------------------- names in legends


def run_label(result: RunResult) -> str:
    """Legend label of a run on its own: ``config.label()``, plus its verdict unless it learned."""
    return run_labels([result])[0]


def run_labels(results: Sequence[RunResult], outcomes: Sequence[Outcome] | None = None) -> list[str]:
    """Legend labels of runs shown together (``run_names`` without the shared part)."""
    return run_names(results, outcomes)[0]


def run_names(results: Sequence[RunResult], outcomes: Sequence[Outcome] | None = None) -> tuple[list[str], str]:
    """Legend labels of runs shown together, and what they all share (said once, under the title).

    ``workbench.engine.labels.compact_labels`` keeps in each label only what sets the run
    apart (rank, lr, steps, the quantized base, ...) and returns the rest once; a run
    whose verdict (``workbench.engine.outcome.run_outcome``) is not "learned" gets it in
    brackets: "[did not learn]", "[diverged]", "[stopped]".  ``outcomes``: the verdicts
    when already known (one per run), else they are computed.
    """
    results = list(results)
    outcomes = list(outcomes) if outcomes is not None else [run_outcome(r) for r in results]
    if len(outcomes) != len(results):
        raise ValueError(f"got {len(outcomes)} outcomes for {len(results)} runs")
    labels, shared = compact_labels([r.config for r in results])
    return [label if o.ok else f"{label} [{o.verdict}]" for label, o in zip(labels, outcomes)], shared


def _history_xy(history: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(step, column) where the column is finite: train rows, or only the eval rows."""
    if history is None or not len(history) or column not in history or "step" not in history:
        return np.empty(0), np.empty(0)
    x = pd.to_numeric(history["step"], errors="coerce").to_numpy(dtype=float)
    y = pd.to_numeric(history[column], errors="coerce").to_numpy(dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


# --------------------------------------------------------------------------- figures


def _coincident_styles(runs: Sequence[RunResult]) -> list[str]:
    """A line style per run: a new one each time the colours repeat (as ``palette_cues``), moved on by one
    for each earlier run whose training curve the eye cannot tell from it (``_coincide``), so coinciding
    curves (LoRA and DoRA start alike; rsLoRA and PiSSA of 02b end alike) show as solid, dashed, dotted
    lines over one another instead of the last hiding the rest."""
    curves = [_history_xy(r.history, "train_loss") for r in runs]
    finite = [y[np.isfinite(y)] for _, y in curves]
    span = float(np.ptp(np.concatenate(finite))) if any(len(y) for y in finite) else 0.0
    out = []
    for i, (x, y) in enumerate(curves):
        same = sum(1 for px, py in curves[:i] if _coincide(px, py, x, y, span))
        out.append(LINESTYLES[(i // len(RUN_PALETTE) + same) % len(LINESTYLES)])
    return out


# Two curves "coincide" where they are closer than this share of the loss axis's span (about 3 pixels
# of a 300-pixel axis: closer than a line's width and a half), over at least COINCIDE_SHARE of their steps.
COINCIDE_TOLERANCE = 0.01
COINCIDE_SHARE = 0.5


def _coincide(px: np.ndarray, py: np.ndarray, x: np.ndarray, y: np.ndarray, span: float) -> bool:
    """The two curves lie on top of each other for most of their common steps (within
    ``COINCIDE_TOLERANCE`` of the axis ``span``, on at least ``COINCIDE_SHARE`` of them)."""
    common, i, j = np.intersect1d(px, x, return_indices=True)
    if not len(common):
        return False
    close = np.abs(py[i] - y[j]) <= COINCIDE_TOLERANCE * span
    return bool(close.mean() >= COINCIDE_SHARE)


def loss_curves(results: Iterable[RunResult], eval: bool = False,  # noqa: A002
                labels: Sequence[str] | None = None) -> Figure:
    """Training loss against step, one line per run (a colour each), labelled by ``run_names`` (or ``labels``).

    The y axis is robust to one bad run: it stops at ``LOSS_AXIS_ROOM`` times the highest
    starting loss (``robust_loss_limit``), and a note names the highest loss left off the
    scale, so an lr = 10 run that climbs to 24 does not squash the other curves to a line.
    The legend sits under the axes, so it never covers a curve.

    ``eval=True`` adds the evaluation loss at the evaluation steps as markers in the run's
    colour, which shows over-fitting as train and eval losses parting ways.
    Non-finite losses (a diverged run's inf/NaN) are left out of the line.
    """
    runs = check_results(results)
    title = "Training loss"
    if not runs:
        return message_figure("no runs to show yet: train a run first", title)
    fig, ax = new_figure()
    styles = _coincident_styles(runs)
    names, shared = (list(labels), "") if labels is not None else run_names(runs)
    drawn = eval_drawn = 0
    ys_all: list[np.ndarray] = []
    for r, ls, name, color in zip(runs, styles, names, run_colors(runs)):
        x, y = _history_xy(r.history, "train_loss")
        if len(x):
            ax.plot(x, y, color=color, linestyle=ls, linewidth=STYLE["line_width"],
                    label=name)
            drawn += 1
            ys_all.append(y)
        if eval:
            ex, ey = _history_xy(r.history, "eval_loss")
            if len(ex):
                ax.plot(ex, ey, linestyle="none", marker="o", markersize=STYLE["marker_size"],
                        markerfacecolor="white", markeredgecolor=color, markeredgewidth=1.6,
                        label="_eval")  # '_' keeps it out of the legend; one entry is added below
                eval_drawn += 1
                ys_all.append(ey)
    if not drawn and not eval_drawn:
        return message_figure("the runs have no recorded losses yet", title)
    if eval_drawn:
        ax.plot([], [], linestyle="none", marker="o", markerfacecolor="white",
                markeredgecolor=STYLE["spine_color"], markersize=STYLE["marker_size"],
                label="eval loss (markers)")
    label_axes(ax, title_with_shared(title + (" (lines) and evaluation loss (markers)" if eval_drawn else ""),
                                     shared), "training step", "loss (cross-entropy, nats)")
    ax.set_xlim(left=0)
    limit = robust_loss_limit([_history_xy(r.history, "train_loss")[1] for r in runs])
    highest = max((float(y.max()) for y in ys_all if len(y)), default=0.0)
    if limit is not None and highest > limit:
        ax.set_ylim(0, limit)
        ax.text(0.99, 0.98, f"axis cut at {limit:.3g}: a loss reached {highest:.3g} (off the scale)",
                transform=ax.transAxes, ha="right", va="top", fontsize=STYLE["annotation_size"],
                color=WARNING_COLOR)
    legend_below(ax)
    return fig


# The loss axis stops at this many times the highest starting loss when a run goes above it.
LOSS_AXIS_ROOM = 1.5


def robust_loss_limit(losses: Sequence[np.ndarray]) -> float | None:
    """The top of a loss axis that one exploding run cannot squash: ``LOSS_AXIS_ROOM`` x the
    highest starting loss (a run's first finite loss), or None when there is none."""
    starts = [float(y[0]) for y in losses if len(y) and math.isfinite(float(y[0]))]
    if not starts or max(starts) <= 0:
        return None
    return LOSS_AXIS_ROOM * max(starts)


def _as_rank_table(data: Any) -> pd.DataFrame:
    """Predicted counts as a (rank, trainable) table from a DataFrame or a {rank: count} map."""
    if isinstance(data, pd.DataFrame):
        missing = {"rank", "trainable"} - set(data.columns)
        if missing:
            raise ValueError(f"predicted needs columns 'rank' and 'trainable'; missing {sorted(missing)}")
        table = data[["rank", "trainable"]].copy()
    elif isinstance(data, Mapping):
        table = pd.DataFrame({"rank": list(data.keys()), "trainable": list(data.values())})
    else:
        raise TypeError("predicted must be a DataFrame with columns rank, trainable "
                        f"or a mapping {{rank: trainable}}, not {type(data).__name__}")
    table = table.astype({"rank": float, "trainable": float})
    if (table["rank"] < 1).any() or (table["rank"] != table["rank"].round()).any():
        raise ValueError("predicted ranks must be positive integers")
    if (table["trainable"] <= 0).any():
        raise ValueError("predicted trainable counts must be positive (the y axis is logarithmic)")
    return table.sort_values("rank").reset_index(drop=True)


def _lora_group(config: RunConfig) -> str:
    """Runs that differ only in rank share a line: same targets, layers and base storage."""
    tg = config.lora.targets_text()
    layers = "" if config.lora.layers is None else f", layers {','.join(map(str, config.lora.layers))}"
    base = f", {config.quantize} base" if config.quantize else ""
    return f"{'Q' if config.quantize else ''}LoRA ({tg}{layers}{base})"


def params_vs_rank(
    results: Iterable[RunResult] | None = (),
    *,
    predicted: pd.DataFrame | Mapping[int, int] | None = None,
    full_total: int | None = None,
    head_total: int | None = None,
    predicted_label: str = "predicted: r · Σ(in + out) + head",
) -> Figure:
    """Trainable parameters (log y) against LoRA rank (log2 x), with the baselines as lines.

    A LoRA layer trains ``r * (in + out)`` numbers, so the LoRA count grows linearly in r
    (a straight line of slope 1 on log-log axes, above the fixed head) while full
    fine-tuning trains everything: the gap between the two is LoRA's saving.

    * ``results``: LoRA runs become measured points (each in its run's palette colour,
      ``run_colors``), one line per target set and base storage; a "full" run and a
      "head" run give the two horizontal reference lines.  Lines whose points coincide
      (QLoRA trains as many numbers as LoRA at the same rank) are drawn a few points apart
      and say so in the legend.
    * ``predicted``: counts computed before any run, as a DataFrame with columns
      ``rank, trainable`` or a ``{rank: trainable}`` mapping; drawn dashed.  With
      ``results=()`` this is the picture the panel shows before training.
    * ``full_total`` / ``head_total``: the reference lines' values; when given they are
      used instead of a full/head run's ``params.trainable`` (what you pass is what you see).
    """
    runs = check_results(results)
    title = "Trainable parameters against LoRA rank"
    pred = _as_rank_table(predicted) if predicted is not None else None
    for name, value in (("full_total", full_total), ("head_total", head_total)):
        if value is not None:
            check_positive_int(name, value, what="a count of parameters")

    colors = dict(zip((id(r) for r in runs), run_colors(runs)))
    lora = [r for r in runs if r.config.method == "lora" and r.params is not None]
    full = next((r for r in runs if r.config.method == "full" and r.params is not None), None)
    head = next((r for r in runs if r.config.method == "head" and r.params is not None), None)
    full_value = full_total if full_total is not None else (full.params.trainable if full else None)
    head_value = head_total if head_total is not None else (head.params.trainable if head else None)

    if not lora and (pred is None or not len(pred)):
        return message_figure("no LoRA runs to show: train a LoRA run, "
                               "or pass predicted counts", title)

    fig, ax = new_figure()
    ranks_shown: set[int] = set()
    if pred is not None and len(pred):
        ax.plot(pred["rank"], pred["trainable"], color=STYLE["spine_color"], linestyle="--",
                linewidth=1.3, marker="o", markersize=4, markerfacecolor="white",
                label=predicted_label)
        ranks_shown.update(int(v) for v in pred["rank"])

    groups: dict[str, list[RunResult]] = {}
    for r in lora:
        groups.setdefault(_lora_group(r.config), []).append(r)
    markers = iter(MARKERS * 4)
    # Groups drawn on the same points (same ranks and counts) are spread sideways.
    points = {name: sorted((r.config.lora.rank, r.params.trainable) for r in members)
              for name, members in groups.items()}
    names = list(groups)
    shifts = dict(zip(names, dodge_offsets([(i, 0.0) for i in range(len(names))],
                                           lambda a, b: points[names[int(a[0])]] == points[names[int(b[0])]])))
    for name, members in groups.items():
        members = sorted(members, key=lambda r: r.config.lora.rank)
        ranks = [r.config.lora.rank for r in members]
        counts = [r.params.trainable for r in members]
        marker = next(markers)
        moved = shifts[name] != 0
        where = shifted(ax, shifts[name])
        # The line joins the group; each point has its run's colour.
        ax.plot(ranks, counts, color="#333333", linewidth=1.2, marker=marker, transform=where,
                markersize=STYLE["marker_size"], markerfacecolor="white",
                markeredgecolor="#333333", zorder=2,
                label=f"{name}, measured" + (" (drawn apart: same counts as another line)" if moved else ""))
        # Runs of one line at one rank (a run repeated, another lr) are spread sideways too.
        inner = dodge_offsets(list(zip(ranks, counts)), lambda a, b: a == b)
        for r, rank, count, dx in zip(members, ranks, counts, inner):
            dot = ax.scatter([rank], [count], c=[colors[id(r)]], marker=marker, s=STYLE["marker_size"] ** 2,
                             edgecolors="#333333", linewidths=0.8, zorder=3)
            dot.set_offset_transform(shifted(ax, shifts[name] + dx))
        ranks_shown.update(ranks)

    if full_value is not None:
        ax.axhline(full_value, color=FULL_COLOR, linewidth=STYLE["line_width"],
                   label=f"full fine-tuning ({human_count(full_value)})")
    if head_value is not None:
        ax.axhline(head_value, color=HEAD_COLOR, linewidth=STYLE["line_width"], linestyle="-.",
                   label=f"head only ({human_count(head_value)})")

    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    lo, hi = min(ranks_shown), max(ranks_shown)
    powers = {2**k for k in range(int(math.log2(lo)), int(math.log2(hi)) + 1) if lo <= 2**k <= hi}
    ticks = sorted(ranks_shown | powers)  # every power of two, plus odd ranks that were run
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(ticks[0] / 1.5, ticks[-1] * 1.5)
    log_count_axis(ax.yaxis)
    label_axes(ax, title, "LoRA rank r (log₂ scale)", "trainable parameters (count, log scale)")
    # Below the axes: the reference lines span the whole width, so no corner inside is free.
    legend_below(ax)
    return fig

#: Share of the accuracy axis's height kept free above the highest point for its label
#: (a label is about 17 pt tall with its offset; the axes is about 230 pt high).
ACCURACY_LABEL_ROOM = 0.12


class _TicksUpTo(MaxNLocator):
    """``MaxNLocator`` without ticks above ``most``: the accuracy axis runs past 100 % to make
    room for the labels, but a tick reading 105 % would be nonsense."""

    def __init__(self, most: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.most = most

    def tick_values(self, vmin: float, vmax: float) -> np.ndarray:
        ticks = super().tick_values(vmin, vmax)
        return ticks[ticks <= self.most + 1e-9]


def accuracy_vs_params(results: Iterable[RunResult]) -> Figure:
    """Final validation accuracy against trainable parameters (log x), one labelled point per run.

    The question this answers: how much accuracy does each order of magnitude of trainable
    parameters buy?  A run's accuracy is its last recorded ``eval_accuracy``; runs never
    evaluated are left out.

    Each point's label ("r=8", "full", "head") sits just above it, so the labels of a
    sweep whose runs all reach 100 % must fit inside the axes: the y axis runs to
    ``ACCURACY_LABEL_ROOM`` of its height above the highest point, and its ticks stop at
    100 %.  A label outside the axes would run into the title.

    Runs of a language model (task "causal-lm") are scored by their exact match on
    held-out prompts (``eval_exact_match``: the answer people read), not by next-token
    accuracy; when every run shown is one, the axis and title say "exact match".
    """
    runs = check_results(results)
    generative = bool(runs) and all(r.config.task == "causal-lm" for r in runs)

    def score(r: RunResult) -> float:
        return r.eval_exact_match if r.config.task == "causal-lm" else r.eval_accuracy

    what = "exact match" if generative else "validation accuracy"
    title = f"{what[0].upper() + what[1:]} against trainable parameters"
    colors = dict(zip((id(r) for r in runs), run_colors(runs)))  # before any run is left out
    all_names, shared = run_names(runs)
    names = dict(zip((id(r) for r in runs), all_names))
    runs = [r for r in runs if r.params is not None and math.isfinite(score(r))]
    if not runs:
        return message_figure(("no evaluated runs to show: a run needs an evaluation to have "
                               + ("an exact match" if generative else "an accuracy")), title)
    fig, ax = new_figure()
    ax.set_xscale("log")
    log_count_axis(ax.xaxis)
    xs = [float(r.params.trainable) for r in runs]
    ax.set_xlim(min(xs) / 4.0, max(xs) * 2.0)  # room for the labels beside the points
    ys = [score(r) for r in runs]
    # At least 5 points of accuracy below the lowest run, so one run (or runs all at 100 %)
    # still gets several distinct whole-percent ticks.
    pad = max(0.05, 0.15 * (max(ys) - min(ys)))
    low = max(0.0, min(ys) - pad)
    span = max(max(ys) - low, pad)  # not zero when every run scored 0
    # The highest point at (1 - room) of the axis height:  top = low + (1 - room) * (high - low).
    high = low + span / (1.0 - ACCURACY_LABEL_ROOM)
    ax.set_ylim(low, high)
    # Runs at the same place (equal parameter counts and scores: QLoRA beside LoRA at one
    # rank, a run repeated) are spread sideways, and their point label is written once.
    x_span = math.log10(max(xs) * 2.0) - math.log10(min(xs) / 4.0)

    def close(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return abs(math.log10(a[0] / b[0])) < 0.035 * x_span and abs(a[1] - b[1]) < 0.03 * (high - low)

    points = [(float(r.params.trainable), score(r)) for r in runs]
    shifts = dodge_offsets(points, close)
    groups: dict[int, list[int]] = {}  # the first point of each place -> the points there
    for i, p in enumerate(points):  # as dodge_offsets groups them
        groups.setdefault(next((j for j in groups if close(points[j], p)), i), []).append(i)
    markers = palette_cues(len(colors), MARKERS)
    order = {rid: k for k, rid in enumerate(colors)}
    for i, r in enumerate(runs):
        xv, yv = points[i]
        dot = ax.scatter([xv], [yv], color=colors[id(r)], marker=markers[order[id(r)]],
                         s=(STYLE["marker_size"] + 1.5) ** 2, edgecolors="#333333", linewidths=0.8,
                         zorder=3, label=names[id(r)])
        dot.set_offset_transform(shifted(ax, shifts[i]))
    for first, members in groups.items():
        shorts = list(dict.fromkeys(short_label(runs[i].config) for i in members))
        text = " / ".join(shorts) + (f" (×{len(members)})" if len(members) > 1 else "")
        # Centred above the point: a sweep's ranks lie a factor 2 apart on the log axis,
        # about 24 pt at this size, which a label such as "r=16" fits into.
        ax.annotate(text, points[first], xytext=(0, 7 + 2 * (len(members) > 1)), textcoords="offset points",
                    ha="center", va="bottom", fontsize=STYLE["annotation_size"], color=STYLE["text_color"])
    ax.yaxis.set_major_locator(_TicksUpTo(1.0, nbins="auto", steps=[1, 2, 5, 10]))
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    ylabel = ("exact match on held-out prompts (%)" if generative else
              "validation accuracy (%)" if not any(r.config.task == "causal-lm" for r in runs)
              else "accuracy / exact match (%)")
    label_axes(ax, title_with_shared(title, shared), "trainable parameters (count, log scale)", ylabel)
    legend_below(ax)  # under the axes: never on a point or its label
    return fig


def live_loss(
    history: pd.DataFrame,
    title: str = "Training loss",
    *,
    total_steps: int | None = None,
    color: str | None = None,
) -> Figure:
    """The small curve the notebook panel redraws while a run trains (cheap: one axes, two with exact match).

    ``total_steps`` fixes the x axis to the whole run so the curve grows from left to
    right instead of the axis rescaling at every redraw.  Evaluation losses, once there
    are any, appear as hollow markers; a language model's exact match at each evaluation
    (``eval_exact_match``, the score its answers get) as squares on a right-hand axis in
    percent.  The legend has its own line above the axes, under the title, so it covers
    no step, no marker and no part of the title.  An empty history gives a "waiting" placeholder.
    """
    if not isinstance(history, pd.DataFrame):
        raise TypeError(f"history must be a pandas DataFrame, got {type(history).__name__}")
    x, y = _history_xy(history, "train_loss")
    ex, ey = _history_xy(history, "eval_loss")
    if not len(x) and not len(ex):
        return message_figure("waiting for the first training step …", title, LIVE_FIGSIZE[0])
    color = color or rank_color(8)
    fig, ax = new_figure(LIVE_FIGSIZE, _LIVE_MARGINS)
    if len(x):  # a single step is a point (a line through one point draws nothing)
        ax.plot(x, y, color=color, linewidth=STYLE["line_width"], label="train loss",
                marker="o" if len(x) == 1 else None, markersize=STYLE["marker_size"])
    if len(ex):
        ax.plot(ex, ey, linestyle="none", marker="o", markersize=STYLE["marker_size"],
                markerfacecolor="white", markeredgecolor=color, markeredgewidth=1.6,
                label="eval loss")
    if total_steps is not None:
        check_positive_int("total_steps", total_steps)
        ax.set_xlim(0, total_steps)
    else:
        ax.set_xlim(left=0)
    label_axes(ax, title, "training step", "loss (nats)", title_pad=_LIVE_LEGEND_LINE_PT)  # the legend's line under it
    limit = robust_loss_limit([y])
    if limit is not None and len(y) and float(y.max()) > limit:
        ax.set_ylim(0, limit)
        ax.text(0.99, 0.98, f"axis cut at {limit:.3g}; loss now {float(y[-1]):.3g}", transform=ax.transAxes,
                ha="right", va="top", fontsize=STYLE["annotation_size"], color=WARNING_COLOR)
    handles, labels = ax.get_legend_handles_labels()
    mx, my = _history_xy(history, "eval_exact_match")
    if len(mx):
        right = ax.twinx()
        right.plot(mx, my, linestyle=":", marker="s", color=EXACT_MATCH_COLOR, markersize=STYLE["marker_size"] - 1,
                   label="exact match (right)")
        right.set_ylim(-0.03, 1.03)
        right.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
        right.tick_params(labelsize=STYLE["tick_size"], colors=EXACT_MATCH_COLOR)
        right.spines["top"].set_visible(False)
        right.set_ylabel("exact match", fontsize=STYLE["label_size"], color=EXACT_MATCH_COLOR)
        more_handles, more_labels = right.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    if handles:  # its own line above the axes, under the title (beside it, a long title ran into it)
        opts = legend_options()
        opts.update(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=len(handles), frameon=False,
                    borderaxespad=0.1, handlelength=1.6, columnspacing=1.0)
        ax.legend(handles, labels, **opts)
    return fig


#: The live curve's exact match (a language model's score at each evaluation).
EXACT_MATCH_COLOR = "#6a3d9a"

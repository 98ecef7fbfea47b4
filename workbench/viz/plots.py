"""Report-ready figures that compare runs: loss curves, parameter counts, memory, accuracy.

Every function returns a ``matplotlib.figure.Figure`` built directly, never through
``pyplot``: pyplot keeps a global list of open figures (a notebook that redraws a live
curve every few steps would leak them) and its style lives in the global ``rcParams``,
which a library must not change behind its caller's back.  The house style is
therefore applied by hand to each figure and axes from the module constants below.

Colours carry meaning and stay the same in every figure:

* a LoRA run is coloured by its rank along a sequential colormap (``viridis``), with
  the colour fixed by ``log2(rank)`` on a 1..256 scale, so "r=8" has the same colour
  whichever other runs share the figure;
* full fine-tuning and head-only training are fixed reference colours (red, grey);
* several runs with the same colour (say two r=8 runs with different targets) are told
  apart by line style or marker shape.

Empty input never crashes: a function with nothing to draw returns a small figure that
says so ("no runs to show ...").  ``is_message_figure(fig)`` tells such a figure apart,
so the notebook panel can show the text or skip the picture as it prefers.  Input of
the wrong kind (not a list of ``RunResult``) raises ``TypeError``.

Units: steps are optimiser steps; losses are mean cross-entropy in nats; memory is in
decimal megabytes (1 MB = 10^6 bytes); parameters are counts of numbers.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.patches import Rectangle
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter, PercentFormatter

from workbench.engine.config import RunConfig, RunResult
from workbench.util.checks import check_positive_int
from workbench.util.fileio import atomic_write
from workbench.util.units import GB, MB, format_bytes, format_count

# --------------------------------------------------------------------------- style

#: Figure size in inches: 7 x 4.2 in is 1050 x 630 px at 150 dpi, a page-width figure.
FIGSIZE: tuple[float, float] = (7.0, 4.2)
#: The live curve in the notebook panel is smaller and redrawn often.
LIVE_FIGSIZE: tuple[float, float] = (6.0, 3.2)
#: Resolution for PNG files written by ``save_figure``.
SAVE_DPI = 150

#: The house style, applied per figure and per axes (never through rcParams).
STYLE: dict[str, Any] = {
    "title_size": 12.5,
    "label_size": 10.5,
    "tick_size": 9.0,
    "legend_size": 9.0,
    "annotation_size": 8.5,
    "line_width": 1.8,
    "marker_size": 6.5,
    "grid_color": "#d9d9d9",
    "grid_width": 0.6,
    "spine_color": "#555555",
    "text_color": "#222222",
    "face_color": "white",
}

#: LoRA ranks are placed on this colormap by log2(rank) between these two ranks.
LORA_CMAP = "viridis"
LORA_RANK_RANGE: tuple[int, int] = (1, 256)
#: The part of the colormap used: its bright yellow end is too pale on white.
LORA_CMAP_SPAN: tuple[float, float] = (0.05, 0.82)
#: Reference colours for the two non-LoRA methods.
FULL_COLOR = "#c0392b"  # red: the expensive baseline
HEAD_COLOR = "#7f7f7f"  # grey: the cheapest baseline

#: Memory components, in stacking order from the bottom, with their colours.
MEMORY_COMPONENTS: tuple[tuple[str, str, str], ...] = (
    # (attribute on MemoryBreakdown, legend label, colour)
    ("weights", "weights", "#4c72b0"),
    ("gradients", "gradients", "#dd8452"),
    ("optimizer", "optimizer state", "#55a868"),
    ("activations", "activations", "#8172b3"),
)
#: A measured peak above this multiple of the tallest stack is drawn off the scale.
PEAK_OFF_SCALE = 2.0
#: The weights of a quantized base (QLoRA: NF4 or int8 codes plus their constants) are
#: drawn in the weights colour with this hatch, so a QLoRA bar reads as one beside LoRA's.
QUANTIZED_HATCH = "////"
QUANTIZED_WEIGHTS_LABEL = "weights, quantized base (codes + constants)"

_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P")
_MESSAGE_LABEL = "workbench:message"
# Fixed margins of the live curve (fractions of the figure), sized for its title and labels.
_LIVE_MARGINS = {"left": 0.115, "right": 0.975, "bottom": 0.165, "top": 0.885}

# --------------------------------------------------------------------------- colours


def rank_color(rank: int) -> str:
    """The colour of a LoRA run of this rank (hex), the same in every figure.

    position = span_lo + (span_hi - span_lo) * (log2 r - log2 r_min) / (log2 r_max - log2 r_min),
    clipped to the span, so doubling the rank always moves the colour by the same step.
    """
    check_positive_int("rank", rank, what="a LoRA rank")
    lo, hi = (math.log2(r) for r in LORA_RANK_RANGE)
    t = (min(max(math.log2(rank), lo), hi) - lo) / (hi - lo)
    span_lo, span_hi = LORA_CMAP_SPAN
    rgba = matplotlib.colormaps[LORA_CMAP](span_lo + (span_hi - span_lo) * t)
    return to_hex(rgba)


def run_color(config: RunConfig) -> str:
    """The colour of a run in every figure: by rank for LoRA, fixed for full and head."""
    if config.method == "lora":
        return rank_color(config.lora.rank)
    if config.method == "full":
        return FULL_COLOR
    if config.method == "head":
        return HEAD_COLOR
    raise ValueError(f"unknown method {config.method!r}; expected 'lora', 'full' or 'head'")


def _color_key(config: RunConfig) -> tuple[str, int]:
    """Runs with the same key share a colour and need another visual cue."""
    return (config.method, config.lora.rank if config.method == "lora" else 0)


def _cues(results: Sequence[RunResult], cues: Sequence[str]) -> list[str]:
    """A line style (or marker) per run: the n-th run with a given colour gets cues[n]."""
    seen: dict[tuple[str, int], int] = {}
    out = []
    for r in results:
        key = _color_key(r.config)
        n = seen.get(key, 0)
        seen[key] = n + 1
        out.append(cues[n % len(cues)])
    return out


def run_label(result: RunResult) -> str:
    """Legend label of a run on its own: ``config.label()``, plus its verdict unless it learned."""
    return run_labels([result])[0]


def run_labels(results: Sequence[RunResult], outcomes: Sequence[Any] | None = None) -> list[str]:
    """Legend labels of runs shown together: each names what sets it apart, and flags a run that did not learn.

    ``workbench.engine.labels.distinct_labels`` gives ``label()`` plus every setting that
    differs among the runs (lr, steps, alpha, seed, ...); a run whose verdict
    (``workbench.engine.outcome.run_outcome``) is not "learned" gets it in brackets:
    "[did not learn]", "[diverged]", "[stopped]".  ``outcomes``: the verdicts when already
    known (one per run), else they are computed.
    """
    from workbench.engine.labels import distinct_labels
    from workbench.engine.outcome import run_outcome

    results = list(results)
    outcomes = list(outcomes) if outcomes is not None else [run_outcome(r) for r in results]
    if len(outcomes) != len(results):
        raise ValueError(f"got {len(outcomes)} outcomes for {len(results)} runs")
    labels = distinct_labels([r.config for r in results])
    return [label if o.ok else f"{label} [{o.verdict}]" for label, o in zip(labels, outcomes)]


def _short_label(config: RunConfig) -> str:
    """A label short enough to sit next to a point: 'r=8', 'full', 'head' (or the name)."""
    if config.name:
        return config.name
    return {"full": "full", "head": "head"}.get(config.method, f"r={config.lora.rank}")


# --------------------------------------------------------------------------- helpers


def _check_results(results: Iterable[RunResult] | None) -> list[RunResult]:
    """Turn the argument into a list of RunResult, or say clearly what was wrong."""
    if results is None:
        return []
    if isinstance(results, RunResult):
        raise TypeError("pass a list of RunResult, not a single RunResult (wrap it: [result])")
    if isinstance(results, (str, bytes, pd.DataFrame, Mapping)):
        raise TypeError(f"expected a list of RunResult, got {type(results).__name__}")
    out = list(results)
    for i, r in enumerate(out):
        if not isinstance(r, RunResult):
            raise TypeError(f"results[{i}] is a {type(r).__name__}; every item must be a RunResult")
    return out


def _new_figure(figsize: tuple[float, float] = FIGSIZE, margins: dict[str, float] | None = None
                ) -> tuple[Figure, Axes]:
    """A figure with one axes in the house style.

    Constrained layout keeps long labels and outside legends inside the picture; a figure
    redrawn often (the live curve) passes fixed ``margins`` instead, which is cheaper.
    """
    fig = Figure(figsize=figsize, layout=None if margins else "constrained",
                 facecolor=STYLE["face_color"])
    if margins:
        fig.subplots_adjust(**margins)
    ax = fig.add_subplot()
    style_axes(ax)
    return fig, ax


def style_axes(ax: Axes, grid_axis: str = "both") -> None:
    """The house style on one axes (also used by the planner's and the planted-rank figures):
    background, a light major grid (``grid_axis``: "both", "x" or "y"), no top or right spine."""
    ax.set_facecolor(STYLE["face_color"])
    ax.grid(True, which="major", axis=grid_axis, color=STYLE["grid_color"], linewidth=STYLE["grid_width"])
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color(STYLE["spine_color"])
    ax.tick_params(labelsize=STYLE["tick_size"], colors=STYLE["text_color"])


def label_axes(ax: Axes, title: str, xlabel: str, ylabel: str) -> None:
    """Title (left-aligned) and axis labels in the house style."""
    ax.set_title(title, fontsize=STYLE["title_size"], color=STYLE["text_color"], loc="left")
    ax.set_xlabel(xlabel, fontsize=STYLE["label_size"], color=STYLE["text_color"])
    ax.set_ylabel(ylabel, fontsize=STYLE["label_size"], color=STYLE["text_color"])


def _legend(ax: Axes, **kwargs: Any) -> None:
    """Legend inside the axes for a few entries, outside on the right for many."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    opts: dict[str, Any] = {"fontsize": STYLE["legend_size"], "framealpha": 0.9,
                            "edgecolor": STYLE["grid_color"]}
    if len(handles) > 7:  # too many to sit inside: outside on the right, whatever was asked
        _legend_outside(ax, labels, opts)
    else:
        opts.update(kwargs)
    ax.legend(**opts)


def _legend_outside(ax: Axes, labels: Sequence[str], opts: dict[str, Any]) -> None:
    """Place the legend right of the axes and widen the figure by about its width,
    so the plot keeps its size (about 0.075 in per character at the legend font size)."""
    opts.update(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig = ax.get_figure()
    w, h = fig.get_size_inches()
    extra = 0.8 + 0.075 * STYLE["legend_size"] / 9.0 * max(len(s) for s in labels)
    fig.set_size_inches(w + extra, h)


def _message_figure(text: str, title: str, width: float = FIGSIZE[0]) -> Figure:
    """A short figure that only says why there is nothing to draw (the panel shows it as is)."""
    fig = Figure(figsize=(width, 1.8), layout="constrained", facecolor=STYLE["face_color"])
    fig.set_label(_MESSAGE_LABEL)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title, fontsize=STYLE["title_size"], color=STYLE["text_color"], loc="left")
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes,
            fontsize=STYLE["label_size"] + 1, color="#666666", wrap=True)
    return fig


def is_message_figure(fig: Figure) -> bool:
    """True for the placeholder a plot function returns when it had nothing to draw."""
    return fig.get_label() == _MESSAGE_LABEL


def human_count(x: float, _pos: Any = None) -> str:
    """A parameter count for people (``format_count``), as a matplotlib tick formatter."""
    return format_count(x)


def _log_count_axis(axis: Any) -> None:
    """Decade ticks written as 10k, 100k, 1M instead of 10^4 ..., minor ticks unlabelled."""
    axis.set_major_formatter(FuncFormatter(human_count))
    axis.set_minor_formatter(NullFormatter())


def _fmt_mb(mb: float) -> str:
    """A bar's note: ``format_bytes`` with about three significant digits (0.05 MB, 4.2 MB, 134 MB, 1.65 GB)."""
    n = mb * MB
    if n >= GB:
        digits = 2 if n < 10 * GB else 1
    else:
        digits = 0 if mb >= 10 else 1 if mb >= 0.1 else 2
    return format_bytes(n, digits=digits)


def _history_xy(history: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(step, column) where the column is finite: train rows, or only the eval rows."""
    if history is None or not len(history) or column not in history or "step" not in history:
        return np.empty(0), np.empty(0)
    x = pd.to_numeric(history["step"], errors="coerce").to_numpy(dtype=float)
    y = pd.to_numeric(history[column], errors="coerce").to_numpy(dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


# --------------------------------------------------------------------------- figures


def loss_curves(results: Iterable[RunResult], eval: bool = False,  # noqa: A002
                labels: Sequence[str] | None = None) -> Figure:
    """Training loss against step, one line per run, labelled by ``run_labels`` (or ``labels``).

    The y axis is robust to one bad run: it stops at ``LOSS_AXIS_ROOM`` times the highest
    starting loss (``robust_loss_limit``), and a note names the highest loss left off the
    scale, so an lr = 10 run that climbs to 24 does not squash the other curves to a line.
    The legend sits outside the axes, so it never covers a curve.

    ``eval=True`` adds the evaluation loss at the evaluation steps as markers in the run's
    colour, which shows over-fitting as train and eval losses parting ways.
    Non-finite losses (a diverged run's inf/NaN) are left out of the line.
    """
    runs = _check_results(results)
    title = "Training loss"
    if not runs:
        return _message_figure("no runs to show yet: train a run first", title)
    fig, ax = _new_figure()
    styles = _cues(runs, _LINESTYLES)
    names = list(labels) if labels is not None else run_labels(runs)
    drawn = eval_drawn = 0
    ys_all: list[np.ndarray] = []
    for r, ls, name in zip(runs, styles, names):
        color = run_color(r.config)
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
        return _message_figure("the runs have no recorded losses yet", title)
    if eval_drawn:
        ax.plot([], [], linestyle="none", marker="o", markerfacecolor="white",
                markeredgecolor=STYLE["spine_color"], markersize=STYLE["marker_size"],
                label="eval loss (markers)")
    label_axes(ax, title + (" (lines) and evaluation loss (markers)" if eval_drawn else ""),
            "training step", "loss (cross-entropy, nats)")
    ax.set_xlim(left=0)
    limit = robust_loss_limit([_history_xy(r.history, "train_loss")[1] for r in runs])
    highest = max((float(y.max()) for y in ys_all if len(y)), default=0.0)
    if limit is not None and highest > limit:
        ax.set_ylim(0, limit)
        ax.text(0.99, 0.98, f"axis cut at {limit:.3g}: a loss reached {highest:.3g} (off the scale)",
                transform=ax.transAxes, ha="right", va="top", fontsize=STYLE["annotation_size"],
                color="#a4161a")
    handles, legend_labels = ax.get_legend_handles_labels()
    opts: dict[str, Any] = {"fontsize": STYLE["legend_size"], "framealpha": 0.9, "edgecolor": STYLE["grid_color"]}
    _legend_outside(ax, legend_labels, opts)
    ax.legend(**opts)
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
    """Runs that differ only in rank share a line: same targets, layers."""
    tg = config.lora.targets if isinstance(config.lora.targets, str) else ",".join(config.lora.targets)
    layers = "" if config.lora.layers is None else f", layers {','.join(map(str, config.lora.layers))}"
    return f"LoRA ({tg}{layers})"


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

    * ``results``: LoRA runs become measured points, one line per target set; a "full"
      run and a "head" run give the two horizontal reference lines.
    * ``predicted``: counts computed before any run, as a DataFrame with columns
      ``rank, trainable`` or a ``{rank: trainable}`` mapping; drawn dashed.  With
      ``results=()`` this is the picture the panel shows before training.
    * ``full_total`` / ``head_total``: the reference lines' values; when given they are
      used instead of a full/head run's ``params.trainable`` (what you pass is what you see).
    """
    runs = _check_results(results)
    title = "Trainable parameters against LoRA rank"
    pred = _as_rank_table(predicted) if predicted is not None else None
    for name, value in (("full_total", full_total), ("head_total", head_total)):
        if value is not None:
            check_positive_int(name, value, what="a count of parameters")

    lora = [r for r in runs if r.config.method == "lora" and r.params is not None]
    full = next((r for r in runs if r.config.method == "full" and r.params is not None), None)
    head = next((r for r in runs if r.config.method == "head" and r.params is not None), None)
    full_value = full_total if full_total is not None else (full.params.trainable if full else None)
    head_value = head_total if head_total is not None else (head.params.trainable if head else None)

    if not lora and (pred is None or not len(pred)):
        return _message_figure("no LoRA runs to show: train a LoRA run, "
                               "or pass predicted counts", title)

    fig, ax = _new_figure((FIGSIZE[0], FIGSIZE[1] + 0.6))
    ranks_shown: set[int] = set()
    if pred is not None and len(pred):
        ax.plot(pred["rank"], pred["trainable"], color=STYLE["spine_color"], linestyle="--",
                linewidth=1.3, marker="o", markersize=4, markerfacecolor="white",
                label=predicted_label)
        ranks_shown.update(int(v) for v in pred["rank"])

    groups: dict[str, list[RunResult]] = {}
    for r in lora:
        groups.setdefault(_lora_group(r.config), []).append(r)
    markers = iter(_MARKERS * 4)
    for name, members in groups.items():
        members = sorted(members, key=lambda r: r.config.lora.rank)
        ranks = [r.config.lora.rank for r in members]
        counts = [r.params.trainable for r in members]
        marker = next(markers)
        # The line joins the group; each point keeps its rank colour.
        ax.plot(ranks, counts, color="#333333", linewidth=1.2, marker=marker,
                markersize=STYLE["marker_size"], markerfacecolor=rank_color(8),
                markeredgecolor="#333333", zorder=2, label=f"{name}, measured")
        ax.scatter(ranks, counts, c=[rank_color(k) for k in ranks], marker=marker,
                   s=STYLE["marker_size"] ** 2, edgecolors="#333333", linewidths=0.8, zorder=3)
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
    _log_count_axis(ax.yaxis)
    label_axes(ax, title, "LoRA rank r (log₂ scale)", "trainable parameters (count, log scale)")
    # Below the axes: the reference lines span the whole width, so no corner inside is free.
    _legend(ax, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2, frameon=False)
    return fig


def memory_breakdown(results: Iterable[RunResult]) -> Figure:
    """Stacked bars per run: weights, gradients, optimizer state, activations, in MB.

    Training memory is roughly  weights + gradients + optimizer state + activations;
    LoRA's saving is in the middle two, which scale with the *trainable* parameters
    (AdamW keeps two numbers per trainable parameter).  A measured peak, when the run
    has one, is drawn as a dashed black line across its bar; a peak more than
    ``PEAK_OFF_SCALE`` times the tallest stack (a CPU process's resident memory) is a
    triangle on the top edge instead, its value in the bar's note.  Runs without a
    memory breakdown are left out.  1 MB = 10^6 bytes.
    """
    runs = [r for r in _check_results(results) if r.memory is not None]
    title = "Training memory by component"
    if not runs:
        return _message_figure("no runs with a memory breakdown to show", title)
    # About 1.1 in per bar so two-line labels fit, within page-friendly bounds.
    fig, ax = _new_figure((min(10.5, max(5.0, 1.1 * len(runs) + 0.8)), FIGSIZE[1]))
    x = np.arange(len(runs), dtype=float)
    width = 0.62
    bottoms = np.zeros(len(runs))
    for attr, label, color in MEMORY_COMPONENTS:
        heights = np.array([float(getattr(r.memory, attr)) / MB for r in runs])
        bars = ax.bar(x, heights, width, bottom=bottoms, color=color, label=label,
                      edgecolor="white", linewidth=0.6)
        if attr == "weights":
            _hatch_quantized(ax, bars, runs, color)
        bottoms = bottoms + heights
    stack_max = max(float(bottoms.max()), 1e-9)
    tops = bottoms.copy()  # where each bar's note goes: above its stack or its drawn peak

    # A peak far above the stacks (on CPU it is the whole process's resident memory,
    # Python and libraries included) would squash the bars; such peaks are shown as a
    # triangle on the top edge and written in the note instead of setting the scale.
    on_scale: dict[str, list[tuple[float, float]]] = {}
    off_scale: dict[str, list[float]] = {}
    peaks_mb: list[float | None] = []
    for i, r in enumerate(runs):
        peak = getattr(r.memory, "peak", None)
        peaks_mb.append(None if peak is None else float(peak) / MB)
        if peak is None:
            continue
        kind = getattr(r.memory, "peak_kind", "") or ""
        if peaks_mb[i] <= PEAK_OFF_SCALE * stack_max:
            on_scale.setdefault(kind, []).append((x[i], peaks_mb[i]))
            tops[i] = max(tops[i], peaks_mb[i])
        else:
            off_scale.setdefault(kind, []).append(x[i])
    ymax = max(float(tops.max()), 1e-9) * (1.32 if off_scale else 1.22)  # room for the notes
    for kind, points in on_scale.items():
        px = np.array([p[0] for p in points])
        py = np.array([p[1] for p in points])
        ax.hlines(py, px - width / 2 - 0.06, px + width / 2 + 0.06, colors="black",
                  linestyles="--", linewidth=1.8, zorder=4,
                  label=f"measured peak ({kind})" if kind else "measured peak")
    for kind, px_list in off_scale.items():
        ax.plot(px_list, [0.965 * ymax] * len(px_list), linestyle="none", marker="^",
                color="black", markersize=STYLE["marker_size"] + 1, zorder=5,
                label=f"measured peak ({kind}), above the axis" if kind
                else "measured peak, above the axis")

    for i in range(len(runs)):
        note = _fmt_mb(bottoms[i])
        if peaks_mb[i] is not None:
            note += f"\n(peak {_fmt_mb(peaks_mb[i])})"
        ax.annotate(note, (x[i], tops[i]), xytext=(0, 3),
                    textcoords="offset points", ha="center", va="bottom",
                    fontsize=STYLE["annotation_size"], color=STYLE["text_color"])
    ax.set_xticks(x, [_tick_label(label) for label in run_labels(runs)])
    ax.set_ylim(0, ymax)
    ax.grid(False, axis="x")
    label_axes(ax, title, "run", "memory (MB, 1 MB = 10⁶ bytes)")
    # Legend entries top to bottom in the order the components stack, peak last.
    handles, labels = ax.get_legend_handles_labels()
    opts: dict[str, Any] = {"fontsize": STYLE["legend_size"], "framealpha": 0.9,
                            "edgecolor": STYLE["grid_color"]}
    _legend_outside(ax, labels, opts)
    stack_pos = {label: k for k, (_, label, _) in enumerate(MEMORY_COMPONENTS)}
    stack_pos[QUANTIZED_WEIGHTS_LABEL] = stack_pos["weights"] - 0.5  # just below the weights it hatches
    # A component's legend swatch is its plain colour: matplotlib would copy the first bar, which
    # is hatched when the first run's base is quantized.
    plain = {label: Rectangle((0, 0), 0, 0, facecolor=color, edgecolor="white")
             for _, label, color in MEMORY_COMPONENTS}
    handles = [plain.get(label, h) for h, label in zip(handles, labels)]
    order = sorted(range(len(labels)), key=lambda i: -stack_pos.get(labels[i], -1))
    ax.legend([handles[i] for i in order], [labels[i] for i in order], **opts)
    return fig


def _tick_label(label: str, width: int = 18) -> str:
    """A run label on short lines, so that four or more bars' labels do not run into each other."""
    parts = label.replace(" (", "\n(").replace(" · ", "\n").replace(" [", "\n[").split("\n")
    return "\n".join(textwrap.fill(part, width) for part in parts)


def _is_quantized_run(result: RunResult) -> bool:
    return getattr(result.config, "quantize", None) is not None


def _hatch_quantized(ax: Axes, bars: Any, runs: Sequence[RunResult], color: str) -> None:
    """Hatch the weights of runs whose base was quantized (QLoRA), with a legend entry for it.

    Their weights bar is what the run measured: the packed 4/8-bit codes plus the constants
    bitsandbytes keeps (absmax per block, scales, code books), next to the float weights
    of the other runs.
    """
    quantized = [patch for patch, r in zip(bars.patches, runs) if _is_quantized_run(r)]
    for patch in quantized:
        patch.set_hatch(QUANTIZED_HATCH)
        patch.set_edgecolor(STYLE["face_color"])
    if quantized:  # a legend entry only: an empty rectangle at the origin, which the bars cover anyway
        ax.add_patch(Rectangle((0, 0), 0, 0, facecolor=color, edgecolor=STYLE["face_color"], hatch=QUANTIZED_HATCH,
                               label=QUANTIZED_WEIGHTS_LABEL))


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
    runs = _check_results(results)
    generative = bool(runs) and all(r.config.task == "causal-lm" for r in runs)

    def score(r: RunResult) -> float:
        return r.eval_exact_match if r.config.task == "causal-lm" else r.eval_accuracy

    what = "exact match" if generative else "validation accuracy"
    title = f"{what[0].upper() + what[1:]} against trainable parameters"
    runs = [r for r in runs if r.params is not None and math.isfinite(score(r))]
    if not runs:
        return _message_figure(("no evaluated runs to show: a run needs an evaluation to have "
                               + ("an exact match" if generative else "an accuracy")), title)
    fig, ax = _new_figure()
    for r, marker, name in zip(runs, _cues(runs, _MARKERS), run_labels(runs)):
        xv, yv = r.params.trainable, score(r)
        ax.scatter([xv], [yv], color=run_color(r.config), marker=marker,
                   s=(STYLE["marker_size"] + 1.5) ** 2, edgecolors="#333333", linewidths=0.8,
                   zorder=3, label=name)
        # Centred above the point: a sweep's ranks lie a factor 2 apart on the log axis,
        # about 24 pt at this size, which a label such as "r=16" fits into.
        ax.annotate(_short_label(r.config), (xv, yv), xytext=(0, 7), textcoords="offset points",
                    ha="center", va="bottom", fontsize=STYLE["annotation_size"],
                    color=STYLE["text_color"])
    ax.set_xscale("log")
    _log_count_axis(ax.xaxis)
    xs = [r.params.trainable for r in runs]
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
    ax.yaxis.set_major_locator(_TicksUpTo(1.0, nbins="auto", steps=[1, 2, 5, 10]))
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    ylabel = ("exact match on held-out prompts (%)" if generative else
              "validation accuracy (%)" if not any(r.config.task == "causal-lm" for r in runs)
              else "accuracy / exact match (%)")
    label_axes(ax, title, "trainable parameters (count, log scale)", ylabel)
    if len(runs) > 3:
        _legend(ax, loc="lower right")
    else:  # few runs: below the axes, clear of the points and their labels
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=STYLE["legend_size"], frameon=False)
    return fig


def live_loss(
    history: pd.DataFrame,
    title: str = "Training loss",
    *,
    total_steps: int | None = None,
    color: str | None = None,
) -> Figure:
    """The small curve the notebook panel redraws while a run trains (cheap: one axes).

    ``total_steps`` fixes the x axis to the whole run so the curve grows from left to
    right instead of the axis rescaling at every redraw.  Evaluation losses, once there
    are any, appear as hollow markers.  An empty history gives a "waiting" placeholder.
    """
    if not isinstance(history, pd.DataFrame):
        raise TypeError(f"history must be a pandas DataFrame, got {type(history).__name__}")
    x, y = _history_xy(history, "train_loss")
    ex, ey = _history_xy(history, "eval_loss")
    if not len(x) and not len(ex):
        return _message_figure("waiting for the first training step …", title, LIVE_FIGSIZE[0])
    color = color or rank_color(8)
    fig, ax = _new_figure(LIVE_FIGSIZE, _LIVE_MARGINS)
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
    label_axes(ax, title, "training step", "loss (nats)")
    limit = robust_loss_limit([y])
    if limit is not None and len(y) and float(y.max()) > limit:
        ax.set_ylim(0, limit)
        ax.text(0.99, 0.98, f"axis cut at {limit:.3g}; loss now {float(y[-1]):.3g}", transform=ax.transAxes,
                ha="right", va="top", fontsize=STYLE["annotation_size"], color="#a4161a")
    _legend(ax, loc="lower left")
    return fig


def comparison_figures(results: Iterable[RunResult]) -> dict[str, Figure]:
    """The four comparison figures, by name, for the report and the panel's compare tab."""
    runs = _check_results(results)
    return {
        "loss_curves": loss_curves(runs, eval=True),
        "params_vs_rank": params_vs_rank(runs),
        "memory_breakdown": memory_breakdown(runs),
        "accuracy_vs_params": accuracy_vs_params(runs),
    }


# --------------------------------------------------------------------------- output

SAVE_FORMATS: tuple[str, ...] = ("png", "svg", "pdf")


def save_figure(
    fig: Figure,
    path_without_ext: str | Path,
    formats: Sequence[str] = ("png", "svg"),
    dpi: int = SAVE_DPI,
) -> list[Path]:
    """Write the figure once per format as ``<path>.<fmt>``, each file atomically.

    The format is passed to ``savefig`` explicitly because the temporary file's name
    ends in ``.tmp``.  SVG and PDF are written without a creation date so that the same
    figure gives the same file.  Returns the written paths in the order of ``formats``.
    """
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    if isinstance(formats, str):
        formats = (formats,)
    fmts = [f.lower().lstrip(".") for f in formats]
    bad = [f for f in fmts if f not in SAVE_FORMATS]
    if bad or not fmts:
        raise ValueError(f"unsupported format(s) {bad or formats!r}; allowed: {', '.join(SAVE_FORMATS)}")
    base = Path(path_without_ext)
    written = []
    for fmt in fmts:
        target = base.with_name(f"{base.name}.{fmt}")
        metadata = {"Date": None} if fmt in ("svg", "pdf") else None

        def write(tmp: str, fmt: str = fmt, metadata: dict | None = metadata) -> None:
            fig.savefig(tmp, format=fmt, dpi=dpi, metadata=metadata,
                        facecolor=fig.get_facecolor())

        written.append(atomic_write(target, write))
    return written


def figure_to_png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes, for an ipywidgets Output or Image widget."""
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor=fig.get_facecolor())
    return buf.getvalue()


# --------------------------------------------------------------------------- memory scaling

#: The columns ``memory_scaling`` reads (a ``workbench.lessons.memory_study.memory_grid`` table).
SCALING_COLUMNS: tuple[str, ...] = ("method", "batch_size", "seq_len", "component", "measured", "estimated")
_SCALING_AXES = {"batch_size": "batch size B (sequences)", "seq_len": "sequence length S (tokens)"}


def _scaling_color(row: Mapping[str, Any], fallback: str) -> str:
    """A grid row's colour: by rank for LoRA, the reference colours for full and head."""
    kind = row.get("kind")
    if kind == "lora":
        try:
            return rank_color(int(row.get("rank")))
        except (TypeError, ValueError):
            return fallback
    return {"full": FULL_COLOR, "head": HEAD_COLOR}.get(kind, fallback)


def memory_scaling(
    df: pd.DataFrame,
    x: str = "batch_size",
    at: int | None = None,
    components: Sequence[str] = ("activations", "total"),
    proportional: bool = True,
) -> Figure:
    """Memory against batch size or sequence length: measured markers, estimated dashed lines.

    One panel per component (default: the saved activations and the total), one colour
    per method (LoRA by rank, full fine-tuning red, head only grey), MB (10^6 bytes) on y.
    ``df`` is a long table as ``workbench.lessons.memory_study.memory_grid`` returns (columns
    ``method, batch_size, seq_len, component, measured, estimated`` in bytes, and
    optionally ``kind`` and ``rank`` for the colours).

    ``x``: "batch_size" or "seq_len"; the other one is held at ``at`` (default: its
    largest value that every method has).  ``proportional``: on the activations panel, a
    thin dotted line per method through its first estimated point and the origin,
    y = y0 * x / x0: growth in proportion to x.  Activations follow it against B (every
    saved tensor has B rows) and rise above it against S when attention saves its
    S x S probabilities (the B·heads·S² term).

    Every drawn line carries a ``gid`` "method|component|measured" (or "estimated",
    "proportional"), so tests and readers can find its data.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame (memory_grid's table), got {type(df).__name__}")
    if x not in _SCALING_AXES:
        raise ValueError(f"x must be 'batch_size' or 'seq_len', not {x!r}")
    if isinstance(components, str):
        components = (components,)
    components = list(components)
    title = "Memory against " + ("batch size" if x == "batch_size" else "sequence length")
    if not len(df):
        return _message_figure("no memory measurements to show: run memory_grid first", title)
    missing = [c for c in SCALING_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"df lacks the column(s) {missing}; expected memory_grid's columns {list(SCALING_COLUMNS)}")
    known = list(dict.fromkeys(df["component"]))
    bad = [c for c in components if c not in known]
    if bad or not components:
        raise ValueError(f"components {bad or components!r} are not in the table; it has {known}")
    other = "seq_len" if x == "batch_size" else "batch_size"
    methods = list(dict.fromkeys(df["method"]))
    if at is None:
        shared = set.intersection(*(set(df.loc[df["method"] == m, other]) for m in methods))
        if not shared:
            raise ValueError(f"no {other} value is shared by every method; pass at= one of "
                             f"{sorted(set(df[other]))}")
        at = max(shared)
    elif at not in set(df[other]):
        raise ValueError(f"at={at!r} is not a {other} in the table; choose one of {sorted(set(df[other]))}")
    data = df[df[other] == at]

    n = len(components)
    fig = Figure(figsize=(max(FIGSIZE[0], 3.9 * n + 1.1), FIGSIZE[1] + 0.3), layout="constrained", facecolor=STYLE["face_color"])
    axes = [fig.add_subplot(1, n, i + 1) for i in range(n)]
    fallback = iter(matplotlib.colormaps["tab10"].colors * 3)
    colors: dict[str, str] = {}
    markers: dict[str, str] = {}
    for m in methods:
        first = df[df["method"] == m].iloc[0]
        colors[m] = _scaling_color(first, to_hex(next(fallback)))
        markers[m] = _MARKERS[sum(1 for c in list(colors.values())[:-1] if c == colors[m]) % len(_MARKERS)]
    xs_all: set[float] = set()
    for ax, comp in zip(axes, components):
        style_axes(ax)
        for m in methods:
            sub = data[(data["method"] == m) & (data["component"] == comp)].sort_values(x)
            if not len(sub):
                continue
            xv = sub[x].to_numpy(dtype=float)
            xs_all.update(xv)
            est = sub["estimated"].to_numpy(dtype=float) / MB
            got = sub["measured"].to_numpy(dtype=float) / MB
            ax.plot(xv, est, color=colors[m], linestyle="--", linewidth=STYLE["line_width"] - 0.2,
                    gid=f"{m}|{comp}|estimated", label="_")
            ax.plot(xv, got, color=colors[m], linestyle="none", marker=markers[m],
                    markersize=STYLE["marker_size"], markeredgecolor="#333333", markeredgewidth=0.7,
                    gid=f"{m}|{comp}|measured", label="_", zorder=3)
            if proportional and comp == "activations" and xv[0] > 0 and len(xv) > 1:
                ref = np.array([0.0, xv[-1]])
                ax.plot(ref, est[0] * ref / xv[0], color=colors[m], linestyle=":", linewidth=1.0,
                        alpha=0.8, gid=f"{m}|{comp}|proportional", label="_")
        ax.set_xlim(0, max(xs_all) * 1.06 if xs_all else 1)
        ax.set_ylim(bottom=0)
        ticks = sorted(xs_all)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
        pretty = {"activations": "saved activations", "total": "total (weights + gradients + optimizer + activations)",
                  "optimizer": "optimizer state"}.get(comp, comp)
        ax.set_title(pretty if len(pretty) < 40 else "total", fontsize=STYLE["label_size"] + 0.5,
                     color=STYLE["text_color"], loc="left")
        ax.set_xlabel(_SCALING_AXES[x], fontsize=STYLE["label_size"], color=STYLE["text_color"])
    axes[0].set_ylabel("memory (MB, 1 MB = 10⁶ bytes)", fontsize=STYLE["label_size"], color=STYLE["text_color"])
    held = f"sequence length {at}" if other == "seq_len" else f"batch size {at}"
    fig.suptitle(f"{title} ({held}, one training step)", fontsize=STYLE["title_size"],
                 color=STYLE["text_color"], x=0.01, ha="left")

    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[m], linestyle="--", marker=markers[m], markeredgecolor="#333333",
                      markersize=STYLE["marker_size"], linewidth=STYLE["line_width"] - 0.2, label=str(m))
               for m in methods]
    grey = STYLE["spine_color"]
    key = [Line2D([], [], color=grey, linestyle="none", marker="o", markersize=STYLE["marker_size"] - 1,
                  label="measured"),
           Line2D([], [], color=grey, linestyle="--", label="estimated")]
    if proportional and "activations" in components:
        key.append(Line2D([], [], color=grey, linestyle=":", linewidth=1.0,
                          label=f"in proportion to {'B' if x == 'batch_size' else 'S'}"))
    # The curves rise to the right, so the upper left corner of the first panel is free.
    axes[0].legend(handles=key, loc="upper left", fontsize=STYLE["legend_size"], framealpha=0.9,
                   edgecolor=STYLE["grid_color"])
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4),
               fontsize=STYLE["legend_size"], frameon=False)
    return fig

"""The house style: one look for every figure in the workbench, and the palette that gives colours a meaning.

Every figure is a ``matplotlib.figure.Figure`` built directly, never through ``pyplot``:
pyplot keeps a global list of open figures (a notebook that redraws a live curve every
few steps would leak them) and its style lives in the global ``rcParams``, which a
library must not change behind its caller's back.  The style is therefore applied by
hand to each figure and axes, from the constants here.  The run figures, the memory
figures and every lesson's figures (planner, planted rank, inside delta W, serving)
take their look from this module, so a change here changes all of them.

Colours carry meaning and stay the same in every figure:

* in the figures that **compare runs** (loss curves, parameters against rank, accuracy
  against parameters) each run gets a colour of its own from a qualitative palette
  (``RUN_PALETTE``, matplotlib's ``tab10``), in the order the runs are given, so two
  runs never share a colour however close their ranks (``run_colors``): the same list
  of runs gives each run the same colour in every figure of a comparison;
* where one rank stands for a setting (the lessons' rank sweeps, the live curve) a LoRA
  run is coloured by its rank along a sequential colormap (``viridis``), with the colour
  fixed by ``log2(rank)`` on a 1..256 scale, so "r=8" has the same colour whichever
  other runs share the figure; full fine-tuning and head-only training are fixed
  reference colours (red, grey);
* several runs with the same colour (more runs than the palette has colours) are told
  apart by line style or marker shape (``cues``), and points drawn at the same place
  are spread sideways a few points apart (``dodge_offsets``) so none hides another.

Empty input never crashes: a function with nothing to draw returns a small figure that
says so (``message_figure``); ``is_message_figure(fig)`` tells such a figure apart, so
the notebook panel can show the text or skip the picture as it prefers.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import matplotlib
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from workbench.engine.config import RunConfig, RunResult
from workbench.util.checks import check_positive_int
from workbench.util.units import format_count

# --------------------------------------------------------------------------- sizes and style

#: Figure size in inches: 7 x 4.2 in is 1050 x 630 px at 150 dpi, a page-width figure.
FIGSIZE: tuple[float, float] = (7.0, 4.2)
#: The live curve in the notebook panel is smaller and redrawn often.
LIVE_FIGSIZE: tuple[float, float] = (6.0, 3.2)

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

# --------------------------------------------------------------------------- the palette

#: LoRA ranks are placed on this colormap by log2(rank) between these two ranks.
LORA_CMAP = "viridis"
LORA_RANK_RANGE: tuple[int, int] = (1, 256)
#: The part of the colormap used: its bright yellow end is too pale on white.
LORA_CMAP_SPAN: tuple[float, float] = (0.05, 0.82)
#: One colour per run in the comparison figures (qualitative: no order implied), in turn.
RUN_PALETTE: tuple[str, ...] = tuple(to_hex(c) for c in matplotlib.colormaps["tab10"].colors)
#: Points closer than this (in points, on screen) are drawn apart by ``dodge_offsets``.
DODGE_POINTS = 9.0
#: Reference colours for the two non-LoRA methods.
FULL_COLOR = "#c0392b"  # red: the expensive baseline
HEAD_COLOR = "#7f7f7f"  # grey: the cheapest baseline
#: A colour for warnings written on a figure ("axis cut at ...").
WARNING_COLOR = "#a4161a"

#: Memory components, in stacking order from the bottom, with their colours (the memory
#: figures and the planner's bars use the same ones).
MEMORY_COMPONENTS: tuple[tuple[str, str, str], ...] = (
    # (attribute on MemoryBreakdown, legend label, colour)
    ("weights", "weights", "#4c72b0"),
    ("gradients", "gradients", "#dd8452"),
    ("optimizer", "optimizer state", "#55a868"),
    ("activations", "activations", "#8172b3"),
)

#: Cues that tell apart lines (or points) of the same colour, in the order they are handed out.
LINESTYLES: tuple[str, ...] = ("-", "--", ":", "-.")
MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P")

_MESSAGE_LABEL = "workbench:message"


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


def run_colors(results: Sequence[RunResult]) -> list[str]:
    """One colour per run from ``RUN_PALETTE``, in order (the palette repeats after 10 runs;
    ``palette_cues`` then gives the repeats another line style or marker)."""
    return [RUN_PALETTE[i % len(RUN_PALETTE)] for i in range(len(results))]


def palette_cues(n: int, choices: Sequence[str]) -> list[str]:
    """A line style (or marker) per run coloured by ``run_colors``: a new one each time the palette repeats."""
    return [choices[(i // len(RUN_PALETTE)) % len(choices)] for i in range(n)]


def dodge_offsets(points: Sequence[tuple[float, float]], close: Callable[[tuple[float, float], tuple[float, float]],
                  bool], step: float = DODGE_POINTS) -> list[float]:
    """Sideways offsets (in points) that spread points drawn at the same place.

    ``close(p, q)`` says whether two points would be drawn on top of each other.  A group
    of k such points gets offsets (i - (k - 1) / 2) * ``step`` for i = 0 .. k - 1, so
    the group stays centred on the true value; a point alone gets 0.
    """
    groups: list[list[int]] = []
    for i, p in enumerate(points):
        home = next((g for g in groups if close(points[g[0]], p)), None)
        if home is None:
            groups.append([i])
        else:
            home.append(i)
    out = [0.0] * len(points)
    for g in groups:
        for j, i in enumerate(g):
            out[i] = (j - (len(g) - 1) / 2) * step
    return out


def shifted(ax: Axes, dx_points: float) -> Any:
    """The data transform of ``ax`` moved ``dx_points`` sideways on screen (for ``dodge_offsets``)."""
    from matplotlib.transforms import ScaledTranslation

    return ax.transData + ScaledTranslation(dx_points / 72.0, 0.0, ax.get_figure().dpi_scale_trans)


def title_with_shared(title: str, shared: str, width: int = 72) -> str:
    """A figure title, and on the lines below it what every run shown shares (wrapped at ``width``)."""
    if not shared:
        return title
    return title + "\n" + textwrap.fill(shared, width, break_long_words=False)


def _color_key(config: RunConfig) -> tuple[str, int]:
    """Runs with the same key share a colour and need another visual cue."""
    return (config.method, config.lora.rank if config.method == "lora" else 0)


def cues(results: Sequence[RunResult], choices: Sequence[str]) -> list[str]:
    """A line style (or marker) per run: the n-th run with a given colour gets ``choices[n]``."""
    seen: dict[tuple[str, int], int] = {}
    out = []
    for r in results:
        key = _color_key(r.config)
        n = seen.get(key, 0)
        seen[key] = n + 1
        out.append(choices[n % len(choices)])
    return out


# --------------------------------------------------------------------------- figures and axes


def check_results(results: Iterable[RunResult] | None) -> list[RunResult]:
    """Turn a figure's argument into a list of RunResult, or say clearly what was wrong
    (a figure of runs takes a list of ``RunResult``; anything else is a ``TypeError``)."""
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


def new_figure(figsize: tuple[float, float] = FIGSIZE, margins: dict[str, float] | None = None
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


def style_axes(ax: Axes, grid_axis: str | None = "both") -> None:
    """The house style on one axes: background, a light major grid (``grid_axis``: "both",
    "x" or "y"; None for none, as on a heat map), no top or right spine."""
    ax.set_facecolor(STYLE["face_color"])
    if grid_axis is not None:
        ax.grid(True, which="major", axis=grid_axis, color=STYLE["grid_color"], linewidth=STYLE["grid_width"])
        ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color(STYLE["spine_color"])
    ax.tick_params(labelsize=STYLE["tick_size"], colors=STYLE["text_color"])


def label_axes(ax: Axes, title: str, xlabel: str, ylabel: str, title_pad: float | None = None) -> None:
    """Title (left-aligned; ``title_pad`` points above the axes, default matplotlib's) and axis labels
    in the house style."""
    ax.set_title(title, fontsize=STYLE["title_size"], color=STYLE["text_color"], loc="left", pad=title_pad)
    ax.set_xlabel(xlabel, fontsize=STYLE["label_size"], color=STYLE["text_color"])
    ax.set_ylabel(ylabel, fontsize=STYLE["label_size"], color=STYLE["text_color"])


def legend_options() -> dict[str, Any]:
    """The house legend: small type, a nearly opaque box with a light edge."""
    return {"fontsize": STYLE["legend_size"], "framealpha": 0.9, "edgecolor": STYLE["grid_color"]}


def legend(ax: Axes, **kwargs: Any) -> None:
    """Legend inside the axes for a few entries, outside on the right for many."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    opts = legend_options()
    if len(handles) > 7:  # too many to sit inside: outside on the right, whatever was asked
        legend_outside(ax, labels, opts)
    else:
        opts.update(kwargs)
    ax.legend(**opts)


def legend_outside(ax: Axes, labels: Sequence[str], opts: dict[str, Any]) -> None:
    """Place the legend right of the axes and widen the figure by about its width,
    so the plot keeps its size (about 0.075 in per character at the legend font size).
    Updates ``opts`` (the keyword arguments for ``ax.legend``) in place."""
    opts.update(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig = ax.get_figure()
    w, h = fig.get_size_inches()
    extra = 0.8 + 0.075 * STYLE["legend_size"] / 9.0 * max(len(s) for s in labels)
    fig.set_size_inches(w + extra, h)


def legend_below(ax: Axes, handles: Sequence[Any] | None = None, labels: Sequence[str] | None = None) -> None:
    """The legend under the axes (never on the data), in one to three columns by label length.

    The figure keeps its width (it is drawn at the width it is shown at) and grows in
    height by the legend's rows (about 0.19 in a row at the legend's type size), so the
    plot keeps its size.
    """
    if handles is None or labels is None:
        handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    longest = max(len(t) for t in labels)
    ncols = 1 if longest > 42 else 2 if longest > 24 or len(labels) < 5 else 3
    rows = -(-len(labels) // ncols)
    fig = ax.get_figure()
    w, h = fig.get_size_inches()
    fig.set_size_inches(w, h + 0.19 * rows + 0.1)
    opts = legend_options()
    opts.update(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=ncols, frameon=False,
                borderaxespad=0.0, handlelength=2.2, columnspacing=1.4)
    ax.legend(handles, labels, **opts)


def message_figure(text: str, title: str, width: float = FIGSIZE[0]) -> Figure:
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


# --------------------------------------------------------------------------- numbers on axes


def human_count(x: float, _pos: Any = None) -> str:
    """A parameter count for people (``format_count``), as a matplotlib tick formatter."""
    return format_count(x)


def log_count_axis(axis: Any) -> None:
    """Decade ticks written as 10k, 100k, 1M instead of 10^4 ..., minor ticks unlabelled."""
    axis.set_major_formatter(FuncFormatter(human_count))
    axis.set_minor_formatter(NullFormatter())


__all__ = [
    "FIGSIZE", "LIVE_FIGSIZE", "STYLE", "RUN_PALETTE", "DODGE_POINTS", "run_colors", "palette_cues",
    "dodge_offsets", "shifted", "title_with_shared", "LORA_CMAP", "LORA_RANK_RANGE", "LORA_CMAP_SPAN", "FULL_COLOR",
    "HEAD_COLOR", "WARNING_COLOR", "MEMORY_COMPONENTS", "LINESTYLES", "MARKERS", "rank_color", "run_color",
    "cues", "check_results", "new_figure", "style_axes", "label_axes", "legend_options", "legend", "legend_below",
    "legend_outside", "message_figure", "is_message_figure", "human_count", "log_count_axis",
]

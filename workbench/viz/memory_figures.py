"""Figures of training memory: what each run's memory is made of, and how it grows with
batch size and sequence length.

``memory_breakdown`` stacks each run's measured weights, gradients, optimizer state and
saved activations (the components of ``workbench.engine.memory.MemoryBreakdown``) with its
measured peak; ``memory_scaling`` draws a memory grid (``workbench.lessons.memory``)
as measured points beside the estimate.  Both are in the house style
(``workbench.viz.style``), with the memory components' colours the planner uses too.

Units: memory is in decimal megabytes (1 MB = 10^6 bytes).
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FixedLocator, FuncFormatter

from workbench.engine.config import RunResult
from workbench.engine.outcome import Outcome
from workbench.util.units import GB, MB, format_bytes
from workbench.viz.run_figures import run_names
from workbench.viz.style import (
    FIGSIZE, FULL_COLOR, HEAD_COLOR, MARKERS, MEMORY_COMPONENTS, STYLE, check_results, label_axes,
    legend_options, legend_outside, message_figure, new_figure, rank_color, style_axes, title_with_shared,
)

#: The widest the memory figure is drawn, legend included (inches; 864 px at the panel's 90 dpi).
MAX_WIDTH = 9.6
#: A measured peak above this multiple of the tallest stack is drawn off the scale.
PEAK_OFF_SCALE = 2.0
#: The weights of a quantized base (QLoRA: NF4 or int8 codes plus their constants) are
#: drawn in the weights colour with this hatch, so a QLoRA bar reads as one beside LoRA's.
QUANTIZED_HATCH = "////"
QUANTIZED_WEIGHTS_LABEL = "weights, quantized base (codes + constants)"


def _fmt_mb(mb: float) -> str:
    """A bar's note: ``format_bytes`` with about three significant digits (0.05 MB, 4.2 MB, 134 MB, 1.65 GB)."""
    n = mb * MB
    if n >= GB:
        digits = 2 if n < 10 * GB else 1
    else:
        digits = 0 if mb >= 10 else 1 if mb >= 0.1 else 2
    return format_bytes(n, digits=digits)

# --------------------------------------------------------------------------- memory by component


def memory_breakdown(results: Iterable[RunResult], judged: bool = True) -> Figure:
    """Stacked bars per run: weights, gradients, optimizer state, activations, in MB.

    Training memory is roughly  weights + gradients + optimizer state + activations;
    LoRA's saving is in the middle two, which scale with the *trainable* parameters
    (AdamW keeps two numbers per trainable parameter).  A measured peak, when the run
    has one, is drawn as a dashed black line across its bar; a peak more than
    ``PEAK_OFF_SCALE`` times the tallest stack (a CPU process's resident memory) is a
    triangle on the top edge instead, its value in the bar's note.  Runs without a
    memory breakdown are left out.  1 MB = 10^6 bytes.  ``judged=False``: the runs only measured
    memory (a few steps), so their labels carry no "[did not learn]" verdict.
    """
    runs = [r for r in check_results(results) if r.memory is not None]
    title = "Training memory by component"
    if not runs:
        return message_figure("no runs with a memory breakdown to show", title)
    # About 1.1 in per bar so two-line labels fit; with the legend beside it (about 3.9 in)
    # the figure stays within 9.6 in, the width the panel shows it at.
    fig, ax = new_figure((min(5.7, max(4.0, 1.1 * len(runs) + 0.8)), FIGSIZE[1]))
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
    names, shared = run_names(runs, None if judged else [Outcome("learned", "a measurement run")] * len(runs))
    ax.set_xticks(x, [_tick_label(label) for label in names])
    ax.set_ylim(0, ymax)
    ax.grid(False, axis="x")
    label_axes(ax, title_with_shared(title, shared, width=56), "run", "memory (MB, 1 MB = 10⁶ bytes)")
    # Legend entries top to bottom in the order the components stack, peak last.
    handles, labels = ax.get_legend_handles_labels()
    opts = legend_options()
    legend_outside(ax, labels, opts)
    if fig.get_size_inches()[0] > MAX_WIDTH:  # the panel shows it at about this width: drawn at it
        fig.set_size_inches(MAX_WIDTH, fig.get_size_inches()[1])
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
    """A run label on short lines, so that four or more bars' labels do not run into each other.

    Lines break between words or after a comma ("query,key,value" lists), never inside a word."""
    parts = label.replace(" (", "\n(").replace(" · ", "\n").replace(" [", "\n[").split("\n")
    lines = [textwrap.fill(part.replace(",", ",\x00 "), width, break_long_words=False) for part in parts]
    return "\n".join(line.replace(",\x00 ", ",").replace("\x00", "") for line in lines)


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



# --------------------------------------------------------------------------- memory scaling

#: The columns ``memory_scaling`` reads (a ``workbench.lessons.memory.memory_grid`` table).
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
    ``df`` is a long table as ``workbench.lessons.memory.memory_grid`` returns (columns
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
        return message_figure("no memory measurements to show: run memory_grid first", title)
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
    fig = Figure(figsize=(max(FIGSIZE[0], 3.9 * n + 1.1), FIGSIZE[1] + 0.3), layout="constrained",
                 facecolor=STYLE["face_color"])
    axes = [fig.add_subplot(1, n, i + 1) for i in range(n)]
    fallback = iter(matplotlib.colormaps["tab10"].colors * 3)
    colors: dict[str, str] = {}
    markers: dict[str, str] = {}
    for m in methods:
        first = df[df["method"] == m].iloc[0]
        colors[m] = _scaling_color(first, to_hex(next(fallback)))
        markers[m] = MARKERS[sum(1 for c in list(colors.values())[:-1] if c == colors[m]) % len(MARKERS)]
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

"""The planner's figures, on the house style: a plan's memory bars and "will it fit".

``memory_bars_figure`` stacks the four parts of a step's memory (weights, gradients,
optimizer state, activations) for each side of a plan (``Plan.figure`` calls it);
``fit_figure`` sets ``fit_table``'s totals against GPU sizes.  Both take plain data (a
``MemoryBreakdown`` per bar, a table), so they know nothing of how a plan is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from workbench.engine.memory import MemoryBreakdown
from workbench.util.units import GB, format_bytes
from workbench.viz.style import (
    FULL_COLOR,
    MEMORY_COMPONENTS,
    STYLE,
    label_axes,
    legend_options,
    rank_color,
    style_axes,
)

__all__ = ["MemoryBar", "memory_bars_figure", "fit_figure"]


@dataclass(frozen=True)
class MemoryBar:
    """One stacked bar: its tick label and colour, the memory it stacks, and whether the
    activations in it are estimated (when not, the bar says "activations: no estimate")."""

    label: str
    color: str
    memory: MemoryBreakdown
    activations_known: bool = True


def memory_bars_figure(bars: Sequence[MemoryBar], title: str) -> Figure:
    """Stacked bars side by side: weights, gradients, optimizer, activations (GB = 10**9 bytes).

    Each bar is annotated with its total; its tick label takes the bar's colour.
    """
    fig = Figure(figsize=(6.4, 4.4), layout="constrained", facecolor=STYLE["face_color"])
    ax = fig.add_subplot()
    style_axes(ax, grid_axis="y")
    x = np.arange(len(bars), dtype=float)
    bottoms = np.zeros(len(bars))
    for attr, label, color in MEMORY_COMPONENTS:
        h = np.array([getattr(b.memory, attr) / GB for b in bars], dtype=float)
        ax.bar(x, h, 0.55, bottom=bottoms, color=color, label=label, edgecolor="white", linewidth=0.6)
        bottoms += h
    for i, b in enumerate(bars):
        note = format_bytes(bottoms[i] * GB) + ("" if b.activations_known else "\n+ activations: no estimate")
        ax.annotate(note, (x[i], bottoms[i]), xytext=(0, 3), textcoords="offset points", ha="center",
                    va="bottom", fontsize=STYLE["annotation_size"], color=STYLE["text_color"])
    ax.set_xticks(x, [b.label for b in bars])
    for tick, b in zip(ax.get_xticklabels(), bars):
        tick.set_color(b.color)
    ax.set_xlim(-0.7, len(bars) - 0.3)
    ax.set_ylim(0, max(float(bottoms.max()), 1e-12) * 1.25)
    label_axes(ax, title, "", "memory (GB, 1 GB = 10⁹ bytes)")
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], **legend_options(), loc="upper left")  # top component on top
    return fig


def fit_figure(table: pd.DataFrame, gpus_gb: Sequence[float] | None = None) -> Figure:
    """Horizontal bars of ``fit_table``'s totals (log scale), one group per architecture, with
    a vertical line at each GPU size: a bar left of a line fits that GPU."""
    needed = {"architecture", "method", "total (GB)"}
    if not needed <= set(table.columns):
        raise ValueError(f"fit_figure needs a fit_table with columns {sorted(needed)}, got {list(table.columns)}")
    if gpus_gb is None:
        gpus_gb = [float(c[len("fits "):-len(" GB")]) for c in table.columns if c.startswith("fits ")]
    archs = list(dict.fromkeys(table["architecture"]))
    methods = list(dict.fromkeys(table["method"]))
    colors = {m: c for m, c in zip(methods, (FULL_COLOR, rank_color(8), rank_color(64), "#7a7a7a", "#444444"))}
    fig = Figure(figsize=(8.6, 0.3 * len(archs) * len(methods) + 1.6), layout="constrained",
                 facecolor=STYLE["face_color"])
    ax = fig.add_subplot()
    style_axes(ax, grid_axis="x")
    height = 0.8 / len(methods)
    for i, arch in enumerate(archs):
        for j, method in enumerate(methods):
            sel = table[(table["architecture"] == arch) & (table["method"] == method)]
            if sel.empty:
                continue
            total = float(sel["total (GB)"].iloc[0])
            y = i + (j - (len(methods) - 1) / 2) * height
            ax.barh(y, total, height * 0.9, color=colors[method], label=method if i == 0 else None)
            ax.annotate(f"{total:,.1f}", (total, y), xytext=(3, 0), textcoords="offset points", va="center",
                        fontsize=STYLE["annotation_size"], color=STYLE["text_color"])
    for g in gpus_gb:
        ax.axvline(g, color=STYLE["text_color"], linewidth=0.8, linestyle="--", alpha=0.6)
        ax.annotate(f"{g:g}", (g, 1.0), xycoords=ax.get_xaxis_transform(), xytext=(0, 2),
                    textcoords="offset points", ha="center", va="bottom",
                    fontsize=STYLE["annotation_size"], color=STYLE["text_color"])
    ax.set_xscale("log")
    ax.set_yticks(range(len(archs)), archs)
    ax.invert_yaxis()
    ax.set_xlabel("memory of one training step (GB, 10⁹ bytes; log scale); dashed: GPU sizes in GB",
                  fontsize=STYLE["label_size"], color=STYLE["text_color"])
    ax.set_title("Will it fit? Planned memory of one step (estimate, tensors only)", pad=16,
                 fontsize=STYLE["title_size"], color=STYLE["text_color"], loc="left")
    ax.legend(**legend_options(), loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig

"""The planted-rank figures, on the house style: loss against rank, spectra, loss curves.

A knee at r = k in ``loss_vs_rank_figure`` says the student needs exactly the planted
rank; ``spectrum_comparison_figure`` sets each student's singular values against the
planted ones; ``loss_curves_figure`` shows the same in time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
import torch
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from workbench.lessons.delta_w import SPECTRUM_FLOOR, singular_values
from workbench.lessons.planted_rank.student import PlantedResult
from workbench.util.checks import check_positive_int
from workbench.viz.style import (
    FIGSIZE,
    LORA_CMAP,
    LORA_CMAP_SPAN,
    STYLE,
    label_axes,
    legend,
    new_figure,
    style_axes,
)

__all__ = ["PLANTED_COLOR", "TAIL_COLOR", "REFERENCES", "loss_vs_rank_figure", "sweep_colors",
           "spectrum_comparison_figure", "loss_curves_figure"]

#: The colour of the planted (true) update in figures: black, the reference.
PLANTED_COLOR = "#222222"
#: The colour of the Eckart-Young reference curves.
TAIL_COLOR = "#c0392b"
#: The closed-form references drawn by ``loss_vs_rank_figure``: (table column, line style, marker, legend).
REFERENCES: tuple[tuple[str, str, str, str], ...] = (
    ("eckart_young", "--", "x", "Eckart–Young on ΔW*: Σ_{i>r} s_i² / Σ s_i²"),
    ("eckart_young_inputs", ":", "+", "Eckart–Young on ΔW*·Xᵀ (the layer's inputs)"),
)



def loss_vs_rank_figure(table: pd.DataFrame, true_rank: int, column: str = "relative_loss") -> Figure:
    """Final loss against the student's rank r (log-log), with the planted rank k marked.

    The measured line is ``table[column]`` (by default the share of the teacher's
    difference left, final_loss / base_loss).  With the default column, the closed-form
    references in the table (``REFERENCES``: the Eckart-Young tail of Delta W* and of
    Delta W* X^T) are drawn in red where they are not zero (r < k).  A knee at r = k says
    the student needs exactly the planted rank.
    """
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be a pandas DataFrame (PlantedSweep.table), got {type(table).__name__}")
    missing = {"rank", column} - set(table.columns)
    if missing:
        raise ValueError(f"table lacks the columns {sorted(missing)}; it has {list(table.columns)}")
    if table.empty:
        raise ValueError("table has no rows: run at least one rank")
    check_positive_int("true_rank", true_rank)
    t = table.sort_values("rank")
    ranks = t["rank"].to_numpy(dtype=int)
    y = t[column].to_numpy(dtype=float)
    fig, ax = new_figure()
    ax.plot(ranks, y, color="#4c72b0", linewidth=STYLE["line_width"], zorder=2,
            label="measured" if column != "relative_loss" else "measured: final loss / base loss", gid="measured")
    colors = sweep_colors(ranks.tolist())
    ax.scatter(ranks, y, c=[colors[int(r)] for r in ranks], s=STYLE["marker_size"] ** 2 * 1.6,
               edgecolors="white", linewidths=0.8, zorder=3)
    if column == "relative_loss":
        for col, style, marker, label in REFERENCES:
            if col not in t.columns:
                continue
            tail = t[col].to_numpy(dtype=float)
            keep = tail > 0  # 0 for r >= k: a log axis cannot show it, and the text says it
            if keep.any():
                ax.plot(ranks[keep], tail[keep], linestyle=style, marker=marker, color=TAIL_COLOR,
                        linewidth=1.3, markersize=6, label=label, gid=col)
    ax.axvline(true_rank, color="#555555", linestyle=":", linewidth=1.3, label=f"planted rank k = {true_rank}")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(ranks.tolist()) | {int(true_rank)})))
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_minor_locator(NullLocator())
    if (y > 0).all():
        ax.set_yscale("log")
    ylabel = "final loss / base loss" if column == "relative_loss" else column.replace("_", " ")
    label_axes(ax, "Loss against LoRA rank: the knee sits at the planted rank", "LoRA rank r of the student", ylabel)
    legend(ax, loc="upper right")
    return fig


def sweep_colors(ranks: Sequence[int]) -> dict[int, str]:
    """A colour per rank, spread evenly over the house LoRA colormap in rank order.

    ``plots.rank_color`` fixes each rank's colour on a 1..256 scale so that runs compare
    across figures; in this lesson the ranks are few and close (1, 2, 3, 4 would be four
    shades of one purple), so the colours are spread over the ranks present instead.
    """
    ordered = sorted(set(int(r) for r in ranks))
    lo, hi = LORA_CMAP_SPAN
    cmap = matplotlib.colormaps[LORA_CMAP]
    if len(ordered) == 1:
        return {ordered[0]: to_hex(cmap(lo))}
    return {r: to_hex(cmap(lo + (hi - lo) * i / (len(ordered) - 1))) for i, r in enumerate(ordered)}


def _nonzero_spectrum(m: torch.Tensor) -> np.ndarray:
    """Singular values of m above ``SPECTRUM_FLOOR`` * sigma_1 (the rest are rounding of zeros)."""
    s = singular_values(m).numpy()
    return s[s > SPECTRUM_FLOOR * s[0]] if s[0] > 0 else s[:0]


def spectrum_comparison_figure(
    learned: torch.Tensor | Mapping[int, torch.Tensor],
    planted: torch.Tensor,
    title: str | None = None,
) -> Figure:
    """Singular values of the learned Delta W against those of the planted Delta W*.

    ``learned`` is one Delta W, or {rank: Delta W} for a sweep, which gets one panel per
    rank (shared log y axis) so each student is read against the same black reference.
    Delta W* has exactly k non-zero singular values; a rank-r student has at most r.
    Values below ``SPECTRUM_FLOOR`` * sigma_1 are float64 rounding of exact zeros and are
    not drawn.  Each learned line has the gid ``learned_r<rank>`` (``learned`` for a single
    tensor) and the planted one ``planted``, so a test can find the data.
    """
    if isinstance(learned, Mapping):
        items: list[tuple[int | None, torch.Tensor]] = sorted((int(r), d) for r, d in learned.items())
    elif isinstance(learned, torch.Tensor):
        items = [(None, learned)]
    else:
        raise TypeError(f"learned must be a tensor or a mapping {{rank: tensor}}, got {type(learned).__name__}")
    if not items:
        raise ValueError("learned is empty: pass at least one learned Delta W")
    if not isinstance(planted, torch.Tensor):
        raise TypeError(f"planted must be a tensor (Delta W*), got {type(planted).__name__}")
    for r, d in items:
        if not isinstance(d, torch.Tensor) or tuple(d.shape) != tuple(planted.shape):
            got = tuple(d.shape) if isinstance(d, torch.Tensor) else type(d).__name__
            raise ValueError(f"learned Delta W{'' if r is None else f' (r = {r})'} is {got} but Delta W* is {tuple(planted.shape)}")
    sp = _nonzero_spectrum(planted)
    if not len(sp):
        raise ValueError("the planted Delta W* is zero: there is nothing to compare against")
    k = len(sp)
    spectra = [(r, _nonzero_spectrum(d)) for r, d in items]
    colors = sweep_colors([r for r, _ in items if r is not None]) if items[0][0] is not None else {}
    ncols = min(len(items), 3)
    nrows = math.ceil(len(items) / ncols)
    size = FIGSIZE if len(items) == 1 else (FIGSIZE[0], 0.6 + 2.3 * nrows)
    fig = Figure(figsize=size, layout="constrained", facecolor=STYLE["face_color"])
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False).flatten()
    for ax in axes[len(items):]:
        ax.set_axis_off()
    for ax, (r, s) in zip(axes, spectra):
        style_axes(ax)
        longest = max(k, len(s), r or 0)
        ax.plot(np.arange(1, k + 1), sp, color=PLANTED_COLOR, marker="o", markersize=10, markerfacecolor="none",
                linewidth=2.2, label=f"planted ΔW* (rank {k})", gid="planted", zorder=3)
        color = colors.get(r, "#4c72b0")
        label = f"learned, r = {r} (rank {len(s)})" if r is not None else f"learned ΔW (rank {len(s)})"
        ax.plot(np.arange(1, len(s) + 1), s, color=color, marker="o", markersize=4.5, linewidth=1.6,
                label=label, gid=f"learned_r{r}" if r is not None else "learned", zorder=4)
        ax.axvline(k + 0.5, color="#555555", linestyle=":", linewidth=1.1)
        ax.set_xlim(0.5, longest + 0.5)
        ax.xaxis.set_major_locator(FixedLocator(_ticks(longest, most=8 if len(items) > 1 else 16)))
        ax.set_yscale("log")
        if r is not None and len(items) > 1:
            ax.set_title(f"student r = {r}", fontsize=STYLE["label_size"], color=color, loc="left")
    if len(items) == 1:
        ax = axes[0]
        ax.text(k + 0.6, 0.97, f"σ_i(ΔW*) = 0 for i > {k}", transform=ax.get_xaxis_transform(),
                fontsize=STYLE["annotation_size"], color="#555555", va="top")
        label_axes(ax, title or "Singular values: learned ΔW = s·B·A against the planted ΔW*",
                "index i (largest first)", "singular value σ_i")
        legend(ax, loc="lower left")
    else:
        fig.suptitle(title or f"Singular values: each student's ΔW (colour) against the planted ΔW* (black, rank {k})",
                     fontsize=STYLE["label_size"] + 0.5,
                     color=STYLE["text_color"], x=0.01, ha="left")
        fig.supxlabel("index i (largest first)", fontsize=STYLE["label_size"], color=STYLE["text_color"])
        fig.supylabel("singular value σ_i", fontsize=STYLE["label_size"], color=STYLE["text_color"])
    return fig


def _ticks(n: int, most: int = 16) -> list[int]:
    """Index ticks 1..n, or every 2nd/4th/... index when more than ``most`` would crowd."""
    step = 1
    while n / step > most:
        step *= 2
    return list(range(1, n + 1)) if step == 1 else list(range(step, n + 1, step))


def loss_curves_figure(results: Mapping[int, PlantedResult] | Sequence[PlantedResult], true_rank: int | None = None) -> Figure:
    """Training loss against step for each student (log y), coloured by rank."""
    res = list(results.values()) if isinstance(results, Mapping) else list(results)
    if not res:
        raise ValueError("no results to draw: run at least one rank")
    fig, ax = new_figure()
    colors = sweep_colors([r.rank for r in res])
    for r in sorted(res, key=lambda x: x.rank):
        style = "-" if true_rank is None or r.rank >= true_rank else "--"
        ax.plot(np.arange(1, len(r.losses) + 1), r.losses, color=colors[r.rank], linestyle=style,
                linewidth=1.4, label=f"r = {r.rank}", gid=f"r{r.rank}")
    ax.set_yscale("log")
    label_axes(ax, "Training loss of each student" + ("" if true_rank is None else f" (dashed: r < k = {true_rank})"),
            "step", "MSE against the teacher's hidden states")
    legend(ax, loc="upper right")
    return fig

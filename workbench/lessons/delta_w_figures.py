"""The figures of ``workbench.lessons.delta_w``, in the house style (``workbench.viz.style``).

* ``similarity_heatmap``: the paper's Figure 3 heat map of the subspace similarity phi(i, j)
  (Hu et al. 2021, sec. 7.2) between the top-i directions of one A and the top-j of another;
* ``spectrum_figure``: the singular values of Delta W per layer on a log axis, which show how
  many of its r directions an update uses (sec. 7.1).

Both are ``matplotlib.figure.Figure`` objects built directly, never through ``pyplot``; sizes,
fonts, grid, spines, line styles, markers and legends come from the house style, so they look
like every other figure of the workbench.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import matplotlib.cm
import matplotlib.colors
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator
from torch import nn

from workbench.lessons.delta_w import SPECTRUM_FLOOR, MatrixLike, _layer_svd, _require_layers
from workbench.lora.paths import layer_index
from workbench.viz.style import FIGSIZE, LINESTYLES, MARKERS, STYLE, label_axes, legend_options, style_axes

#: Heat maps with at most this many cells print each value in its cell.
ANNOTATE_MAX_CELLS = 100
#: Up to this many layers the spectrum has one legend entry per layer; above it, colour
#: shows the block number (colour bar) and line style the role (query, value, ...).
LEGEND_MAX_LINES = 10


def _index_ticks(n: int, most: int = 16) -> list[int]:
    """Tick positions 1, step, 2 step, ..., n-ish for an index running 1..n (step 1, 2, 4, 8, ...)."""
    step = 1
    while n / step > most:
        step *= 2
    ticks = [1] + list(range(step, n + 1, step))
    return sorted(set(ticks))


def similarity_heatmap(
    grid: MatrixLike,
    label1: str = "A1",
    label2: str = "A2",
    title: str | None = None,
    annotate: bool | None = None,
    cmap: str = "viridis",
) -> Figure:
    """The paper's Figure 3 style heat map of phi(i, j) from ``subspace_similarity_grid``.

    i (top-i directions of ``label1``) runs down the y axis from 1 at the top, j (top-j
    of ``label2``) along the x axis; the colour scale is fixed to 0..1 so maps of
    different pairs compare by eye.  Each cell shows its value when there are at most
    ``ANNOTATE_MAX_CELLS`` cells (``annotate`` forces it on or off).
    """
    g = np.asarray(grid.detach().cpu() if isinstance(grid, torch.Tensor) else grid, dtype=float)
    if g.ndim != 2 or g.size == 0:
        raise ValueError(f"grid must be a non-empty 2-D array (r1 x r2), got shape {g.shape}")
    if not np.isfinite(g).all() or g.min() < -1e-9 or g.max() > 1 + 1e-9:
        raise ValueError("grid values must be finite and in [0, 1], as phi from subspace_similarity_grid is")
    r1, r2 = g.shape
    wide = max(r1, r2) / min(r1, r2) > 2
    size = (7.0, 3.4 + 0.04 * r1) if wide and r2 > r1 else (5.8, 4.8)
    fig = Figure(figsize=size, layout="constrained", facecolor=STYLE["face_color"])
    ax = fig.add_subplot()
    style_axes(ax, grid_axis=None)  # a heat map has no grid
    image = ax.imshow(
        np.clip(g, 0.0, 1.0), cmap=cmap, vmin=0.0, vmax=1.0, origin="upper", interpolation="nearest",
        extent=(0.5, r2 + 0.5, r1 + 0.5, 0.5), aspect="auto" if wide else "equal",
    )
    ax.set_xticks(_index_ticks(r2))
    ax.set_yticks(_index_ticks(r1))
    ax.set_xlim(0.5, r2 + 0.5)
    ax.set_ylim(r1 + 0.5, 0.5)
    if annotate is None:
        annotate = r1 * r2 <= ANNOTATE_MAX_CELLS
    if annotate:
        font = STYLE["annotation_size"] if r1 * r2 <= 64 else STYLE["annotation_size"] - 2
        for a in range(r1):
            for b in range(r2):
                ax.text(b + 1, a + 1, f"{g[a, b]:.2f}", ha="center", va="center", fontsize=font,
                        color="white" if g[a, b] < 0.55 else "black")
    label_axes(ax, title or f"Subspace similarity φ({label1}, {label2}, i, j)",
               f"j: top-j right singular vectors of {label2}", f"i: top-i directions of {label1}")
    bar = fig.colorbar(image, ax=ax, shrink=0.9)
    bar.set_label("φ(i, j) = ||V1[:, :i]ᵀ V2[:, :j]||²_F / min(i, j)", fontsize=STYLE["legend_size"],
                  color=STYLE["text_color"])
    bar.ax.tick_params(labelsize=STYLE["tick_size"], colors=STYLE["text_color"])
    return fig


def _spectra(source: Any) -> dict[str, np.ndarray]:
    """Layer path -> singular values, from a model, a delta_report frame or a mapping."""
    if isinstance(source, nn.Module):
        out = {}
        for path, layer in _require_layers(source).items():
            out[path] = _layer_svd(layer)[1].numpy()
        return out
    if isinstance(source, pd.DataFrame):
        missing = {"layer", "singular_values"} - set(source.columns)
        if missing:
            raise ValueError(
                "a report needs the columns 'layer' and 'singular_values' (from delta_report); "
                f"missing {sorted(missing)}"
            )
        items = zip(source["layer"], source["singular_values"])
    elif isinstance(source, Mapping):
        items = source.items()
    else:
        raise TypeError(
            "spectrum_figure takes a model with LoRA layers, a delta_report DataFrame, or a mapping "
            f"{{layer: singular values}}, not {type(source).__name__}"
        )
    out = {}
    for name, values in items:
        s = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=float)
        if s.ndim != 1 or s.size == 0 or not np.isfinite(s).all() or (s < 0).any():
            raise ValueError(f"the singular values of {name!r} must be a non-empty 1-D list of finite numbers >= 0")
        out[str(name)] = np.sort(s)[::-1]
    if not out:
        raise ValueError("no layers to plot: the report or mapping is empty")
    return out


def _common_prefix(paths: Sequence[str]) -> str:
    """The longest prefix ending in '.' shared by all paths ('bert.encoder.layer.')."""
    if len(paths) < 2:
        return ""
    first, last = min(paths), max(paths)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[: first.rfind(".", 0, n) + 1] if "." in first[:n] else ""


def _role(path: str, prefix: str = "") -> str:
    """What a layer does: the path after its block number ('attention.self.query'), or
    the path without the common prefix for a layer outside the blocks ('pooler.dense')."""
    parts = re.split(r"\.\d+\.", path, maxsplit=1)
    return parts[1] if len(parts) == 2 else path[len(prefix):] or path


def spectrum_figure(
    source: nn.Module | pd.DataFrame | Mapping[str, Any],
    layers: Sequence[str] | None = None,
    normalize: bool = False,
    title: str | None = None,
) -> Figure:
    """Singular values sigma_1 >= ... >= sigma_r of Delta W in each layer, on a log axis.

    ``source`` is a model with LoRA layers, a ``delta_report`` DataFrame (its
    ``singular_values`` column) or a mapping {layer: singular values}; ``layers`` picks
    some of them by path.  ``normalize`` plots sigma_k / sigma_1 so layers of different
    size compare by shape.  A steep drop after a few k means the update uses fewer
    directions than its rank allows.  Values below ``SPECTRUM_FLOOR`` * sigma_1 are
    rounding noise of an exact zero and are not drawn; the legend gives each layer's
    numerical rank counted the same way.  Up to ``LEGEND_MAX_LINES`` layers each gets a
    legend entry; with more, colour shows the block number and line style the role.
    """
    spectra = _spectra(source)
    if layers is not None:
        if isinstance(layers, str):
            layers = [layers]
        unknown = [p for p in layers if p not in spectra]
        if unknown:
            shown = ", ".join(list(spectra)[:6]) + (" ..." if len(spectra) > 6 else "")
            raise ValueError(f"unknown layers {unknown}; available: {shown}")
        spectra = {p: spectra[p] for p in layers}
    many = len(spectra) > LEGEND_MAX_LINES
    fig = Figure(figsize=(FIGSIZE[0], FIGSIZE[1] + 0.8) if many else FIGSIZE, layout="constrained",
                 facecolor=STYLE["face_color"])
    ax = fig.add_subplot()
    style_axes(ax)
    prefix = _common_prefix(list(spectra))
    roles = list(dict.fromkeys(_role(p, prefix) for p in spectra))
    blocks = [b for b in (layer_index(p) for p in spectra) if b is not None]
    cmap = matplotlib.colormaps["viridis"]
    b_lo, b_hi = (min(blocks), max(blocks)) if blocks else (0, 0)
    drawn = 0
    for n, (path, s) in enumerate(spectra.items()):
        keep = s > SPECTRUM_FLOOR * s[0] if s[0] > 0 else np.zeros_like(s, dtype=bool)
        rank = int(keep.sum())
        y = (s / s[0] if normalize else s)[keep] if rank else np.array([])
        x = np.arange(1, len(s) + 1)[keep]
        short = path[len(prefix):] or path
        if many:
            block = layer_index(path)
            t = 0.0 if block is None or b_hi == b_lo else (block - b_lo) / (b_hi - b_lo)
            color = cmap(0.05 + 0.8 * t) if block is not None else STYLE["spine_color"]
            which = roles.index(_role(path, prefix))
            style, marker = LINESTYLES[which % len(LINESTYLES)], MARKERS[which % len(MARKERS)]
            label = None
        else:
            color, style, marker = f"C{n % 10}", "-", MARKERS[n % len(MARKERS)]
            label = f"{short} (rank {rank})"
        if rank:
            ax.plot(x, y, linestyle=style, marker=marker, markersize=STYLE["marker_size"] - 2,
                    linewidth=STYLE["line_width"], color=color, label=label)
            drawn += 1
        elif label is not None:
            ax.plot([], [], linestyle=style, marker=marker, color=color, label=f"{short} (ΔW = 0)")
    label_axes(ax, title or "Singular values of ΔW = s·B·A per layer", "k (singular values in decreasing order)",
               "σ_k / σ_1 of ΔW" if normalize else "singular value σ_k of ΔW")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if drawn:
        ax.set_yscale("log")
        low, high = ax.get_ylim()
        if high / low < 100:  # under two decades: label the ticks as plain numbers, not 7x10^-1
            plain = FuncFormatter(lambda v, _: f"{v:.3g}")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
    else:
        ax.text(0.5, 0.5, "ΔW = 0 in every layer:\nB starts at zero, so nothing has been learned yet",
                transform=ax.transAxes, ha="center", va="center", fontsize=STYLE["label_size"], color=STYLE["text_color"])
    if many:
        handles = [Line2D([], [], color=STYLE["text_color"], linestyle=LINESTYLES[i % len(LINESTYLES)],
                          marker=MARKERS[i % len(MARKERS)], label=r) for i, r in enumerate(roles)]
        fig.legend(handles=handles, **{**legend_options(), "frameon": False}, loc="outside lower center",
                   ncols=min(len(handles), 4), title="line style: role of the layer", title_fontsize=STYLE["legend_size"])
        if blocks and b_hi > b_lo:
            norm = matplotlib.colors.Normalize(vmin=b_lo, vmax=b_hi)
            mappable = matplotlib.cm.ScalarMappable(
                norm=norm, cmap=matplotlib.colors.ListedColormap(cmap(np.linspace(0.05, 0.85, 256))))
            bar = fig.colorbar(mappable, ax=ax, shrink=0.9)
            bar.set_label("block (layer index)", fontsize=STYLE["legend_size"], color=STYLE["text_color"])
            bar.ax.tick_params(labelsize=STYLE["tick_size"], colors=STYLE["text_color"])
            bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        ax.legend(**legend_options(), loc="best", title=f"{prefix}…" if prefix else None,
                  title_fontsize=STYLE["legend_size"])
    return fig


__all__ = ["similarity_heatmap", "spectrum_figure", "ANNOTATE_MAX_CELLS", "LEGEND_MAX_LINES"]

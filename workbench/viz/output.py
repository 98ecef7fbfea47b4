"""What leaves the viz layer: the set of comparison figures, and figures as files or PNG bytes.

The report (``workbench.records.report``) and the panel's compare tab show the same four
figures (``comparison_figures``), so a figure in a report is the figure the user saw.
``save_figure`` writes each format atomically and without a creation date (the same
figure gives the same file); ``figure_to_png_bytes`` feeds an ipywidgets Image.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from workbench.engine.config import RunResult
from workbench.util.fileio import atomic_write
from workbench.viz.memory_figures import memory_breakdown
from workbench.viz.run_figures import accuracy_vs_params, loss_curves, params_vs_rank
from workbench.viz.style import check_results

#: Resolution for PNG files written by ``save_figure``.
SAVE_DPI = 150


def comparison_figures(results: Iterable[RunResult]) -> dict[str, Figure]:
    """The four comparison figures, by name, for the report and the panel's compare tab."""
    runs = check_results(results)
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

"""Figures out of the house (``workbench.viz.output``): the comparison set, files written
atomically in each format, PNG bytes for the panel."""

from __future__ import annotations


import pytest
from figure_runs import PNG_MAGIC
from matplotlib.figure import Figure

from workbench.viz import memory_figures, output, run_figures, style


def test_comparison_figures(runs):
    figs = output.comparison_figures(runs)
    assert list(figs) == ["loss_curves", "params_vs_rank", "memory_breakdown", "accuracy_vs_params"]
    assert all(isinstance(f, Figure) and not style.is_message_figure(f) for f in figs.values())


# ----------------------------------------------------------------------- files


def test_save_figure_png_svg_atomic(tmp_path, runs):
    fig = run_figures.loss_curves(runs)
    paths = output.save_figure(fig, tmp_path / "sub" / "loss")
    assert paths == [tmp_path / "sub" / "loss.png", tmp_path / "sub" / "loss.svg"]
    assert paths[0].read_bytes().startswith(PNG_MAGIC)
    svg = paths[1].read_text(encoding="utf-8")
    assert "<svg" in svg and svg.rstrip().endswith("</svg>")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["loss.png", "loss.svg"]
    # PDF too, and the PNG size follows the dpi: the figure's inches (7 in wide, whatever the
    # legend: it sits under the axes and adds height) at 150 dpi.
    (pdf,) = output.save_figure(fig, tmp_path / "loss", formats=("pdf",))
    assert pdf.read_bytes().startswith(b"%PDF")
    png = paths[0].read_bytes()
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    w_in, h_in = fig.get_size_inches()
    assert w_in == 7.0 and h_in > 4.2
    assert abs(width - w_in * 150) <= 1 and height == round(h_in * 150)


def test_save_figure_rejects_unknown_format(tmp_path, runs):
    with pytest.raises(ValueError, match="allowed"):
        output.save_figure(run_figures.loss_curves(runs), tmp_path / "x", formats=("jpg",))
    assert list(tmp_path.iterdir()) == []


def test_png_bytes(runs):
    fig = memory_figures.memory_breakdown(runs)
    data = output.figure_to_png_bytes(fig, dpi=80)
    assert data.startswith(PNG_MAGIC)
    # The whole figure at the asked resolution: pixels = inches * dpi.
    w_in, h_in = fig.get_size_inches()
    assert int.from_bytes(data[16:20], "big") == round(w_in * 80)
    assert int.from_bytes(data[20:24], "big") == round(h_in * 80)

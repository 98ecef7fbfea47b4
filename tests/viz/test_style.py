"""The house style (``workbench.viz.style``): a message figure for empty input, clear errors for
the wrong input, colours by rank, counts for people, and no pyplot or global style change."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from figure_runs import figure_png_ok

from workbench.viz import memory_figures, run_figures, style

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("fn", [run_figures.loss_curves, run_figures.params_vs_rank,
                                memory_figures.memory_breakdown, run_figures.accuracy_vs_params])
def test_empty_input_gives_message_figure(fn):
    fig = fn([])
    assert style.is_message_figure(fig)
    assert any("no " in t.get_text() for t in fig.axes[0].texts)
    assert figure_png_ok(fig)


def test_wrong_input_type_is_a_clear_error(runs):
    with pytest.raises(TypeError, match="single RunResult"):
        run_figures.loss_curves(runs[0])
    with pytest.raises(TypeError, match=r"results\[1\]"):
        run_figures.loss_curves([runs[0], "not a run"])
    with pytest.raises(TypeError, match="DataFrame"):
        run_figures.live_loss([1, 2, 3])


def test_rank_colour_follows_log2_rank():
    # Doubling the rank moves equally far along the colormap; same rank, same colour.
    assert style.rank_color(8) == style.rank_color(8)
    assert len({style.rank_color(r) for r in (1, 2, 4, 8, 16, 32, 64)}) == 7
    assert style.rank_color(512) == style.rank_color(256)  # clipped to the scale
    with pytest.raises(ValueError, match="positive integer"):
        style.rank_color(0)


def test_human_count():
    assert style.human_count(770) == "770"
    assert style.human_count(38_402) == "38.4k"
    assert style.human_count(1_000_000) == "1M"
    assert style.human_count(22_713_986) == "22.7M"
    assert style.human_count(150_000) == "150k"


def test_no_pyplot_and_no_global_style_change():
    code = textwrap.dedent(
        """
        import sys, matplotlib, tempfile, pathlib
        def snapshot():  # reading rcParams["backend"] itself would import pyplot
            return {k: str(matplotlib.rcParams[k]) for k in matplotlib.rcParams if k != "backend"}
        before = snapshot()
        import pandas as pd
        from workbench.viz import output, run_figures
        h = pd.DataFrame({"step": [1, 2], "train_loss": [1.0, 0.5], "lr": [1e-3, 1e-3],
                          "eval_loss": [float("nan"), 0.6], "eval_accuracy": [float("nan"), 0.8]})
        fig = run_figures.live_loss(h, "t", total_steps=5)
        output.figure_to_png_bytes(fig)
        with tempfile.TemporaryDirectory() as d:
            output.save_figure(fig, pathlib.Path(d) / "f", formats=("png", "svg", "pdf"))
        output.comparison_figures([])
        assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
        after = snapshot()
        changed = [k for k in before if before[k] != after[k]]
        assert not changed, changed
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"

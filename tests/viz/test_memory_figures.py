"""The memory figures (``workbench.viz.memory_figures``): stacked components in MB, measured
peaks on and off the scale, a QLoRA bar's quantized weights hatched."""

from __future__ import annotations


import numpy as np
import pytest
from figure_runs import FakeMemory, fake_run, texts_ok
from matplotlib.collections import LineCollection
from matplotlib.container import BarContainer

from workbench.engine.config import RunConfig
from workbench.lora.config import LoRAConfig
from workbench.viz import memory_figures, style


def test_memory_bars_stack_components_in_mb(runs):
    fig = memory_figures.memory_breakdown(runs)
    texts_ok(fig)
    ax = fig.axes[0]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [b.get_label() for b in bars] == [lbl for _, lbl, _ in style.MEMORY_COMPONENTS]
    expected_bottom = np.zeros(len(runs))
    for (attr, _, _), container in zip(style.MEMORY_COMPONENTS, bars):
        mb = np.array([getattr(r.memory, attr) / 1e6 for r in runs])
        np.testing.assert_allclose([p.get_height() for p in container.patches], mb)
        np.testing.assert_allclose([p.get_y() for p in container.patches], expected_bottom)
        expected_bottom += mb
    # Full fine-tuning is among the bars, labelled; totals in the annotations.
    ticks = [t.get_text().replace("\n", " ") for t in ax.get_xticklabels()]
    assert ticks == ["LoRA r=2", "LoRA r=8", "full fine-tuning", "head only"]
    assert "LoRA runs: targets query,value" in ax.get_title(loc="left")
    notes = [t.get_text() for t in ax.texts]
    assert notes[1] == f"{(91 + 0.6 + 1.2 + 41):.0f} MB"
    assert notes[2] == f"{(91 + 91 + 182 + 45):.0f} MB\n(peak 420 MB)"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["activations", "optimizer state", "gradients", "weights",
                      "measured peak (cuda allocated)"]


def test_memory_tick_labels_break_between_words_and_the_figure_fits_the_panel():
    from workbench.viz.memory_figures import _tick_label

    text = _tick_label("LoRA r=8 (query,key,value,attention output,FFN in,FFN out) · lr=0.003")
    words = {"query", "key", "value", "attention", "output", "FFN", "in", "out", "LoRA", "r=8", "lr=0.003"}
    pieces = {w.strip("(),") for line in text.splitlines() for w in line.replace(",", " ").split()}
    assert pieces <= words, text  # no word cut in two
    assert text.replace("\n", " ").replace(", ", ",").replace("(", " (").count("attention output") == 1
    six = [fake_run(RunConfig(method="lora", lora=LoRAConfig(rank=r)), 100 * r, FakeMemory(9, 1, 2, 4), 0.7, 0.8)
           for r in (1, 2, 4, 8, 16, 32)]
    assert memory_figures.memory_breakdown(six).get_size_inches()[0] <= memory_figures.MAX_WIDTH


def test_memory_peak_markers(runs):
    ax = memory_figures.memory_breakdown(runs).axes[0]
    (peaks,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert "cuda allocated" in peaks.get_label()
    segs = peaks.get_segments()
    # Runs 0 and 2 have a peak; each segment is horizontal at peak/1e6 over the run's bar.
    assert [s[0][1] for s in segs] == [131.0, 420.0]
    assert [s[1][1] for s in segs] == [131.0, 420.0]
    assert [round((s[0][0] + s[1][0]) / 2, 9) for s in segs] == [0.0, 2.0]


def test_memory_peak_far_above_the_stacks_is_off_scale(runs):
    # A CPU process's resident memory dwarfs the tensors: the scale follows the stacks.
    runs[1].memory.peak, runs[1].memory.peak_kind = 1_650_000_000, "process RSS"
    ax = memory_figures.memory_breakdown(runs).axes[0]
    top = ax.get_ylim()[1]
    assert 420 <= top < 1650  # the full run's on-scale peak (420 MB) fits, 1650 MB does not
    (marker,) = [ln for ln in ax.get_lines() if "above the axis" in ln.get_label()]
    assert "process RSS" in marker.get_label()
    assert list(marker.get_xdata()) == [1.0] and marker.get_ydata()[0] == pytest.approx(0.965 * top)
    assert ax.texts[1].get_text() == "134 MB\n(peak 1.65 GB)"  # format_bytes: GB from 10**9 bytes
    (peaks,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert [s[0][1] for s in peaks.get_segments()] == [131.0, 420.0]


def test_a_qlora_bar_stands_beside_lora_and_full_with_its_quantized_weights_hatched(runs):
    # A QLoRA run of the same rank as runs[1]: the same LoRA, its base's block linears in NF4.
    qlora = fake_run(RunConfig(method="lora", lora=LoRAConfig(rank=8), quantize="nf4"), 148_994,
                 FakeMemory(30_000_000, 600_000, 1_200_000, 41_000_000), 0.69, 0.86)
    shown = [runs[1], qlora, runs[2]]
    fig = memory_figures.memory_breakdown(shown)
    texts_ok(fig)
    ax = fig.axes[0]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [b.get_label() for b in bars] == [lbl for _, lbl, _ in style.MEMORY_COMPONENTS]
    weights = bars[0].patches
    np.testing.assert_allclose([p.get_height() for p in weights], [91, 30, 91])  # as measured, in MB
    assert [p.get_hatch() for p in weights] == [None, memory_figures.QUANTIZED_HATCH, None]
    # The other components are not hatched: only the weights are stored differently.
    assert all(p.get_hatch() is None for b in bars[1:] for p in b.patches)
    ticks = [t.get_text().replace("\n", " ") for t in ax.get_xticklabels()]
    assert ticks == ["LoRA", "QLoRA, NF4 base", "full fine-tuning"]
    assert "LoRA runs: r=8, targets query,value" in ax.get_title(loc="left")
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["activations", "optimizer state", "gradients", "weights", memory_figures.QUANTIZED_WEIGHTS_LABEL,
                      "measured peak (cuda allocated)"]
    # No quantized run: no hatch and no legend entry for it.
    legend = [t.get_text() for t in memory_figures.memory_breakdown(runs).axes[0].get_legend().get_texts()]
    assert memory_figures.QUANTIZED_WEIGHTS_LABEL not in legend


def test_memory_skips_runs_without_breakdown(runs):
    runs[1].memory = None
    ax = memory_figures.memory_breakdown(runs).axes[0]
    assert len(ax.containers[0].patches) == 3

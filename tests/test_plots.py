"""The plots draw exactly the numbers they are given, in a figure built without pyplot."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.container import BarContainer
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

from workbench.viz import plots
from workbench.engine.config import ParamCounts, RunConfig, RunResult, Timing
from workbench.lora.config import LoRAConfig

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class FakeMemory:
    """Stand-in for workbench.engine.memory.MemoryBreakdown (same field names)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    peak: int | None = None
    peak_kind: str = ""


def _history(steps: int, start: float, decay: float, eval_every: int, acc: float) -> pd.DataFrame:
    """A loss curve start * decay**step with evaluations every eval_every steps."""
    step = np.arange(1, steps + 1)
    train = start * decay**step
    ev = step % eval_every == 0
    return pd.DataFrame({
        "step": step,
        "train_loss": train,
        "lr": np.full(steps, 1e-3),
        "eval_loss": np.where(ev, train + 0.05, np.nan),
        "eval_accuracy": np.where(ev, acc - 0.01 * (steps - step) / steps, np.nan),
    })


def _run(config: RunConfig, trainable: int, mem: FakeMemory | None, start: float, acc: float,
         status: str = "completed") -> RunResult:
    return RunResult(
        config=config, status=status,  # type: ignore[arg-type]
        history=_history(30, start, 0.97, 10, acc),
        params=ParamCounts(trainable=trainable, total=22_713_216),
        memory=mem, timing=Timing(0.1, 1000.0, 5.0),
    )


@pytest.fixture()
def runs() -> list[RunResult]:
    return [
        _run(RunConfig(method="lora", lora=LoRAConfig(rank=2)), 38_402,
             FakeMemory(90_000_000, 150_000, 300_000, 40_000_000, 131_000_000, "cuda allocated"),
             0.70, 0.84),
        _run(RunConfig(method="lora", lora=LoRAConfig(rank=8)), 148_994,
             FakeMemory(91_000_000, 600_000, 1_200_000, 41_000_000), 0.69, 0.87),
        _run(RunConfig(method="full"), 22_713_986,
             FakeMemory(91_000_000, 91_000_000, 182_000_000, 45_000_000, 420_000_000,
                        "cuda allocated"),
             0.68, 0.90),
        _run(RunConfig(method="head"), 770,
             FakeMemory(91_000_000, 3_080, 6_160, 20_000_000), 0.72, 0.78),
    ]


def _texts_ok(fig: Figure) -> None:
    ax = fig.axes[0]
    assert ax.get_title(loc="left").strip() and ax.get_xlabel().strip() and ax.get_ylabel().strip()


# ----------------------------------------------------------------------- loss curves


def test_loss_curves_lines_are_the_histories(runs):
    fig = plots.loss_curves(runs)
    _texts_ok(fig)
    ax = fig.axes[0]
    lines = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    assert [ln.get_label() for ln in lines] == [r.config.label() for r in runs]
    for ln, r in zip(lines, runs):
        np.testing.assert_array_equal(ln.get_xdata(), r.history["step"].to_numpy(float))
        np.testing.assert_array_equal(ln.get_ydata(), r.history["train_loss"].to_numpy(float))
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [r.config.label() for r in runs]
    # Fixed colours: full and head have their reference colours, the two ranks differ.
    colors = [ln.get_color() for ln in lines]
    assert colors[2] == plots.FULL_COLOR and colors[3] == plots.HEAD_COLOR
    assert colors[0] != colors[1]


def test_loss_curves_eval_markers_at_eval_steps(runs):
    ax = plots.loss_curves(runs, eval=True).axes[0]
    markers = [ln for ln in ax.get_lines() if ln.get_linestyle() == "None" and len(ln.get_xdata())]
    assert len(markers) == len(runs)
    for ln, r in zip(markers, runs):
        ev = r.history.dropna(subset=["eval_loss"])
        np.testing.assert_array_equal(ln.get_xdata(), ev["step"].to_numpy(float))
        np.testing.assert_array_equal(ln.get_ydata(), ev["eval_loss"].to_numpy(float))
    assert "eval loss (markers)" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_loss_curves_drop_non_finite_and_mark_status(runs):
    r = runs[0]
    r.history.loc[25:, "train_loss"] = np.inf
    r.status = "diverged"
    ax = plots.loss_curves([r]).axes[0]
    (ln,) = ax.get_lines()
    assert len(ln.get_xdata()) == 25 and np.isfinite(ln.get_ydata()).all()
    assert ln.get_label() == f"{r.config.label()} [diverged]"


def test_same_rank_runs_get_distinct_line_styles(runs):
    twin = _run(RunConfig(method="lora", lora=LoRAConfig(rank=8, targets=["query", "key", "value"])),
                200_000, None, 0.6, 0.8)
    ax = plots.loss_curves([runs[1], twin]).axes[0]
    a, b = ax.get_lines()
    assert a.get_color() == b.get_color()
    assert a.get_linestyle() != b.get_linestyle()


# ----------------------------------------------------------------------- params vs rank


def test_params_vs_rank_points_and_reference_lines(runs):
    fig = plots.params_vs_rank(runs)
    _texts_ok(fig)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.xaxis.get_transform().base == 2
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    measured = next(ln for lbl, ln in lines.items() if "measured" in lbl)
    np.testing.assert_array_equal(measured.get_xdata(), [2, 8])
    np.testing.assert_array_equal(measured.get_ydata(), [38_402, 148_994])
    full = next(ln for lbl, ln in lines.items() if lbl.startswith("full fine-tuning"))
    head = next(ln for lbl, ln in lines.items() if lbl.startswith("head only"))
    assert set(full.get_ydata()) == {22_713_986}
    assert set(head.get_ydata()) == {770}
    assert "22.7M" in full.get_label()
    assert list(ax.get_xticks()) == [2, 4, 8]  # every power of two between the ranks


def test_params_vs_rank_predicted_only_before_any_run():
    table = pd.DataFrame({"rank": [16, 1, 4], "trainable": [295_682, 19_202, 74_498]})
    ax = plots.params_vs_rank(predicted=table, full_total=22_713_986).axes[0]
    (pred,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("predicted")]
    np.testing.assert_array_equal(pred.get_xdata(), [1, 4, 16])  # sorted by rank
    np.testing.assert_array_equal(pred.get_ydata(), [19_202, 74_498, 295_682])
    (full,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("full")]
    assert set(full.get_ydata()) == {22_713_986}
    # A {rank: count} mapping is the same picture.
    ax2 = plots.params_vs_rank(predicted={1: 19_202, 4: 74_498}).axes[0]
    np.testing.assert_array_equal(ax2.get_lines()[0].get_ydata(), [19_202, 74_498])


def test_params_vs_rank_explicit_full_total_wins(runs):
    ax = plots.params_vs_rank(runs, full_total=1_000_000).axes[0]
    (full,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("full")]
    assert set(full.get_ydata()) == {1_000_000}


def test_params_vs_rank_bad_input():
    with pytest.raises(ValueError, match="missing"):
        plots.params_vs_rank(predicted=pd.DataFrame({"r": [1], "trainable": [2]}))
    with pytest.raises(ValueError, match="positive"):
        plots.params_vs_rank(predicted={0: 5})
    with pytest.raises(ValueError, match="full_total"):
        plots.params_vs_rank(predicted={1: 5}, full_total=-3)


# ----------------------------------------------------------------------- memory


def test_memory_bars_stack_components_in_mb(runs):
    fig = plots.memory_breakdown(runs)
    _texts_ok(fig)
    ax = fig.axes[0]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [b.get_label() for b in bars] == [lbl for _, lbl, _ in plots.MEMORY_COMPONENTS]
    expected_bottom = np.zeros(len(runs))
    for (attr, _, _), container in zip(plots.MEMORY_COMPONENTS, bars):
        mb = np.array([getattr(r.memory, attr) / 1e6 for r in runs])
        np.testing.assert_allclose([p.get_height() for p in container.patches], mb)
        np.testing.assert_allclose([p.get_y() for p in container.patches], expected_bottom)
        expected_bottom += mb
    # Full fine-tuning is among the bars, labelled; totals in the annotations.
    ticks = [t.get_text().replace("\n", " ") for t in ax.get_xticklabels()]
    assert ticks == [r.config.label() for r in runs]
    notes = [t.get_text() for t in ax.texts]
    assert notes[1] == f"{(91 + 0.6 + 1.2 + 41):.0f} MB"
    assert notes[2] == f"{(91 + 91 + 182 + 45):.0f} MB\n(peak 420 MB)"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["activations", "optimizer state", "gradients", "weights",
                      "measured peak (cuda allocated)"]


def test_memory_peak_markers(runs):
    ax = plots.memory_breakdown(runs).axes[0]
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
    ax = plots.memory_breakdown(runs).axes[0]
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
    qlora = _run(RunConfig(method="lora", lora=LoRAConfig(rank=8), quantize="nf4"), 148_994,
                 FakeMemory(30_000_000, 600_000, 1_200_000, 41_000_000), 0.69, 0.86)
    shown = [runs[1], qlora, runs[2]]
    fig = plots.memory_breakdown(shown)
    _texts_ok(fig)
    ax = fig.axes[0]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [b.get_label() for b in bars] == [lbl for _, lbl, _ in plots.MEMORY_COMPONENTS]
    weights = bars[0].patches
    np.testing.assert_allclose([p.get_height() for p in weights], [91, 30, 91])  # as measured, in MB
    assert [p.get_hatch() for p in weights] == [None, plots.QUANTIZED_HATCH, None]
    # The other components are not hatched: only the weights are stored differently.
    assert all(p.get_hatch() is None for b in bars[1:] for p in b.patches)
    ticks = [t.get_text().replace("\n", " ") for t in ax.get_xticklabels()]
    assert ticks == ["LoRA r=8 (query,value)", "QLoRA r=8 (query,value), NF4 base", "full fine-tuning"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["activations", "optimizer state", "gradients", "weights", plots.QUANTIZED_WEIGHTS_LABEL,
                      "measured peak (cuda allocated)"]
    # No quantized run: no hatch and no legend entry for it.
    legend = [t.get_text() for t in plots.memory_breakdown(runs).axes[0].get_legend().get_texts()]
    assert plots.QUANTIZED_WEIGHTS_LABEL not in legend


def test_memory_skips_runs_without_breakdown(runs):
    runs[1].memory = None
    ax = plots.memory_breakdown(runs).axes[0]
    assert len(ax.containers[0].patches) == 3


# ----------------------------------------------------------------------- accuracy


def test_accuracy_points_are_final_eval_accuracy(runs):
    fig = plots.accuracy_vs_params(runs)
    _texts_ok(fig)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(points) == len(runs)
    for pc, r in zip(points, runs):
        final_acc = r.history["eval_accuracy"].dropna().iloc[-1]
        np.testing.assert_allclose(pc.get_offsets(), [[r.params.trainable, final_acc]])
        assert pc.get_label() == r.config.label()
    assert [t.get_text() for t in ax.texts] == ["r=2", "r=8", "full", "head"]


def _sweep_at_the_top() -> list[RunResult]:
    """The default sweep as it comes out on the bundled task: every LoRA run and full
    fine-tuning at or near 100 %, head only at chance (the README's numbers)."""
    lora = [(1, 1.0), (2, 0.996), (4, 1.0), (8, 1.0), (16, 0.992), (32, 1.0)]
    out = [_run(RunConfig(method="lora", lora=LoRAConfig(rank=r)), 770 + r * 9_216, None, 0.7, acc)
           for r, acc in lora]
    return out + [_run(RunConfig(method="full"), 22_713_986, None, 0.7, 1.0),
                  _run(RunConfig(method="head"), 770, None, 0.7, 0.514)]


def _extents(fig: Figure):
    """Draw with the Agg renderer; the window extents (pixels) of the title, the point labels, the axes."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    ax = fig.axes[0]
    title = ax.get_title(loc="left")
    (title_text,) = [t for t in ax.get_children() if isinstance(t, Text) and t.get_text() == title]
    labels = {t.get_text(): t.get_window_extent(renderer) for t in ax.texts}
    return title_text.get_window_extent(renderer), labels, ax.get_window_extent(renderer)


@pytest.mark.parametrize("case", ["sweep at 100%", "fixture runs"])
def test_accuracy_labels_stay_clear_of_the_title(case, runs):
    """Defect: the labels of points at 100 % were drawn over the title; each label must sit inside the axes."""
    results = _sweep_at_the_top() if case == "sweep at 100%" else runs
    fig = plots.accuracy_vs_params(results)
    title, labels, axes = _extents(fig)
    assert len(labels) == len(results)
    for text, box in labels.items():
        assert not box.overlaps(title), f"label {text!r} {box.bounds} overlaps the title {title.bounds}"
        assert box.y1 <= axes.y1 and box.y0 >= axes.y0, f"label {text!r} leaves the axes {axes.bounds}"
    # Neighbouring ranks of a sweep lie a factor 2 apart: their labels must not run into each other.
    boxes = list(labels.items())
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1:]:
            assert not box_a.overlaps(box_b), f"labels {a!r} and {b!r} overlap"
    # The room above 100 % is not accuracy: no tick there.
    ticks = [v for v in fig.axes[0].get_yticks() if fig.axes[0].get_ylim()[0] <= v <= fig.axes[0].get_ylim()[1]]
    assert max(ticks) == pytest.approx(1.0) if case == "sweep at 100%" else max(ticks) <= 1.0


def test_accuracy_skips_unevaluated_runs(runs):
    runs[0].history["eval_accuracy"] = np.nan
    ax = plots.accuracy_vs_params(runs).axes[0]
    assert len([c for c in ax.collections if isinstance(c, PathCollection)]) == 3


# ----------------------------------------------------------------------- empty, live, bundle


@pytest.mark.parametrize("fn", [plots.loss_curves, plots.params_vs_rank,
                                plots.memory_breakdown, plots.accuracy_vs_params])
def test_empty_input_gives_message_figure(fn):
    fig = fn([])
    assert plots.is_message_figure(fig)
    assert any("no " in t.get_text() for t in fig.axes[0].texts)
    assert figure_png_ok(fig)


def test_no_lora_runs_gives_message(runs):
    fig = plots.params_vs_rank([runs[2], runs[3]])
    assert plots.is_message_figure(fig)
    assert not plots.is_message_figure(plots.params_vs_rank(runs))


def test_wrong_input_type_is_a_clear_error(runs):
    with pytest.raises(TypeError, match="single RunResult"):
        plots.loss_curves(runs[0])
    with pytest.raises(TypeError, match=r"results\[1\]"):
        plots.loss_curves([runs[0], "not a run"])
    with pytest.raises(TypeError, match="DataFrame"):
        plots.live_loss([1, 2, 3])


def test_live_loss(runs):
    h = runs[0].history.iloc[:15]
    fig = plots.live_loss(h, "LoRA r=2", total_steps=30)
    ax = fig.axes[0]
    train, ev = ax.get_lines()
    np.testing.assert_array_equal(train.get_ydata(), h["train_loss"].to_numpy(float))
    np.testing.assert_array_equal(ev.get_xdata(), [10.0])
    assert ax.get_xlim() == (0.0, 30.0)
    assert ax.get_title(loc="left") == "LoRA r=2"
    empty = plots.live_loss(h.iloc[:0], "LoRA r=2")
    assert plots.is_message_figure(empty)


def test_comparison_figures(runs):
    figs = plots.comparison_figures(runs)
    assert list(figs) == ["loss_curves", "params_vs_rank", "memory_breakdown", "accuracy_vs_params"]
    assert all(isinstance(f, Figure) and not plots.is_message_figure(f) for f in figs.values())


def test_rank_colour_follows_log2_rank():
    # Doubling the rank moves equally far along the colormap; same rank, same colour.
    assert plots.rank_color(8) == plots.rank_color(8)
    assert len({plots.rank_color(r) for r in (1, 2, 4, 8, 16, 32, 64)}) == 7
    assert plots.rank_color(512) == plots.rank_color(256)  # clipped to the scale
    with pytest.raises(ValueError, match="positive integer"):
        plots.rank_color(0)


def test_human_count():
    assert plots.human_count(770) == "770"
    assert plots.human_count(38_402) == "38.4k"
    assert plots.human_count(1_000_000) == "1M"
    assert plots.human_count(22_713_986) == "22.7M"
    assert plots.human_count(150_000) == "150k"


# ----------------------------------------------------------------------- files


def figure_png_ok(fig: Figure) -> bool:
    return plots.figure_to_png_bytes(fig, dpi=50).startswith(PNG_MAGIC)


def test_save_figure_png_svg_atomic(tmp_path, runs):
    fig = plots.loss_curves(runs)
    paths = plots.save_figure(fig, tmp_path / "sub" / "loss")
    assert paths == [tmp_path / "sub" / "loss.png", tmp_path / "sub" / "loss.svg"]
    assert paths[0].read_bytes().startswith(PNG_MAGIC)
    svg = paths[1].read_text(encoding="utf-8")
    assert "<svg" in svg and svg.rstrip().endswith("</svg>")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["loss.png", "loss.svg"]
    # PDF too, and the PNG size follows the dpi: the figure's inches (4.2 in tall; wider
    # than 7 in by the legend outside the axes) at 150 dpi.
    (pdf,) = plots.save_figure(fig, tmp_path / "loss", formats=("pdf",))
    assert pdf.read_bytes().startswith(b"%PDF")
    png = paths[0].read_bytes()
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    w_in, h_in = fig.get_size_inches()
    assert h_in == 4.2 and w_in > 7.0
    assert abs(width - w_in * 150) <= 1 and height == round(h_in * 150)


def test_save_figure_rejects_unknown_format(tmp_path, runs):
    with pytest.raises(ValueError, match="allowed"):
        plots.save_figure(plots.loss_curves(runs), tmp_path / "x", formats=("jpg",))
    assert list(tmp_path.iterdir()) == []


def test_png_bytes(runs):
    fig = plots.memory_breakdown(runs)
    data = plots.figure_to_png_bytes(fig, dpi=80)
    assert data.startswith(PNG_MAGIC)
    # The whole figure at the asked resolution: pixels = inches * dpi.
    w_in, h_in = fig.get_size_inches()
    assert int.from_bytes(data[16:20], "big") == round(w_in * 80)
    assert int.from_bytes(data[20:24], "big") == round(h_in * 80)


def test_no_pyplot_and_no_global_style_change():
    code = textwrap.dedent(
        """
        import sys, matplotlib, tempfile, pathlib
        def snapshot():  # reading rcParams["backend"] itself would import pyplot
            return {k: str(matplotlib.rcParams[k]) for k in matplotlib.rcParams if k != "backend"}
        before = snapshot()
        import pandas as pd
        from workbench.viz import plots
        h = pd.DataFrame({"step": [1, 2], "train_loss": [1.0, 0.5], "lr": [1e-3, 1e-3],
                          "eval_loss": [float("nan"), 0.6], "eval_accuracy": [float("nan"), 0.8]})
        fig = plots.live_loss(h, "t", total_steps=5)
        plots.figure_to_png_bytes(fig)
        with tempfile.TemporaryDirectory() as d:
            plots.save_figure(fig, pathlib.Path(d) / "f", formats=("png", "svg", "pdf"))
        plots.comparison_figures([])
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


def test_one_exploding_run_does_not_squash_the_loss_axis(runs):
    """An lr = 10 run climbing to 24 leaves the axis at 1.5 x the highest starting loss, with a note."""
    bad = _run(RunConfig(method="lora", lora=LoRAConfig(rank=2), lr=10.0), 38_402, None, 0.69, 0.5)
    bad.history["train_loss"] = np.linspace(0.69, 24.3, len(bad.history))
    fig = plots.loss_curves([runs[0], bad])
    ax = fig.axes[0]
    starts = [r.history["train_loss"].iloc[0] for r in (runs[0], bad)]
    assert ax.get_ylim() == pytest.approx((0.0, 1.5 * max(starts)))
    notes = [t.get_text() for t in ax.texts]
    assert any("a loss reached 24.3 (off the scale)" in t for t in notes), notes
    # Without an outlier the axis is matplotlib's own (autoscaled to the data).
    top = plots.loss_curves(runs[:2]).axes[0].get_ylim()[1]
    assert top < 1.5 * max(r.history["train_loss"].iloc[0] for r in runs[:2])
    # The legend sits outside the axes: right of them, covering no curve.
    legend = ax.get_legend()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    assert legend.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1


def test_legends_name_what_differs_and_flag_runs_that_did_not_learn(runs):
    a = _run(RunConfig(method="lora", lora=LoRAConfig(rank=1), lr=1e-3), 100, None, 0.69, 0.99)
    b = _run(RunConfig(method="lora", lora=LoRAConfig(rank=1), lr=10.0), 100, None, 0.69, 0.99)
    b.history["train_loss"] = np.linspace(0.69, 24.3, len(b.history))
    names = plots.run_labels([a, b])
    assert names == ["LoRA r=1 (query,value) · lr=0.001", "LoRA r=1 (query,value) · lr=10 [did not learn]"]
    for fig in (plots.loss_curves([a, b]), plots.accuracy_vs_params([a, b])):
        legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert names[0] in legend and names[1] in legend


def test_one_run_gets_distinct_accuracy_ticks(runs):
    """One run at 100 %: the axis still spans several whole percents, each tick written once."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = plots.accuracy_vs_params([_run(RunConfig(method="lora"), 100, None, 0.69, 1.0)])
    FigureCanvasAgg(fig).draw()
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels() if t.get_text()]
    assert len(labels) >= 3 and len(set(labels)) == len(labels) and labels[-1] == "100%", labels

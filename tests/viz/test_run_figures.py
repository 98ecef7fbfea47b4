"""The run figures (``workbench.viz.run_figures``) draw exactly the numbers they are given:
loss curves, trainable parameters against rank, accuracy against parameters, the live curve."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
from figure_runs import fake_run, texts_ok
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.text import Text

from workbench.engine.config import RunConfig, RunResult
from workbench.lora.config import LoRAConfig
from workbench.viz import run_figures, style


# ----------------------------------------------------------------------- loss curves


# The fixture's runs named by what sets them apart; their shared targets are said once, in the title.
FIXTURE_NAMES = ["LoRA r=2", "LoRA r=8", "full fine-tuning", "head only"]
FIXTURE_SHARED = "LoRA runs: targets query,value"


def test_loss_curves_lines_are_the_histories(runs):
    fig = run_figures.loss_curves(runs)
    texts_ok(fig)
    ax = fig.axes[0]
    lines = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    assert [ln.get_label() for ln in lines] == FIXTURE_NAMES
    assert ax.get_title(loc="left").splitlines()[1:] == [FIXTURE_SHARED]
    for ln, r in zip(lines, runs):
        np.testing.assert_array_equal(ln.get_xdata(), r.history["step"].to_numpy(float))
        np.testing.assert_array_equal(ln.get_ydata(), r.history["train_loss"].to_numpy(float))
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == FIXTURE_NAMES
    # One palette colour per run, in order: four runs, four colours.
    colors = [ln.get_color() for ln in lines]
    assert colors == list(style.RUN_PALETTE[:4]) and len(set(colors)) == 4


def test_loss_curves_eval_markers_at_eval_steps(runs):
    ax = run_figures.loss_curves(runs, eval=True).axes[0]
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
    ax = run_figures.loss_curves([r]).axes[0]
    (ln,) = ax.get_lines()
    assert len(ln.get_xdata()) == 25 and np.isfinite(ln.get_ydata()).all()
    assert ln.get_label() == f"{r.config.label()} [diverged]"


def test_same_rank_runs_get_distinct_colours_and_the_palette_repeats_with_a_new_style(runs):
    twin = fake_run(RunConfig(method="lora", lora=LoRAConfig(rank=8, targets=["query", "key", "value"])),
                200_000, None, 0.6, 0.8)
    ax = run_figures.loss_curves([runs[1], twin]).axes[0]
    a, b = ax.get_lines()
    assert a.get_color() != b.get_color()  # r=8 and r=8: not one colour (they were, coloured by rank)
    many = [fake_run(RunConfig(method="lora", lora=LoRAConfig(rank=8), seed=i), 100, None, 0.6, 0.8)
            for i in range(len(style.RUN_PALETTE) + 1)]
    lines = run_figures.loss_curves(many).axes[0].get_lines()
    assert len({ln.get_color() for ln in lines}) == len(style.RUN_PALETTE)
    assert lines[-1].get_color() == lines[0].get_color() and lines[-1].get_linestyle() != lines[0].get_linestyle()


# ----------------------------------------------------------------------- params vs rank


def test_params_vs_rank_points_and_reference_lines(runs):
    fig = run_figures.params_vs_rank(runs)
    texts_ok(fig)
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
    ax = run_figures.params_vs_rank(predicted=table, full_total=22_713_986).axes[0]
    (pred,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("predicted")]
    np.testing.assert_array_equal(pred.get_xdata(), [1, 4, 16])  # sorted by rank
    np.testing.assert_array_equal(pred.get_ydata(), [19_202, 74_498, 295_682])
    (full,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("full")]
    assert set(full.get_ydata()) == {22_713_986}
    # A {rank: count} mapping is the same picture.
    ax2 = run_figures.params_vs_rank(predicted={1: 19_202, 4: 74_498}).axes[0]
    np.testing.assert_array_equal(ax2.get_lines()[0].get_ydata(), [19_202, 74_498])


def test_params_vs_rank_explicit_full_total_wins(runs):
    ax = run_figures.params_vs_rank(runs, full_total=1_000_000).axes[0]
    (full,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("full")]
    assert set(full.get_ydata()) == {1_000_000}


def test_params_vs_rank_bad_input():
    with pytest.raises(ValueError, match="missing"):
        run_figures.params_vs_rank(predicted=pd.DataFrame({"r": [1], "trainable": [2]}))
    with pytest.raises(ValueError, match="positive"):
        run_figures.params_vs_rank(predicted={0: 5})
    with pytest.raises(ValueError, match="full_total"):
        run_figures.params_vs_rank(predicted={1: 5}, full_total=-3)


# ----------------------------------------------------------------------- accuracy


def test_accuracy_points_are_final_eval_accuracy(runs):
    fig = run_figures.accuracy_vs_params(runs)
    texts_ok(fig)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(points) == len(runs)
    for pc, r in zip(points, runs):
        final_acc = r.history["eval_accuracy"].dropna().iloc[-1]
        np.testing.assert_allclose(pc.get_offsets(), [[r.params.trainable, final_acc]])
    assert [pc.get_label() for pc in points] == FIXTURE_NAMES
    assert [t.get_text() for t in ax.texts] == ["r=2", "r=8", "full", "head"]


def _sweep_at_the_top() -> list[RunResult]:
    """The default sweep as it comes out on the bundled task: every LoRA run and full
    fine-tuning at or near 100 %, head only at chance (the README's numbers)."""
    lora = [(1, 1.0), (2, 0.996), (4, 1.0), (8, 1.0), (16, 0.992), (32, 1.0)]
    out = [fake_run(RunConfig(method="lora", lora=LoRAConfig(rank=r)), 770 + r * 9_216, None, 0.7, acc)
           for r, acc in lora]
    return out + [fake_run(RunConfig(method="full"), 22_713_986, None, 0.7, 1.0),
                  fake_run(RunConfig(method="head"), 770, None, 0.7, 0.514)]


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
    fig = run_figures.accuracy_vs_params(results)
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
    ax = run_figures.accuracy_vs_params(runs).axes[0]
    assert len([c for c in ax.collections if isinstance(c, PathCollection)]) == 3


# ----------------------------------------------------------------------- empty input and the live curve


def test_no_lora_runs_gives_message(runs):
    fig = run_figures.params_vs_rank([runs[2], runs[3]])
    assert style.is_message_figure(fig)
    assert not style.is_message_figure(run_figures.params_vs_rank(runs))


def test_live_loss(runs):
    h = runs[0].history.iloc[:15]
    fig = run_figures.live_loss(h, "LoRA r=2", total_steps=30)
    ax = fig.axes[0]
    train, ev = ax.get_lines()
    np.testing.assert_array_equal(train.get_ydata(), h["train_loss"].to_numpy(float))
    np.testing.assert_array_equal(ev.get_xdata(), [10.0])
    assert ax.get_xlim() == (0.0, 30.0)
    assert ax.get_title(loc="left") == "LoRA r=2"
    empty = run_figures.live_loss(h.iloc[:0], "LoRA r=2")
    assert style.is_message_figure(empty)


# ----------------------------------------------------------------------- robust axes and legends


def test_one_exploding_run_does_not_squash_the_loss_axis(runs):
    """An lr = 10 run climbing to 24 leaves the axis at 1.5 x the highest starting loss, with a note."""
    bad = fake_run(RunConfig(method="lora", lora=LoRAConfig(rank=2), lr=10.0), 38_402, None, 0.69, 0.5)
    bad.history["train_loss"] = np.linspace(0.69, 24.3, len(bad.history))
    fig = run_figures.loss_curves([runs[0], bad])
    ax = fig.axes[0]
    starts = [r.history["train_loss"].iloc[0] for r in (runs[0], bad)]
    assert ax.get_ylim() == pytest.approx((0.0, 1.5 * max(starts)))
    notes = [t.get_text() for t in ax.texts]
    assert any("a loss reached 24.3 (off the scale)" in t for t in notes), notes
    # Without an outlier the axis is matplotlib's own (autoscaled to the data).
    top = run_figures.loss_curves(runs[:2]).axes[0].get_ylim()[1]
    assert top < 1.5 * max(r.history["train_loss"].iloc[0] for r in runs[:2])
    # The legend sits outside the axes: under them, covering no curve.
    renderer = _pixels(fig)
    assert ax.get_legend().get_window_extent(renderer).y1 <= ax.get_window_extent(renderer).y0


def test_legends_name_what_differs_and_flag_runs_that_did_not_learn(runs):
    a = fake_run(RunConfig(method="lora", lora=LoRAConfig(rank=1), lr=1e-3), 100, None, 0.69, 0.99)
    b = fake_run(RunConfig(method="lora", lora=LoRAConfig(rank=1), lr=10.0), 100, None, 0.69, 0.99)
    b.history["train_loss"] = np.linspace(0.69, 24.3, len(b.history))
    names, shared = run_figures.run_names([a, b])
    assert names == ["lr=0.001", "lr=10 [did not learn]"] and shared == "all runs: LoRA, r=1, targets query,value"
    for fig in (run_figures.loss_curves([a, b]), run_figures.accuracy_vs_params([a, b])):
        legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert names[0] in legend and names[1] in legend
        assert "all runs: LoRA, r=1, targets query,value" in fig.axes[0].get_title(loc="left")


def _pixels(fig: Figure):
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


@pytest.mark.parametrize("figure", ["loss_curves", "accuracy_vs_params", "params_vs_rank"])
def test_legend_sits_under_the_axes_and_the_figure_keeps_its_width(figure, runs):
    """Defect: the accuracy legend covered the r=1 point; a long legend widened figures to 1,194 px, shown at 894."""
    fig = getattr(run_figures, figure)(runs)
    renderer = _pixels(fig)
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    assert legend.y1 <= ax.get_window_extent(renderer).y0  # below the axes: on no line or point
    assert fig.get_size_inches()[0] == pytest.approx(style.FIGSIZE[0])


def test_coincident_points_are_drawn_apart_and_labelled_once():
    """Defect: float LoRA under QLoRA, r=8 #1 under #2: equal counts and scores drawn on one pixel."""
    lora = fake_run(RunConfig(method="lora", lora=LoRAConfig(rank=8)), 148_994, None, 0.69, 0.87)
    qlora = fake_run(RunConfig(method="lora", lora=LoRAConfig(rank=8), quantize="nf4"), 148_994, None, 0.69, 0.87)
    other = fake_run(RunConfig(method="lora", lora=LoRAConfig(rank=2)), 38_402, None, 0.69, 0.80)
    fig = run_figures.accuracy_vs_params([lora, qlora, other])
    _pixels(fig)
    ax = fig.axes[0]
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    where = [c.get_offset_transform().transform(c.get_offsets())[0] for c in points]
    assert abs(where[0][0] - where[1][0]) >= style.DODGE_POINTS * fig.dpi / 72 * 0.99  # apart on screen
    assert where[0][1] == pytest.approx(where[1][1])  # at the same height: the same score
    np.testing.assert_allclose(points[0].get_offsets(), points[1].get_offsets())  # the data are untouched
    assert abs(where[2][0] - ax.transData.transform((38_402, 0.80))[0]) < 1e-6  # a point alone stays put
    assert sorted(t.get_text() for t in ax.texts) == ["r=2", "r=8 (×2)"]
    assert [p.get_label() for p in points] == ["LoRA r=8", "QLoRA r=8, NF4 base", "LoRA r=2"]
    assert points[0].get_facecolor().tolist() != points[1].get_facecolor().tolist()
    # On the parameters figure QLoRA has a line of its own, drawn beside LoRA's (the same counts).
    ax = run_figures.params_vs_rank([lora, qlora]).axes[0]
    measured = [ln for ln in ax.get_lines() if "measured" in ln.get_label()]
    assert len(measured) == 2 and "drawn apart" in measured[1].get_label()
    xs = [ln.get_transform().transform(np.column_stack([ln.get_xdata(), ln.get_ydata()]))[0][0] for ln in measured]
    assert xs[0] != pytest.approx(xs[1])
    # Two runs of one line at one rank (r=8 #1, #2): two points, each visible in its own colour.
    again = fake_run(RunConfig(method="lora", lora=LoRAConfig(rank=8)), 148_994, None, 0.69, 0.87)
    ax = run_figures.params_vs_rank([lora, again]).axes[0]
    dots = [c for c in ax.collections if isinstance(c, PathCollection)]
    where = [c.get_offset_transform().transform(c.get_offsets())[0][0] for c in dots]
    assert len(dots) == 2 and abs(where[0] - where[1]) > 5
    assert dots[0].get_facecolor().tolist() != dots[1].get_facecolor().tolist()


def test_one_run_gets_distinct_accuracy_ticks(runs):
    """One run at 100 %: the axis still spans several whole percents, each tick written once."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = run_figures.accuracy_vs_params([fake_run(RunConfig(method="lora"), 100, None, 0.69, 1.0)])
    FigureCanvasAgg(fig).draw()
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels() if t.get_text()]
    assert len(labels) >= 3 and len(set(labels)) == len(labels) and labels[-1] == "100%", labels


def test_coinciding_curves_get_their_own_line_styles_so_none_hides_another(runs):
    """Three runs with one curve (a tiny run's LoRA, rsLoRA, DoRA): solid, dashed, dotted in their own
    colours; a run with another curve keeps the solid line."""
    same = [fake_run(RunConfig(method="lora", lora=LoRAConfig(rank=8, rslora=rs)), 100, None, 0.6, 0.8)
            for rs in (False, True, False)]
    lines = run_figures.loss_curves(same + [runs[0]]).axes[0].get_lines()
    assert [ln.get_linestyle() for ln in lines] == ["-", "--", ":", "-"]
    assert len({ln.get_color() for ln in lines}) == 4
    assert all(np.array_equal(ln.get_ydata(), lines[0].get_ydata()) for ln in lines[:3])


def test_curves_the_eye_cannot_tell_apart_get_their_own_line_styles(runs):
    """Defect: in 02b's figure DoRA's curve, a hair from LoRA's (not equal to it), hid LoRA's entirely, and
    rsLoRA's and PiSSA's lay on each other from step 45 on.  A curve within 1 % of the axis of an earlier
    one over most of its steps gets the next line style; a curve that differs keeps the solid line."""
    import dataclasses

    base = runs[0]
    near = base.history.copy()
    near["train_loss"] = near["train_loss"] * (1 + 1e-3)  # a hair apart everywhere
    late = base.history.copy()
    half = len(late) // 3
    late.loc[late.index[:half], "train_loss"] = late["train_loss"].iloc[:half] + 0.5  # apart for a third, then on it
    apart = base.history.copy()
    apart["train_loss"] = apart["train_loss"] + 0.3 * float(np.ptp(base.history["train_loss"].dropna()))
    made = [dataclasses.replace(fake_run(RunConfig(method="lora", seed=k), 100, None, 0.6, 0.8), history=h)
            for k, h in enumerate((base.history, near, late, apart))]
    lines = run_figures.loss_curves(made).axes[0].get_lines()
    assert [ln.get_linestyle() for ln in lines] == ["-", "--", ":", "-"]
    assert not np.array_equal(lines[0].get_ydata(), lines[1].get_ydata())  # not equal, yet told apart


def test_live_curve_plots_exact_match_and_keeps_title_and_legend_off_the_data(runs):
    """The live plot of a generative run: exact match at each evaluation on a right-hand axis (it was not
    plotted live); the legend above the axes, so it covers no step and no evaluation marker; the title
    wholly inside the figure (it was clipped)."""
    h = runs[0].history.iloc[:15].copy()
    h["eval_exact_match"] = np.where(h["eval_loss"].notna(), 0.25, np.nan)
    fig = run_figures.live_loss(h, "LoRA r=8 (query,value)", total_steps=30)
    FigureCanvasAgg(fig).draw()
    ax, right = fig.axes
    (match,) = right.get_lines()
    np.testing.assert_array_equal(match.get_xdata(), [10.0])
    np.testing.assert_array_equal(match.get_ydata(), [0.25])
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    axes_box = ax.get_window_extent(renderer)
    assert legend.y0 >= axes_box.y1 - 1  # above the plotting area
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train loss", "eval loss", "exact match (right)"]
    title = ax.title if ax.get_title() else ax._left_title
    box, whole = title.get_window_extent(renderer), fig.bbox
    assert box.x0 >= whole.x0 and box.x1 <= whole.x1 + 1 and box.y1 <= whole.y1 + 1
    # The legend clears the title: beside it, the three entries ran into the panel's titles.
    assert legend.y1 <= box.y0 + 1 or legend.x0 >= box.x1 - 1, (legend, box)
    assert legend.x1 <= whole.x1 + 1

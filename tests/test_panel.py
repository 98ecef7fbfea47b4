"""The workbench panel, driven without a kernel: set widgets, click buttons, read what it shows.

Outside a kernel ``button.click()`` runs the handlers synchronously and setting a widget's
``value`` fires its observers, so these tests press the same controls a user does.  The
engine really trains (tiny-bert, the "tiny" preset: a few seconds per run) and the run
store on disk is the reference for what happened.
"""

from __future__ import annotations

import base64
import re
import time

import pandas as pd
import pytest

from workbench.records import store
from workbench.lora.inject import layer_groups
from workbench.engine.models import load_base
from workbench.ui.panel import DEFAULT_LR, RANK_CAP, Workbench
from workbench.lora.params import count_parameters
from workbench.engine.training import prepare_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MODEL, PRESET = "tiny-bert", "tiny"


def make_panel(runs_dir, reports_dir=None, background=False) -> Workbench:
    return Workbench(model=MODEL, preset=PRESET, runs_dir=runs_dir,
                     reports_dir=reports_dir or runs_dir.parent / "reports", background=background)


def pngs(output) -> list[bytes]:
    """The PNG images an Output widget holds."""
    return [base64.b64decode(o["data"]["image/png"]) for o in output.outputs if "image/png" in o.get("data", {})]


def table_rows(panel: Workbench) -> int:
    """Rows of the runs table as the HTML shows it."""
    body = re.search(r"<tbody>(.*)</tbody>", panel.table.value, re.S)
    return len(re.findall(r"<tr", body.group(1))) if body else 0


def choose(panel: Workbench, kinds: set[str]) -> None:
    for kind, box in panel.targets.items():
        box.value = kind in kinds


def engine_count(panel: Workbench):
    """What the engine's own count gives for the panel's current config, on a fresh model."""
    model, _ = load_base(MODEL, num_labels=2)
    prepare_model(panel.config(), model)
    return count_parameters(model)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A panel over a fresh run store, with one LoRA run made by clicking Train."""
    root = tmp_path_factory.mktemp("panel")
    panel = make_panel(root / "runs", root / "reports")
    assert panel.results == [] and table_rows(panel) == 0
    panel.rank.value = 4
    panel.alpha.value = 8
    choose(panel, {"query", "value", "FFN out"})
    readout = panel.parameter_estimate()
    panel.train_button.click()
    return panel, readout


def test_targets_are_the_layer_kinds_the_model_has(tmp_path):
    panel = make_panel(tmp_path / "runs")
    model, _ = load_base(MODEL, num_labels=2)
    kinds = [g.kind for g in layer_groups(model) if g.kind != "classifier"]
    assert list(panel.targets) == kinds
    # The preset's targets are ticked, nothing else.
    assert {k for k, b in panel.targets.items() if b.value} == {"query", "value"}
    assert panel.rank.description == "rank" and panel.alpha.description == "alpha"
    assert [b.description for b in (panel.train_button, panel.stop_button, panel.export_button)] == \
        ["Train", "Stop", "Export"]
    assert panel.block_range.value == (0, 1)  # tiny-bert has 2 blocks


def test_readout_is_the_closed_form_and_what_the_engine_counts(tmp_path):
    panel = make_panel(tmp_path / "runs")
    # Hand computation for tiny-bert (hidden 32, FFN 64, 2 blocks, head 32*2 + 2):
    # query and value at r=4: 2 groups x 2 blocks x 4 * (32 + 32) = 1024, + head 66.
    panel.rank.value = 4
    choose(panel, {"query", "value"})
    assert panel.parameter_estimate().trainable == 2 * 2 * 4 * (32 + 32) + 66
    assert "1,090" in panel.readout.value
    cases = [
        dict(rank=4, kinds={"query", "value"}, blocks=(0, 1)),
        dict(rank=3, kinds={"key", "FFN in", "FFN out"}, blocks=(1, 1)),
        dict(rank=32, kinds={"attention output", "pooler"}, blocks=(0, 1)),
        dict(rank=2, kinds={"attention output", "pooler"}, blocks=(0, 0)),  # pooler is outside blocks
    ]
    for case in cases:
        panel.rank.value = case["rank"]
        choose(panel, case["kinds"])
        panel.block_range.value = case["blocks"]
        est, ref = panel.parameter_estimate(), engine_count(panel)
        assert (est.trainable, est.total) == (ref.trainable, ref.total), case
        assert f"{ref.trainable:,}" in panel.readout.value
    for method in ("full", "head"):
        panel.method.value = method
        est, ref = panel.parameter_estimate(), engine_count(panel)
        assert (est.trainable, est.total) == (ref.trainable, ref.total), method


def test_rank_is_bounded_by_the_chosen_layers(tmp_path):
    panel = make_panel(tmp_path / "runs")
    model, _ = load_base(MODEL, num_labels=2)
    shapes = {g.kind: g.shape for g in layer_groups(model)}
    for kinds in ({"FFN in"}, {"query", "FFN out"}):
        choose(panel, kinds)
        assert panel.rank.max == min(RANK_CAP, *(min(shapes[k]) for k in kinds))
    panel.rank.value = 10_000
    assert panel.rank.value == panel.rank.max


def test_method_switch_sets_its_learning_rate_and_disables_lora_controls(tmp_path):
    panel = make_panel(tmp_path / "runs")
    lora_lr = panel.lr.value
    assert lora_lr == panel.defaults.lr
    panel.method.value = "full"
    assert panel.lr.value == DEFAULT_LR["full"] == 5e-5
    assert "5e-05" in panel.lr_note.value
    assert panel.rank.disabled and panel.alpha.disabled and panel.targets["query"].disabled
    panel.method.value = "head"
    assert panel.lr.value == DEFAULT_LR["head"] == 1e-3
    panel.method.value = "lora"
    assert panel.lr.value == lora_lr and not panel.rank.disabled


def test_train_records_the_run_and_shows_it(trained):
    panel, readout = trained
    stored = store.load_runs(panel.runs_dir)
    assert len(stored) == 1, panel.message_text
    run = stored[0]
    assert run.status == "completed", panel.message_text
    assert run.config.rank == 4 and run.config.alpha == 8
    # The readout before the run equals what the engine counted on the real model.
    assert (run.params.trainable, run.params.total) == (readout.trainable, readout.total)
    assert run.params.trainable == 2 * 4 * 2 * (32 + 32) + 2 * 4 * (64 + 32) + 66
    live = pngs(panel.live_plot)
    assert len(live) == 1 and live[0].startswith(PNG_MAGIC)
    assert table_rows(panel) == 1
    assert f"{readout.trainable:,}" in panel.table.value and "query,value,FFN out" in panel.table.value
    compare = pngs(panel.compare_plots)
    assert len(compare) == 4 and all(p.startswith(PNG_MAGIC) for p in compare)
    assert panel.compare_select.value == (run.run_id,)
    assert panel.message_text.startswith("Done")
    assert panel.progress.value == panel.progress.max == run.config.steps
    # Controls are usable again after the run.
    assert not panel.train_button.disabled and panel.stop_button.disabled and not panel.rank.disabled


def test_lora_without_targets_shows_a_message_and_keeps_runs(trained):
    panel, _ = trained
    before_store, before_rows = len(store.load_runs(panel.runs_dir)), table_rows(panel)
    choose(panel, set())
    panel.train_button.click()
    assert "LoRA needs at least one target layer" in panel.message_text
    assert "Traceback" not in panel.message.value
    assert table_rows(panel) == before_rows and len(store.load_runs(panel.runs_dir)) == before_store
    choose(panel, {"query", "value"})
    panel.alpha.value = 0
    panel.train_button.click()
    assert "alpha must be a positive number" in panel.message_text
    assert table_rows(panel) == before_rows
    panel.alpha.value = 16


def test_an_engine_error_is_a_message_not_a_traceback(trained, monkeypatch):
    panel, _ = trained
    before_rows = table_rows(panel)

    def broken(*args, **kwargs):
        raise RuntimeError("the data file is unreadable")

    monkeypatch.setattr("workbench.engine.training.train", broken)
    panel.train_button.click()
    assert panel.message_text == "RuntimeError: the data file is unreadable"
    assert table_rows(panel) == before_rows
    assert not panel.train_button.disabled and not panel.running


def test_a_restarted_panel_shows_the_stored_runs(trained):
    panel, _ = trained
    again = make_panel(panel.runs_dir)
    assert table_rows(again) == len(store.load_runs(panel.runs_dir)) >= 1
    assert set(again.compare_select.value) == {r.run_id for r in panel.results}
    assert len(pngs(again.compare_plots)) == 4


def test_export_writes_figures_and_table(trained):
    panel, _ = trained
    panel.export_button.click()
    folder = panel.last_export
    assert folder is not None and folder.parent == panel.reports_dir
    names = {p.name for p in folder.iterdir()}
    for fig in ("loss_curves", "params_vs_rank", "memory_breakdown", "accuracy_vs_params"):
        assert {f"{fig}.png", f"{fig}.svg"} <= names
    assert {"runs.csv", "runs.md"} <= names
    assert panel.message_text.startswith(f"Wrote {len(names)} files to {folder}")
    table = pd.read_csv(folder / "runs.csv")
    assert len(table) == len(panel.compare_select.value)


def test_compare_selection_drives_the_figures_and_export(trained):
    panel, _ = trained
    panel.compare_select.value = ()
    assert pngs(panel.compare_plots) == []
    panel.export_button.click()
    assert "Nothing to export" in panel.message_text
    panel.compare_select.value = tuple(v for _, v in panel.compare_select.options)
    assert len(pngs(panel.compare_plots)) == 4


def test_stop_ends_a_background_run_as_stopped(tmp_path):
    panel = make_panel(tmp_path / "runs", background=True)
    panel.steps.value = 100_000  # far more than the test will wait for
    panel.train_button.click()
    deadline = time.monotonic() + 120
    while panel.progress.value < 1 and panel.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert panel.running and panel.progress.value >= 1, panel.message_text
    # While it trains, only Stop makes sense.
    assert panel.train_button.disabled and panel.method.disabled and panel.rank.disabled
    assert panel.targets["query"].disabled and not panel.stop_button.disabled
    panel.stop_button.click()
    result = panel.wait(timeout=120)
    assert result is not None and result.status == "stopped", panel.message_text
    stored = store.load_runs(panel.runs_dir)
    assert [r.status for r in stored] == ["stopped"]
    assert 1 <= store.runs(panel.runs_dir)["steps_done"].iloc[0] < 100_000
    assert panel.message_text.startswith("Stopped")
    assert table_rows(panel) == 1 and "stopped" in panel.table.value
    assert not panel.train_button.disabled and panel.stop_button.disabled


def test_a_diverged_run_suggests_a_lower_learning_rate(tmp_path, monkeypatch):
    """A model whose head bias is NaN gives a NaN loss at step 1: the engine's diverged path."""
    import workbench.engine.training as engine

    real_prepare = engine.prepare_model

    def poisoned(cfg, model):
        real_prepare(cfg, model)
        model.classifier.bias.data.fill_(float("nan"))

    monkeypatch.setattr(engine, "prepare_model", poisoned)
    panel = make_panel(tmp_path / "runs")
    panel.lr.value = 0.01
    panel.train_button.click()
    assert panel.last_result is not None and panel.last_result.status == "diverged"
    assert "lower learning rate" in panel.message_text and "0.001" in panel.message_text
    assert [r.status for r in store.load_runs(panel.runs_dir)] == ["diverged"]
    assert table_rows(panel) == 1 and "diverged" in panel.table.value
    assert not panel.train_button.disabled


def test_variant_choice_reaches_the_config_and_the_readout(tmp_path):
    from workbench.ui.panel import Workbench
    from workbench.lora.params import count_parameters
    from workbench.engine.training import prepare_model

    import workbench as wb

    panel = Workbench(model="tiny-bert", runs_dir=tmp_path / "runs", reports_dir=tmp_path / "rep", preset="tiny",
                      background=False)
    panel.variant.value = "dora"
    cfg = panel.config()
    assert cfg.dora and cfg.label().startswith("DoRA")
    model, _ = wb.load_base("tiny-bert")
    prepare_model(cfg, model)
    assert panel.parameter_estimate().trainable == count_parameters(model).trainable
    panel.variant.value = "pissa"
    assert panel.config().init == "pissa" and not panel.config().dora
    panel.variant.value = "loraplus"
    assert panel.config().loraplus_ratio == 16.0

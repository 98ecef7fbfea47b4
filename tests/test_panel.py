"""The workbench panel: its widget-free state (``PanelState``) and the widget view bound to it.

The state is tested as plain Python: choices in, RunConfig out, problems in words, the
run lifecycle on the "tiny" preset (tiny-bert: a few seconds per run), the runs table,
the comparison selection and export.  The run store on disk is the reference for what
happened.  A few tests then drive the widget view as a user does: outside a kernel
``button.click()`` runs the handlers synchronously and setting a widget's ``value``
fires its observers.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from workbench.engine.config import PRESETS, RunConfig
from workbench.engine.models import load_base
from workbench.engine.training import prepare_model
from workbench.lora.config import LoRAConfig
from workbench.lora.inject import lora_layers
from workbench.lora.targets import layer_groups
from workbench.lora.params import count_parameters
from workbench.records import store
from workbench.ui.state import Choices, ModelLayers, PanelState, SettingsError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MODEL, PRESET = "tiny-bert", "tiny"
ROOT = Path(__file__).resolve().parents[1]
# tiny-bert: hidden 32, FFN 64, 2 blocks, a head of 32 * 2 + 2.
HEAD = 32 * 2 + 2
KINDS = ("query", "key", "value", "attention output", "FFN in", "FFN out", "pooler")


@pytest.fixture(scope="module")
def tiny_layers() -> ModelLayers:
    return ModelLayers.load(MODEL)


def make_state(tmp_path: Path, layers: ModelLayers | None = None, **kwargs) -> PanelState:
    kwargs.setdefault("background", False)
    return PanelState(model=MODEL, preset=PRESET, runs_dir=tmp_path / "runs", reports_dir=tmp_path / "reports",
                      layers=layers, **kwargs)


def tiny_config(**changes) -> RunConfig:
    """The tiny preset for tiny-bert, written out (not through preset())."""
    lora = changes.pop("lora", LoRAConfig())
    return RunConfig(**(PRESETS[PRESET] | dict(model=MODEL) | changes), lora=lora)


def engine_count(cfg: RunConfig):
    """What the engine's own count gives for a config, on a fresh model."""
    model, _ = load_base(MODEL, num_labels=2)
    prepare_model(cfg, model)
    return count_parameters(model), model


# ---------------------------------------------------------------------------------------------- state: choices


def test_the_state_module_needs_no_widgets():
    code = ("import sys; from workbench.ui.state import PanelState; "
            "s = PanelState(model='tiny-bert', preset='tiny', runs_dir=sys.argv[1], background=False); "
            "s.update(rank=2); s.config(); s.readout(); "
            "assert 'ipywidgets' not in sys.modules, 'ipywidgets was imported'")
    out = subprocess.run([sys.executable, "-c", code, "/nonexistent/runs"], capture_output=True, text=True,
                         cwd=ROOT, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, timeout=300)
    assert out.returncode == 0, out.stderr


def test_choices_start_from_the_preset(tmp_path, tiny_layers):
    state = make_state(tmp_path, tiny_layers)
    model, _ = load_base(MODEL, num_labels=2)
    assert tuple(state.model.targets) == tuple(g.kind for g in layer_groups(model) if g.kind != "classifier") == KINDS
    assert state.model.blocks == (0, 1) and state.model.head_parameters == HEAD
    assert state.choices == Choices(method="lora", variant="lora", rank=8, alpha=16.0, rslora=False,
                                    targets=("query", "value"), layer_range=(0, 1), lr=1e-3, steps=6, batch_size=8,
                                    seed=0)
    assert state.config() == tiny_config()
    assert state.problem() is None and state.results == [] and state.message.text.startswith("Ready.")


def test_config_from_choices(tmp_path, tiny_layers):
    state = make_state(tmp_path, tiny_layers)
    state.update(rank=4, alpha=8, rslora=True, targets=["value", "key"], lr=0.01, steps=3, batch_size=4, seed=7)
    lora = LoRAConfig(rank=4, alpha=8.0, rslora=True, targets=("key", "value"))  # in the model's order
    assert state.config() == tiny_config(lr=0.01, steps=3, batch_size=4, seed=7, lora=lora)
    assert state.config().label() == "LoRA r=4 rsLoRA (key,value)"


@pytest.mark.parametrize("variant, lora", [
    ("dora", LoRAConfig(dora=True)),
    ("pissa", LoRAConfig(init="pissa")),
    ("loraplus", LoRAConfig(loraplus_ratio=16.0)),
])
def test_variant_choice_reaches_the_config_and_the_readout(tmp_path, tiny_layers, variant, lora):
    state = make_state(tmp_path, tiny_layers)
    state.update(variant=variant, rank=4)
    cfg = state.config()
    assert cfg.lora == lora.replace(rank=4)
    ref, _ = engine_count(cfg)
    est = state.parameter_estimate()
    assert (est.trainable, est.total) == (ref.trainable, ref.total)
    if variant == "dora":  # r * (in + out) + out per layer
        assert est.trainable == 4 * (4 * (32 + 32) + 32) + HEAD and cfg.label().startswith("DoRA")


def test_a_layer_range_picks_those_blocks_and_names_them(tmp_path, tiny_layers):
    state = make_state(tmp_path, tiny_layers)
    state.update(targets=("query", "FFN out"), layer_range=(1, 1), rank=2)
    cfg = state.config()
    assert cfg.lora.layers == (1,) and state.layers() == (1,)
    assert cfg.label() == "LoRA r=2 (query,FFN out, layer 1)"
    _, model = engine_count(cfg)
    assert set(lora_layers(model)) == {"bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.1.output.dense"}
    state.update(layer_range=(0, 1))
    assert state.layers() is None and state.config().lora.layers is None


def test_method_switch_sets_its_learning_rate(tmp_path, tiny_layers):
    state = make_state(tmp_path, tiny_layers)
    state.update(method="full")
    assert state.choices.lr == 5e-5 and state.config() == tiny_config(method="full", lr=5e-5)
    assert "5e-05 for full fine-tuning" in state.lr_note()
    state.update(method="head")
    assert state.choices.lr == 1e-3 and state.config().method == "head"
    state.update(method="lora")
    assert state.choices.lr == PRESETS[PRESET]["lr"]
    state.update(method="full", lr=0.5)  # an lr given with the switch is kept
    assert state.choices.lr == 0.5
    state.update(rank=0)  # LoRA settings do not matter to full fine-tuning
    assert state.problem() is None


def test_readout_is_the_closed_form_and_what_the_engine_counts(tmp_path, tiny_layers):
    state = make_state(tmp_path, tiny_layers)
    state.update(rank=4, targets=("query", "value"))
    # query and value at r=4: 2 groups x 2 blocks x 4 * (32 + 32) = 1024, + the head.
    assert state.parameter_estimate().trainable == 2 * 2 * 4 * (32 + 32) + HEAD
    readout = state.readout()
    assert "1,090 of" in readout.headline and "query 2 × (4·(32+32)) = 512" in readout.detail
    assert "s = α/r = 4" in readout.detail
    cases = [
        dict(rank=4, targets=("query", "value"), layer_range=(0, 1)),
        dict(rank=3, targets=("key", "FFN in", "FFN out"), layer_range=(1, 1)),
        dict(rank=32, targets=("attention output", "pooler"), layer_range=(0, 1)),
        dict(rank=2, targets=("attention output", "pooler"), layer_range=(0, 0)),  # the pooler is outside the blocks
        dict(method="full"),
        dict(method="head"),
    ]
    for case in cases:
        state.update(**({"method": "lora"} | case))
        (ref, _), est = engine_count(state.config()), state.parameter_estimate()
        assert (est.trainable, est.total) == (ref.trainable, ref.total), case
        assert f"{ref.trainable:,} of {ref.total:,}" in state.readout().headline
    state.update(method="lora", targets=("pooler",), layer_range=(0, 0))
    assert "pooler: outside the chosen layers, not adapted" in state.readout().detail


BAD_CHOICES = [
    (dict(targets=()), "LoRA needs at least one target layer: tick one of " + ", ".join(KINDS)),
    (dict(targets=("pooler",), layer_range=(0, 0)), "None of the ticked layers (pooler) lies in layers 0-0"),
    (dict(rank=0), "rank must be a positive integer, got 0"),
    (dict(rank=2.5), "rank must be a positive integer, got 2.5"),
    (dict(rank=33), "rank must be at most 32 for the ticked layers (query is 32 -> 32, and a rank above "
                    "min(in, out) = 32 adds no capacity), got 33"),
    (dict(alpha=0), "alpha must be a positive number, got 0"),
    (dict(alpha=-3.0), "alpha must be a positive number, got -3.0"),
    (dict(lr=0.0), "lr (learning rate) must be a positive number, got 0.0"),
    (dict(steps=0), "steps must be a positive integer, got 0"),
    (dict(steps=1.5), "steps must be a positive integer, got 1.5"),
    (dict(batch_size=-1), "batch_size (batch size) must be a positive integer, got -1"),
    (dict(seed=0.5), "seed must be an integer, got 0.5"),
    (dict(method="qlora"), "method must be one of 'lora', 'full', 'head'; got 'qlora'"),
    (dict(variant="vera"), "variant must be one of 'lora', 'dora', 'pissa', 'loraplus'; got 'vera'"),
    (dict(targets=("qurey",)), "unknown target(s) 'qurey'; this model has: " + ", ".join(KINDS)),
    (dict(layer_range=(1, 5)), "layer_range must be (first, last) with 0 <= first <= last <= 1, got (1, 5)"),
]


@pytest.mark.parametrize("changes, message", BAD_CHOICES, ids=[m.split(" ")[0] + str(i) for i, (_, m) in
                                                               enumerate(BAD_CHOICES)])
def test_bad_choices_are_refused_with_what_is_allowed_never_rewritten(tmp_path, tiny_layers, changes, message):
    state = make_state(tmp_path, tiny_layers)
    state.update(**changes)
    for name, value in changes.items():  # kept as given: not clamped, not rounded
        assert getattr(state.choices, name) == (tuple(value) if isinstance(value, list) else value)
    assert message in state.problem()
    with pytest.raises(SettingsError) as e:
        state.config()
    assert message in str(e.value)
    assert message in state.readout().problem
    calls = []
    state.train = lambda *a, **k: calls.append(a)
    assert state.start() is False
    assert calls == [] and message in state.message.text and state.message.kind == "error"
    assert state.last_error == state.message.text and not (tmp_path / "runs").exists()


def test_unknown_choices_are_refused(tmp_path, tiny_layers):
    state = make_state(tmp_path, tiny_layers)
    with pytest.raises(TypeError, match="unknown choice.s. blocks; the choices are: method, variant, rank"):
        state.update(blocks=(0, 1))
    with pytest.raises(ValueError, match="layers were read from model 'tiny-bert', not 'minilm'"):
        PanelState(model="minilm", preset=PRESET, runs_dir=tmp_path, layers=tiny_layers)


# ---------------------------------------------------------------------------------------------- state: runs


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_layers):
    """A state over a fresh run store, one LoRA run made with start(), and the events it sent."""
    root = tmp_path_factory.mktemp("panel")
    state = make_state(root, tiny_layers)
    events: list[str] = []
    state.subscribe(events.append)
    state.update(rank=4, alpha=8, targets=("query", "value", "FFN out"))
    estimate = state.parameter_estimate()
    events.clear()
    assert state.start() is True
    return state, estimate, events


def test_a_run_is_trained_stored_and_shown(trained):
    state, estimate, events = trained
    stored = store.load_runs(state.runs_dir)
    assert len(stored) == 1 and stored[0].status == "completed", state.message.text
    run = stored[0]
    # "FFN out" (output.dense) needs a regex: a bare "output.dense" would also pick attention.output.dense.
    assert run.config == tiny_config(lora=LoRAConfig(rank=4, alpha=8.0, targets=run.config.lora.targets),
                                     name="LoRA r=4 (query,value,FFN out)")
    _, model = engine_count(run.config)
    assert set(lora_layers(model)) == {f"bert.encoder.layer.{i}.{path}" for i in (0, 1) for path in
                                       ("attention.self.query", "attention.self.value", "output.dense")}
    # The readout before the run is what the engine counted on the real model.
    assert (run.params.trainable, run.params.total) == (estimate.trainable, estimate.total)
    assert run.params.trainable == 2 * 4 * 2 * (32 + 32) + 2 * 4 * (64 + 32) + HEAD
    assert state.last_result.run_id == run.run_id and not state.running
    assert state.message.kind == "ok" and state.message.text.startswith("Done: LoRA r=4 (query,value,FFN out)")
    # The lifecycle as subscribers saw it: running, a progress event per step, the final curve, the runs, done.
    assert events[:2] == ["running", "live"] and events.count("progress") == run.config.steps
    assert events[-4:] == ["live", "runs", "running", "message"]
    assert state.selected == (run.run_id,) and [r.run_id for r in state.selected_results()] == [run.run_id]
    row = state.table().iloc[0]
    assert (row["label"], row["rank"], row["alpha"], row["targets"], row["steps"], row["status"]) == \
        ("LoRA r=4 (query,value,FFN out)", "4", "8", "query,value,FFN out", "6/6", "completed")
    assert row["trainable"] == f"{estimate.trainable:,}" and row["run id"] == run.run_id
    assert list(state.runs_frame["run_id"]) == [run.run_id]


def test_an_engine_error_is_a_message_and_keeps_the_runs(trained):
    state, _, _ = trained
    before = [r.run_id for r in state.results]

    def broken(*args, **kwargs):
        raise RuntimeError("the data file is unreadable")

    again = PanelState(model=MODEL, preset=PRESET, runs_dir=state.runs_dir, background=False, layers=state.model,
                       train=broken)
    assert again.start() is True  # it started, and failed
    assert again.message.text == "RuntimeError: the data file is unreadable" and again.message.kind == "error"
    assert again.last_result is None and again.live_history is None and not again.running
    assert [r.run_id for r in again.results] == before == [r.run_id for r in store.load_runs(state.runs_dir)]


def test_selection_keeps_choices_and_adds_new_runs(trained):
    state, _, _ = trained
    first = state.results[0].run_id
    state.select(())
    assert state.selected_results() == []
    assert state.export() is None and state.message.text.startswith("Nothing to export")
    with pytest.raises(ValueError, match="unknown run id.s. 'nope'; the runs are: " + first):
        state.select(["nope"])
    state.update(method="head")
    state.start()
    assert state.last_result.status == "completed" and state.last_result.config.method == "head"
    # The deselected run stays deselected; the new one is selected.
    assert state.selected == (state.last_result.run_id,)
    row = state.table().iloc[-1]
    assert (row["method"], row["rank"], row["alpha"], row["targets"]) == ("head", "–", "–", "–")
    state.select([r.run_id for r in state.results])
    assert [r.run_id for r in state.selected_results()] == [r.run_id for r in state.results]


def test_export_writes_the_selected_runs(trained):
    state, _, _ = trained
    state.select([state.results[0].run_id])
    folder = state.export()
    assert folder is not None and folder == state.last_export and folder.parent == state.reports_dir
    names = {p.name for p in folder.iterdir()}
    for fig in ("loss_curves", "params_vs_rank", "memory_breakdown", "accuracy_vs_params"):
        assert {f"{fig}.png", f"{fig}.svg"} <= names
    assert {"runs.csv", "runs.md"} <= names
    assert state.message.text.startswith(f"Wrote {len(names)} files to {folder} (1 run(s)")
    assert list(pd.read_csv(folder / "runs.csv")["run"]) == [state.results[0].config.label()]
    assert state.export() != folder  # a second export the same second gets its own folder


def test_a_new_state_shows_the_stored_runs_and_skips_damaged_ones(trained, tiny_layers):
    state, _, _ = trained
    again = make_state(state.runs_dir.parent, tiny_layers)
    assert [r.run_id for r in again.results] == [r.run_id for r in store.load_runs(state.runs_dir)]
    assert set(again.selected) == {r.run_id for r in again.results} and len(again.table()) == len(again.results)
    damaged = state.runs_dir / "zz-damaged"
    damaged.mkdir()
    (damaged / "run.json").write_text("{ not json")
    try:
        again.refresh()
        assert again.message.kind == "warn" and again.message.text.startswith("1 damaged run file(s)")
        assert "zz-damaged" in again.message.text and len(again.results) == len(state.results)
    finally:
        (damaged / "run.json").unlink()
        damaged.rmdir()


def test_stop_ends_a_background_run_as_stopped(tmp_path, tiny_layers):
    state = make_state(tmp_path, tiny_layers, background=True)
    state.stop()
    assert state.message.text == "Nothing is training."
    state.update(steps=100_000)  # far more than the test will wait for
    assert state.start() is True
    deadline = time.monotonic() + 120
    while state.step is None and state.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert state.running and state.step is not None, state.message.text
    assert state.start() is False and state.message.text.startswith("A run is already going")
    state.stop()
    assert state.stopping and state.message.text.startswith("Stopping")
    result = state.wait(timeout=120)
    assert result is not None and result.status == "stopped", state.message.text
    assert [r.status for r in store.load_runs(state.runs_dir)] == ["stopped"]
    assert 1 <= store.runs(state.runs_dir)["steps_done"].iloc[0] < 100_000
    assert state.message.text.startswith("Stopped") and state.message.kind == "warn"
    assert not state.running and not state.stopping and state.table().iloc[0]["status"] == "stopped"


def test_a_diverged_run_suggests_a_lower_learning_rate(tmp_path, tiny_layers):
    """lr = 1e30 (a typo's worth of zeros): the first step blows the weights up, step 2's loss is NaN."""
    state = make_state(tmp_path, tiny_layers)
    state.update(lr=1e30)
    assert state.problem() is None  # a positive number: allowed; the run shows what it does
    state.start()
    assert state.last_result is not None and state.last_result.status == "diverged", state.message.text
    assert state.message.kind == "error"
    assert "lower learning rate" in state.message.text and "1e+29" in state.message.text
    assert [r.status for r in store.load_runs(state.runs_dir)] == ["diverged"]
    assert state.table().iloc[0]["status"] == "diverged"


# ---------------------------------------------------------------------------------------------- the widget view


def pngs(output) -> list[bytes]:
    """The PNG images an Output widget holds."""
    return [base64.b64decode(o["data"]["image/png"]) for o in output.outputs if "image/png" in o.get("data", {})]


def table_rows(panel) -> int:
    """Rows of the runs table as the HTML shows it."""
    body = re.search(r"<tbody>(.*)</tbody>", panel.table.value, re.S)
    return len(re.findall(r"<tr", body.group(1))) if body else 0


def make_panel(tmp_path: Path, layers: ModelLayers, **kwargs):
    from workbench.ui.panel import Workbench

    return Workbench(state=make_state(tmp_path, layers, **kwargs))


def test_the_view_shows_the_state_and_names_settings_as_the_config(tmp_path, tiny_layers):
    panel = make_panel(tmp_path, tiny_layers)
    assert tuple(panel.targets) == KINDS
    assert {k for k, b in panel.targets.items() if b.value} == {"query", "value"}
    assert [panel.rank.description, panel.alpha.description, panel.layer_range.description, panel.lr.description] == \
        ["rank", "alpha", "layers", "lr"]
    assert [b.description for b in (panel.train_button, panel.stop_button, panel.export_button)] == \
        ["Train", "Stop", "Export"]
    assert panel.layer_range.value == (0, 1) and panel.rank.max == 32  # min(in, out) of tiny-bert's layers
    assert "No runs yet" in panel.table.value and panel.message_text.startswith("Ready.")
    # state -> widgets
    panel.state.update(rank=2, method="head")
    assert panel.rank.value == 2 and panel.method.value == "head" and panel.lr.value == 1e-3
    assert panel.rank.disabled and panel.targets["query"].disabled


def test_widgets_set_the_state(tmp_path, tiny_layers):
    panel = make_panel(tmp_path, tiny_layers)
    state = panel.state
    panel.rank.value = 4
    assert state.choices.rank == 4 and "1,090 of" in panel.readout.value
    panel.targets["key"].value = True
    panel.targets["value"].value = False
    assert state.choices.targets == ("query", "key") and panel.targets["key"].icon == "check"
    panel.layer_range.value = (1, 1)
    assert state.layers() == (1,)
    panel.variant.value = "dora"
    assert state.config().lora.dora
    panel.method.value = "full"
    assert state.choices.method == "full" and panel.lr.value == 5e-5 and "5e-05" in panel.lr_note.value
    assert panel.rank.disabled and panel.alpha.disabled and not panel.lr.disabled
    panel.method.value = "lora"
    assert panel.lr.value == PRESETS[PRESET]["lr"] and not panel.rank.disabled


def test_bad_input_in_a_widget_stays_as_typed_and_is_refused(tmp_path, tiny_layers):
    panel = make_panel(tmp_path, tiny_layers)
    panel.alpha.value = -5
    panel.steps.value = 0
    assert (panel.alpha.value, panel.steps.value) == (-5, 0) == (panel.state.choices.alpha, panel.state.choices.steps)
    assert "alpha must be a positive number, got -5" in panel.readout.value
    panel.train_button.click()
    assert "Cannot train with these settings: alpha must be a positive number, got -5" in panel.message_text
    assert "Traceback" not in panel.message.value and table_rows(panel) == 0
    panel.alpha.value = 16
    panel.train_button.click()
    assert "steps must be a positive integer, got 0" in panel.message_text
    for kind in panel.targets:
        panel.targets[kind].value = False
    panel.steps.value = 6
    panel.train_button.click()
    assert "LoRA needs at least one target layer" in panel.message_text
    assert not (tmp_path / "runs").exists()


def test_train_click_trains_and_the_view_shows_it(tmp_path, tiny_layers):
    panel = make_panel(tmp_path, tiny_layers)
    panel.rank.value = 4
    panel.train_button.click()
    run = panel.last_result
    assert run is not None and run.status == "completed", panel.message_text
    live = pngs(panel.live_plot)
    assert len(live) == 1 and live[0].startswith(PNG_MAGIC)
    assert table_rows(panel) == 1 and f"{run.params.trainable:,}" in panel.table.value
    assert "LoRA r=4 (query,value)" in panel.table.value
    compare = pngs(panel.compare_plots)
    assert len(compare) == 4 and all(p.startswith(PNG_MAGIC) for p in compare)
    assert panel.compare_select.value == (run.run_id,)
    assert panel.message_text.startswith("Done")
    assert panel.progress.value == panel.progress.max == run.config.steps
    assert not panel.train_button.disabled and panel.stop_button.disabled and not panel.rank.disabled
    # The comparison list drives the figures and the export.
    panel.compare_select.value = ()
    assert panel.state.selected == () and pngs(panel.compare_plots) == []
    panel.export_button.click()
    assert "Nothing to export" in panel.message_text
    panel.compare_select.value = (run.run_id,)
    assert len(pngs(panel.compare_plots)) == 4
    panel.export_button.click()
    assert panel.last_export is not None and (panel.last_export / "runs.csv").is_file()
    assert panel.message_text.startswith("Wrote")


def test_stop_button_ends_a_background_run(tmp_path, tiny_layers):
    panel = make_panel(tmp_path, tiny_layers, background=True)
    panel.steps.value = 100_000
    panel.train_button.click()
    deadline = time.monotonic() + 120
    while panel.progress.value < 1 and panel.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert panel.running and panel.progress.value >= 1, panel.message_text
    # While it trains, only Stop makes sense.
    assert panel.train_button.disabled and panel.method.disabled and panel.rank.disabled
    assert panel.targets["query"].disabled and not panel.stop_button.disabled
    panel.stop_button.click()
    assert panel.stop_button.disabled  # clicked once is enough
    result = panel.wait(timeout=120)
    assert result is not None and result.status == "stopped", panel.message_text
    assert panel.message_text.startswith("Stopped")
    assert table_rows(panel) == 1 and "stopped" in panel.table.value
    assert not panel.train_button.disabled and panel.stop_button.disabled

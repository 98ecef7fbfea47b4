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
from workbench.engine.outcome import run_outcome
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
    # Six steps of a randomly initialised tiny model learn nothing: the run completes, and the
    # panel says it did not learn (a warning, not a green "Done"), with the measured time.
    outcome = run_outcome(run)
    assert outcome.verdict == "did not learn" and state.message.kind == "warn"
    assert state.message.text.startswith(f"Finished, but it {outcome.sentence}. (LoRA r=4 (query,value,FFN out)")
    assert f"trained in {run.timing.total_seconds:.1f} s" in state.message.text
    # The lifecycle as subscribers saw it: running, a progress event per step, the final curve, the runs, done.
    assert events[:2] == ["running", "live"] and events.count("progress") == run.config.steps
    assert events[-4:] == ["live", "runs", "running", "message"]
    assert state.selected == (run.run_id,) and [r.run_id for r in state.selected_results()] == [run.run_id]
    row = state.table().iloc[0]
    assert (row["run"], row["rank"], row["alpha"], row["targets"], row["steps"], row["status"], row["outcome"]) == \
        ("LoRA r=4 (query,value,FFN out)", "4", "8", "query,value,FFN out", "6/6", "completed", "did not learn")
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
    assert "report.zip" in names and state.last_bundle == folder / "report.zip"
    assert state.message.text.startswith(f"Wrote {len(names) - 1} files to {folder} (1 run(s)")
    csv = pd.read_csv(folder / "runs.csv")
    assert list(csv["run"]) == [state.results[0].config.label()]
    assert list(csv["run id"]) == [state.results[0].run_id] and list(csv["lr"]) == [state.results[0].config.lr]
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
    assert "No runs yet shown" in panel.table.value and panel.message_text.startswith("Ready.")
    # state -> widgets
    panel.state.update(rank=2, method="head")
    assert panel.rank.value == 2 and panel.method.value == "head" and panel.lr.value == "0.001"
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
    assert state.choices.method == "full" and panel.lr.value == "5e-05" and "5e-05" in panel.lr_note.value
    assert panel.rank.disabled and panel.alpha.disabled and not panel.lr.disabled
    panel.method.value = "lora"
    assert float(panel.lr.value) == PRESETS[PRESET]["lr"] and not panel.rank.disabled
    panel.lr.value = "0.0010"  # typed: read as the number, the text left as typed
    assert state.choices.lr == 0.001 and panel.lr.value == "0.0010"


def test_bad_input_in_a_widget_stays_as_typed_and_is_refused(tmp_path, tiny_layers):
    panel = make_panel(tmp_path, tiny_layers)
    panel.alpha.value = "-5"
    panel.steps.value = "0"
    assert (panel.alpha.value, panel.steps.value) == ("-5", "0")
    assert (panel.state.choices.alpha, panel.state.choices.steps) == (-5.0, 0)
    assert "alpha must be a positive number, got -5.0" in panel.readout.value
    panel.train_button.click()
    assert "Cannot train with these settings: alpha must be a positive number, got -5.0" in panel.message_text
    assert "Traceback" not in panel.message.value and table_rows(panel) == 0
    panel.alpha.value = "16"
    panel.train_button.click()
    assert "steps must be a positive integer, got 0" in panel.message_text
    for typed, said in [("abc", "lr (learning rate) must be a number with a decimal point, e.g. 0.001 or 1e-3; "
                                "got 'abc', which is not a number"),
                        ("0,001", "got '0,001', which has a decimal comma: type 0.001 if that is what you mean"),
                        ("", "lr (learning rate) is empty"),
                        ("0", "lr (learning rate) must be a positive number, got 0.0")]:
        panel.lr.value = typed
        assert panel.lr.value == typed and panel.state.choices.lr == (typed if typed != "0" else 0.0)
        assert said in panel.readout.value.replace("&#x27;", "'")
        panel.train_button.click()
        assert said in panel.message_text and panel.state.message.kind == "error"
    panel.lr.value = "0.001"
    for kind in panel.targets:
        panel.targets[kind].value = False
    panel.steps.value = "6"
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
    assert panel.run_checks[run.run_id].value and panel.state.selected == (run.run_id,)
    assert panel.message_text.startswith("Finished, but it did not learn")
    assert panel.progress.value == panel.progress.max == run.config.steps
    assert not panel.train_button.disabled and panel.stop_button.disabled and not panel.rank.disabled
    # The comparison list drives the figures and the export.
    panel.run_checks[run.run_id].value = False
    assert panel.state.selected == () and pngs(panel.compare_plots) == []
    panel.export_button.click()
    assert "Nothing to export" in panel.message_text
    panel.select_all_button.click()
    assert panel.run_checks[run.run_id].value and len(pngs(panel.compare_plots)) == 4
    panel.export_button.click()
    assert panel.last_export is not None and (panel.last_export / "runs.csv").is_file()
    assert panel.message_text.startswith("Wrote")
    # The download link carries the zip itself: decoded, it is the file written.
    data = re.search(r"href='data:application/zip;base64,([^']+)'", panel.download.value).group(1)
    assert base64.b64decode(data) == panel.last_bundle.read_bytes()


def test_stop_button_ends_a_background_run(tmp_path, tiny_layers):
    panel = make_panel(tmp_path, tiny_layers, background=True)
    panel.steps.value = "100000"
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


# ---------------------------------------------------------------------------------------------- honest outcomes,
# runs told apart, hide / delete, exports: on runs written straight into a store (no training needed)


def fake_run(cfg: RunConfig, losses: list[float], accuracy: float, status: str = "completed",
             message: str = "", minute: int = 0) -> "RunResult":
    """A RunResult with this loss curve and a final validation accuracy (evaluated at the last step)."""
    import numpy as np

    from workbench.engine.config import ParamCounts, RunResult, Timing

    n = len(losses)
    history = pd.DataFrame({"step": np.arange(1, n + 1), "train_loss": losses, "lr": cfg.lr,
                            "eval_loss": [np.nan] * (n - 1) + [losses[-1]],
                            "eval_accuracy": [np.nan] * (n - 1) + [accuracy]})
    return RunResult(config=cfg, status=status, history=history, params=ParamCounts(1_090, 100_000), memory=None,
                     timing=Timing(0.05, 1000.0, 7.5 + minute), message=message,
                     environment={"started": f"2026-12-01T10:{minute:02d}:00+00:00"})


# The tiny preset's eval set, read independently: the first 32 rows of the bundled validation file.
def bundled_chance(n: int) -> float:
    from workbench.engine.data import load_texts

    labels = load_texts("default", "validation").labels[:n]
    return max(labels.count(v) for v in set(labels)) / len(labels)


def test_the_verdict_flags_a_rising_loss_and_chance_accuracy():
    from workbench.engine.outcome import Chance, eval_chance

    cfg = tiny_config(lr=10.0)
    rose = run_outcome(fake_run(cfg, [0.69, 5.0, 24.3], 0.9), chance=0.5)
    assert rose.verdict == "did not learn" and not rose.ok
    assert rose.sentence == "did not learn: loss rose from 0.69 to 24.3; try a lower learning rate than 10"
    # Chance is the majority label's share of the eval set, read from the run's own data.
    chance = eval_chance(tiny_config())
    assert chance.n == PRESETS[PRESET]["max_eval_examples"] and chance.accuracy == bundled_chance(chance.n)
    # Within two binomial standard errors of chance is chance; above it, the run learned.
    c = Chance(0.5, 500)
    assert c.margin == pytest.approx(2 * (0.25 / 500) ** 0.5)
    at = run_outcome(fake_run(tiny_config(), [0.69, 0.68], 0.514), chance=c)
    assert at.verdict == "did not learn" and "51.4% is no better than chance (50.0%" in at.sentence
    assert run_outcome(fake_run(tiny_config(), [0.69, 0.1], 0.5 + c.margin + 0.001), chance=c).ok
    # A flat loss (within 1 %) is not a rise; statuses other than completed speak for themselves.
    assert run_outcome(fake_run(tiny_config(), [0.6931, 0.6932], 0.99), chance=c).ok
    diverged = run_outcome(fake_run(cfg, [0.69, 7.5], float("nan"), "diverged", "the loss exploded"), chance=c)
    assert (diverged.verdict, diverged.sentence) == ("diverged", "diverged: the loss exploded")


def test_a_learned_run_is_done_and_says_where_its_adapter_is(tmp_path):
    from workbench.engine.outcome import Outcome

    run = fake_run(tiny_config(), [0.69, 0.2], 0.97)
    run.path = str(tmp_path / "run")
    (tmp_path / "run" / "adapter").mkdir(parents=True)
    text, kind = PanelState.verdict(run, Outcome("learned", "learned"))
    assert kind == "ok" and text.startswith("Done: LoRA r=8 (query,value): final loss 0.2000, validation accuracy 97.0%")
    assert "trained in 7.5 s (0.050 s/step, measured)" in text
    folder = tmp_path / "run" / "adapter"
    assert f'wb.load_adapter(model, "{folder}")' in text and f'PeftModel.from_pretrained(base_model, "{folder}")' in text
    text, kind = PanelState.verdict(run, Outcome("did not learn", "did not learn: loss rose from 0.69 to 24.3"))
    assert kind == "warn" and text.startswith("Finished, but it did not learn: loss rose from 0.69 to 24.3.")


def test_typed_numbers_are_read_or_refused_never_rewritten(tmp_path, tiny_layers):
    from workbench.ui.state import number_problem, read_number

    assert [read_number(t, float) for t in ("0.001", " 1e-3 ", "5", ".5", "-2")] == [0.001, 0.001, 5.0, 0.5, -2.0]
    assert [read_number(t, int) for t in ("150", "+3", "-1")] == [150, 3, -1]
    assert [read_number(t, float) for t in ("0,001", "abc", "", "1,000.5")] == ["0,001", "abc", "", "1,000.5"]
    assert [read_number(t, int) for t in ("1.5", "1e3", "1,000")] == ["1.5", "1e3", "1,000"]
    assert "type 0.001 if that is what you mean" in number_problem("lr", "0,001")
    assert number_problem("steps", "1,000") == "steps must be a whole number, e.g. 150; got '1,000'"
    state = make_state(tmp_path, tiny_layers)
    for typed in ("0,001", "abc", "0"):
        state.update(lr=typed)
        calls = []
        state.train = lambda *a, **k: calls.append(a)
        assert state.start() is False and calls == [] and state.message.kind == "error"
        assert "lr (learning rate)" in state.message.text and "Learning rate" in state.lr_note()
    assert "Learning rate 0 as typed; LoRA starts at 0.001" in state.lr_note()
    state.update(lr="0.01", steps="3")
    assert state.config() == tiny_config(lr=0.01, steps=3)


def test_labels_name_what_differs_between_runs():
    from workbench.engine.labels import distinct_labels

    a, b = tiny_config(lr=1e-3), tiny_config(lr=1e-2)
    assert distinct_labels([a, b]) == ["LoRA r=8 (query,value) · lr=0.001", "LoRA r=8 (query,value) · lr=0.01"]
    c = tiny_config(lr=1e-2, seed=3, lora=LoRAConfig(alpha=32.0))
    assert distinct_labels([a, c]) == ["LoRA r=8 (query,value) · lr=0.001 alpha=16 seed=0",
                                       "LoRA r=8 (query,value) · lr=0.01 alpha=32 seed=3"]
    # LoRA settings are compared among LoRA runs only; the same settings twice are numbered.
    full = tiny_config(method="full")
    assert distinct_labels([a, full]) == ["LoRA r=8 (query,value)", "full fine-tuning"]
    assert distinct_labels([a, a]) == ["LoRA r=8 (query,value) #1", "LoRA r=8 (query,value) #2"]


@pytest.fixture
def stored(tmp_path, tiny_layers):
    """A state over a store holding three runs: lr 1e-3 and 1e-2 (learned) and lr 10 (did not learn)."""
    runs = [fake_run(tiny_config(lr=lr), losses, acc, minute=i) for i, (lr, losses, acc) in
            enumerate([(1e-3, [0.69, 0.3], 1.0), (1e-2, [0.69, 0.2], 1.0), (10.0, [0.69, 24.3], 0.5)])]
    for r in runs:
        folder = store.save_run(r, tmp_path / "runs")
        if r.config.lr < 1:
            (folder / "adapter").mkdir()
            (folder / "adapter" / "adapter_config.json").write_text('{"r": 8}')
    return make_state(tmp_path, tiny_layers), [r.run_id for r in runs]


def test_runs_are_told_apart_in_the_table_export_and_legends(stored):
    from workbench.viz.plots import loss_curves

    state, ids = stored
    table = state.table()
    assert list(table["run"]) == [f"LoRA r=8 (query,value) · lr={lr}" for lr in ("0.001", "0.01", "10")]
    assert list(table["outcome"]) == ["learned", "learned", "did not learn"]
    assert list(table["eval accuracy"]) == ["100.0%", "100.0%", "50.0%"] and list(table["run id"]) == ids
    assert list(table["lr"]) == ["0.001", "0.01", "10"] and list(table["seed"]) == ["0"] * 3
    legend = [t.get_text() for t in loss_curves(state.selected_results()).axes[0].get_legend().get_texts()]
    assert legend == list(table["run"][:2]) + [table["run"][2] + " [did not learn]"]
    state.select(ids[:2])
    folder = state.export()
    csv = pd.read_csv(folder / "runs.csv")
    assert list(csv["run"]) == list(table["run"][:2]) and list(csv["run id"]) == ids[:2]
    assert list(csv["lr"]) == [1e-3, 1e-2] and list(csv["val. accuracy (%)"]) == [100.0, 100.0]
    for col in ("rank", "alpha", "targets", "steps", "batch_size", "seed", "outcome", "adapter folder"):
        assert col in csv.columns
    assert "Adapters: LoRA r=8 (query,value) · lr=0.001: " in state.message.text
    assert "wb.load_adapter(model, folder)" in state.message.text


def test_hide_select_and_delete_with_confirmation(stored):
    state, ids = stored
    state.select_none()
    assert state.selected == ()
    state.select_all()
    assert state.selected == tuple(ids)
    state.hide([ids[2]])
    assert [r.run_id for r in state.visible_results()] == ids[:2] and state.selected == tuple(ids[:2])
    assert list(state.table()["run id"]) == ids[:2]
    assert (state.runs_dir / ids[2]).is_dir()  # hidden, not deleted
    state.show_hidden()
    assert len(state.table()) == 3
    state.request_delete([ids[0]])
    assert state.pending_delete == (ids[0],) and "Yes, delete" in state.message.text
    assert (state.runs_dir / ids[0]).is_dir()  # nothing happens before the confirmation
    state.cancel_delete()
    assert state.pending_delete == () and (state.runs_dir / ids[0]).is_dir()
    state.request_delete([ids[0]])
    assert state.confirm_delete() == [ids[0]]
    assert not (state.runs_dir / ids[0]).exists() and [r.run_id for r in state.results] == ids[1:]
    assert [r.run_id for r in store.load_runs(state.runs_dir)] == ids[1:]
    with pytest.raises(ValueError, match="unknown run id"):
        state.request_delete([ids[0]])


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_exported_files_get_the_users_umask(stored, umask):
    import os
    import stat
    import zipfile

    state, ids = stored
    old = os.umask(umask)
    try:
        state.select(ids[:2])
        folder = state.export()
    finally:
        os.umask(old)
    files = [p for p in folder.iterdir() if p.is_file()]
    assert len(files) == 11  # 4 figures x 2 formats, the table twice, the zip
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o666 & ~umask}
    with zipfile.ZipFile(state.last_bundle) as z:
        names = set(z.namelist())
    assert {"runs.csv", "runs.md", "loss_curves.png", "README.txt"} <= names
    assert {f"adapters/{i}/adapter_config.json" for i in ids[:2]} <= names


def test_the_view_hides_and_deletes_with_confirmation(stored):
    from workbench.ui.panel import Workbench

    state, ids = stored
    panel = Workbench(state=state)
    assert list(panel.run_checks) == ids and all(b.value for b in panel.run_checks.values())
    assert "[did not learn]" in panel.run_checks[ids[2]].description
    assert "lr=10" in panel.run_checks[ids[2]].description
    panel.select_none_button.click()
    assert state.selected == () and not any(b.value for b in panel.run_checks.values())
    panel.run_checks[ids[2]].value = True
    panel.hide_button.click()
    assert list(panel.run_checks) == ids[:2] and table_rows(panel) == 2
    panel.show_hidden_button.click()
    assert list(panel.run_checks) == ids
    panel.run_checks[ids[1]].value = True
    panel.delete_button.click()
    assert panel.confirm_box.layout.display == "flex" and (state.runs_dir / ids[1]).is_dir()
    panel.confirm_delete_button.click()
    assert panel.confirm_box.layout.display == "none" and not (state.runs_dir / ids[1]).exists()
    assert list(panel.run_checks) == [ids[0], ids[2]] and table_rows(panel) == 2


def test_the_header_gives_measured_run_times(stored):
    from workbench.ui.panel import Workbench

    state, ids = stored
    # fake_run: total_seconds 7.5, 8.5 and 9.5 for runs of the tiny preset's 6 steps
    assert state.timing_note() == "Runs of 6 steps took 7.5–9.5 s here (3 measured)."
    panel = Workbench(state=state)
    assert "Runs of 6 steps took 7.5–9.5 s here (3 measured)." in panel.header.value


# ---------------------------------------------------------------------------------------------- generate mode
# A language model that writes: the task switch, its role toggles, no head only, Try it (base vs adapted
# answers, a stored run's answer through its adapter), a run's samples in the table.

LM = "story-lm"
PROMPT = "Statement: The cat is happy.\nQuestion:"


def _skill_validation() -> list[dict]:
    """The bundled skill's held-out split, read straight from its file (the reference for the panel's prompts)."""
    import json

    lines = (ROOT / "data" / "skill" / "validation.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def adapted_story_lm(seed: int = 0, scale: float = 0.5):
    """story-lm with LoRA r=8 on query and value whose A and B matrices are set by hand (random, seeded),
    so that its answers differ from the base model's; and the tokenizer."""
    import torch

    from workbench.lora.inject import add_lora

    model, tokenizer = load_base(LM, task="causal-lm")
    add_lora(model, LoRAConfig(rank=8, alpha=16, targets=("query", "value")))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():  # A as well: add_lora draws it from the global RNG
            for w in (layer.lora_A.weight, layer.lora_B.weight):
                w.copy_(scale * torch.randn(w.shape, generator=g))
    return model.eval(), tokenizer


def generative_run(cfg: RunConfig, samples: list[dict], exact: float = 0.5, losses=(3.0, 1.0), minute: int = 0):
    """A generative RunResult (no training) with this final exact match and these samples."""
    import numpy as np

    from workbench.engine.config import ParamCounts, RunResult, Timing

    n = len(losses)
    last = [np.nan] * (n - 1)
    history = pd.DataFrame({"step": np.arange(1, n + 1), "train_loss": list(losses), "lr": cfg.lr,
                            "eval_loss": last + [losses[-1]], "eval_accuracy": last + [0.4],
                            "eval_exact_match": last + [exact], "eval_perplexity": last + [2.7],
                            "heldout_loss": last + [1.1]})
    return RunResult(config=cfg, status="completed", history=history, params=ParamCounts(16_384, 983_424),
                     memory=None, timing=Timing(0.05, 1000.0, 7.5 + minute), samples=samples,
                     environment={"started": f"2026-12-01T11:{minute:02d}:00+00:00"})


@pytest.fixture(scope="module")
def lm_layers() -> ModelLayers:
    return ModelLayers.load(LM, task="causal-lm")


def gen_state(tmp_path: Path, tiny_layers: ModelLayers, **kwargs) -> PanelState:
    """A classify-mode state on tiny-bert whose generate mode is the bundled story-lm."""
    return make_state(tmp_path, tiny_layers, **kwargs)


def test_the_task_switch_brings_the_generative_preset_its_roles_and_methods(tmp_path, tiny_layers):
    from workbench.engine.config import preset
    from workbench.lora.roles import model_roles

    state = make_state(tmp_path, tiny_layers)
    events: list[str] = []
    state.subscribe(events.append)
    assert state.task == "classification" and state.methods() == (("LoRA", "lora"), ("full fine-tuning", "full"),
                                                                    ("head only", "head"))
    state.set_task("causal-lm")
    assert state.task == "causal-lm" and {"task", "choices", "runs"} <= set(events)
    # The preset as wb.preset("generate") gives it, unchanged by the panel.
    assert state.config() == preset("generate") and state.problem() is None
    # One toggle per role, as model_roles reads them from the loaded model; never the LM head.
    model, _ = load_base(LM, task="causal-lm")
    roles = [r for r in model_roles(model) if r.names]
    assert tuple(state.model.targets) == tuple(r.role for r in roles) == (
        "query", "key", "value", "attention output", "FFN in", "FFN out")
    assert all(list(state.model.targets[r.role].names) == list(r.names) for r in roles)
    assert not any("lm_head" in n for g in state.model.targets.values() for n in g.names)
    assert state.choices.targets == tuple(preset("generate").lora.targets) and state.model.head_parameters == 0
    assert state.methods() == (("LoRA", "lora"), ("full fine-tuning", "full"))
    # The readout is what the engine counts on the real model: r * (in + out) per layer, no head.
    for changes in ({}, {"rank": 4, "targets": ("key", "FFN in", "FFN out")}, {"method": "full"}):
        state.update(**changes)
        ref, _ = engine_count_for(state.config())
        est = state.parameter_estimate()
        assert (est.trainable, est.total) == (ref.trainable, ref.total), changes
    # Back to classify: the classifier's toggles and preset again.
    state.set_task("classification")
    assert tuple(state.model.targets) == KINDS and state.config() == tiny_config()
    with pytest.raises(ValueError, match="task must be one of"):
        state.set_task("generation")


def engine_count_for(cfg: RunConfig):
    model, _ = load_base(cfg.model, num_labels=2, task=cfg.task)
    prepare_model(cfg, model)
    return count_parameters(model), model


def test_gpt2_fused_query_key_value_toggle_together_and_count_once(tmp_path):
    layers = ModelLayers.load("tiny-gpt2", task="causal-lm")
    assert tuple(layers.targets) == ("query", "key", "value", "attention output", "FFN in", "FFN out")
    assert "lm_head" not in layers.targets and layers.fused["key"] == ("query", "key", "value")
    state = PanelState(model="tiny-gpt2", preset="gpt2", runs_dir=tmp_path / "runs", background=False, layers=layers)
    assert state.task == "causal-lm" and state.choices.targets == ("query", "key", "value")
    state.update(targets=("query", "key"))  # value unticked: the fused layer goes as a whole
    assert state.choices.targets == ()
    state.update(targets=("value", "FFN out"))  # value ticked: query and key come with it
    assert state.choices.targets == ("query", "key", "value", "FFN out")
    cfg = state.config()
    assert cfg.lora.targets == ("query", "key", "value", "FFN out")
    ref, model = engine_count_for(cfg)
    assert state.parameter_estimate().trainable == ref.trainable  # c_attn counted once, not three times
    assert set(lora_layers(model)) == {f"transformer.h.{i}.{p}" for i in layers.blocks
                                       for p in ("attn.c_attn", "mlp.c_proj")}


def test_head_only_is_refused_in_generate_mode(tmp_path, tiny_layers):
    from workbench.ui.state import HEAD_NOT_FOR_LM

    state = gen_state(tmp_path, tiny_layers)
    state.set_task("causal-lm")
    state.update(method="head")
    assert state.problem() == f"Cannot train with these settings: {HEAD_NOT_FOR_LM}."
    assert state.start() is False and state.message.kind == "error" and "head only is for a classifier" in \
        state.message.text
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    # The engine refuses it too (the panel's check says so first, in the panel's words).
    from workbench.engine.training import validate

    with pytest.raises(ValueError):
        validate(state.defaults.with_changes(method="head"))


def test_a_generative_run_is_never_called_at_chance():
    from workbench.engine.config import preset

    cfg = preset("generate")
    fell = generative_run(cfg, [], exact=0.0, losses=(3.0, 1.5))
    assert run_outcome(fell, chance=0.5).verdict == "learned"  # next-token accuracy 0.4 < "chance" 0.5: no matter
    rose = run_outcome(generative_run(cfg, [], exact=0.0, losses=(3.0, 9.0)), chance=0.5)
    assert rose.verdict == "did not learn" and "loss rose from 3 to 9" in rose.sentence and "chance" not in \
        rose.sentence


def test_try_it_answers_with_the_base_the_newest_and_a_stored_run(tmp_path, tiny_layers):
    from workbench.engine.config import preset
    from workbench.engine.generation import generate, normalize_answer
    from workbench.lora.adapters import save_adapter

    state = gen_state(tmp_path, tiny_layers)
    state.set_task("causal-lm")
    first = _skill_validation()[0]
    assert state.prompt == first["prompt"]  # prefilled with the first held-out prompt
    # No run yet: the base model answers alone.
    only = state.try_it()
    base, tokenizer = load_base(LM, task="causal-lm")
    expected_base = normalize_answer(generate(base, tokenizer, [first["prompt"]], max_new_tokens=24)[0])
    assert only.base.text == expected_base and only.adapted is None and only.stored is None
    assert only.reference == first["completion"].strip() and only.base.correct == (expected_base == only.reference)

    # Two stored runs with hand-set adapters (different seeds): the newest answers as "adapted",
    # the one chosen answers as "stored", each through its adapter file.
    ids = []
    for seed in (1, 2):
        model, _ = adapted_story_lm(seed)
        run = generative_run(preset("generate", seed=seed), [], minute=seed)
        folder = store.save_run(run, state.runs_dir)
        save_adapter(model, folder / "adapter")
        ids.append(run.run_id)
    state.refresh()
    assert [r.run_id for r in state.try_runs()] == ids
    state.choose_run(ids[0])
    want = {seed: normalize_answer(generate(adapted_story_lm(seed)[0], tokenizer, [PROMPT], max_new_tokens=24)[0])
            for seed in (1, 2)}
    state.try_it(PROMPT)
    answers = state.answers
    assert answers.prompt == PROMPT and answers.reference is None  # not a held-out prompt: no reference
    assert answers.base.text == normalize_answer(generate(base, tokenizer, [PROMPT], max_new_tokens=24)[0])
    assert (answers.adapted.run_id, answers.adapted.text) == (ids[1], want[2])
    assert (answers.stored.run_id, answers.stored.text) == (ids[0], want[1])
    assert len({answers.base.text, want[1], want[2]}) == 3, answers  # the adapters really change the answers
    with pytest.raises(ValueError, match="not a stored generative run"):
        state.choose_run("nope")
    # A run kept in memory (keep_model) answers as the newest without its adapter being read.
    kept, _ = adapted_story_lm(3)
    last = generative_run(preset("generate"), [])
    last.model, last.run_id = kept, "in-memory"
    state.last_result = last
    assert state.try_it().adapted.text == normalize_answer(generate(kept, tokenizer, [PROMPT], max_new_tokens=24)[0])
    # Try it is for generate mode only.
    state.set_task("classification")
    assert state.try_it() is None and "choose 'generate'" in state.message.text


def test_samples_appear_in_the_table_the_samples_view_and_the_export(tmp_path, tiny_layers):
    from workbench.engine.config import preset
    from workbench.ui.state import samples_frame

    samples = [{"step": 5, "prompt": "Statement: A.\nQuestion:", "reference": " Is A?", "answer": " a cake"},
               {"step": 5, "prompt": "Statement: B.\nQuestion:", "reference": " Was B?", "answer": ""},
               {"step": 10, "prompt": "Statement: A.\nQuestion:", "reference": " Is A?", "answer": " Is A?\nMore"},
               {"step": 10, "prompt": "Statement: B.\nQuestion:", "reference": " Was B?", "answer": " Is B?"}]
    run = generative_run(preset("generate"), samples, exact=0.5)
    store.save_run(run, tmp_path / "runs")
    state = gen_state(tmp_path, tiny_layers)
    assert state.table().empty  # classify mode shows classification runs only
    state.set_task("causal-lm")
    row = state.table().iloc[0]
    assert (row["exact match"], row["last answer"], row["run id"]) == ("50.0%", "Is A?", run.run_id)
    frame = samples_frame(store.load_run(tmp_path / "runs" / run.run_id))
    assert list(frame.columns) == ["prompt", "reference", "step 5", "step 10"]
    assert frame.values.tolist() == [["Statement: A.\nQuestion:", "Is A?", "a cake", "Is A?"],
                                     ["Statement: B.\nQuestion:", "Was B?", "", "Is B?"]]
    # The export: exact match in percent, as in the table, and the last answer.
    state.select_all()
    folder = state.export()
    csv = pd.read_csv(folder / "runs.csv")
    assert csv["exact match (%)"].tolist() == [50.0] and csv["last answer"].tolist() == ["Is A?"]
    # The compare figure scores a generative run by its exact match, on an exact-match axis.
    from workbench.viz.plots import accuracy_vs_params

    ax = accuracy_vs_params(state.selected_results()).axes[0]
    assert ax.get_ylabel() == "exact match on held-out prompts (%)" and "Exact match" in ax.get_title(loc="left")
    assert ax.collections[0].get_offsets()[0][1] == pytest.approx(0.5)


def test_the_view_in_generate_mode(tmp_path, tiny_layers):
    from workbench.engine.config import preset
    from workbench.lora.adapters import save_adapter
    from workbench.ui.panel import GENERATE_TAB_TITLES, TAB_TITLES

    model, _ = adapted_story_lm(1)
    run = generative_run(preset("generate"), [{"step": 200, "prompt": "Statement: A.\nQuestion:",
                                               "reference": " Is A?", "answer": " Is A?"}])
    folder = store.save_run(run, tmp_path / "runs")
    save_adapter(model, folder / "adapter")
    panel = make_panel(tmp_path, tiny_layers)
    panel.state._layers["causal-lm"] = ModelLayers.load(LM, task="causal-lm")
    assert tuple(panel.tabs.titles) == TAB_TITLES and "head" in [v for _, v in panel.method.options]
    panel.task.value = "causal-lm"
    assert tuple(panel.tabs.titles) == GENERATE_TAB_TITLES
    assert list(panel.targets) == ["query", "key", "value", "attention output", "FFN in", "FFN out"]
    assert [k for k, b in panel.targets.items() if b.value] == list(preset("generate").lora.targets)
    assert [v for _, v in panel.method.options] == ["lora", "full"] and "no head only" in panel.method_note.value
    assert panel.prompt.value == _skill_validation()[0]["prompt"]
    assert "exact match" in panel.table.value and "last answer" in panel.table.value and "Is A?" in panel.table.value
    assert "step 200" in panel.samples.value and panel.samples_box.layout.display == "flex"
    # Toggling a role reaches the state; Try it shows both answers side by side.
    for key, box in panel.targets.items():
        box.value = key in ("query", "value")
    assert panel.state.choices.targets == ("query", "value") and panel.state.config().lora.targets == ("query", "value")
    panel.prompt.value = PROMPT
    panel.try_button.click()
    a = panel.state.answers
    assert a.prompt == PROMPT and a.adapted.run_id == run.run_id
    html_text = panel.answers.value
    assert len(re.findall(r"class='workbench-answer[ ']", html_text)) == 3 and "data-who='base model'" in html_text
    import html as h

    assert h.escape(a.base.text) in html_text and h.escape(a.adapted.text) in html_text
    panel.try_run.value = run.run_id
    assert panel.state.answers.stored.text == a.adapted.text
    panel.task.value = "classification"
    assert tuple(panel.tabs.titles) == TAB_TITLES and list(panel.targets) == list(KINDS)
    assert panel.samples_box.layout.display == "none"


@pytest.mark.slow
def test_a_generative_run_answers_in_try_it_as_soon_as_it_ends(tmp_path, tiny_layers):
    """A real short run of story-lm on the skill: after it, Try it's newest answer is its own, unasked."""
    from workbench.engine.generation import generate, normalize_answer
    from workbench.lora.adapters import load_adapter
    from workbench.ui.state import default_train

    def quick(cfg, **kwargs):  # fewer prompts answered at evaluation: seconds, not a minute
        return default_train(cfg.with_changes(max_generate_examples=8), **kwargs)

    state = gen_state(tmp_path, tiny_layers, train=quick)
    state.set_task("causal-lm")
    state.update(steps=4)
    events: list[str] = []
    state.subscribe(events.append)
    assert state.start() is True
    result = state.last_result
    assert result is not None and result.status == "completed" and result.model is not None, state.message.text
    assert "exact match" in state.message.text and events[-1] == "answers"
    answers = state.answers
    assert answers.adapted.run_id == result.run_id and answers.prompt == _skill_validation()[0]["prompt"]
    # Its answer is what its stored adapter, loaded into a fresh base, writes.
    fresh, tokenizer = load_base(LM, task="causal-lm")
    load_adapter(fresh, Path(result.path) / "adapter")
    assert answers.adapted.text == normalize_answer(generate(fresh, tokenizer, [answers.prompt],
                                                             max_new_tokens=24)[0])
    row = state.table().iloc[-1]
    assert row["run id"] == result.run_id and row["last answer"] != "–"
    assert list(state.samples_table(result.run_id).columns)[-1] == "step 4"


def test_a_task_that_cannot_load_is_said_and_the_toggle_stays(tmp_path, tiny_layers):
    state = make_state(tmp_path, tiny_layers, generate_model=str(tmp_path / "no-such-model"))
    from workbench.ui.panel import Workbench

    panel = Workbench(state=state)
    panel.task.value = "causal-lm"
    assert panel.task.value == state.task == "classification"
    assert state.message.kind == "error" and "no-such-model" in state.message.text
    assert list(panel.targets) == list(KINDS) and state.config() == tiny_config()


# ---------------------------------------------------------------------------------------------- QLoRA: the base's storage


def test_quantize_choice_reaches_the_config_the_readout_and_a_run(tmp_path, tiny_layers):
    state = make_state(tmp_path, tiny_layers)
    assert state.choices.quantize is None and state.config().quantize is None
    state.update(quantize="nf4", rank=4)
    cfg = state.config()
    assert cfg == tiny_config(lora=LoRAConfig(rank=4), quantize="nf4")
    assert cfg.label() == "QLoRA r=4 (query,value), NF4 base" and state.problem() is None
    # The readout says what a weight costs: 4 + 8/64 + 32/(64*256) = 4.127 bits (QLoRA's double quantization).
    assert "4.13 bits" in state.readout().detail and "nf4" in state.readout().detail
    # A narrowed layer range names the run by hand: it still says QLoRA and the base.
    state.update(layer_range=(1, 1))
    assert state.config().label() == "QLoRA r=4 (query,value, layer 1, NF4 base)"
    state.update(layer_range=(0, 1), quantize="int8")
    assert state.config().quantize == "int8" and "int8" in state.readout().detail
    # A LoRA setting: full fine-tuning and head only train a float base.
    state.update(method="full")
    assert state.config().quantize is None and state.problem() is None
    state.update(method="lora")
    result = state.start() and state.last_result
    assert result and result.status == "completed", state.message.text
    stored = store.load_runs(state.runs_dir)
    assert [r.config.quantize for r in stored] == ["int8"] and "int8 base" in state.table().iloc[0]["run"]


@pytest.mark.parametrize("changes, message", [
    (dict(quantize="fp4"), "quantize must be one of"),
    (dict(quantize="nf4", variant="dora"), "DoRA reads and rewrites the base weight"),
    (dict(quantize="nf4", variant="pissa"), "PiSSA reads and rewrites the base weight"),
])
def test_bad_quantize_choices_are_refused_with_what_is_allowed(tmp_path, tiny_layers, changes, message):
    state = make_state(tmp_path, tiny_layers)
    state.update(**changes)
    assert message in state.problem() and state.choices.quantize == changes["quantize"]
    with pytest.raises(SettingsError, match=message):
        state.config()


def test_a_gpt2_base_cannot_be_quantized_and_says_why(tmp_path):
    layers = ModelLayers.load("tiny-gpt2", task="causal-lm")
    state = PanelState(model="tiny-gpt2", preset="gpt2", runs_dir=tmp_path / "runs", background=False, layers=layers)
    state.update(quantize="nf4")
    assert "Conv1D" in state.problem()


def test_the_view_has_a_quantize_choice_among_the_lora_settings(tmp_path, tiny_layers):
    panel = make_panel(tmp_path, tiny_layers)
    assert panel.quantize.value == "none" and [v for _, v in panel.quantize.options] == ["none", "nf4", "int8"]
    panel.quantize.value = "nf4"
    assert panel.state.choices.quantize == "nf4" and "nf4" in panel.readout.value
    panel.state.update(quantize=None)
    assert panel.quantize.value == "none"
    panel.method.value = "head"
    assert panel.quantize.disabled
    panel.method.value = "lora"
    assert not panel.quantize.disabled

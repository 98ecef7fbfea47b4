"""The panel's settings (``workbench.ui.settings``): choices in, RunConfig out, problems in words.

The state is tested as plain Python: the choices start from the preset, make the
RunConfig the engine would run, count the parameters as the engine does, and refuse a
bad value with what is allowed, never rewriting it (on the "tiny" preset: tiny-bert).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from workbench.engine.config import PRESETS
from workbench.lora.config import LoRAConfig
from workbench.lora.inject import lora_layers
from workbench.lora.targets import layer_groups
from workbench.ui.settings import Choices, SettingsError
from workbench.ui.state import PanelState
from toy_models import tiny_bert_classifier
from panel_helpers import HEAD, KINDS, MODEL, PRESET, ROOT, engine_count, make_state, tiny_config


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
    model = tiny_bert_classifier()
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


def test_an_instructors_lock_sets_greys_and_keeps_settings_until_unlocked(tmp_path, tiny_layers):
    """The workshop room's hook (issue 22): locked settings are set, refused when changed (with the
    reason), greyed in the Train tab with the reason beside them, kept across a method switch and a
    task switch, and free again after unlock."""
    from panel_helpers import make_panel

    panel = make_panel(tmp_path, tiny_layers)
    s = panel.state
    panel.lock({"steps": 4, "lr": "0.002"}, "exercise 2 compares ranks at one lr")
    assert (s.choices.steps, s.choices.lr) == (4, 0.002) and s.locked == {
        "steps": "exercise 2 compares ranks at one lr", "lr": "exercise 2 compares ranks at one lr"}
    assert panel.steps.disabled and panel.lr.disabled and not panel.rank.disabled
    assert panel.steps.tooltip == "locked for this exercise: exercise 2 compares ranks at one lr"
    assert "locked for this exercise: lr, steps — exercise 2 compares ranks at one lr" in panel.train_tab.locked_note.value
    # the learning rate's note says it is fixed, not "change it freely" beside a greyed-out box
    assert panel.lr_note.value and "freely" not in panel.lr_note.value
    assert "Learning rate 0.002, fixed for this exercise: exercise 2 compares ranks at one lr." in panel.lr_note.value
    with pytest.raises(SettingsError, match="steps is locked for this exercise: exercise 2 compares ranks at one lr"):
        s.update(steps=9)
    s.update(steps="4", rank=2)  # the same value, typed, and an unlocked setting: fine
    s.update(method="full")  # a method switch does not move the locked lr to full fine-tuning's
    assert s.choices.lr == 0.002 and s.choices.method == "full"
    panel.task.value = "causal-lm"
    assert s.task == "classification" and s.message.kind == "warn" and "locked" in s.message.text
    with pytest.raises(ValueError, match="a lock needs a reason"):
        s.lock({"seed": 1}, " ")
    panel.unlock()
    assert s.locked == {} and not panel.steps.disabled and panel.train_tab.locked_note.value == ""
    assert "fixed for this exercise" not in panel.lr_note.value
    assert panel.steps.tooltip != "locked for this exercise: exercise 2 compares ranks at one lr"
    s.update(steps=9)
    assert s.choices.steps == 9

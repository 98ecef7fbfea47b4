"""The panel's QLoRA choice: the base's storage reaches the config, the readout and a run."""

from __future__ import annotations

import pytest

from workbench.lora.config import LoRAConfig
from workbench.records import store
from workbench.ui.model_layers import ModelLayers
from workbench.ui.settings import SettingsError
from workbench.ui.state import PanelState
from panel_helpers import make_panel, make_state, tiny_config


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

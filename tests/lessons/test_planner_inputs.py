"""The planner's inputs and outputs: LoRA settings by config or by name, variants, which side a
plan reports, what bad input is told, and the tables and figure a plan gives
(``workbench.lessons.planner``: ``planning``, ``plans``, ``tables``, ``figures``)."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.lessons.planner import plan, plan_table
from workbench.lora.config import LoRAConfig
from workbench.util.units import GB


# ----------------------------------------------------------- inputs and outputs


def test_table_and_figure():
    p = plan("minilm", batch_size=2, seq_len=16)
    t = p.table()
    assert list(t.columns) == ["LoRA (GB)", "full (GB)", "full / LoRA"]
    assert t.loc["gradients", "full (GB)"] == p.full.memory.gradients / GB
    assert t.loc["total", "LoRA (GB)"] == pytest.approx(p.lora.memory.total / GB)
    fig = p.figure()
    ax = fig.axes[0]
    assert len(ax.get_xticks()) == 2
    stacked = sum(bar.get_height() for bar in ax.patches[1::2])  # the full fine-tuning bar
    assert stacked == pytest.approx(p.full.memory.total / GB)
    rows = plan_table([p, plan("gpt2", batch_size=1, seq_len=8)])
    assert list(rows["architecture"]) == ["minilm", "gpt2"]
    assert rows.loc[0, "LoRA adapter params"] == 6 * 2 * 8 * (384 + 384)


def test_lora_settings_come_as_a_config_or_by_name():
    by_name = plan("minilm", rank=4, alpha=8, targets=("query",), rslora=True)
    whole = plan("minilm", LoRAConfig(rank=4, alpha=8, targets=("query",), rslora=True))
    assert by_name.settings.lora == whole.settings.lora == LoRAConfig(rank=4, alpha=8, targets=("query",), rslora=True)
    assert by_name.lora.adapter_params == whole.lora.adapter_params == 6 * 4 * (384 + 384)
    assert by_name.settings.to_dict()["lora"] == whole.settings.lora.to_dict()
    with pytest.raises(TypeError, match="not both"):
        plan("minilm", LoRAConfig(), rank=4)
    with pytest.raises(TypeError, match="unknown LoRA setting"):
        plan("minilm", ranks=4)


def test_variants_and_lora_dropout_reach_the_plan():
    qv = plan("roberta-base")
    dora = plan("roberta-base", dora=True)
    # DoRA trains one magnitude per output of each adapted layer on top of A and B
    assert dora.lora.adapter_params == qv.lora.adapter_params + 24 * 768
    assert dora.lora_label.startswith("DoRA r=8") and plan("roberta-base", init="pissa").lora_label == "LoRA r=8 PiSSA (query,value)"
    dropped = plan("gpt2", LoRAConfig(dropout=0.1), batch_size=2, seq_len=16)
    assert dropped.settings.lora.dropout == 0.1 and dropped.settings.dropout is True  # LoRA's and the model's
    assert dropped.lora.activations > plan("gpt2", batch_size=2, seq_len=16).lora.activations  # its masks


def test_method_picks_the_reported_side():
    lora = plan("minilm")
    full = plan("minilm", method="full")
    assert lora.trainable == lora.lora.trainable < full.trainable == full.full.total
    assert full.memory == full.full.memory


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"method": "qlora"}, "method must be"),
        ({"dtype": "int8"}, "dtype must be"),
        ({"batch_size": 0}, "batch_size must be"),
        ({"seq_len": 1.5}, "seq_len must be"),
        ({"optimizer": "lion"}, "optimizer must be"),
        ({"task": "seq2seq"}, "task must be"),
        ({"rank": 0}, "rank must be"),
        ({"targets": ("nonexistent",)}, "matches no module"),
        ({"device": "tpu"}, "device must be"),
    ],
)
def test_bad_inputs_say_what_is_allowed(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan("minilm", **kwargs)


def test_long_sequences_are_noted():
    p = plan("gpt2", seq_len=4096, batch_size=1, method="full")
    assert any("positions" in n for n in p.notes)
    assert np.isfinite(p.table().loc["total", "full (GB)"])


def test_plan_table_never_mixes_totals_with_and_without_activations():
    with_acts = plan("gpt2", batch_size=1, seq_len=8)
    without = plan("gpt3-175b", batch_size=1, seq_len=8)  # OPT-style: no activation formula
    assert with_acts.full.activations_known and not without.full.activations_known
    rows = plan_table([with_acts, without]).set_index("architecture")
    for name, p in (("gpt2", with_acts), ("gpt3-175b", without)):  # the static comparison exists for both
        assert rows.loc[name, "full (GB)"] == pytest.approx(p.full.static_bytes / GB)
        assert rows.loc[name, "full / LoRA"] == pytest.approx(p.full.static_bytes / p.lora.static_bytes)
    assert rows.loc["gpt2", "full / LoRA with activations"] == pytest.approx(with_acts.full.memory.total / with_acts.lora.memory.total)
    assert np.isnan(rows.loc["gpt3-175b", "full / LoRA with activations"])
    assert np.isnan(rows.loc["gpt3-175b", "LoRA + activations (GB)"])
    assert rows.loc["gpt2", "LoRA adapts"] == "query+key+value (fused c_attn)"
    assert rows.loc["gpt3-175b", "LoRA adapts"] == "query, value"

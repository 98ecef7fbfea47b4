"""What each LoRA variant changes before training (workbench.lessons.variant_study), against
hand counts and the closed forms of the formulas, on a 2-block BERT built from a config."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from workbench.lessons.variant_study import VARIANT_SETTINGS, variant_overview
from workbench.lora.config import LoRAConfig

HIDDEN, BLOCKS = 16, 2


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=HIDDEN, num_hidden_layers=BLOCKS, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, num_labels=2)
    return BertForSequenceClassification(cfg).eval()


INPUTS = {"input_ids": torch.randint(1, 50, (3, 7), generator=torch.Generator().manual_seed(0))}


@pytest.fixture(scope="module")
def overview():
    base = tiny_bert()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    inputs = INPUTS
    table = variant_overview(base, inputs, LoRAConfig(rank=4, alpha=8, targets=("query", "value")), lr=1e-3)
    after = base.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "variant_overview changed the base model"
    return table


def test_trainable_counts_by_hand(overview):
    head = HIDDEN * 2 + 2  # the new classifier (hidden -> 2, with bias) trains beside the adapters
    lora = BLOCKS * 2 * 4 * (HIDDEN + HIDDEN)  # query and value in each block: r (in + out) each
    assert overview.loc["LoRA", "trainable"] == lora + head
    assert overview.loc["DoRA", "extra vs LoRA"] == BLOCKS * 2 * HIDDEN  # one magnitude per output row per layer
    for v in ("rsLoRA", "PiSSA", "LoRA+"):
        assert overview.loc[v, "extra vs LoRA"] == 0


def test_scales_and_learning_rates(overview):
    assert overview.loc["LoRA", "scale s"] == pytest.approx(8 / 4)
    assert overview.loc["rsLoRA", "scale s"] == pytest.approx(8 / math.sqrt(4))
    assert overview.loc["LoRA+", "lr of B"] == pytest.approx(16 * overview.loc["LoRA+", "lr of A"])
    for v in ("LoRA", "rsLoRA", "DoRA", "PiSSA"):
        assert overview.loc[v, "lr of B"] == overview.loc[v, "lr of A"] == pytest.approx(1e-3)


def test_every_variant_starts_from_the_base_model(overview):
    out = overview["max |out - base out| at start"]
    for v in ("LoRA", "rsLoRA", "LoRA+"):
        assert out[v] == 0.0  # B = 0: exactly the base model
    # DoRA rebuilds W as ||W|| * W / ||W||, PiSSA as residual + principal part: equal up to float32 rounding
    with torch.no_grad():
        scale = float(tiny_bert()(**INPUTS).logits.abs().max())
    assert 0 < scale and out["DoRA"] < 1e-5 * scale and out["PiSSA"] < 1e-5 * scale


def test_the_reference_must_be_there():
    with pytest.raises(ValueError, match="plain 'LoRA'"):
        variant_overview(tiny_bert(), {"input_ids": torch.ones(1, 3, dtype=torch.long)}, LoRAConfig(),
                         variants={"DoRA": VARIANT_SETTINGS["DoRA"]})

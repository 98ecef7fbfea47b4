"""What each LoRA variant changes before training (workbench.lessons.variant_study), against
hand counts and the closed forms of the formulas, on a 2-block BERT 16 wide from the toy table (tests/toy_models.py)."""

from __future__ import annotations

import math

import pytest
import torch
from toy_models import NARROW_HIDDEN, narrow_bert

from workbench.lessons.variant_study import VARIANT_SETTINGS, variant_overview
from workbench.lora.config import LoRAConfig

HIDDEN, BLOCKS = NARROW_HIDDEN, 2


def tiny_bert():
    """The toy table's narrow BERT (16 wide), 2 blocks, seed 0."""
    return narrow_bert(blocks=BLOCKS, seed=0)


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


# ---- after training: findings against plain LoRA, on hand-made runs -------------------------------------------


def _trained(changes: dict, first: float, final: float, seconds: float):
    import pandas as pd

    from workbench.engine.config import RunResult, Timing, preset
    from workbench.lora.params import ParamCounts

    cfg = preset("tiny").with_changes(**changes)
    history = pd.DataFrame({"step": [50, 100, 150], "train_loss": [0.6, 0.5, 0.4], "lr": [1e-3] * 3,
                            "eval_loss": [0.6, math.nan, 0.3], "eval_accuracy": [first, math.nan, final]})
    return RunResult(config=cfg, status="completed", history=history, params=ParamCounts(trainable=10, total=100),
                     memory=None, timing=Timing(0.1, 10.0, seconds))


def test_findings_place_each_variant_against_lora_interval():
    from workbench.lessons.teaching import wilson_interval
    from workbench.lessons.variant_study import findings

    runs = [_trained({}, 0.50, 0.95, 10.0), _trained({"rslora": True}, 0.80, 0.96, 10.0),
            _trained({"dora": True}, 0.50, 0.60, 25.0), _trained({"loraplus_ratio": 16.0}, 0.90, 1.00, 11.0)]
    found = findings(runs, ["LoRA", "rsLoRA", "DoRA", "LoRA+"], n_eval=400)
    assert found.first_eval == 50 and list(found.table.index) == ["LoRA", "rsLoRA", "DoRA", "LoRA+"]
    assert found.early.tolist() == [0.50, 0.80, 0.50, 0.90]
    assert [(c.variant, c.verdict) for c in found.comparisons] == [("rsLoRA", "within"), ("DoRA", "below"),
                                                                   ("LoRA+", "above")]
    assert found.comparisons[1].time_ratio == 2.5
    lo, hi = wilson_interval(0.95, 400)
    text = found.markdown()
    assert text.startswith(f"Against plain LoRA (0.950, {lo:.3f} to {hi:.3f}) on one seed:\n\n")
    assert ("* **rsLoRA**: 0.960 at the end (within LoRA's interval: not distinguishable on this data), 0.800 at "
            "step 50 (LoRA 0.500), 1.00x LoRA's time.") in text
    assert "* **DoRA**: 0.600 at the end (below LoRA's interval), 0.500 at step 50 (LoRA 0.500), 2.50x" in text
    assert "* **LoRA+**: 1.000 at the end (above LoRA's interval)" in text
    assert found.table.loc["DoRA", "95% interval"] == "{:.3f} to {:.3f}".format(*wilson_interval(0.6, 400))
    with pytest.raises(ValueError, match="reference"):
        findings(runs[1:], ["rsLoRA", "DoRA", "LoRA+"], n_eval=400)
    with pytest.raises(ValueError, match="one name per run"):
        findings(runs, ["LoRA"], n_eval=400)

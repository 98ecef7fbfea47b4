"""What notebook 02 states about its rank sweep (workbench.lessons.rank_sweep), on hand-made runs.

Each run is a ``RunResult`` built by hand (a history with evaluations at steps 50 and 150,
a memory breakdown), so every number a sentence quotes is known in advance.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from workbench.engine.config import RunResult, Timing, preset
from workbench.engine.memory import MemoryBreakdown
from workbench.engine.sweep import sweep_configs
from workbench.lessons import rank_sweep as rs
from workbench.lessons.teaching import wilson_interval
from workbench.lora.params import ParamCounts

N = 200  # validation sentences


def run(cfg, first: float, final: float, weights: int, total: int, peak: int, kind: str = "process peak (per run)"):
    history = pd.DataFrame({"step": [1, 50, 100, 150], "train_loss": [0.7, 0.6, 0.5, 0.4], "lr": [1e-3] * 4,
                            "eval_loss": [math.nan, 0.6, math.nan, 0.3],
                            "eval_accuracy": [math.nan, first, math.nan, final]})
    return RunResult(config=cfg, status="completed", history=history, params=ParamCounts(trainable=10, total=total),
                     memory=MemoryBreakdown(weights=weights, gradients=1, optimizer=2, activations=3, peak=peak,
                                            peak_kind=kind),
                     timing=Timing(0.1, 10.0, 5.0))


def sweep(first=(0.55, 0.60), final=(0.990, 1.000, 0.960, 0.600), alpha_per_rank=None, rslora=False, kind=None):
    """LoRA r = 1 and 32, full fine-tuning and head only: a bf16 frozen base for LoRA (2 bytes per parameter)."""
    configs = sweep_configs(preset("tiny", rslora=rslora), [1, 32], alpha_per_rank=alpha_per_rank)
    kind = kind or "process peak (per run)"
    lora = [run(c, f, a, weights=2_000_000, total=1_000_000, peak=400_000_000, kind=kind)
            for c, f, a in zip(configs[:2], first, final)]
    full = run(configs[2], 0.8, final[2], weights=4_000_000, total=1_000_000, peak=450_000_000, kind=kind)
    head = run(configs[3], 0.5, final[3], weights=2_000_000, total=1_000_000, peak=380_000_000, kind=kind)
    return lora + [full, head]


def test_precision_names_the_ranks_that_cannot_be_told_from_the_best():
    p = rs.precision(sweep(), N)
    lo_best = wilson_interval(1.0, N)[0]
    assert p.best == 1.0 and p.best_low == pytest.approx(lo_best)
    assert p.indistinct == [1, 32]  # 0.990 of 200 reaches 1.000's lower end (0.981)
    acc, lo, hi, steps = p.head
    assert acc == 0.6 and (lo, hi) == wilson_interval(0.6, N) and steps == preset("tiny").steps
    text = p.markdown()
    assert f"one sentence is {1 / N:.3f} of accuracy (0.994 against 1.000 is {0.006 * N:.1f} sentences)" in text
    assert f"lower end ({lo_best:.3f}) cannot be told apart from it on this data: r = 1, 32." in text
    assert f"**Head only** reached 0.600 ({lo:.3f} to {hi:.3f}; chance is 0.5)" in text
    apart = rs.precision(sweep(final=(0.90, 1.0, 0.96, 0.6))[:3], N)  # no head run; r = 1 clearly below
    assert apart.indistinct == [32] and apart.head is None and "Head only" not in apart.markdown()
    assert rs.interval_column(sweep(), N)[0] == "{:.3f} to {:.3f}".format(*wilson_interval(0.99, N))


def test_weight_bars_say_the_halving_is_storage_precision():
    w = rs.weight_bars(sweep())
    assert list(w.table.index) == ["LoRA r=1 (query,value)", "LoRA r=32 (query,value)", "full fine-tuning", "head only"]
    assert w.lora_bytes_per_parameter == 2.0 and w.full_weights_mb == 4.0 and w.lora_to_full == 0.5
    text = w.markdown()
    assert text.startswith("**The weights bars.** LoRA's weights are stored at 2.00 bytes per parameter (the frozen "
                           "base in bf16, 2 bytes, and the small trainable part in fp32), full fine-tuning's at 4.00")
    assert "so LoRA's bar is 0.50 of full fine-tuning's. That halving is the **storage precision**" in text
    assert "**The peaks** run from 380 to 450 MB" in text and "do not add up with run order" in text
    shared = rs.weight_bars(sweep(kind="process VmHWM"))
    assert "a later run carries the earlier runs' high-water mark" in shared.markdown()
    lora_only = rs.weight_bars(sweep()[:2])
    assert lora_only.full_weights_mb is None and lora_only.lora_to_full is None
    assert "storage precision" not in lora_only.markdown()


def updates(sba=(0.33, 0.062), ba=(0.0208, 0.124)):
    """An ``early_updates`` table for r = 1 and 32 (numbers of the shape notebook 02's runs gave after 10 steps)."""
    return pd.DataFrame({"s": [16.0, 0.5], "mean ||BA||_F": list(ba), "mean ||sBA||_F": list(sba),
                         "B columns together": [1.0, 0.17], "train loss": [0.69, 0.69]},
                        index=pd.Index([1, 32], name="r"))


def test_start_speed_reads_the_measured_early_update_beside_the_first_evaluation():
    s = rs.start_speed(sweep(), N, updates=updates(), update_steps=10)
    assert s.convention == "fixed alpha = 16" and s.first_eval == 50 and list(s.table.index) == [1, 32]
    assert s.update_ratio == pytest.approx(0.33 / 0.062) and s.larger_update == "smallest"
    assert s.ba_growth == pytest.approx(0.124 / 0.0208)  # 5.96: near sqrt(32) = 5.66, far from 32
    assert s.first.tolist() == [0.55, 0.60] and s.first_overlap  # 0.55 and 0.60 of 200 sentences overlap
    assert s.larger_update_ahead is None
    text = s.markdown()
    assert text.startswith("This sweep used **fixed alpha = 16** (s = 16 at r = 1, 0.5 at r = 32). **Measured** after "
                           "the runs' first 10 steps")
    assert "was 0.33 at r = 1 and 0.062 at r = 32, so the **smallest** rank took the larger early update (5.3x)" in text
    assert ("grew 6.0x from r = 1 to r = 32: closer to the 5.7x of B's columns moving in unrelated directions "
            "($\\sqrt r$) than to the 32x of columns moving together ($r$)") in text
    assert "At step 50 (the first evaluation) r = 1 stood at 0.550 and r = 32 at 0.600 (validation loss 0.600 and 0.600)" in text
    assert "(every rank was between 0.550 and 0.600, near chance" in text
    assert "did not put that rank measurably ahead" in text
    assert "At the end the LoRA runs reached 0.990 to 1.000." in text


def test_start_speed_says_when_the_rank_that_moved_less_was_ahead_or_the_larger_one():
    behind = rs.start_speed(sweep(first=(0.5, 0.9)), N, updates=updates(), update_steps=10)
    assert not behind.first_overlap and behind.larger_update_ahead is False
    assert "did **not** buy a faster start: the rank that moved less was ahead" in behind.markdown()
    ahead = rs.start_speed(sweep(first=(0.5, 0.9), alpha_per_rank=2.0), N, alpha_per_rank=2.0,
                           updates=updates(sba=(0.04, 0.25)), update_steps=10)
    assert ahead.convention == "alpha = 2 r" and ahead.larger_update == "largest" and ahead.larger_update_ahead
    assert "The rank with the larger early update was ahead." in ahead.markdown()
    together = rs.start_speed(sweep(), N, updates=updates(ba=(0.02, 0.5)), update_steps=10)
    assert "grew 25.0x from r = 1 to r = 32: closer to the 32x of B's columns moving together" in together.markdown()


def test_start_speed_without_a_measurement_says_only_what_the_evaluation_saw():
    flat = rs.start_speed(sweep(first=(0.5, 0.9), rslora=True), N)
    assert flat.convention == "rsLoRA (alpha / sqrt(r))" and flat.update is None and flat.larger_update is None
    text = flat.markdown()
    assert "Measured" not in text and "early update" not in text
    assert "r = 1 stood at 0.500 and r = 32 at 0.900" in text


def test_findings_bundle_the_three_parts_and_need_a_lora_run():
    found = rs.findings(sweep(), N)
    assert found.precision.indistinct == [1, 32] and found.weights.lora_to_full == 0.5
    assert found.start.larger_update is None  # no early_updates given
    assert rs.findings(sweep(), N, updates=updates(), update_steps=10).start.larger_update == "smallest"
    with pytest.raises(ValueError, match="no LoRA run"):
        rs.findings(sweep()[2:], N)

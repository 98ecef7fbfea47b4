"""The measurements the notebooks format into their text (workbench.lessons.teaching),
against scipy, hand computations and the behaviour of a real Adam step."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import nn

from workbench.lessons import teaching as tg
from workbench.lora.layer import LoRALayer


@pytest.mark.parametrize("correct,n", [(500, 500), (497, 500), (257, 500), (0, 40), (13, 17)])
def test_wilson_interval_matches_scipy(correct, n):
    from scipy.stats import binomtest

    ref = binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = tg.wilson_interval(correct / n, n)
    assert lo == pytest.approx(ref.low, abs=2e-4) and hi == pytest.approx(ref.high, abs=2e-4)


def test_wilson_interval_at_one_is_the_closed_form():
    lo, hi = tg.wilson_interval(1.0, 500)
    assert lo == pytest.approx(500 / (500 + 1.96**2), rel=1e-12) and hi == 1.0  # exactly: it holds the accuracy
    assert tg.wilson_interval(0.0, 40)[0] == 0.0


@pytest.mark.parametrize("acc,n,match", [(1.2, 10, "accuracy"), (0.5, 0, "n"), (0.5, 2.5, "n")])
def test_wilson_interval_refuses_bad_input(acc, n, match):
    with pytest.raises(ValueError, match=match):
        tg.wilson_interval(acc, n)


def test_adam_update_size_for_each_convention():
    assert tg.adam_update_size(4, 16) == pytest.approx(16 / 4 * 2)          # alpha / sqrt(r)
    assert tg.adam_update_size(64, 16, rslora=True) == pytest.approx(16.0)  # alpha, whatever r
    assert tg.adam_update_size(9, 18) == pytest.approx(2 * 3)               # alpha = 2r: 2 sqrt(r)
    with pytest.raises(ValueError, match="rank"):
        tg.adam_update_size(0, 16)


def test_scale_conventions_directions():
    t = tg.scale_conventions([4, 1, 16], alpha=16, alpha_per_rank=2)
    assert list(t.index) == [1, 4, 16]
    assert t["update size (alpha = 16)"].tolist() == pytest.approx([1, 0.5, 0.25])  # 1 / sqrt(r)
    assert t["update size (alpha = 2r)"].tolist() == pytest.approx([1, 2, 4])       # sqrt(r)
    assert t["update size (rsLoRA)"].tolist() == pytest.approx([1, 1, 1])
    assert t["s (alpha = 16)"].tolist() == pytest.approx([16, 4, 1])
    with pytest.raises(ValueError, match="at least one rank"):
        tg.scale_conventions([])


@pytest.mark.parametrize("rank", [1, 8])
def test_the_premise_adam_moves_every_entry_of_b_by_lr(rank):
    """Adam's first step is lr * sign(gradient) per entry, so B's entries have size lr whatever r is."""
    torch.manual_seed(0)
    layer = LoRALayer(nn.Linear(24, 12), rank=rank, alpha=16)
    lr = 1e-3
    opt = torch.optim.Adam([p for p in layer.parameters() if p.requires_grad], lr=lr, eps=1e-12)
    x, target = torch.randn(32, 24), torch.randn(32, 12)
    nn.functional.mse_loss(layer(x), target).backward()
    opt.step()
    b = layer.lora_B.weight.detach()
    torch.testing.assert_close(b.abs(), torch.full_like(b, lr), rtol=1e-4, atol=0.0)


def test_idealised_norm_shrinks_like_one_over_sqrt_r_at_fixed_alpha():
    """B of entries +-lr (random signs), A as LoRALayer draws it: ||(alpha/r) B A||_F ~ 1/sqrt(r)."""
    def norm(r: int, seed: int) -> float:
        torch.manual_seed(seed)
        layer = LoRALayer(nn.Linear(256, 256), rank=r, alpha=16)
        with torch.no_grad():
            layer.lora_B.weight.copy_(1e-3 * torch.randint(0, 2, layer.lora_B.weight.shape).mul(2).sub(1))
        return float(layer.delta_weight().detach().norm())

    ratio = sum(norm(1, s) for s in range(8)) / sum(norm(64, s) for s in range(8))
    assert ratio == pytest.approx(tg.adam_update_size(1, 16) / tg.adam_update_size(64, 16), rel=0.15)


def test_timing_result_table_and_resolution_by_hand():
    times = {"base": [1.0, 2.0, 1.0, 1.0], "again": [1.0, 2.1, 0.95, 1.02], "slow": [1.5, 3.0, 1.6, 1.4]}
    result = tg.TimingResult(times, reference="base")
    t = result.table()
    assert t.loc["base", "vs base (median)"] == 1.0
    assert t.loc["slow", "median ms"] == pytest.approx(1000 * 1.55)  # median of 1.4, 1.5, 1.6, 3.0
    assert t.loc["slow", "vs base (median)"] == pytest.approx(1.5)  # ratios 1.5, 1.5, 1.6, 1.4
    assert result.resolves("slow", control="again")
    assert not result.resolves("again", control="again")


def test_interleaved_timing_runs_in_turn():
    calls = []
    result = tg.interleaved_timing({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert result.reference == "a" and [len(v) for v in result.times.values()] == [3, 3]
    with pytest.raises(ValueError, match="at least two"):
        tg.interleaved_timing({"a": lambda: None}, repeats=2)
    with pytest.raises(ValueError, match="repeats"):
        tg.interleaved_timing({"a": lambda: None, "b": lambda: None}, repeats=0)


def test_mean_update_norm_by_hand():
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 4))
    from workbench.lora.inject import add_lora, lora_layers

    add_lora(model, rank=2, alpha=6, targets=["0", "1"])
    norms = []
    torch.manual_seed(1)
    for layer in lora_layers(model).values():
        with torch.no_grad():
            layer.lora_B.weight.normal_()
        norms.append(float((3.0 * layer.lora_B.weight @ layer.lora_A.weight).detach().double().norm()))
    assert tg.mean_update_norm(model) == pytest.approx(sum(norms) / 2, rel=1e-6)


def test_stopwatch_text():
    sw = tg.Stopwatch(start=0.0)
    sw.start -= 0  # a stopwatch started at perf_counter() == 0 has run for perf_counter() seconds
    assert sw.elapsed() > 0
    late = tg.Stopwatch()
    late.start -= 83
    assert late.text().startswith("1 min 2") and tg.Stopwatch().text().endswith(" s")
    first = late.lap("one")
    assert first == pytest.approx(83, abs=5) and late.lap("two") < 5 and set(late.laps) == {"one", "two"}


def test_accuracy_at_an_early_step_and_the_first_evaluated_step():
    from types import SimpleNamespace

    nan = math.nan
    a = SimpleNamespace(history=pd.DataFrame({"step": [1, 50, 100, 150], "eval_accuracy": [nan, 0.6, nan, 0.9]}))
    b = SimpleNamespace(history=pd.DataFrame({"step": [1, 30, 60], "eval_accuracy": [nan, 0.5, 0.7]}))
    assert tg.accuracy_at(a, 50) == 0.6 and tg.accuracy_at(a, 149) == 0.6 and tg.accuracy_at(a, 150) == 0.9
    assert math.isnan(tg.accuracy_at(a, 49))  # not evaluated that early
    assert tg.first_eval_step([a, b]) == 30 and tg.first_eval_step([a]) == 50
    never = SimpleNamespace(history=pd.DataFrame({"step": [1], "eval_accuracy": [nan]}))
    with pytest.raises(ValueError, match="evaluated"):
        tg.first_eval_step([never])


def test_early_updates_are_the_first_steps_wb_train_takes():
    """``early_updates`` after 2 steps against the same run trained by the engine's loop, stopped after 2 steps."""
    import threading

    from workbench.engine.config import preset
    from workbench.engine.launch import train

    configs = [preset("tiny", rank=r, alpha=16.0) for r in (1, 4)] + [preset("tiny", method="head")]
    table = tg.early_updates(configs, steps=2)
    assert list(table.index) == [1, 4] and tuple(table.columns) == tg.EARLY_COLUMNS  # the head-only run is left out
    assert table["s"].tolist() == [16.0, 4.0]
    assert table["mean ||sBA||_F"].tolist() == pytest.approx((table["s"] * table["mean ||BA||_F"]).tolist())
    assert table.loc[1, "B columns together"] == pytest.approx(1.0)  # one column is itself
    assert 0 < table.loc[4, "B columns together"] < 1
    for cfg in configs[:2]:
        stop = threading.Event()
        res = train(cfg, on_step=lambda info, stop=stop: stop.set() if info.step == 2 else None, stop=stop,
                    progress=False, keep_model=True, fresh_process=False)
        assert res.status == "stopped" and len(res.history) == 2
        assert table.loc[cfg.lora.rank, "mean ||sBA||_F"] == pytest.approx(tg.mean_update_norm(res.model), rel=1e-4)
        assert table.loc[cfg.lora.rank, "train loss"] == pytest.approx(res.history["train_loss"].iloc[-1], rel=1e-5)
    with pytest.raises(ValueError, match="none of the configs is a LoRA run"):
        tg.early_updates(configs[2:], steps=2)
    with pytest.raises(ValueError, match="steps"):
        tg.early_updates(configs, steps=0)


def test_stopwatch_text_rounds_before_it_splits_minutes():
    sw = tg.Stopwatch()
    sw.start -= 119.7  # 1 min 59.7 s: whole seconds first, so not '1 min 60 s'
    assert sw.text() == "2 min 0 s"

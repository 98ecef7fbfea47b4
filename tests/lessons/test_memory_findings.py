"""Notebook 03's findings (``workbench.lessons.memory.findings``): its tables, its paragraphs and every claim of
its text, read off real measured steps of the tiny preset (tiny-bert) and off hand-made breakdowns.

The claims are the notebook's self-test; here they are asserted on the same data the notebook computes, at the
tiny preset's batch (8 x 32), without running the notebook.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from workbench.engine.config import preset
from workbench.engine.memory import MemoryBreakdown, compare_breakdowns, parameter_bytes
from workbench.lessons.memory import (
    Findings,
    activation_kinds,
    activation_table,
    agreement,
    budget_table,
    findings,
    kinds_summary,
    measure_vs_estimate,
    memory_grid,
    prepared_model,
    qlora_weights,
    quadratic_share,
    run_table,
    savings_table,
)
from workbench.lessons.memory.resident import Resident, resident_before_training
from workbench.util.units import MB

METHODS = {"lora": dict(method="lora"), "qlora": dict(method="lora", quantize="nf4"), "full": dict(method="full"),
           "head": dict(method="head")}


def cfg_of(name: str):
    return preset("tiny", rank=8, alpha=16, targets=["query", "value"], model_dropout=None, bf16=False,
                  **METHODS[name])


@pytest.fixture(scope="module")
def prepared():
    """{name: (config, model, tokenizer)} for the notebook's four methods."""
    return {name: (cfg_of(name), *prepared_model(cfg_of(name))) for name in METHODS}


@pytest.fixture(scope="module")
def exact(prepared):
    """The notebook's section-2 steps: measured and estimated at the preset's batch size and max_length."""
    out = {}
    for name, (cfg, model, tok) in prepared.items():
        out[name] = measure_vs_estimate(cfg, cfg.batch_size, cfg.max_length, model=model, tokenizer=tok)
    return out


@pytest.fixture(scope="module")
def kinds_and_summary(prepared, exact):
    cfg = prepared["lora"][0]
    tables = {exact[m].label: activation_table(prepared[m][1], cfg.batch_size, cfg.max_length)
              for m in ("lora", "full", "head")}
    kinds = activation_kinds(tables)
    return kinds, kinds_summary(kinds, exact["lora"].label, exact["full"].label)


@pytest.fixture(scope="module")
def grid(exact):
    return memory_grid({exact["lora"].label: cfg_of("lora"), exact["full"].label: cfg_of("full")},
                       batch_sizes=[2, 4], seq_lens=[8, 16, 32])


def fake_runs(prepared) -> dict:
    """The four runs as the notebook's ``train(..., keep_model=True)`` returns them, made from the prepared models:
    the weights as stored, gradients and optimizer as LoRA's for QLoRA, and a worker process's peak each."""
    runs = {}
    for name, (cfg, model, _) in prepared.items():
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        memory = MemoryBreakdown(weights=parameter_bytes(model), gradients=4 * trainable, optimizer=8 * trainable,
                                 activations=1000, peak={"head": 300, "lora": 400, "qlora": 380, "full": 600}[name] * MB,
                                 peak_kind="own process VmHWM")
        runs[name] = SimpleNamespace(config=cfg, model=model, memory=memory, memory_estimate=replace(memory, peak=None),
                                     params=SimpleNamespace(total=sum(p.numel() for p in prepared["lora"][1].parameters())))
    return runs


def test_the_notebooks_claims_hold_on_the_tiny_preset(exact, kinds_and_summary, grid):
    kinds, summary = kinds_and_summary
    found = findings(exact=exact, kinds=kinds, summary=summary, grid=grid, seq_len=16, batch_size=4)
    assert isinstance(found, Findings) and found.failed() == []
    # every component of every step, five section-2 claims, seven about the kinds, two per method about the grid
    assert len(found.claims) == 4 * 5 + 5 + 7 + 2 * 2
    assert found.claims["LoRA's gradients are under 5% of full fine-tuning's"]


def test_the_run_claims_and_their_paragraphs(prepared):
    runs = fake_runs(prepared)
    table = run_table(list(runs.values()))
    assert table.index.names == ["run", "component"]
    assert (table["error %"].dropna() == 0).all()  # the fake estimates are the measurements
    found = findings(runs, runs_table=table)
    assert found.failed() == [] and len(found.claims) == 7
    q = qlora_weights(runs["qlora"], runs["lora"])
    assert q.qlora_bytes == parameter_bytes(prepared["qlora"][1]) < q.lora_bytes
    assert 0 < q.quantized < q.weights and q.embeddings > (q.weights - q.quantized) / 2
    text = q.markdown()
    assert f"**{q.qlora_bytes / MB:.2f} MB**" in text and f"{q.saving_pct:.0f}% less" in text and "4.127 bits" in text
    assert "QLoRA 380 MB, LoRA 400 MB. QLoRA's is the lower one" in text  # fake peaks
    assert "**Time**" not in text  # the fake runs have no timing
    higher = qlora_weights(SimpleNamespace(**{**vars(runs["qlora"]), "memory": replace(runs["qlora"].memory, peak=621 * MB),
                                              "timing": SimpleNamespace(seconds_per_step=0.30)}),
                           SimpleNamespace(**{**vars(runs["lora"]), "memory": replace(runs["lora"].memory, peak=559 * MB),
                                              "timing": SimpleNamespace(seconds_per_step=0.20)}))
    text = higher.markdown()
    assert "QLoRA 621 MB, LoRA 559 MB. QLoRA's is the higher one, by 62 MB, although its weights are smaller" in text
    assert "the float copy of the base that loading makes before it quantizes is not in it" in text
    assert "fresh process" not in text  # no set-up measured: no split
    split = replace(higher, lora_start=Resident(300 * MB, 500 * MB, 559 * MB, False),
                    qlora_start=Resident(300 * MB, 540 * MB, 621 * MB, True))
    text = split.markdown()  # before training 540 vs 500 (+40), added by training 81 vs 59 (+22)
    assert "QLoRA's process held 540 MB against LoRA's 500 MB (+40 MB: the bitsandbytes library" in text
    assert "training added 81 MB to QLoRA's against 59 MB to LoRA's (+22 MB; every step turns" in text
    assert "(-10 MB)" in replace(split, qlora_start=Resident(300 * MB, 490 * MB, 600 * MB, True)).markdown()
    assert Resident(1, 5, 9, False).training_added == 4
    assert "a QLoRA step took 0.300 s against LoRA's 0.200 s (1.50x): each NF4 weight is dequantized" in text
    assert "saves memory, not time" in text
    a = agreement(table)
    assert a.activation_error_pct == 0 and "largest error 0.000%" in a.markdown(max_length=32)
    assert "`max_length` = 32" in a.markdown(max_length=32)


@pytest.mark.slow  # two fresh processes import torch and transformers (about 10 s each)
def test_resident_before_training_measures_a_fresh_set_up():
    """tiny-bert set up in a fresh process: the set-up adds memory, and only the NF4 run loads bitsandbytes."""
    from workbench.engine.config import preset

    plain = resident_before_training(preset("tiny", model="tiny-bert", steps=1))
    assert plain.after_imports > 50 * MB and plain.before_training >= plain.after_imports and not plain.loaded_bitsandbytes
    nf4 = resident_before_training(preset("tiny", model="tiny-bert", steps=1, quantize="nf4"))
    assert nf4.loaded_bitsandbytes and nf4.setup == nf4.before_training - nf4.after_imports
    assert plain.training_peak >= plain.before_training and nf4.training_added >= 0  # the mark is reset, then grows
    with pytest.raises(TypeError, match="RunConfig"):
        resident_before_training({"model": "tiny-bert"})


def test_a_claim_the_data_contradicts_is_listed(prepared):
    runs = fake_runs(prepared)
    runs["head"].memory.peak = 10**10  # the cheapest method with the highest peak
    runs["qlora"].memory.optimizer += 4  # QLoRA's optimizer state no longer LoRA's
    failed = findings(runs).failed()
    assert failed == ["QLoRA's gradients and optimizer state are LoRA's",
                      "the cheapest method (head only) has a lower peak than full fine-tuning"]
    with pytest.raises(ValueError, match="missing \\['head'\\]"):
        findings({k: v for k, v in runs.items() if k != "head"})


def test_savings_table_is_the_notebooks_table(exact):
    savings, ratios = savings_table(exact)
    full, lora = savings.loc[exact["full"].label], savings.loc[exact["lora"].label]
    assert lora["gradients MB"] == exact["lora"].measured.gradients / MB
    assert lora["trainable %"] == pytest.approx(100 * exact["lora"].trainable / exact["lora"].total_params)
    assert list(ratios.columns) == [f"full / this: {c}" for c in ("gradients", "optimizer", "activations", "total")]
    assert ratios.loc[exact["lora"].label, "full / this: gradients"] == pytest.approx(
        full["gradients MB"] / lora["gradients MB"])
    assert (ratios.loc[exact["full"].label] == 1).all()
    with pytest.raises(ValueError, match="full fine-tuning"):
        savings_table({"lora": exact["lora"]})


def test_budget_table_is_fixed_plus_per_sequence(grid):
    budget = budget_table(grid, 16)
    at = grid[(grid["seq_len"] == 16)]
    for method, rows in at.groupby("method"):
        fixed = rows[(rows["batch_size"] == 2) & rows["component"].isin(["weights", "gradients", "optimizer"])]
        assert budget.loc[method, "fixed MB (weights + gradients + optimizer)"] == fixed["measured"].sum() / MB
        acts = rows[rows["component"] == "activations"]
        per_seq = (acts["measured"] / acts["batch_size"]).mean() / MB
        assert budget.loc[method, "activations MB per sequence of 16 tokens"] == pytest.approx(per_seq)
        assert budget.loc[method, "sequences per 1 GB of activations"] == pytest.approx(1000 / per_seq)
    with pytest.raises(ValueError, match="no point at seq_len 17"):
        budget_table(grid, 17)


def test_quadratic_share_grows_with_the_length(prepared):
    models = {"LoRA": prepared["lora"][1], "full": prepared["full"][1]}
    share = quadratic_share(models, 2, [8, 16, 32])
    assert list(share.index) == [8, 16, 32]
    for label in models:
        col = share[f"{label}: S² share %"].to_numpy()
        assert np.all(np.diff(col) > 0) and 0 < col[-1] < 100
        t = activation_table(models[label], 2, 8)
        assert share.loc[8, f"{label}: bytes per token"] == t["bytes"].sum() / (2 * 8)


def test_run_table_matches_compare_breakdowns():
    m = MemoryBreakdown(weights=100, gradients=20, optimizer=40, activations=10)
    e = MemoryBreakdown(weights=100, gradients=20, optimizer=40, activations=11)
    run = SimpleNamespace(config=SimpleNamespace(label=lambda: "a run"), memory=m, memory_estimate=e)
    table = run_table([run])
    pd.testing.assert_frame_equal(table.loc["a run"], compare_breakdowns(m, e).set_index("component"))
    assert agreement(table).activation_error_pct == pytest.approx(10.0)


def test_measurement_runs_carry_no_verdict_on_the_memory_bars():
    """Notebook 03's runs take a few steps to measure memory: ``judged=False`` keeps "[did not learn]" off their bars."""
    from workbench.engine.config import RunResult, Timing
    from workbench.lora.params import ParamCounts
    from workbench.viz.memory_figures import memory_breakdown

    history = pd.DataFrame({"step": [1, 2, 3], "train_loss": [0.69, 0.70, 0.80], "lr": [1e-3] * 3,
                            "eval_loss": [np.nan] * 3, "eval_accuracy": [np.nan] * 3})
    runs = [RunResult(config=preset("tiny", rank=r), status="completed", history=history,
                      params=ParamCounts(trainable=10, total=100), timing=Timing(0.1, 10.0, 1.0),
                      memory=MemoryBreakdown(weights=4 * MB, gradients=1, optimizer=2, activations=3 * MB))
            for r in (2, 4)]

    def ticks(fig):
        return " ".join(t.get_text() for t in fig.axes[0].get_xticklabels())

    assert "[did not learn]" in ticks(memory_breakdown(runs))  # the loss rose: as a training run, it did not learn
    assert "[did not learn]" not in ticks(memory_breakdown(runs, judged=False))

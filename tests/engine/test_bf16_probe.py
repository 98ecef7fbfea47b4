"""bf16 "auto" is decided by a measured probe, cached per model and machine, and stated in the record.

The probe's verdict is checked with fake measurements (the rule and the cache), and the
measurement itself on a toy model (that it leaves the model and the RNG as they were)."""

from __future__ import annotations

import json

import pytest
import torch

import workbench as wb
from toy_models import cls_batch, shaped_bert, wrap_lora
from workbench.engine import bf16_probe
from workbench.engine.bf16_probe import FASTER_BY, choose_bf16, measure_bf16, probe_key, read_cache, write_cache
from workbench.engine.config import preset
from workbench.engine.training import set_up

CPU = torch.device("cpu")


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "workbench" / "bf16_probe.json"


@pytest.fixture
def bf16_units(monkeypatch):
    """Pretend this CPU has bf16 units (the probe only runs on such CPUs)."""
    monkeypatch.setattr(bf16_probe, "cpu_has_fast_bf16", lambda: True)


def never(*_):
    raise AssertionError("the probe ran, though its answer was known")


def test_a_set_choice_is_kept_and_said_so():
    for value in (True, False):
        choice = choose_bf16(value, CPU, measure=never)
        assert choice.use is value and f"bf16={value}" in choice.reason
    with pytest.raises(ValueError, match="True, False or 'auto'"):
        choose_bf16("yes", CPU)


def test_auto_without_bf16_units_is_fp32_unmeasured(monkeypatch, cache_home):
    monkeypatch.setattr(bf16_probe, "cpu_has_fast_bf16", lambda: False)
    choice = choose_bf16("auto", CPU, key="k", measure=never)
    assert choice.use is False and "no AMX or AVX-512-bf16" in choice.reason
    assert not cache_home.exists()


@pytest.mark.parametrize("fp32_ms,bf16_ms,expected", [
    (50.0, 40.0, True),  # 1.25x faster
    (48.0, 57.0, False),  # slower: the Intel machine's story-lm
    (50.0, 50.0 / FASTER_BY * 1.01, False),  # faster, but within the noise margin
])
def test_auto_with_bf16_units_follows_the_probe_and_caches_it(cache_home, bf16_units, fp32_ms, bf16_ms, expected):
    calls = []
    choice = choose_bf16("auto", CPU, key="story-lm|lora|x", measure=lambda: calls.append(1) or (fp32_ms, bf16_ms))
    assert choice.use is expected and calls == [1]
    assert f"fp32 {fp32_ms:.1f} ms, bf16 {bf16_ms:.1f} ms" in choice.reason and "cached" not in choice.reason
    entry = json.loads(cache_home.read_text())["story-lm|lora|x"]
    assert entry["bf16"] is expected and entry["fp32_ms"] == round(fp32_ms, 3)
    again = choose_bf16("auto", CPU, key="story-lm|lora|x", measure=never)  # cached: not measured again
    assert again.use is expected and "cached probe" in again.reason
    other = choose_bf16("auto", CPU, key="minilm|lora|x", measure=lambda: (100.0, 30.0))  # another model: its own
    assert other.use is True and set(read_cache()) == {"story-lm|lora|x", "minilm|lora|x"}


def test_a_quantized_base_is_decided_by_the_units(bf16_units, cache_home):
    choice = choose_bf16("auto", CPU, key="k", quantized=True, measure=never)
    assert choice.use is True and "quantized" in choice.reason


def test_a_broken_cache_file_is_rewritten(cache_home, bf16_units):
    cache_home.parent.mkdir(parents=True)
    cache_home.write_text("{not json")
    assert read_cache() == {}
    choose_bf16("auto", CPU, key="k", measure=lambda: (10.0, 20.0))
    assert read_cache()["k"]["bf16"] is False
    assert [p.name for p in cache_home.parent.iterdir()] == ["bf16_probe.json"]  # no temporary file left


def test_the_key_names_model_method_machine_and_threads():
    key = probe_key("story-lm", "lora", threads=2)
    assert key.startswith("story-lm|lora|") and key.endswith("|2 threads") and "torch " in key
    assert probe_key("story-lm", "full", threads=2) != key


def test_a_run_uses_a_cached_verdict_and_records_why(cache_home, bf16_units):
    cfg = preset("tiny", bf16="auto", steps=2)
    key = probe_key(cfg.model, cfg.method)
    write_cache(key, {"fp32_ms": 10.0, "bf16_ms": 14.0, "bf16": False, "measured": "2026-12-07T00:00:00"})
    run = set_up(cfg)
    assert run.use_bf16 is False and run.environment["bf16"] is False
    assert "cached probe" in run.environment["bf16_reason"] and "fp32 10.0 ms, bf16 14.0 ms" in \
        run.environment["bf16_reason"]
    write_cache(key, {"fp32_ms": 14.0, "bf16_ms": 10.0, "bf16": True, "measured": "2026-12-07T00:00:00"})
    run = set_up(cfg)
    assert run.use_bf16 is True and run.frozen_in_bf16  # what a bf16 run does follows the verdict


def test_a_probe_before_the_run_leaves_the_run_as_it_would_be(cache_home, bf16_units, monkeypatch):
    """The first run (probing) and the second (cached) give the same curve."""
    cfg = preset("tiny", bf16="auto", steps=3, eval_every=0)
    monkeypatch.setattr(bf16_probe, "FASTER_BY", 1e9)  # whatever is measured, fp32: the curves are comparable
    first = wb.train(cfg, runs_dir=None, progress=False, fresh_process=False)
    assert "by a probe" in first.environment["bf16_reason"]
    second = wb.train(cfg, runs_dir=None, progress=False, fresh_process=False)
    assert "cached probe" in second.environment["bf16_reason"]
    assert first.history["train_loss"].tolist() == second.history["train_loss"].tolist()


def test_the_stored_record_says_which_precision_and_why(tmp_path):
    wb.train(preset("tiny", bf16=False, steps=1, eval_every=0), runs_dir=str(tmp_path), progress=False)
    (stored,) = wb.load_runs(tmp_path)
    assert stored.environment["bf16"] is False
    assert stored.environment["bf16_reason"] == "fp32: set by the run's config (bf16=False)"


def test_the_real_probe_measures_both_and_leaves_the_model_and_rng_alone():
    model = wrap_lora(shaped_bert(dropout=0.1)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = cls_batch()
    rng = torch.get_rng_state()
    fp32_ms, bf16_ms = measure_bf16(model, batch, CPU, repeats=2)
    assert fp32_ms > 0 and bf16_ms > 0
    assert torch.equal(torch.get_rng_state(), rng)  # the run after the probe draws what it would have
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].dtype == before[k].dtype for k in before)
    assert all(p.grad is None for p in model.parameters()) and model.training
    assert model.config._attn_implementation == "sdpa"  # the bf16 copy's plain attention stayed on the copy


def test_a_worker_run_probes_in_a_child_of_its_own_first(cache_home, bf16_units, monkeypatch):
    """So that the probe's copies of the model never count in the run's own memory peak."""
    from workbench.engine import worker

    cfg = preset("tiny", bf16="auto", steps=1, eval_every=0)
    assert worker._probe_wanted(cfg, threads=torch.get_num_threads())  # nothing cached yet
    jobs = []
    follow = worker._follow_child
    monkeypatch.setattr(worker, "_follow_child", lambda job, *a: jobs.append(job.probe_only) or follow(job, *a))
    result = worker.train_in_worker(cfg)
    assert jobs == [True, False] and result.status == "completed"
    write_cache(probe_key(cfg.model, cfg.method, torch.get_num_threads()), {"fp32_ms": 1.0, "bf16_ms": 2.0,
                                                                            "bf16": False})
    assert not worker._probe_wanted(cfg, threads=torch.get_num_threads())  # cached: no probe child

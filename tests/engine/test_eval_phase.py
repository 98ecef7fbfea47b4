"""An evaluation is a phase a run's listeners hear of, timed apart, and may answer fewer prompts before the last.

The panel says "evaluating N held-out prompts, step S…" while a run evaluates (which took
about 40 % of a default generate run, seconds with nothing on screen), reports "X s: Y
training, Z evaluating", and answers fewer prompts at the evaluations before the last.
"""

from __future__ import annotations

import math

import pytest

from workbench.engine.config import RunConfig, Timing, preset
from workbench.engine.events import RunSink
from workbench.engine.labels import compact_labels
from workbench.engine.launch import train

QUICK = dict(steps=4, eval_every=2, batch_size=4, max_train_examples=24, max_eval_examples=8,
             max_generate_examples=6, max_new_tokens=4)


class Phases(RunSink):
    """Records the order of the run's edges."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_eval_start(self, step: int, steps: int, prompts: int) -> None:
        self.events.append(("eval_start", step, steps, prompts))

    def on_step(self, info) -> None:
        self.events.append(("step", info.step, info.eval_loss is not None))


@pytest.mark.slow  # the bundled story-lm
def test_each_evaluation_is_announced_before_it_runs_with_the_prompts_it_answers():
    """Through a worker process (the default on the CPU): the relay carries the new edge too."""
    phases = Phases()
    cfg = preset("generate", interim_generate_examples=2, **QUICK)
    result = train(cfg, sinks=[phases], progress=False, fresh_process=True)
    assert result.status == "completed", result.message
    assert phases.events == [("step", 1, False), ("eval_start", 2, 4, 2), ("step", 2, True), ("step", 3, False),
                             ("eval_start", 4, 4, 6), ("step", 4, True)]
    # The interim evaluation answered 2 prompts (its samples), the last all 6 (4 samples kept per evaluation).
    steps = [s["step"] for s in result.samples]
    assert steps.count(2) == 2 and steps.count(4) == 4
    t = result.timing
    assert 0 < t.eval_seconds < t.total_seconds and 0 < t.train_seconds < t.total_seconds - t.eval_seconds
    # Loading is measured apart too (set_up: the model, the data, the LoRA layers), before any step.
    assert 0 < t.load_seconds < t.total_seconds - t.eval_seconds - t.train_seconds
    assert math.isfinite(t.seconds_per_step)


def test_no_limit_keeps_every_prompt_and_a_classifier_answers_none():
    phases = Phases()
    train(preset("tiny", steps=2, eval_every=1), sinks=[phases], progress=False, fresh_process=False)
    assert [e for e in phases.events if e[0] == "eval_start"] == [("eval_start", 1, 2, 0), ("eval_start", 2, 2, 0)]
    with pytest.raises(ValueError, match="interim_generate_examples"):
        preset("generate", interim_generate_examples=-1)


def test_a_record_without_eval_seconds_still_loads(tmp_path):
    import json

    import workbench as wb
    from workbench.records.store import load_run

    result = wb.train(preset("tiny", steps=2, eval_every=0), runs_dir=tmp_path, progress=False, fresh_process=False)
    record = next(tmp_path.glob("*/run.json"))
    data = json.loads(record.read_text())
    assert math.isfinite(data["timing"]["eval_seconds"])
    del data["timing"]["eval_seconds"]  # as every run stored before the split was measured
    record.write_text(json.dumps(data))
    old = load_run(result.path)
    assert math.isnan(old.timing.eval_seconds) and old.timing.total_seconds == pytest.approx(
        result.timing.total_seconds)
    assert Timing(0.1, 1.0, 2.0).eval_seconds != Timing(0.1, 1.0, 2.0).eval_seconds  # NaN by default


def test_compact_labels_drop_what_every_run_shares():
    gen = preset("generate")
    labels, shared = compact_labels([gen, gen.with_changes(rank=16), gen.with_changes(lr=0.01)])
    assert labels == ["r=8 · lr=0.003", "r=16 · lr=0.003", "r=8 · lr=0.01"]
    assert shared == "all runs: LoRA, targets query,key,value,attention output,FFN in,FFN out"
    lora = RunConfig(model="tiny-bert")
    labels, shared = compact_labels([lora, lora.with_changes(quantize="nf4"), lora.with_changes(method="full")])
    assert labels == ["LoRA", "QLoRA, NF4 base", "full fine-tuning"]
    assert shared == "LoRA runs: r=8, targets query,value"
    assert compact_labels([lora, lora]) == (["run #1", "run #2"], "all runs: LoRA, r=8, targets query,value")
    assert compact_labels([lora]) == (["LoRA r=8 (query,value)"], "")

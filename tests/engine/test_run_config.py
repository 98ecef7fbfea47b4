"""RunConfig checks itself when it is made: every check that needs no model, with what is allowed."""

from __future__ import annotations

from dataclasses import replace

import pytest

from workbench.engine.config import RunConfig, history_frame, history_row, preset, validate
from workbench.engine.data import TASKS
from workbench.lora.config import LoRAConfig


@pytest.mark.parametrize("changes, message", [
    (dict(method="qlora"), "method must be one of"),
    (dict(task="seq2seq"), "task must be one of"),
    (dict(quantize="nf2"), "'nf4', 'int8' or None"),
    (dict(quantize="nf4", method="full"), "full fine-tuning trains every weight"),
    (dict(quantize="nf4", dora=True), "DoRA reads and rewrites the base weight"),
    (dict(quantize="int8", init="pissa"), "PiSSA reads and rewrites the base weight"),
    (dict(task="causal-lm", method="head"), "has none to train apart: choose method 'lora' or 'full'"),
    (dict(steps=0), "steps must be a positive integer, got 0"),
    (dict(steps=1.5), "steps must be a positive integer, got 1.5"),
    (dict(batch_size=-1), "batch_size (batch size) must be a positive integer, got -1"),
    (dict(max_length=1), "max_length (tokens per example: at least a token and its next) must be an integer >= 2"),
    (dict(max_train_examples=0), "max_train_examples (None keeps every example) must be a positive integer"),
    (dict(lr=0.0), "lr (learning rate) must be a positive number, got 0.0"),
    (dict(warmup_ratio=1.0), "warmup_ratio must be a number in [0, 1)"),
    (dict(weight_decay=-0.1), "weight_decay must be a number in [0, inf)"),
    (dict(max_grad_norm=-1.0), "max_grad_norm (0 turns clipping off)"),
    (dict(eval_every=-1), "eval_every (0 evaluates only at the end) must be an integer >= 0"),
    (dict(seed=0.5), "seed must be an integer, got 0.5"),
    (dict(threads=0), "threads (None keeps torch's default) must be a positive integer"),
    (dict(model_dropout=1.5), "model_dropout must be None"),
    (dict(bf16="yes"), "bf16 must be True, False or 'auto', got 'yes'"),
    (dict(device="gpu"), "device must be 'auto' (CUDA when present, else the CPU) or a torch device"),
    (dict(device=0), "device must be 'auto'"),
    (dict(model=""), "model must be a non-empty string, got ''"),
    (dict(data=None), "data must be a non-empty string, got None"),
    (dict(text_column=3), "text_column must be a non-empty string"),
    (dict(eval_data=""), "eval_data (or None) must be a non-empty string"),
    (dict(name=7), "name (or None) must be a non-empty string"),
    (dict(task="causal-lm", max_generate_examples=-1), "max_generate_examples (0 or None"),
    (dict(task="causal-lm", max_new_tokens=0), "max_new_tokens (the longest answer generated)"),
], ids=lambda v: "" if isinstance(v, str) else "-".join(f"{k}={v[k]!r}" for k in v))
def test_a_bad_setting_is_refused_when_the_config_is_made(changes, message):
    with pytest.raises(ValueError) as e:
        preset("tiny", **changes)
    assert message in str(e.value)
    with pytest.raises(ValueError) as again:  # with_changes makes a new config, which checks itself too
        preset("tiny").with_changes(**changes)
    assert message in str(again.value)


def test_replace_makes_a_config_that_checks_itself():
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        replace(preset("tiny"), steps=0)
    with pytest.raises(ValueError, match="DoRA reads and rewrites the base weight"):
        replace(preset("tiny", quantize="nf4"), lora=LoRAConfig(dora=True))


def test_every_preset_and_cuda_for_a_cluster_are_valid_configs():
    from workbench.engine.config import PRESETS

    for name in PRESETS:
        validate(preset(name))
    assert preset("tiny", device="cuda:1").device == "cuda:1"  # a GPU is asked for when the run starts, not here
    assert preset("tiny", max_new_tokens=0).max_new_tokens == 0  # a classifier writes nothing: not its setting


def test_a_config_changed_after_it_was_made_is_checked_again_by_validate():
    cfg = preset("tiny")
    cfg.steps = 0  # a dataclass's fields can be set after it was made
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        validate(cfg)
    with pytest.raises(TypeError, match="train needs a RunConfig"):
        validate({"steps": 3})
    with pytest.raises(TypeError, match="lora must be a LoRAConfig"):
        RunConfig(lora={"rank": 8})


def test_the_tasks_are_declared_once():
    assert TASKS == ("classification", "causal-lm")
    for task in TASKS:
        assert RunConfig(task=task, method="lora").task == task


def test_a_curve_row_is_built_in_one_place():
    assert history_row(3, 0.5, 1e-3) == {"step": 3, "train_loss": 0.5, "lr": 1e-3}
    row = history_row(4, 0.4, 1e-3, {"eval_loss": 0.6, "eval_accuracy": 0.75})
    frame = history_frame([history_row(3, 0.5, 1e-3), row])
    assert list(frame["step"]) == [3, 4] and frame["eval_loss"].isna().tolist() == [True, False]
    assert frame["eval_exact_match"].isna().all()  # every history column is there

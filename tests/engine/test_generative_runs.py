"""Runs of a model that writes, through the same engine and store as the classifier.

Real language models by name (SmolLM2, Qwen2.5, GPT-2) cannot be downloaded here, so their
presets run on tiny models of the same architectures built from configs and saved to a
folder, with the bundled story-lm tokenizer: the preset's role targets must land on each
architecture's layers.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import workbench as wb
from workbench.engine.config import RunConfig, preset
from workbench.engine.models import load_tokenizer
from workbench.engine.launch import train
from workbench.engine.training import EXPLODED
from workbench.records.store import SAMPLES_FILE, load_run

from toy_models import vocab_lm_config  # noqa: E402


@pytest.fixture(scope="module")
def story_tokenizer():
    return load_tokenizer("story-lm")


def _tiny_folder(kind: str, tokenizer, folder) -> str:
    from transformers import AutoModelForCausalLM

    config = vocab_lm_config(kind, tokenizer)  # tests/toy_models.py
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


QUICK = dict(steps=3, eval_every=3, batch_size=4, max_train_examples=24, max_eval_examples=8,
             max_generate_examples=4, max_new_tokens=6)


# Every linear layer of a Llama/Qwen2 block: the presets adapt every role (notebook 09, section 1).
LLAMA_LINEARS = tuple(f"self_attn.{n}_proj" for n in "qkvo") + tuple(f"mlp.{n}_proj" for n in ("gate", "up", "down"))


@pytest.mark.parametrize("name, kind, expected", [
    ("smollm2", "llama", LLAMA_LINEARS),
    ("qwen2.5", "qwen2", LLAMA_LINEARS),
    ("gpt2", "gpt2", ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")),
])
def test_named_model_presets_adapt_the_architecture_s_layers(tmp_path, story_tokenizer, name, kind, expected):
    folder = _tiny_folder(kind, story_tokenizer, tmp_path / kind)
    assert preset(name).model != folder  # the preset names the real model
    result = train(preset(name, model=folder, **QUICK), progress=False, keep_model=True, fresh_process=False)
    assert result.status == "completed", result.message
    wrapped = result.model.lora_settings.wrapped
    assert len(wrapped) == 2 * len(expected)  # two blocks
    assert sorted({n.split(".", 3)[-1] for n in wrapped}) == sorted(expected)
    assert not math.isnan(result.last("eval_exact_match")) and len(result.samples) == 4


def test_a_generative_run_is_stored_with_its_samples_and_a_peft_adapter(tmp_path):
    cfg = preset("generate", **QUICK)
    result = wb.train(cfg, runs_dir=tmp_path / "runs", progress=False)
    assert result.status == "completed", result.message
    for col in ("eval_exact_match", "eval_perplexity", "heldout_loss"):
        assert math.isfinite(result.last(col)), col
    assert math.isclose(result.last("eval_perplexity"), math.exp(result.last("eval_loss")), rel_tol=1e-9)
    lines = (tmp_path / "runs" / result.run_id / SAMPLES_FILE).read_text().splitlines()
    assert [json.loads(x) for x in lines] == result.samples
    stored = load_run(result.path)
    assert stored.samples == result.samples
    assert math.isclose(stored.last("eval_exact_match"), result.last("eval_exact_match"))

    from peft import PeftModel

    base, tok = wb.load_base("story-lm", task="causal-lm")
    adapted = PeftModel.from_pretrained(base, f"{result.path}/adapter")
    ours, _ = wb.load_base("story-lm", task="causal-lm")
    wb.load_adapter(ours, f"{result.path}/adapter")
    ids = torch.tensor([tok("Statement: The cat is happy.\nQuestion:")["input_ids"]])
    with torch.no_grad():
        a, b = adapted(input_ids=ids).logits, ours(input_ids=ids).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


def test_a_language_model_has_no_head_only_method():
    with pytest.raises(ValueError, match="has none to train apart: choose method 'lora' or 'full'"):
        train(preset("generate", method="head"), progress=False)


def test_a_loss_that_explodes_ends_the_run_as_diverged():
    cfg = preset("tiny", lr=50.0, steps=12, eval_every=0, max_grad_norm=0.0)
    result = train(cfg, progress=False, fresh_process=False)
    assert result.status == "diverged", (result.status, result.history["train_loss"].tolist())
    losses = result.history["train_loss"].tolist()
    assert losses[-1] > EXPLODED * losses[0] or not math.isfinite(losses[-1])
    assert all(x <= EXPLODED * losses[0] for x in losses[:-1])  # it ended at the first step past the limit
    assert "try a lower learning rate than 50" in result.message


def test_base_model_answers_do_not_do_the_skill():
    """The bundled task is one the base model cannot do (the issue's bar: exact match <= 10 %)."""
    from workbench.lessons.forgetting import measure_base

    base = measure_base(preset("generate", max_generate_examples=40))
    assert base.exact_match <= 0.10, base.answers
    assert math.isfinite(base.heldout_loss) and math.isfinite(base.completion_loss)


def test_generative_config_round_trips_through_a_record():
    cfg = preset("generate", heldout_data=None, max_new_tokens=10)
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg

"""The planner's memory: the closed forms of weights, gradients and optimizer state, and every
estimate against a measured training step (BERT, GPT-2, Llama, Qwen2, bitsandbytes optimizers, a
quantized base, and on CUDA the allocator's peak) (``workbench.lessons.planner``: ``planning``,
``measuring``, ``plans.Plan.compare``)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import BertConfig, GPT2Config

from toy_models import TINY_BERT_CONFIG, TINY_GPT2_CONFIG, TINY_LLAMA_CONFIG
from workbench.engine.memory import MemoryBreakdown, compare_breakdowns, estimate_memory
from workbench.lessons.planner import PRECISION_RECIPES, Plan, build_meta_model, measure, plan, precision_table
from workbench.util.units import GB


@pytest.fixture(scope="module")
def gpt3() -> Plan:
    """GPT-3 175B (OPT-style, separate q/v), LoRA r=8 on query and value, wholly fp16 (torch's AdamW:
    fp16 moments, as the "16-bit" precision recipe counts)."""
    return plan("gpt3-175b", rank=8, targets=("query", "value"), dtype="fp16", optimizer="adamw", batch_size=1,
                seq_len=2048)


# ----------------------------------------------------------- memory closed forms


@pytest.mark.parametrize("optimizer,k", [("adamw", 2), ("adam", 2), ("sgd-momentum", 1), ("sgd", 0)])
def test_weights_gradients_optimizer_are_the_closed_forms(optimizer, k):
    p = plan("roberta-base", rank=8, targets=("query", "value"), dtype="bf16", optimizer=optimizer,
             batch_size=2, seq_len=32)
    s = 2  # bytes per bf16 number
    step = 4 if optimizer.startswith("adam") else 0  # float32 step counter per trainable tensor
    lora_tensors = 2 * 24 + 4  # A and B in 24 layers, head dense/out_proj weight and bias
    full_tensors = len(list(build_meta_model(p.config, "classification").parameters()))
    for side, tensors in ((p.lora, lora_tensors), (p.full, full_tensors)):
        assert side.memory.weights == side.total * s
        assert side.memory.gradients == side.trainable * s
        assert side.memory.optimizer == k * side.trainable * s + step * tensors
    assert p.full.trainable == p.full.total
    assert p.lora.total == p.full.total + p.lora.adapter_params
    assert p.lora.checkpoint_bytes == p.lora.trainable * s


def test_plan_agrees_with_estimate_memory_on_the_same_meta_model():
    from workbench.lora.inject import add_lora

    p = plan("minilm", rank=8, targets=("query", "value"), batch_size=16, seq_len=64)
    model = build_meta_model(p.config, "classification")
    assert estimate_memory(model, 16, 64) == p.full.memory
    add_lora(model, rank=8, targets=["query", "value"])
    assert estimate_memory(model, 16, 64) == p.lora.memory


def test_unknown_activations_are_none_with_a_note(gpt3):
    assert gpt3.lora.activations is None and gpt3.full.activations is None
    assert gpt3.full.total_bytes is None
    assert any("activations not estimated" in n and "opt" in n.lower() for n in gpt3.notes)
    t = gpt3.table()
    assert math.isnan(t.loc["activations", "LoRA (GB)"])
    assert t.loc["total without activations", "full (GB)"] == pytest.approx(gpt3.full.static_bytes / GB)


def test_precision_table_is_bytes_per_parameter(gpt3):
    t = precision_table(gpt3).set_index("recipe")
    for r in PRECISION_RECIPES:
        full = gpt3.full.total * (r.weight + r.gradient + r.optimizer)
        lora = gpt3.lora.total * r.weight + gpt3.lora.trainable * (r.gradient + r.optimizer)
        assert t.loc[r.name, "full (GB)"] == pytest.approx(full / GB)
        assert t.loc[r.name, "LoRA (GB)"] == pytest.approx(lora / GB)
    # 16-bit throughout: what plan(dtype="fp16") assumes, step counters aside
    assert t.loc["16-bit", "full (GB)"] == pytest.approx(gpt3.full.static_bytes / GB, rel=1e-6)


# ----------------------------------------------------------- against measurement


def _check_close(p: Plan, measured, tol: float = 0.10) -> None:
    for method in ("lora", "full"):
        est, got = getattr(p, method).memory, measured[method]
        assert est.weights == got.weights and est.gradients == got.gradients
        assert est.optimizer == got.optimizer
        assert got.activations > 0
        assert abs(est.activations - got.activations) <= tol * got.activations, (method, est, got)
        assert abs(est.total - got.total) <= tol * got.total


@pytest.mark.parametrize("dropout", [True, False])
def test_tiny_bert_plan_matches_a_measured_step(dropout):
    p = plan(BertConfig(**TINY_BERT_CONFIG), rank=4, targets=("query", "value"), batch_size=4, seq_len=16,
             dropout=dropout)
    assert p.settings.task == "classification"
    _check_close(p, measure(p))


def test_tiny_gpt2_causal_lm_plan_matches_a_measured_step():
    cfg = GPT2Config(**TINY_GPT2_CONFIG)
    p = plan(cfg, rank=4, targets=("c_attn",), batch_size=3, seq_len=12, task="causal-lm")
    _check_close(p, measure(p))


@pytest.mark.parametrize("optimizer", ["adam", "sgd-momentum", "sgd"])
def test_every_optimizer_is_measured_as_planned(optimizer):
    p = plan(BertConfig(**TINY_BERT_CONFIG), rank=4, batch_size=2, seq_len=8, optimizer=optimizer)
    _check_close(p, measure(p))


def test_compare_is_the_memory_studys_table_per_method():
    """One measure-beside-estimate table: the same columns, rows and numbers as
    ``compare_breakdowns`` for each method, with the method in front."""
    p = plan(BertConfig(**TINY_BERT_CONFIG), rank=4, batch_size=2, seq_len=8)
    measured = measure(p)
    table = p.compare(measured)
    assert list(table.columns) == ["method", *compare_breakdowns(measured["lora"], p.lora.memory).columns]
    for method in ("lora", "full"):
        part = table[table["method"] == method].drop(columns="method").reset_index(drop=True)
        pd.testing.assert_frame_equal(part, compare_breakdowns(measured[method], getattr(p, method).memory))
    assert list(p.compare({"full": measured["full"]})["method"].unique()) == ["full"]
    with pytest.raises(ValueError, match="'lora' and/or 'full'"):
        p.compare({})


def test_compare_leaves_unknown_activations_blank(gpt3):
    fake = MemoryBreakdown(weights=1, gradients=1, optimizer=1, activations=1)
    t = gpt3.compare({"lora": fake}).set_index("component")
    assert np.isnan(t.loc["activations", "estimated MB"]) and np.isnan(t.loc["total", "estimated MB"])
    assert t.loc["weights", "estimated MB"] == gpt3.lora.memory.weights / 1e6


@pytest.mark.slow
def test_minilm_plan_is_within_10_percent_of_the_measured_step(minilm):
    """The real bundled MiniLM at batch 16 x 64 (about one to a few seconds per step)."""
    model, _ = minilm
    p = plan("minilm", rank=8, targets=("query", "value"), batch_size=16, seq_len=64)
    _check_close(p, measure(p, model=model))


def test_measure_refuses_a_model_too_big_to_build(gpt3):
    with pytest.raises(ValueError, match="too big"):
        measure(gpt3)


# ----------------------------------------------------------- Llama-style plans against measurement


@pytest.mark.parametrize("gradient_checkpointing", [False, True])
@pytest.mark.parametrize("targets", [("query", "value"), "all-linear"])
@pytest.mark.parametrize("batch_size,seq_len", [(1, 16), (3, 8)])
def test_tiny_llama_plan_matches_a_measured_step(targets, gradient_checkpointing, batch_size, seq_len):
    """Both sides (LoRA, full) of a Llama plan against one measured step each, with and
    without gradient checkpointing (the recomputation in backward measured too)."""
    from transformers import LlamaConfig

    p = plan(LlamaConfig(**TINY_LLAMA_CONFIG), rank=4, targets=targets, batch_size=batch_size, seq_len=seq_len,
             gradient_checkpointing=gradient_checkpointing)
    assert p.lora.activations_known and p.settings.task == "causal-lm"
    _check_close(p, measure(p), tol=0.01)


def test_tiny_qwen2_plan_matches_a_measured_step():
    from transformers import Qwen2Config

    p = plan(Qwen2Config(**TINY_LLAMA_CONFIG, tie_word_embeddings=True), rank=4, targets="all-linear", batch_size=2,
             seq_len=12, dtype="bf16", optimizer="adamw")  # torch's AdamW on bf16 parameters, as measured
    _check_close(p, measure(p), tol=0.01)


@pytest.mark.filterwarnings("ignore:Paged optimizers are not supported on CPU")
@pytest.mark.parametrize("optimizer", ["adamw-8bit", "paged-adamw-32bit"])
def test_bitsandbytes_optimizers_are_measured_as_planned(optimizer):
    from transformers import LlamaConfig

    p = plan(LlamaConfig(**TINY_LLAMA_CONFIG), rank=4, targets="all-linear", batch_size=2, seq_len=8, optimizer=optimizer)
    _check_close(p, measure(p), tol=0.01)
    if optimizer == "adamw-8bit":  # the embedding (300 x 64) and lm_head are 8-bit, small tensors 32-bit
        assert p.full.memory.optimizer < 4 * p.full.trainable


@pytest.mark.parametrize("quantize", ["nf4", "int8"])
def test_quantized_base_is_measured_as_planned(quantize):
    """A bitsandbytes-quantized base (workbench.lora.quantize.quantize_model) against the plan:
    the quantized weights' bytes within 0.1 %, everything else exact.  In fp32 with torch's AdamW
    (with ``quantize`` the plan's default dtype is bf16: given explicitly here)."""
    from transformers import LlamaConfig

    p = plan(LlamaConfig(**TINY_LLAMA_CONFIG), rank=4, targets="all-linear", batch_size=2, seq_len=8, quantize=quantize,
             dtype="fp32", optimizer="adamw")
    got = measure(p)
    est = p.lora.memory
    assert est.weights == pytest.approx(got["lora"].weights, rel=1e-3)
    assert (est.gradients, est.optimizer) == (got["lora"].gradients, got["lora"].optimizer)
    assert est.activations == pytest.approx(got["lora"].activations, rel=0.01)
    assert p.full.memory == plan(LlamaConfig(**TINY_LLAMA_CONFIG), rank=4, targets="all-linear", batch_size=2,
                                 seq_len=8).full.memory  # full fine-tuning is never quantized


# ----------------------------------------------------------- quantized weights, by hand


def test_quantized_weights_are_the_block_linears_at_the_quantize_constants():
    from workbench.lora.quantize import NF4_LAYER_TABLE_BYTES, quantized_bytes_per_weight

    H, I, L, V, KV = 4096, 14336, 32, 128256, 1024
    plain = plan("llama-3-8b", rank=16, targets="all-linear", dtype="bf16")
    for quantize in ("nf4", "int8"):
        p = plan("llama-3-8b", rank=16, targets="all-linear", dtype="bf16", quantize=quantize)
        shapes = [(H, H), (KV, H), (KV, H), (H, H), (I, H), (I, H), (H, I)]  # (out, in) of q k v o gate up down
        assert p.lora.quantized_params == L * sum(o * i for o, i in shapes)
        q_bytes = L * sum(o * i * quantized_bytes_per_weight(quantize, i) for o, i in shapes)
        tables = L * 7 * NF4_LAYER_TABLE_BYTES if quantize == "nf4" else 0
        assert p.lora.quantized_bytes == pytest.approx(q_bytes + tables, abs=1)
        # everything else (embeddings, lm_head, norms, adapters) stays at 2 bytes
        assert p.lora.memory.weights == p.lora.quantized_bytes + (p.lora.total - p.lora.quantized_params) * 2
        assert p.lora.memory.weights < plain.lora.memory.weights
        assert (p.lora.memory.gradients, p.lora.memory.optimizer, p.lora.memory.activations) == (
            plain.lora.memory.gradients, plain.lora.memory.optimizer, plain.lora.memory.activations)
    assert quantized_bytes_per_weight("nf4", 4096) * 8 == pytest.approx(4.127, abs=5e-4)


# ----------------------------------------------------------- on CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on the CPU machines)")
def test_tiny_llama_plan_against_cuda_max_allocated():
    """On CUDA the measured step also reports the allocator's peak (max allocated after a
    reset): it holds at least the tensors the plan counts, and the tensor accounting agrees
    with the plan's CUDA kernel rules (not checked on a GPU when this was written: 10 %)."""
    from transformers import LlamaConfig

    p = plan(LlamaConfig(**TINY_LLAMA_CONFIG), rank=4, targets="all-linear", batch_size=4, seq_len=64, device="cuda",
             dtype="bf16", optimizer="adamw", gradient_checkpointing=True)
    measured = measure(p)
    _check_close(p, measured, tol=0.10)
    for method in ("lora", "full"):
        got = measured[method]
        assert got.peak_kind == "cuda max allocated"
        assert got.peak >= got.weights + got.gradients + got.optimizer
    assert any(c.startswith("peak") for c in p.compare(measured)["component"])

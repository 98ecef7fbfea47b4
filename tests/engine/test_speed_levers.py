"""The engine's speed levers change how fast a run goes, not what it computes.

Each lever is checked against an independent reference: a hand computation, the
unoptimised path, or the measured memory."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import workbench as wb
from workbench.engine.config import preset
from workbench.engine.data import by_length, tokenize_dataset, load_texts
from workbench.engine.memory import SavedActivations, estimate_memory, parameter_bytes
from workbench.engine.models import set_model_dropout
from workbench.engine.optim import make_optimizer
from workbench.engine.hardware import restore_frozen_to_fp32, store_frozen_in_bf16, use_plain_attention
from workbench.engine.launch import train
from workbench.records.recording import StoreSink


def tiny_lora(rank: int = 4):
    model, tok = wb.load_base("tiny-bert")
    wb.add_lora(model, rank=rank, alpha=2 * rank, targets=["query", "value"])
    return model, tok


def inputs(tok, n: int = 4):
    texts = ["the old fisherman followed a goat", "a goat was chased by the farmer", "hello", "one more sentence here"]
    enc = tok(texts[:n], return_tensors="pt", padding=True)
    return dict(enc, labels=torch.tensor([0, 1, 0, 1][:n]))


# ---- frozen base stored in bf16 ------------------------------------------------------------------------------


def test_frozen_parameters_go_to_bf16_and_trainable_stay_fp32():
    model, _ = tiny_lora()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    n_frozen = sum(1 for p in model.parameters() if not p.requires_grad)
    assert store_frozen_in_bf16(model) == n_frozen
    for name, p in model.named_parameters():
        assert p.dtype == (torch.float32 if p.requires_grad else torch.bfloat16), name
    # weights memory by hand: 2 bytes per frozen number, 4 per trainable one
    assert parameter_bytes(model) == 2 * frozen + 4 * trainable


def test_bf16_frozen_base_gives_autocast_results():
    # Under autocast every matmul reads W in bf16 already; storing it so must give the same
    # logits up to the embedding sums (now in bf16) and the same kind of gradients.
    model, tok = tiny_lora()
    with torch.no_grad():
        for layer in wb.lora_layers(model).values():
            layer.lora_B.weight.normal_(0, 0.1)  # a non-zero update, so the LoRA path counts
    stored = copy.deepcopy(model)
    store_frozen_in_bf16(stored)
    batch = inputs(tok)
    model.eval(), stored.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, out = model(**batch), stored(**batch)
    ref.loss.backward(), out.loss.backward()
    assert torch.allclose(out.logits.float(), ref.logits.float(), atol=3e-2, rtol=3e-2)
    for (name, p), q in zip(model.named_parameters(), stored.parameters()):
        if p.requires_grad:
            assert q.grad is not None and q.grad.dtype == torch.float32, name
            assert torch.allclose(q.grad, p.grad, atol=5e-2, rtol=1e-1), name
        else:
            assert q.grad is None


def test_restore_gives_fp32_with_the_bf16_values():
    model, _ = tiny_lora()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    store_frozen_in_bf16(model)
    restore_frozen_to_fp32(model)
    for n, p in model.named_parameters():
        assert p.dtype == torch.float32
        assert torch.equal(p, before[n] if p.requires_grad else before[n].bfloat16().float()), n


def test_bf16_run_keeps_frozen_base_in_bf16_and_hands_back_fp32(tmp_path):
    cfg = preset("tiny", bf16=True, method="lora", rank=2, alpha=4, steps=4, eval_every=2)
    result = train(cfg, progress=False, keep_model=True, sinks=[StoreSink(tmp_path)])
    assert result.status == "completed" and result.environment["frozen_dtype"] == "bfloat16"
    model = result.model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert result.memory.weights == 2 * frozen + 4 * trainable  # measured while it trained
    assert all(p.dtype == torch.float32 for p in model.parameters())  # handed back in fp32
    full = train(preset("tiny", bf16=True, method="full", steps=2, eval_every=0), progress=False)
    assert full.environment["frozen_dtype"] == "float32"  # full fine-tuning keeps fp32 master weights
    assert full.memory.weights == 4 * full.params.total


# ---- the LoRA path under autocast -----------------------------------------------------------------------------


def test_lora_under_autocast_equals_the_explicit_bf16_computation():
    layer = wb.LoRALayer(nn.Linear(16, 8), rank=4, alpha=8)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(3, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    bf = torch.bfloat16
    base = nn.functional.linear(x.to(bf), layer.base_layer.weight.to(bf), layer.base_layer.bias.to(bf))
    a = x.to(bf) @ layer.lora_A.weight.to(bf).T  # A x, in bf16 (the first LoRA matmul's output)
    # Computed from the same bf16 inputs, so within one bf16 rounding (2^-8) of the sum taken in fp32
    # (bit equality would tie the test to one order of the product, scaling and sum).
    exact = base.float() + layer.scaling * (a.float() @ layer.lora_B.weight.to(bf).float().T)
    assert y.dtype == bf
    torch.testing.assert_close(y.float(), exact, rtol=2**-8, atol=2**-8 * float(exact.abs().max()))


# ---- fused AdamW ----------------------------------------------------------------------------------------------


def test_fused_adamw_first_step_matches_the_closed_form():
    # Step 1 of AdamW: m = (1-b1) g, v = (1-b2) g^2; bias-corrected m/sqrt(v) = g/|g|, so
    # w <- w (1 - lr wd) - lr g / (|g| + eps).
    model = nn.Linear(5, 3)
    w0 = model.weight.detach().clone()
    opt = make_optimizer(model, lr=0.1, weight_decay=0.01)
    assert opt.defaults["fused"] is True
    model(torch.randn(4, 5)).pow(2).sum().backward()
    g = model.weight.grad.clone()
    opt.step()
    expected = w0 * (1 - 0.1 * 0.01) - 0.1 * g / (g.abs() + 1e-8)
    assert torch.allclose(model.weight, expected, atol=1e-6)
    assert make_optimizer(model, lr=0.1, fused=False).defaults["fused"] is False


# ---- the base model's dropout ---------------------------------------------------------------------------------


def test_set_model_dropout_reaches_every_layer_and_the_config():
    model, tok = wb.load_base("tiny-bert")
    n = set_model_dropout(model, 0.0)
    assert n == sum(1 for m in model.modules() if isinstance(m, nn.Dropout)) > 0
    assert model.config.hidden_dropout_prob == model.config.attention_probs_dropout_prob == 0.0
    model.train()
    batch = inputs(tok)
    assert torch.equal(model(**batch).logits, model(**batch).logits)  # no dropout left in train mode
    for bad in (1.0, -0.1, "0.1", True):
        with pytest.raises(ValueError, match="model dropout"):
            set_model_dropout(model, bad)


def test_memory_estimate_follows_the_model_dropout():
    # With dropout off, the saved activations drop the masks; the estimate (which reads the
    # config) must still equal the measurement to the byte.
    model, tok = tiny_lora()
    set_model_dropout(model, 0.0)
    model.train()
    batch = inputs(tok)
    with SavedActivations(model) as saved:
        model(**batch).loss.backward()
    est = estimate_memory(model, *batch["input_ids"].shape)
    assert est.activations == saved.bytes


def test_plain_attention_gives_the_same_logits():
    model, tok = wb.load_base("tiny-bert")
    plain = copy.deepcopy(model)
    assert use_plain_attention(plain)
    batch = inputs(tok)
    model.eval(), plain.eval()
    assert torch.allclose(plain(**batch).logits, model(**batch).logits, atol=1e-6)
    assert use_plain_attention(nn.Linear(2, 2)) is False  # not a transformers model: left alone


def test_default_preset_turns_the_model_dropout_off_and_says_so():
    assert preset("default").model_dropout == 0.0
    assert preset("default", model_dropout=None).model_dropout is None


# ---- evaluation batches ---------------------------------------------------------------------------------------


def test_by_length_sorts_and_keeps_labels_with_their_examples():
    _, tok = wb.load_base("tiny-bert")
    ds = load_texts("default", "validation").head(50)
    tokens = tokenize_dataset(ds, tok, 64)
    ordered = by_length(tokens)
    lengths = [len(ids) for ids in ordered.input_ids]
    assert lengths == sorted(lengths)
    pairs = sorted(zip(map(tuple, tokens.input_ids), tokens.labels))
    assert sorted(zip(map(tuple, ordered.input_ids), ordered.labels)) == pairs


def test_model_dropout_is_part_of_preparing_the_model_and_checked_first():
    from workbench.lessons.memory import prepared_model

    model, _ = prepared_model(preset("tiny", method="lora", rank=2, alpha=4, model_dropout=0.0))
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] and all(
        m.p == 0.0 for m in model.modules() if isinstance(m, nn.Dropout))
    kept, _ = prepared_model(preset("tiny", method="lora", rank=2, alpha=4, model_dropout=None))
    assert {m.p for m in kept.modules() if isinstance(m, nn.Dropout)} == {kept.config.hidden_dropout_prob} != {0.0}
    with pytest.raises(ValueError, match="model_dropout must be None"):
        train(preset("tiny", model_dropout=1.5), progress=False)

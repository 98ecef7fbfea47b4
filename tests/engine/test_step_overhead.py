"""Issue 20's cuts of per-step overhead compute what the plain formulas compute.

* the LoRA update equals ``base(x) + s * B(A(x))`` written out by hand
  (outputs and gradients, relative tolerance 1e-6 of their size, fp32);
* a decoder's training forward without a key/value cache gives the same loss and gradients;
* an evaluation answering its prompts 64 a batch writes what it writes 16 a batch.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from toy_models import ARCHS, BERT, PROMPTS, TOK
from workbench.engine import evaluation
from workbench.engine.generation import generate
from workbench.engine.training import no_cache
from workbench.lora.layer import LoRALayer

REL = 1e-6  # fp32, scaled to the tensors compared (a fused kernel would round differently in the last bits)


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=REL, atol=REL * float(b.abs().max()))


@pytest.mark.parametrize("shape", [(3, 5, 12), (7, 12), (12,)], ids=["batch-seq", "rows", "one-vector"])
def test_the_fused_update_equals_the_formula_by_hand(shape):
    torch.manual_seed(0)
    base = nn.Linear(12, 9)
    layer = LoRALayer(base, rank=4, alpha=12)  # s = 3
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(shape, requires_grad=True)
    y = layer(x)
    A, B, s = layer.lora_A.weight, layer.lora_B.weight, layer.scaling
    assert s == 3.0
    by_hand = x @ base.weight.T + base.bias + s * (x @ A.T @ B.T)
    assert y.shape == by_hand.shape
    close(y, by_hand.detach())
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, A, B), g)
    expected = torch.autograd.grad(by_hand, (x, A, B), g)
    for got, want in zip(grads, expected):
        close(got, want)


def test_the_fused_update_under_bf16_autocast_stays_bf16_and_near_fp32():
    torch.manual_seed(0)
    layer = LoRALayer(nn.Linear(16, 8), rank=4, alpha=8)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(2, 3, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    exact = layer(x).detach()
    assert float((y.float() - exact).norm() / exact.norm()) < 2e-2  # bf16 has 8 bits of mantissa


@pytest.mark.parametrize("arch", ARCHS, ids=[a.id for a in ARCHS])
def test_training_without_a_cache_gives_the_same_loss_and_gradients(arch):
    model = arch.build().train()
    assert no_cache(model) == {"use_cache": False}
    ids = torch.tensor([[1, 5, 6, 7, 8, 2], [1, 9, 10, 11, 2, 0]])
    inputs = dict(input_ids=ids, attention_mask=(ids != 0).long(), labels=ids.masked_fill(ids == 0, -100))
    losses, grads = [], []
    for kwargs in ({}, no_cache(model)):
        model.zero_grad()
        torch.manual_seed(0)  # the same dropout masks both ways
        loss = model(**inputs, **kwargs).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert torch.equal(losses[0], losses[1])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_a_classifier_forward_is_called_as_before():
    assert no_cache(BERT.build()) == {}  # BERT's forward takes no use_cache: nothing is passed


def test_evaluation_answers_the_same_in_batches_of_64_as_of_16():
    model = ARCHS[1].build()  # llama
    prompts = PROMPTS * 9  # 45 prompts: 3 batches of 16, or one of 64
    assert evaluation.GENERATE_BATCH == 64
    small = generate(model, TOK, prompts, max_new_tokens=8, batch_size=16)
    large = generate(model, TOK, prompts, max_new_tokens=8, batch_size=evaluation.GENERATE_BATCH)
    assert small == large and any(small)

"""The analytic estimate on Llama-style decoders (Llama, Qwen2), gradient checkpointing, and optimizers beyond torch's.

Every model here is tiny (``toy_models.SHAPE``), so the whole file runs in seconds.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn
from toy_models import SHAPE, lm_batch, measured_step, shaped_llama_lm, shaped_opt_lm

from workbench.engine.memory import (
    estimate_activation_bytes,
    estimate_memory,
    optimizer_state_bytes,
    optimizer_state_estimate,
    step_optimizer,
)
from workbench.util.units import FLOAT32_BYTES as F32  # bytes per float32

transformers.logging.set_verbosity_error()

B, S = SHAPE.batch, SHAPE.seq  # batch and sequence length of the tiny runs
H, I, LAYERS, VOCAB = SHAPE.hidden, SHAPE.ffn, SHAPE.blocks, SHAPE.vocab

# The estimate agrees with SavedActivations to the byte on torch 2.13; the 1% tolerance leaves room
# for a few scalars' bookkeeping, not more.
TOL = 0.01


# ------------------------------------------------- Llama-style decoders (Llama, Qwen2)

LLAMA_HEADS, KV_HEADS, LLAMA_I = SHAPE.llama_heads, SHAPE.llama_kv_heads, SHAPE.llama_ffn  # 4 query heads share 2 key/value heads


def _llama_lora(model, setup):
    from workbench.lora.inject import add_lora as inject

    if setup == "lora-qv":
        inject(model, rank=4, targets=("q_proj", "v_proj"))
    elif setup == "lora-all":
        inject(model, rank=4, targets="all-linear")
    return model


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("setup", ["full", "lora-qv", "lora-all"])
def test_estimate_matches_measurement_on_tiny_llama(setup, dtype, padded):
    """RMSNorm in float32, rotary, grouped-query sdpa (its own GQA unpadded, repeated k/v
    and a mask padded), SwiGLU, untied LM head, float32 loss."""
    model = _llama_lora(shaped_llama_lm(dtype), setup)
    est = estimate_memory(model, B, S, padded=padded)
    meas = measured_step(model, lm_batch(padded))
    assert (est.weights, est.gradients, est.optimizer) == (meas.weights, meas.gradients, meas.optimizer)
    assert est.activations == pytest.approx(meas.activations, rel=TOL)
    assert est.total == pytest.approx(meas.total, rel=TOL)


@pytest.mark.parametrize("kind,tied,kv", [("qwen2", True, KV_HEADS), ("llama", True, 1), ("llama", False, LLAMA_HEADS)])
def test_estimate_matches_measurement_on_tiny_qwen2_and_tied_llama(kind, tied, kv):
    """Qwen2 (q/k/v biases, tied embeddings) has Llama's block; with one key/value head
    (multi-query) or as many as query heads, padding repeats nothing into new memory."""
    for setup in ("full", "lora-all"):
        model = _llama_lora(shaped_llama_lm(kind=kind, tied=tied, kv_heads=kv), setup)
        est = estimate_memory(model, B, S, padded=True)
        meas = measured_step(model, lm_batch(True))
        assert est.activations == pytest.approx(meas.activations, rel=TOL), (kind, setup)


def test_llama_block_equals_the_docstring_formula():
    """fp32, unpadded, full fine-tuning, per block:
    (8 T*H + 2 T*g*d + 4 T*I + 2 T + B*h*S) x 4 bytes (g key/value heads of d)."""
    items = estimate_activation_bytes(shaped_llama_lm(), B, S, padded=False)
    T, d = B * S, H // LLAMA_HEADS
    block = sum(v for k, v in items.items() if k.startswith("layer1."))
    assert block == (8 * T * H + 2 * T * KV_HEADS * d + 4 * T * LLAMA_I + 2 * T + B * LLAMA_HEADS * S) * F32
    # outside the blocks: input ids, rotary cos and sin, final norm (input, 1/rms, normalised),
    # the LM head's input, and the loss (float32 log-probabilities, labels, weight)
    outside = sum(v for k, v in items.items() if not k.startswith("layer"))
    assert outside == T * 8 + 2 * S * d * F32 + (2 * T * H + T) * F32 + T * H * F32 + T * VOCAB * 4 + T * 8 + 4


def test_checkpointed_activations_are_inputs_outside_and_one_block():
    model = _llama_lora(shaped_llama_lm(torch.bfloat16), "lora-all")
    plain = estimate_activation_bytes(model, B, S, padded=False)
    ckpt = estimate_activation_bytes(model, B, S, padded=False, gradient_checkpointing=True)
    T, e = B * S, 2
    outside = sum(v for k, v in plain.items() if not k.startswith("layer"))
    top = sum(v for k, v in plain.items() if k.startswith(f"layer{LAYERS - 1}.") and k != f"layer{LAYERS - 1}.input")
    assert sum(ckpt.values()) == LAYERS * T * H * e + outside + top
    assert sum(ckpt.values()) < sum(plain.values())
    assert estimate_memory(model, B, S, padded=False, gradient_checkpointing=True).activations == sum(ckpt.values())


def test_opt_has_no_llama_formula():
    with pytest.raises(ValueError, match="no activation formula.*'opt'"):
        estimate_memory(shaped_opt_lm(), B, S)


# ------------------------------------------------- optimizers beyond torch's

@pytest.mark.filterwarnings("ignore:Paged optimizers are not supported on CPU")
@pytest.mark.parametrize("optimizer", ["adamw-32bit", "adamw-8bit", "paged-adamw-32bit", "paged-adamw-8bit"])
def test_bitsandbytes_optimizer_state_is_the_closed_form(optimizer):
    """bitsandbytes on this CPU: 32-bit states are 8 bytes a number whatever the dtype;
    8-bit states 2 bytes + 2 float32 absmax per 256 numbers (float32 below 4096 numbers),
    and the two 256-entry quantile maps once."""
    params = [nn.Parameter(torch.randn(64, 100, dtype=torch.bfloat16)), nn.Parameter(torch.randn(5000)),
              nn.Parameter(torch.randn(10))]
    opt = step_optimizer(optimizer, params)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    numels = [6400, 5000, 10]
    if optimizer.endswith("32bit"):
        expected = 8 * sum(numels)
    else:
        expected = 2 * (6400 + 5000) + 8 * (25 + 20) + 8 * 10 + 2 * 256 * 4
    assert optimizer_state_bytes(opt) == expected == optimizer_state_estimate(optimizer, numels, 2)

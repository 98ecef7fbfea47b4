"""Exact memory accounting: parameter, gradient and optimizer bytes, the activations autograd saves, the breakdown.

Every model here is tiny (``toy_models.SHAPE``: hidden 32, two blocks), so the whole file runs in seconds.
"""

from __future__ import annotations

import gc
import json
import weakref

import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification
from toy_models import SHAPE, shaped_bert_config

from workbench.engine.memory import (
    MemoryBreakdown,
    SavedActivations,
    format_bytes,
    gradient_bytes,
    measure_train_step,
    optimizer_state_bytes,
    parameter_bytes,
    trainable_parameter_bytes,
)
from workbench.util.units import FLOAT32_BYTES as F32  # bytes per float32

B, S = SHAPE.batch, SHAPE.seq  # batch and sequence length of the tiny runs
VOCAB = SHAPE.vocab


# ------------------------------------------------------ exact tensor accounting


def test_parameter_gradient_optimizer_bytes_match_closed_form():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    model[0].weight.requires_grad_(False)  # frozen: no gradient, no optimizer state
    numel_all = 8 * 16 + 16 + 16 * 4 + 4
    numel_trainable = 16 + 16 * 4 + 4  # first bias, second weight and bias
    assert parameter_bytes(model) == numel_all * F32
    assert trainable_parameter_bytes(model) == numel_trainable * F32

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    assert gradient_bytes(model) == 0 and optimizer_state_bytes(opt) == 0  # nothing yet
    model(torch.randn(5, 8)).pow(2).mean().backward()
    assert model[0].weight.grad is None
    assert gradient_bytes(model) == numel_trainable * F32
    opt.step()
    # exp_avg + exp_avg_sq per trainable float, plus one float32 `step` per trainable tensor
    assert optimizer_state_bytes(opt) == 2 * numel_trainable * F32 + 3 * 4
    opt.zero_grad()
    assert gradient_bytes(model) == 0


@pytest.mark.parametrize("momentum, states", [(0.9, 1), (0.0, 0)])
def test_sgd_state_bytes(momentum, states):
    model = nn.Linear(6, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
    model(torch.randn(2, 6)).sum().backward()
    opt.step()
    assert optimizer_state_bytes(opt) == states * (6 * 3 + 3) * F32


def test_parameter_bytes_counts_tied_weights_once_and_reads_dtype():
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied, as GPT-2's lm_head and wte
    model = nn.ModuleDict({"emb": emb, "head": head}).to(torch.bfloat16)
    assert parameter_bytes(model) == 10 * 4 * 2


# ------------------------------------------------------------ saved activations


def test_linear_saves_its_input_only_when_its_weight_trains():
    lin = nn.Linear(8, 3)
    x = torch.randn(5, 8)
    with SavedActivations(lin) as saved:
        lin(x)
    assert saved.bytes == 5 * 8 * F32  # x, for dW = dY^T x; W itself is left out

    lin.requires_grad_(False)
    x_grad = torch.randn(5, 8, requires_grad=True)
    with SavedActivations(lin) as saved:
        lin(x_grad)
    assert saved.count >= 1  # autograd saved W for dx = dY W ...
    assert saved.bytes == 0  # ... but W is a parameter, not an activation


def test_parameters_are_excluded_only_when_the_model_is_given():
    lin = nn.Linear(8, 3, bias=False)
    x = torch.randn(5, 8, requires_grad=True)
    with SavedActivations() as anonymous:
        lin(x)
    with SavedActivations(lin) as with_model:
        lin(x)
    assert anonymous.bytes == 5 * 8 * F32 + 3 * 8 * F32  # x and W
    assert with_model.bytes == 5 * 8 * F32  # x only


def test_buffers_are_excluded():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("scale", torch.full((8,), 2.0))

        def forward(self, x):
            return x * self.scale  # mul saves `scale` to compute dx

    m = Scale()
    with SavedActivations(m) as saved:
        m(torch.randn(4, 8, requires_grad=True))
    assert saved.count == 1 and saved.bytes == 0


@pytest.mark.parametrize("act, saved_numel", [(nn.GELU(), 5 * 6), (nn.ReLU(), 5 * 6), (nn.Tanh(), 5 * 6)])
def test_nonlinearity_adds_one_output_sized_tensor(act, saved_numel):
    """Linear (trainable) -> act: x for dW, plus GELU's input or ReLU's/Tanh's output."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), act)
    with SavedActivations(model) as saved:
        model(torch.randn(5, 4))
    assert saved.bytes == 5 * 4 * F32 + saved_numel * F32


def test_same_tensor_saved_twice_is_counted_once():
    x = torch.randn(7, 3, requires_grad=True)
    with SavedActivations() as saved:
        y = x * x  # mul saves self and other: the same tensor
        z = x.t() * 2.0 + y.t() * x.t()  # views of x and y: same storages again
    assert saved.count >= 4
    assert saved.bytes == 2 * 7 * 3 * F32  # x and y, once each
    assert [r[2] for r in saved.records].count(0) == saved.count - 2


def test_tensors_pass_through_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
    x = torch.randn(6, 4)
    model(x).pow(2).sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with SavedActivations(model):
        out = model(x)
    out.pow(2).sum().backward()
    for g0, p in zip(plain, model.parameters()):
        assert torch.equal(g0, p.grad)


def test_graph_is_freed_without_backward():
    """A forward under the hooks must not keep the graph alive (no reference cycle)."""
    w = torch.randn(16, 16, requires_grad=True)
    with SavedActivations():
        h = torch.relu(torch.randn(8, 16) @ w)  # relu saves its own output
        y = torch.tanh(h).sum()
    ref = weakref.ref(h)
    del h, y
    gc.collect()
    assert ref() is None


def test_meta_tensors_are_counted_by_their_logical_size():
    with torch.device("meta"):
        lin = nn.Linear(8, 4)
        x = torch.empty(5, 8)
    with SavedActivations(lin) as saved:
        y = lin(x)
        y * y
    assert saved.unaccounted == 0
    assert saved.bytes == (5 * 8 + 5 * 4) * F32  # x, and y once (not twice)


def test_sparse_tensor_counts_indices_and_values():
    indices = torch.tensor([[0, 1, 2], [2, 0, 1]])
    values = torch.tensor([1.0, 2.0, 3.0])
    sparse = torch.sparse_coo_tensor(indices, values, (3, 3), check_invariants=True)
    w = torch.randn(3, 4, requires_grad=True)
    with SavedActivations() as saved:
        torch.sparse.mm(sparse, w)
    assert saved.unaccounted == 0
    assert saved.bytes == indices.numel() * 8 + values.numel() * F32


def test_bert_forward_on_meta_counts_what_a_real_forward_saves():
    cfg = shaped_bert_config()
    real = AutoModelForSequenceClassification.from_config(cfg).train()
    with torch.device("meta"):
        meta = AutoModelForSequenceClassification.from_config(cfg).train()
    ids = torch.randint(5, VOCAB, (B, S))
    labels = torch.tensor([0, 1, 1, 0])
    with SavedActivations(real) as on_cpu:
        real(input_ids=ids, labels=labels)
    with SavedActivations(meta) as on_meta:
        meta(input_ids=ids.to("meta"), labels=labels.to("meta"))
    assert on_meta.bytes == on_cpu.bytes > 0


# ------------------------------------------------------------ results and units


def test_breakdown_total_roundtrip_and_table():
    mem = MemoryBreakdown(weights=100, gradients=20, optimizer=40, activations=7, peak=5000, peak_kind="process VmHWM")
    assert mem.total == 167
    back = MemoryBreakdown.from_dict(json.loads(json.dumps(mem.to_dict())))
    assert back == mem
    table = mem.to_frame()
    assert list(table.columns) == ["component", "bytes", "MB"]
    assert list(table["component"][:5]) == ["weights", "gradients", "optimizer", "activations", "total"]
    assert table["bytes"].iloc[4] == 167 and table["MB"].iloc[0] == pytest.approx(100 / 1e6)
    assert len(MemoryBreakdown(weights=1).to_frame()) == 5  # no peak row when unknown


def test_format_bytes_uses_decimal_megabytes():
    assert format_bytes(22_713_986 * 4) == "90.9 MB"  # MiniLM's parameters (the guide's 86.6 MiB)
    assert format_bytes(2_000_000, digits=2) == "2.00 MB"
    assert format_bytes(1.2e12) == "1200.0 GB"
    assert format_bytes(None) == "n/a"


def test_measure_train_step_matches_hand_count():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mem = measure_train_step(model, opt, torch.randn(5, 4), loss_fn=lambda out: out.sum())
    n = 4 * 8 + 8 + 8 * 2 + 2
    assert (mem.weights, mem.gradients) == (n * F32, n * F32)
    assert mem.optimizer == 2 * n * F32 + 4 * 4
    # x for W1, GELU's input, GELU's output for W2 (sum saves nothing)
    assert mem.activations == 5 * (4 + 8 + 8) * F32
    assert mem.peak_kind in ("process VmHWM", "unavailable")


def test_measure_train_step_needs_a_loss():
    model = nn.Linear(3, 1)
    with pytest.raises(ValueError, match="loss"):
        measure_train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.randn(2, 3))

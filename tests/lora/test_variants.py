"""LoRA variants against PEFT and against closed forms: DoRA, PiSSA, LoRA+.

The checks every row shares (outputs, gradients, merging, adapter files, counts) are in
``test_lora_core``; here are the ones particular to a variant.  Each runs over the same
table of toy setups (``toy_models.TOYS``), restricted to the rows that have its
variant (``toy_models.where``).  Checks of bad settings use one tiny model.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft.optimizers import create_loraplus_optimizer
from torch import nn

import workbench as wb
from lora_checks import (
    PEFT_PREFIX,
    assert_close,
    copy_into_peft,
    hand_scaling,
    inputs,
    logits,
    peft_layer,
    peft_name,
    rel_error,
)
from toy_models import TOYS, params, randomize_lora, where, tiny_bert_classifier
from workbench.engine.optim import learning_rates, loraplus_groups, make_optimizer
from workbench.lora.adapters import AdapterError, adapter_state_dict
from workbench.lora.layer import LoRALayer
from workbench.lora.variants import DoRA, PiSSA, variants_for

REL = 1e-5  # outputs and gradients, relative to their scale (largest differences seen: about 1e-6)


# ---- every row -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("toy", params())
def test_state_dict_keys_are_peft_file_keys(toy, tmp_path):
    from safetensors.torch import load_file

    base = toy.build()
    toy.peft(base).save_pretrained(tmp_path / "p")
    peft_keys = set(load_file(tmp_path / "p" / "adapter_model.safetensors"))
    ours = toy.ours(base)
    assert set(adapter_state_dict(ours)) == peft_keys
    heads = tuple(h + "." for h in ours.lora_settings.modules_to_save)
    assert {PEFT_PREFIX + k for k in ours.state_dict() if "lora_" in k or k.startswith(heads)} == peft_keys


@pytest.mark.parametrize("toy", params())
def test_the_config_picks_the_variants(toy):
    """A row's layers run exactly the variants its config names, in init order."""
    layer = next(iter(wb.lora_layers(toy.ours(toy.build())).values()))
    expected = ([PiSSA] if toy.config.init == "pissa" else []) + ([DoRA] if toy.config.dora else [])
    assert [type(v) for v in layer.variants] == [type(v) for v in variants_for(toy.config)] == expected
    assert (layer.variant is not None) == toy.config.dora
    assert hasattr(layer, "lora_magnitude_vector") == toy.config.dora
    assert hasattr(layer, "pissa_A0") == (toy.config.init == "pissa")


@pytest.mark.parametrize("toy", params(where(lambda c: c.dropout > 0)))
def test_training_mode_with_dropout_matches_peft(toy):
    """Dropout on the LoRA input, in train mode: the same masks give the same outputs (DoRA:
    the (g - 1) W x term sees the dropped input too)."""
    base = toy.build()
    ours, theirs = toy.ours(base), toy.peft(base)
    randomize_lora(ours)
    copy_into_peft(ours, theirs)
    ours.train(), theirs.train()  # the same seed gives both the same dropout masks, the base model's too
    x = inputs()
    torch.manual_seed(5)
    out_ours = logits(ours, x)
    torch.manual_seed(5)
    out_theirs = logits(theirs, x)
    assert_close(out_ours, out_theirs, REL)
    torch.manual_seed(6)
    assert (logits(ours, x) - out_ours).abs().max() > 100 * REL * out_ours.abs().max()  # dropout really is on


# ---- DoRA ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("toy", params(where(lambda c: c.dora)))
def test_dora_magnitude_starts_at_the_row_norm_as_peft(toy):
    """m0 = ||W + s B A|| per output row (with PiSSA: residual + s B A = W), PEFT's m0 too."""
    base = toy.build()
    ours, theirs = toy.ours(base), toy.peft(base)
    for n, layer in wb.lora_layers(ours).items():
        w = base.get_submodule(n).weight.detach().double()
        w = w.T if layer.fan_in_fan_out else w  # out x in
        assert_close(layer.lora_magnitude_vector.double(), w.norm(dim=1), REL, n)
        assert_close(layer.lora_magnitude_vector, peft_layer(theirs, n).lora_magnitude_vector["default"].weight, REL, n)


@pytest.mark.parametrize("toy", params(where(lambda c: c.dora)))
def test_dora_norm_is_a_constant_in_backward(toy):
    """The paper's section 4.3: ||W + s B A|| is detached.  Differentiating through it would
    give A another gradient; ours is the detached one (the formula by hand is in test_lora_core)."""
    model = toy.ours(toy.build())
    randomize_lora(model, seed=1)
    name, layer = next(iter(wb.lora_layers(model).items()))
    x = torch.randn(4, layer.in_features, generator=torch.Generator().manual_seed(2))
    layer(x).square().sum().backward()
    w = layer.base_weight().detach()
    a = layer.lora_A.weight.detach().clone().requires_grad_(True)
    v = w + hand_scaling(toy.config) * layer.lora_B.weight.detach() @ a
    bias = layer.base_layer.bias.detach() if layer.base_layer.bias is not None else 0.0
    y = bias + x @ (layer.lora_magnitude_vector.detach()[:, None] * v / v.norm(dim=1, keepdim=True)).T
    y.square().sum().backward()
    assert rel_error(layer.lora_A.weight.grad, a.grad) > 100 * REL, name


@pytest.mark.parametrize("toy", params(where(lambda c: c.dora)))
def test_dora_adapter_without_magnitudes_is_refused(toy, tmp_path):
    from safetensors.torch import load_file, save_file

    base = toy.build()
    wb.save_adapter(toy.ours(base), tmp_path / "a")
    state = load_file(tmp_path / "a" / "adapter_model.safetensors")
    key = next(k for k in state if k.endswith("lora_magnitude_vector"))
    state.pop(key)
    save_file(state, tmp_path / "a" / "adapter_model.safetensors")
    model = copy.deepcopy(base)
    with pytest.raises(AdapterError, match=f"lacks '{key}'.*expected shape"):
        wb.load_adapter(model, tmp_path / "a")
    assert getattr(model, "lora_settings", None) is None


# ---- PiSSA --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("toy", params(where(lambda c: c.init == "pissa")))
def test_pissa_init_equals_peft(toy):
    base = toy.build()
    ours, theirs = toy.ours(base), toy.peft(base)
    for n, layer in wb.lora_layers(ours).items():
        pl = peft_layer(theirs, n)
        ba = layer.lora_B.weight @ layer.lora_A.weight
        peft_ba = pl.lora_B["default"].weight @ pl.lora_A["default"].weight
        assert_close(ba, peft_ba, REL, n)
        assert_close(layer.base_layer.weight, pl.base_layer.weight, REL, n)
        assert rel_error(layer.base_layer.weight, base.get_submodule(n).weight) > 1e-3  # the base really changed


@pytest.mark.parametrize("toy", params(where(lambda c: c.init == "pissa")))
def test_pissa_closed_form(toy):
    """s B A is the best rank-r approximation of W (Eckart-Young): the residual's singular
    values are W's from r+1 on, and A A^T = B^T B = diag(S_r) / s (rows of A, columns of B
    orthogonal); residual + s B A = W, which ``original_weight`` gives back."""
    base = toy.build()
    model = toy.ours(base)
    r, s = toy.config.rank, hand_scaling(toy.config)
    for n, layer in wb.lora_layers(model).items():
        stored = base.get_submodule(n).weight.detach().double()
        w = stored.T if layer.fan_in_fan_out else stored  # out x in
        sv = torch.linalg.svdvals(w)
        residual = layer.base_weight().detach().double()
        a, b = layer.lora_A.weight.detach().double(), layer.lora_B.weight.detach().double()
        assert_close(torch.linalg.svdvals(residual)[: len(sv) - r], sv[r:], REL, n)
        assert_close(a @ a.T, torch.diag(sv[:r]) / s, REL, n)
        assert_close(b.T @ b, torch.diag(sv[:r]) / s, REL, n)
        assert_close(residual + s * b @ a, w, REL, n)
        assert_close(layer.original_weight().double(), stored, REL, n)


def test_pissa_init_happens_once():
    layer = LoRALayer(nn.Linear(4, 4), rank=2, alpha=2)
    with pytest.raises(ValueError, match="init 'pissa' changes the base weight"):
        layer.reset_lora_parameters("pissa")
    assert "2404.02948" in PiSSA.__doc__ and "2402.09353" in DoRA.__doc__


@pytest.mark.parametrize("init", ["pissa_niter_4", "olora", "loftq"])
def test_adapters_made_on_changed_base_weights_are_refused(init, tmp_path):
    base = tiny_bert_classifier()
    wb.save_adapter(TOYS[1].ours(base), tmp_path / "a")
    cfg_path = tmp_path / "a" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["init_lora_weights"] = init
    cfg_path.write_text(json.dumps(cfg))
    model = copy.deepcopy(base)
    with pytest.raises(AdapterError, match=f"init_lora_weights='{init}'.*supported: .*'pissa'"):
        wb.load_adapter(model, tmp_path / "a")
    assert getattr(model, "lora_settings", None) is None


# ---- LoRA+ --------------------------------------------------------------------------------------------------------

def _group_of(optimizer, param) -> dict:
    return next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))


def _is_b_like(name: str, p: torch.Tensor) -> bool:
    """LoRA+ gives B, and every 1-D trainable tensor (a head's bias, DoRA's m), the faster rate."""
    return "lora_B" in name or p.ndim == 1


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("toy", params(where(lambda c: c.loraplus_ratio is not None)))
def test_loraplus_same_groups_and_step_as_peft(toy, weight_decay):
    lr, ratio = 1e-3, toy.config.loraplus_ratio
    base = toy.build()
    ours, theirs = toy.ours(base), toy.peft(base)
    randomize_lora(ours, seed=4)
    copy_into_peft(ours, theirs)
    opt = make_optimizer(ours, lr, weight_decay, loraplus_ratio=ratio)
    opt_peft = create_loraplus_optimizer(theirs, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=ratio,
                                         loraplus_weight_decay=weight_decay)
    heads = ours.lora_settings.modules_to_save
    peft_params = dict(theirs.named_parameters())
    ours_trainable = {n: p for n, p in ours.named_parameters() if p.requires_grad}
    assert {peft_name(n, heads) for n in ours_trainable} == {n for n, p in peft_params.items() if p.requires_grad}
    lrs = learning_rates(ours, opt)
    assert set(lrs) == set(ours_trainable)
    for n, p in ours_trainable.items():
        g_ours, g_peft = _group_of(opt, p), _group_of(opt_peft, peft_params[peft_name(n, heads)])
        assert (g_ours["lr"], g_ours["weight_decay"]) == (g_peft["lr"], g_peft["weight_decay"]), n
        assert lrs[n] == (lr * ratio if _is_b_like(n, p) else lr), n
    # One step on the same batch gives the same weights (eval mode: no dropout, the same loss).
    before = {n: p.detach().clone() for n, p in ours_trainable.items()}
    x = inputs()
    labels = torch.tensor([0, 1, 1]) if toy.task == "classification" else x["input_ids"]
    for model, optimizer in ((ours, opt), (theirs, opt_peft)):
        model(**x, labels=labels).loss.backward()
        optimizer.step()
    for n, p in ours_trainable.items():
        assert not torch.equal(p, before[n]), n  # the step moved it
        assert_close(p, peft_params[peft_name(n, heads)], REL, n)


@pytest.mark.parametrize("toy", params(where(lambda c: c.loraplus_ratio is not None)))
def test_loraplus_first_step_is_ratio_times_larger_for_b(toy):
    """Adam's first step moves each weight by lr * g / (|g| + eps) ~ lr * sign(g): B moves
    ratio times as far as A (where the gradient is well above Adam's eps = 1e-8, an absolute
    constant, so this threshold is absolute too)."""
    lr, ratio = 1e-3, toy.config.loraplus_ratio
    model = toy.ours(toy.build())
    randomize_lora(model, seed=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = make_optimizer(model, lr, loraplus_ratio=ratio)
    x = inputs()
    labels = torch.tensor([0, 1, 1]) if toy.task == "classification" else x["input_ids"]
    model(**x, labels=labels).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    opt.step()
    for n, p in model.named_parameters():
        if n not in before:
            continue
        big = grads[n].abs() > 1e-5  # eps / |g| < 1e-3
        step = (before[n] - p.detach())[big]
        expected = (lr * ratio if _is_b_like(n, p) else lr) * grads[n][big].sign()
        torch.testing.assert_close(step, expected, rtol=2e-3, atol=0.0, msg=n)


@pytest.mark.parametrize("toy", params(where(lambda c: c.loraplus_ratio is None)))
def test_no_ratio_is_plain_adamw(toy):
    model = toy.ours(toy.build())
    opt = make_optimizer(model, 5e-4, weight_decay=0.01)
    assert len(opt.param_groups) == 1
    group = opt.param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (5e-4, 0.01)
    assert {id(p) for p in group["params"]} == {id(p) for p in model.parameters() if p.requires_grad}


def test_loraplus_groups_by_name():
    model = TOYS[1].ours(tiny_bert_classifier())
    groups = loraplus_groups(model, 1e-3, 0.1, 2.0)
    assert {g["name"]: (g["lr"], g["weight_decay"]) for g in groups} == {
        "A": (1e-3, 0.1), "B": (2e-3, 0.1), "B_no_decay": (2e-3, 0.0)}


# ---- bad input ----------------------------------------------------------------------------------------------------

def _tiny_lora():
    model = tiny_bert_classifier()
    wb.add_lora(model, rank=2, alpha=4, targets=["query"])
    return model


@pytest.mark.parametrize("ratio", [0, -2.0, True, "16", float("nan")])
def test_bad_loraplus_ratio(ratio):
    with pytest.raises(ValueError, match=r"loraplus_ratio must be a number > 0, got"):
        make_optimizer(_tiny_lora(), 1e-3, loraplus_ratio=ratio)


@pytest.mark.parametrize("kwargs,msg", [
    (dict(lr=0.0), r"lr must be a number > 0, got 0\.0"),
    (dict(lr=1e-3, weight_decay=-0.1), r"weight_decay must be a number >= 0, got -0\.1"),
])
def test_bad_optimizer_settings(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        make_optimizer(_tiny_lora(), **kwargs)


def test_loraplus_needs_lora_and_trainable_parameters():
    model = tiny_bert_classifier()
    with pytest.raises(ValueError, match="loraplus_ratio needs a model with LoRA layers"):
        make_optimizer(model, 1e-3, loraplus_ratio=16.0)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        make_optimizer(model, 1e-3)


@pytest.mark.parametrize("kwargs,exc,msg", [
    (dict(dora="yes"), ValueError, "dora must be True or False, got 'yes'"),
    (dict(init="svd"), ValueError, "init must be one of 'kaiming', 'gaussian', 'pissa', got 'svd'"),
    (dict(init="pissa", rank=40), ValueError, r"rank 40 exceeds min\(in, out\)"),
], ids=["dora-not-bool", "unknown-init", "pissa-rank-too-big"])
def test_bad_variant_settings_change_nothing(kwargs, exc, msg):
    model = tiny_bert_classifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(exc, match=msg):
        wb.add_lora(model, **(dict(rank=2, alpha=4, targets=["query"]) | kwargs))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert getattr(model, "lora_settings", None) is None


def test_dora_on_an_unsupported_layer_is_refused():
    with pytest.raises(TypeError, match="LoRA supports Linear, Conv1D layers, not Embedding"):
        LoRALayer(nn.Embedding(10, 4), rank=2, alpha=2, dora=True)

"""LoRA variants against PEFT and against closed forms: DoRA, PiSSA, LoRA+.

(rsLoRA is in the table of test_lora_core.)  Each variant has a table of toy setups,
tiny models built from configs, run through every check, in the style of test_lora_core.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.optimizers import create_loraplus_optimizer
from torch import nn
from transformers.pytorch_utils import Conv1D

import workbench as wb
from workbench.lora.adapters import AdapterError, adapter_state_dict
from workbench.lora.inject import head_names
from workbench.lora.layer import LoRALayer, pissa_init
from workbench.engine.optim import learning_rates, loraplus_groups, make_optimizer

TASK_TYPE = {"classification": "SEQ_CLS", "causal-lm": "CAUSAL_LM"}
PEFT_PREFIX = "base_model.model."

# (model name, task, targets, layers, rank, alpha, rslora)
DORA_CASES = [
    ("tiny-bert", "classification", ["query", "value"], None, 4, 8, False),
    ("tiny-bert", "classification", ["query", "value", "output.dense"], [1], 2, 4, True),
    ("tiny-gpt2", "causal-lm", ["c_attn"], None, 4, 8, False),
    ("tiny-gpt2", "classification", ["c_attn", "mlp.c_proj"], None, 2, 4, True),
]
PISSA_CASES = [
    ("tiny-bert", "classification", ["query", "value"], None, 4, 8, False),
    ("tiny-bert", "classification", "all-linear", None, 2, 2, True),
    ("tiny-gpt2", "causal-lm", ["c_attn"], None, 4, 8, False),
    ("tiny-gpt2", "classification", ["c_attn", "mlp.c_proj"], [0], 3, 6, True),
]


def _ids(cases):
    return [f"{c[0]}-{c[1]}-{c[2] if isinstance(c[2], str) else '+'.join(c[2])}-{c[3]}-r{c[4]}"
            + ("-rs" if c[6] else "") for c in cases]


def _base(name: str, task: str) -> nn.Module:
    """A tiny model; a classification head with unit-scale weights, so that logits are O(1)
    and a change inside the model shows in them well above the tolerances used here."""
    model = wb.load_base(name, task=task)[0].eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for h in head_names(model):
            w = model.get_submodule(h).weight
            w.copy_(torch.randn(w.shape, generator=g))
    return model


def _inputs(batch: int = 3, seq: int = 7) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 2000, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _logits(model: nn.Module, inputs: dict) -> torch.Tensor:
    return model(**inputs).logits


def _peft(base: nn.Module, case, **extra) -> nn.Module:
    name, task, targets, layers, rank, alpha, rslora = case
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, layers_to_transform=layers,
                        use_rslora=rslora, task_type=TASK_TYPE[task], lora_dropout=extra.pop("dropout", 0.0), **extra)
    return get_peft_model(copy.deepcopy(base), config)


def _ours(base: nn.Module, case, **extra) -> nn.Module:
    name, task, targets, layers, rank, alpha, rslora = case
    model = copy.deepcopy(base)
    wb.add_lora(model, rank=rank, alpha=alpha, targets=targets, layers=layers, rslora=rslora, **extra)
    return model


def _randomize(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial A, B and (DoRA) magnitudes m = ||W|| * exp(0.3 z)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in wb.lora_layers(model).values():
            layer.lora_A.weight.copy_(torch.randn(layer.lora_A.weight.shape, generator=g) * 0.1)
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.1)
            if layer.dora:
                m = layer.lora_magnitude_vector
                m.mul_(torch.exp(0.3 * torch.randn(m.shape, generator=g)))


def _peft_layer(peft_model: nn.Module, name: str) -> nn.Module:
    return peft_model.base_model.model.get_submodule(name)


def _copy_into_peft(ours: nn.Module, peft_model: nn.Module) -> None:
    with torch.no_grad():
        for name, layer in wb.lora_layers(ours).items():
            pl = _peft_layer(peft_model, name)
            pl.lora_A["default"].weight.copy_(layer.lora_A.weight)
            pl.lora_B["default"].weight.copy_(layer.lora_B.weight)
            if layer.dora:
                pl.lora_magnitude_vector["default"].weight.copy_(layer.lora_magnitude_vector)
        for h in ours.lora_settings.modules_to_save:
            for pname, p in ours.get_submodule(h).named_parameters():
                peft_model.base_model.model.get_submodule(h).modules_to_save["default"].get_parameter(pname).copy_(p)


def _peft_name(ours_name: str, heads) -> str:
    """Our parameter name -> PEFT's (adapter name 'default', heads under modules_to_save)."""
    for h in heads:
        if ours_name.startswith(h + "."):
            return f"{PEFT_PREFIX}{h}.modules_to_save.default.{ours_name[len(h) + 1:]}"
    for part in ("lora_A.weight", "lora_B.weight"):
        if ours_name.endswith(part):
            return PEFT_PREFIX + ours_name[: -len(part)] + part.replace(".weight", ".default.weight")
    if ours_name.endswith(".lora_magnitude_vector"):
        return PEFT_PREFIX + ours_name + ".default.weight"
    raise AssertionError(f"no PEFT counterpart for {ours_name}")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# ---- DoRA ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", DORA_CASES, ids=_ids(DORA_CASES))
def test_dora_same_outputs_and_gradients_as_peft(case):
    base = _base(*case[:2])
    ours, theirs = _ours(base, case, dora=True), _peft(base, case, use_dora=True).eval()
    x = _inputs()
    fresh = _logits(base, x)
    assert (_logits(ours, x) - fresh).abs().max().item() <= 1e-5  # m = ||W||: a fresh DoRA layer is the base
    for n, layer in wb.lora_layers(ours).items():  # the same initial magnitudes as PEFT
        assert torch.allclose(layer.lora_magnitude_vector, _peft_layer(theirs, n).lora_magnitude_vector["default"].weight,
                              rtol=1e-6, atol=0)
    _randomize(ours)
    _copy_into_peft(ours, theirs)
    out_ours, out_theirs = _logits(ours, x), _logits(theirs, x)
    assert (out_ours - fresh).abs().max().item() > 5e-4  # the update is 50x the tolerance below
    assert (out_ours - out_theirs).abs().max().item() <= 1e-5
    out_ours.square().sum().backward()
    out_theirs.square().sum().backward()
    for n, layer in wb.lora_layers(ours).items():
        pl = _peft_layer(theirs, n)
        pairs = [(layer.lora_A.weight, pl.lora_A["default"].weight), (layer.lora_B.weight, pl.lora_B["default"].weight),
                 (layer.lora_magnitude_vector, pl.lora_magnitude_vector["default"].weight)]
        for mine, peft_p in pairs:
            assert mine.grad is not None and mine.grad.abs().max() > 0
            assert torch.allclose(mine.grad, peft_p.grad, rtol=1e-4, atol=1e-7), n


@pytest.mark.parametrize("base_layer", [nn.Linear(6, 5), Conv1D(5, 6)], ids=["Linear", "Conv1D"])
def test_dora_layer_by_hand(base_layer):
    """y = b + m * (W + sBA) x / ||W + sBA||_row, the norm a constant in backward."""
    nn.init.normal_(base_layer.bias)
    layer = LoRALayer(base_layer, rank=2, alpha=3.0, dora=True)
    w = (base_layer.weight.T if isinstance(base_layer, Conv1D) else base_layer.weight).detach().clone()  # out x in
    assert torch.allclose(layer.lora_magnitude_vector, w.double().pow(2).sum(1).sqrt().float(), rtol=1e-6)
    a, b, m = torch.randn(2, 6), torch.randn(5, 2), torch.rand(5) + 0.5
    with torch.no_grad():
        layer.lora_A.weight.copy_(a)
        layer.lora_B.weight.copy_(b)
        layer.lora_magnitude_vector.copy_(m)
    x = torch.randn(4, 6)
    a_, b_, m_ = (t.clone().requires_grad_(True) for t in (a, b, m))
    v = w + 1.5 * b_ @ a_
    expected = base_layer.bias + x @ (m_[:, None] * v / v.detach().norm(dim=1, keepdim=True)).T
    y = layer(x)
    assert torch.allclose(y, expected, atol=1e-5)
    (y * torch.arange(5.0)).sum().backward()
    (expected * torch.arange(5.0)).sum().backward()
    for mine, hand in ((layer.lora_A.weight, a_), (layer.lora_B.weight, b_), (layer.lora_magnitude_vector, m_)):
        assert torch.allclose(mine.grad, hand.grad, rtol=1e-4, atol=1e-6)
    # With the norm differentiated, the gradient of A would differ: the detach is real.
    v2 = w + 1.5 * b_ @ a_
    a_.grad = None
    (base_layer.bias + x @ (m_[:, None] * v2 / v2.norm(dim=1, keepdim=True)).T).mul(torch.arange(5.0)).sum().backward()
    assert not torch.allclose(layer.lora_A.weight.grad, a_.grad, rtol=1e-3, atol=1e-5)


def test_dora_with_dropout_in_training_matches_peft():
    case = DORA_CASES[0]
    base = _base(*case[:2])
    ours, theirs = _ours(base, case, dora=True, dropout=0.3), _peft(base, case, use_dora=True, dropout=0.3)
    _randomize(ours)
    _copy_into_peft(ours, theirs)
    ours.train(), theirs.train()
    x = _inputs()
    torch.manual_seed(5)
    out_ours = _logits(ours, x)
    torch.manual_seed(5)
    out_theirs = _logits(theirs, x)
    assert (out_ours - out_theirs).abs().max().item() <= 1e-5
    torch.manual_seed(6)
    assert (_logits(ours, x) - out_ours).abs().max().item() > 1e-4  # dropout really is on


@pytest.mark.parametrize("case", DORA_CASES, ids=_ids(DORA_CASES))
def test_dora_merge_unmerge(case):
    base = _base(*case[:2])
    ours = _ours(base, case, dora=True)
    _randomize(ours, seed=2)
    x = _inputs()
    unmerged = _logits(ours, x).detach()
    originals = {n: l.base_layer.weight.detach().clone() for n, l in wb.lora_layers(ours).items()}
    theirs = _peft(base, case, use_dora=True)
    _copy_into_peft(ours, theirs)
    peft_merged = theirs.merge_and_unload()
    wb.merge_lora(ours)
    assert (_logits(ours, x) - unmerged).abs().max().item() <= 1e-5
    for n, l in wb.lora_layers(ours).items():  # the merged weight is PEFT's merged weight
        assert _rel(l.base_layer.weight, peft_merged.get_submodule(n).weight) <= 1e-6
        assert _rel(l.base_layer.weight, originals[n]) > 1e-3
    wb.unmerge_lora(ours)
    for n, l in wb.lora_layers(ours).items():
        assert _rel(l.base_layer.weight, originals[n]) <= 1e-6
    assert (_logits(ours, x) - unmerged).abs().max().item() <= 1e-5


@pytest.mark.parametrize("case", DORA_CASES, ids=_ids(DORA_CASES))
def test_dora_adapter_round_trips_with_peft(case, tmp_path):
    base = _base(*case[:2])
    x = _inputs()
    ours = _ours(base, case, dora=True)
    _randomize(ours, seed=3)
    expected = _logits(ours, x).detach()
    wb.save_adapter(ours, tmp_path / "ours")
    cfg = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert cfg["use_dora"] is True
    assert "DoRA" in (tmp_path / "ours" / "README.md").read_text()
    loaded_by_peft = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").eval()
    assert (_logits(loaded_by_peft, x) - expected).abs().max().item() <= 1e-5
    # PEFT -> ours
    theirs = _peft(base, case, use_dora=True)
    with torch.no_grad():
        for n, p in theirs.named_parameters():
            if "lora_" in n or "modules_to_save" in n:
                p.mul_(1 + 0.3 * torch.randn_like(p)) if "magnitude" in n else p.copy_(torch.randn_like(p) * 0.2)
    theirs.eval()
    expected = _logits(theirs, x).detach()
    theirs.save_pretrained(tmp_path / "peft")
    mine = copy.deepcopy(base)
    wb.load_adapter(mine, tmp_path / "peft")
    assert mine.lora_settings.dora
    assert (_logits(mine, x) - expected).abs().max().item() <= 1e-5


def test_dora_adapter_without_magnitudes_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    case = DORA_CASES[0]
    base = _base(*case[:2])
    wb.save_adapter(_ours(base, case, dora=True), tmp_path / "a")
    state = load_file(tmp_path / "a" / "adapter_model.safetensors")
    key = next(k for k in state if k.endswith("lora_magnitude_vector"))
    state.pop(key)
    save_file(state, tmp_path / "a" / "adapter_model.safetensors")
    model = copy.deepcopy(base)
    with pytest.raises(AdapterError, match=f"lacks '{key}'.*expected shape"):
        wb.load_adapter(model, tmp_path / "a")
    assert getattr(model, "lora_settings", None) is None


def test_dora_state_dict_keys_are_peft_file_keys(tmp_path):
    from safetensors.torch import load_file

    case = DORA_CASES[2]
    base = _base(*case[:2])
    _peft(base, case, use_dora=True).save_pretrained(tmp_path / "p")
    peft_keys = set(load_file(tmp_path / "p" / "adapter_model.safetensors"))
    ours = _ours(base, case, dora=True)
    assert set(adapter_state_dict(ours)) == peft_keys
    assert {PEFT_PREFIX + k for k in ours.state_dict() if "lora_" in k} == peft_keys


# ---- PiSSA --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", PISSA_CASES, ids=_ids(PISSA_CASES))
def test_pissa_init_equals_peft(case):
    base = _base(*case[:2])
    ours, theirs = _ours(base, case, init="pissa"), _peft(base, case, init_lora_weights="pissa")
    for n, layer in wb.lora_layers(ours).items():
        pl = _peft_layer(theirs, n)
        ba = layer.lora_B.weight @ layer.lora_A.weight
        peft_ba = pl.lora_B["default"].weight @ pl.lora_A["default"].weight
        assert _rel(ba, peft_ba) <= 1e-5, n
        assert (layer.base_layer.weight - pl.base_layer.weight).abs().max().item() <= 1e-5, n
        assert _rel(layer.base_layer.weight, base.get_submodule(n).weight) > 1e-3  # the base really changed


@pytest.mark.parametrize("case", PISSA_CASES, ids=_ids(PISSA_CASES))
def test_fresh_pissa_model_computes_the_base_and_remove_restores_it(case):
    base = _base(*case[:2])
    x = _inputs()
    ours = _ours(base, case, init="pissa")
    assert (_logits(ours, x) - _logits(base, x)).abs().max().item() <= 1e-5
    _randomize(ours)
    plain = wb.remove_lora(ours)  # without merge: the ORIGINAL weights, not the residual
    for n, p in base.named_parameters():
        assert (plain.get_parameter(n) - p).norm() <= 1e-6 * p.norm(), n


@pytest.mark.parametrize("kind", ["Linear", "Conv1D"])
def test_pissa_closed_form(kind):
    """s B A is the best rank-r approximation of W (Eckart-Young): the residual's singular
    values are W's from r+1 on, and A A^T = diag(S_r) / s (rows of A orthogonal)."""
    torch.manual_seed(3)
    base_layer = nn.Linear(12, 9) if kind == "Linear" else Conv1D(9, 12)
    nn.init.normal_(base_layer.weight)
    w = (base_layer.weight.T if kind == "Conv1D" else base_layer.weight).detach().double().clone()
    sv = torch.linalg.svdvals(w)
    layer = LoRALayer(base_layer, rank=3, alpha=6.0, init="pissa")
    s = layer.scaling
    residual = layer.base_weight().detach().double()
    assert torch.allclose(torch.linalg.svdvals(residual)[:6], sv[3:], atol=1e-5)
    a, b = layer.lora_A.weight.double(), layer.lora_B.weight.double()
    assert torch.allclose(a @ a.T, torch.diag(sv[:3]) / s, atol=1e-5)
    assert torch.allclose(b.T @ b, torch.diag(sv[:3]) / s, atol=1e-5)
    assert torch.allclose(residual + s * b @ a, w, atol=1e-5)
    assert torch.allclose(layer.original_weight().double(), w.T if kind == "Conv1D" else w, atol=1e-5)


def test_pissa_with_dora_matches_peft():
    case = PISSA_CASES[0]
    base = _base(*case[:2])
    x = _inputs()
    ours = _ours(base, case, init="pissa", dora=True)
    theirs = _peft(base, case, init_lora_weights="pissa", use_dora=True).eval()
    assert (_logits(ours, x) - _logits(base, x)).abs().max().item() <= 1e-5
    for n, layer in wb.lora_layers(ours).items():
        m_peft = _peft_layer(theirs, n).lora_magnitude_vector["default"].weight
        assert torch.allclose(layer.lora_magnitude_vector, m_peft, rtol=1e-5)
        assert (layer.base_layer.weight - _peft_layer(theirs, n).base_layer.weight).abs().max() <= 1e-5
    _randomize(ours)
    _copy_into_peft(ours, theirs)
    assert (_logits(ours, x) - _logits(theirs, x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("case", PISSA_CASES[::2], ids=_ids(PISSA_CASES[::2]))
def test_pissa_adapter_round_trips_with_peft(case, tmp_path):
    """Saved like PEFT's default: init_lora_weights "pissa", trained A/B, for the ORIGINAL base."""
    base = _base(*case[:2])
    x = _inputs()
    ours = _ours(base, case, init="pissa")
    with torch.no_grad():  # "training" moved A and B away from their PiSSA start
        for layer in wb.lora_layers(ours).values():
            layer.lora_B.weight.add_(torch.randn_like(layer.lora_B.weight) * 0.1)
            layer.lora_A.weight.add_(torch.randn_like(layer.lora_A.weight) * 0.1)
    expected = _logits(ours, x).detach()
    assert (expected - _logits(base, x)).abs().max().item() > 1e-3
    wb.save_adapter(ours, tmp_path / "ours")
    cfg = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert cfg["init_lora_weights"] == "pissa"
    assert "ORIGINAL base model" in (tmp_path / "ours" / "README.md").read_text()
    by_peft = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").eval()
    assert (_logits(by_peft, x) - expected).abs().max().item() <= 1e-5
    mine = copy.deepcopy(base)
    wb.load_adapter(mine, tmp_path / "ours")
    assert (_logits(mine, x) - expected).abs().max().item() <= 1e-5
    # PEFT -> ours
    theirs = _peft(base, case, init_lora_weights="pissa")
    with torch.no_grad():
        for n, p in theirs.named_parameters():
            if "lora_" in n:
                p.add_(torch.randn_like(p) * 0.1)
    theirs.eval()
    expected = _logits(theirs, x).detach()
    theirs.save_pretrained(tmp_path / "peft")
    mine = copy.deepcopy(base)
    wb.load_adapter(mine, tmp_path / "peft")
    assert mine.lora_settings.init == "pissa"
    assert (_logits(mine, x) - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("init", ["pissa_niter_4", "olora", "loftq"])
def test_adapters_made_on_changed_base_weights_are_refused(init, tmp_path):
    case = PISSA_CASES[0]
    base = _base(*case[:2])
    wb.save_adapter(_ours(base, case), tmp_path / "a")
    cfg_path = tmp_path / "a" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["init_lora_weights"] = init
    cfg_path.write_text(json.dumps(cfg))
    model = copy.deepcopy(base)
    with pytest.raises(AdapterError, match=f"init_lora_weights='{init}'.*supported: .*'pissa'"):
        wb.load_adapter(model, tmp_path / "a")
    assert getattr(model, "lora_settings", None) is None


# ---- LoRA+ --------------------------------------------------------------------------------------------------------

# (model, task, targets, dora, ratio, weight decay)
LORAPLUS_CASES = [
    ("tiny-bert", "classification", ["query", "value"], False, 16.0, 0.0),
    ("tiny-bert", "classification", ["query", "value"], True, 8.0, 0.01),
    ("tiny-gpt2", "causal-lm", ["c_attn"], False, 4.0, 0.1),
    ("tiny-gpt2", "classification", ["c_attn", "mlp.c_proj"], True, 2.5, 0.0),
]
LORAPLUS_IDS = [f"{c[0]}-{c[1]}-{'+'.join(c[2])}{'-dora' if c[3] else ''}-x{c[4]:g}-wd{c[5]:g}" for c in LORAPLUS_CASES]


def _loraplus_pair(case):
    name, task, targets, dora, ratio, wd = case
    lcase = (name, task, targets, None, 4, 8, False)
    base = _base(name, task)
    ours, theirs = _ours(base, lcase, dora=dora), _peft(base, lcase, use_dora=dora)
    _randomize(ours, seed=4)
    _copy_into_peft(ours, theirs)
    return ours, theirs


def _group_of(optimizer, param) -> dict:
    return next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))


@pytest.mark.parametrize("case", LORAPLUS_CASES, ids=LORAPLUS_IDS)
def test_loraplus_same_groups_and_step_as_peft(case):
    _, task, _, dora, ratio, wd = case
    lr = 1e-3
    ours, theirs = _loraplus_pair(case)
    opt = make_optimizer(ours, lr, wd, loraplus_ratio=ratio)
    opt_peft = create_loraplus_optimizer(theirs, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=ratio,
                                         loraplus_weight_decay=wd)
    heads = ours.lora_settings.modules_to_save
    peft_params = dict(theirs.named_parameters())
    ours_trainable = {n: p for n, p in ours.named_parameters() if p.requires_grad}
    assert {_peft_name(n, heads) for n in ours_trainable} == {n for n, p in peft_params.items() if p.requires_grad}
    lrs = learning_rates(ours, opt)
    assert set(lrs) == set(ours_trainable)
    for n, p in ours_trainable.items():
        g_ours, g_peft = _group_of(opt, p), _group_of(opt_peft, peft_params[_peft_name(n, heads)])
        assert (g_ours["lr"], g_ours["weight_decay"]) == (g_peft["lr"], g_peft["weight_decay"]), n
        assert lrs[n] == (lr * ratio if ("lora_B" in n or p.ndim == 1) else lr), n
    # One step on the same batch gives the same weights.
    before = {n: p.detach().clone() for n, p in ours_trainable.items()}
    x = _inputs()
    labels = torch.tensor([0, 1, 1]) if task == "classification" else x["input_ids"]
    for model, optimizer in ((ours, opt), (theirs, opt_peft)):  # eval: no dropout, the same loss
        model(**x, labels=labels).loss.backward()
        optimizer.step()
    for n, p in ours_trainable.items():
        assert not torch.equal(p, before[n]), n  # the step moved it
        assert torch.allclose(p, peft_params[_peft_name(n, heads)], rtol=1e-5, atol=1e-7), n


def test_loraplus_first_step_is_ratio_times_larger_for_b():
    """Adam's first step moves each weight by lr * g / (|g| + eps) ~ lr * sign(g): B moves
    ratio times as far as A (where the gradient is well above eps)."""
    lr, ratio = 1e-3, 16.0
    case = ("tiny-bert", "classification", ["query"], None, 2, 4, False)
    model = _ours(_base(*case[:2]), case)
    _randomize(model, seed=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = make_optimizer(model, lr, loraplus_ratio=ratio)
    x = _inputs()
    model(**x, labels=torch.tensor([0, 1, 1])).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    opt.step()
    for n, p in model.named_parameters():
        if n not in before:
            continue
        big = grads[n].abs() > 1e-5  # well above Adam's eps = 1e-8
        step = (before[n] - p.detach())[big]
        expected_lr = lr * ratio if ("lora_B" in n or p.ndim == 1) else lr
        assert torch.allclose(step, expected_lr * grads[n][big].sign(), rtol=1e-2), n


def test_no_ratio_is_plain_adamw():
    case = ("tiny-bert", "classification", ["query", "value"], None, 2, 4, False)
    model = _ours(_base(*case[:2]), case)
    opt = make_optimizer(model, 5e-4, weight_decay=0.01)
    assert len(opt.param_groups) == 1
    group = opt.param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (5e-4, 0.01)
    assert {id(p) for p in group["params"]} == {id(p) for p in model.parameters() if p.requires_grad}
    groups = loraplus_groups(model, 1e-3, 0.1, 2.0)
    assert {g["name"]: (g["lr"], g["weight_decay"]) for g in groups} == {
        "A": (1e-3, 0.1), "B": (2e-3, 0.1), "B_no_decay": (2e-3, 0.0)}


# ---- bad input ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ratio", [0, -2.0, True, "16", float("nan")])
def test_bad_loraplus_ratio(ratio):
    case = ("tiny-bert", "classification", ["query"], None, 2, 4, False)
    model = _ours(_base(*case[:2]), case)
    with pytest.raises(ValueError, match=r"loraplus_ratio must be a number > 0, got"):
        make_optimizer(model, 1e-3, loraplus_ratio=ratio)


@pytest.mark.parametrize("kwargs,msg", [
    (dict(lr=0.0), r"lr must be a number > 0, got 0\.0"),
    (dict(lr=1e-3, weight_decay=-0.1), r"weight_decay must be a number >= 0, got -0\.1"),
])
def test_bad_optimizer_settings(kwargs, msg):
    case = ("tiny-bert", "classification", ["query"], None, 2, 4, False)
    model = _ours(_base(*case[:2]), case)
    with pytest.raises(ValueError, match=msg):
        make_optimizer(model, **kwargs)


def test_loraplus_needs_lora_and_trainable_parameters():
    model = _base("tiny-bert", "classification")
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
    model = _base("tiny-bert", "classification")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(exc, match=msg):
        wb.add_lora(model, **(dict(rank=2, alpha=4, targets=["query"]) | kwargs))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert getattr(model, "lora_settings", None) is None


def test_dora_on_an_unsupported_layer_is_refused():
    with pytest.raises(TypeError, match="DoRA supports Linear, Conv1D layers, not Embedding"):
        LoRALayer(nn.Embedding(10, 4), rank=2, alpha=2, dora=True)
    layer = LoRALayer(nn.Linear(4, 4), rank=2, alpha=2)
    with pytest.raises(ValueError, match="init 'pissa' changes the base weight"):
        layer.reset_lora_parameters("pissa")
    assert pissa_init.__doc__ and "2404.02948" in pissa_init.__doc__

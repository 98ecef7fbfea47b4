"""The LoRA core against PEFT and against hand computations.

Every check about what an adapted model computes runs over the one table of toy setups
in ``toy_models.TOYS`` (plain LoRA, rsLoRA, gaussian init, dropout, DoRA, PiSSA, LoRA+
rows on BERT's Linear and GPT-2's Conv1D layers, and the bundled MiniLM as a slow row),
as PEFT's own ``test_custom_models.py`` does.  Checks of bad arguments and damaged
adapter files use one tiny model: they are about the error, not the setup.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import fields

import pytest
import torch
from peft import LoraConfig, PeftModel
from torch import nn

import workbench as wb
from lora_checks import (
    assert_close,
    comparable,
    copy_into_peft,
    hand_scaling,
    inputs,
    logits,
    lora_pairs,
    peft_wrapped,
    randomize_peft,
    rel_error,
    scale_of,
    train_head,
)
from toy_models import params, randomize_lora, where, tiny_bert_classifier
from workbench.lora.adapters import AdapterError
from workbench.lora.config import LoRAConfig
from workbench.lora.layer import LoRALayer, layer_shape

# Tolerances, relative to the size of the tensors compared (see lora_checks.assert_close).
# Our layers and PEFT's do the same float32 operations, in places in another order; the
# largest differences seen on these CPUs were about 1e-6 of the scale (merged against
# unmerged MiniLM logits), PiSSA rows included.
REL = 1e-5  # logits, layer outputs and gradients
REL_WEIGHT = 1e-6  # ||W after - W before|| / ||W||: merge then unmerge, PiSSA's residual + s B0 A0


# ---- against PEFT -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("toy", params())
def test_same_outputs_and_gradients_as_peft(toy):
    base = toy.build()
    ours, theirs = toy.ours(base), toy.peft(base).eval()
    assert sorted(ours.lora_settings.wrapped) == peft_wrapped(theirs)
    randomize_lora(ours)
    copy_into_peft(ours, theirs)
    x = inputs()
    out_ours, out_theirs = logits(ours, x), logits(theirs, x)
    assert (out_ours - logits(base, x)).abs().max() > 100 * REL * scale_of(out_theirs)  # the update shows
    assert_close(out_ours, out_theirs, REL, "logits")
    out_ours.square().sum().backward()
    out_theirs.square().sum().backward()
    for name, mine, peft_p in lora_pairs(ours, theirs):
        assert mine.grad is not None and mine.grad.abs().max() > 0, name
        assert_close(mine.grad, peft_p.grad, REL, name)


@pytest.mark.parametrize("toy", params())
def test_parameter_counts_closed_form_and_peft(toy):
    base = toy.build()
    total_before = sum(p.numel() for p in base.parameters())
    ours, theirs = toy.ours(base), toy.peft(base)
    report = wb.count_parameters(ours)
    dora = toy.config.dora
    closed = 0
    for n in ours.lora_settings.wrapped:  # r (in + out) per layer, DoRA: + out magnitudes
        fan_in, fan_out = layer_shape(ours.get_submodule(n).base_layer)
        closed += toy.config.rank * (fan_in + fan_out) + (fan_out if dora else 0)
    head = sum(p.numel() for h in ours.lora_settings.modules_to_save for p in ours.get_submodule(h).parameters())
    assert report.trainable == closed + head
    assert report.total == total_before + closed
    peft_trainable, peft_total = theirs.get_nb_trainable_parameters()
    assert report.trainable == peft_trainable
    # PEFT keeps a frozen copy of each modules_to_save head (original_module) beside the trained one.
    assert report.total == peft_total - head
    assert report.table["trainable"].sum() == report.trainable
    assert set(report.table.loc[report.table.trainable > 0, "kind"]) <= {"lora", "head"}


@pytest.mark.parametrize("toy", params())
def test_merge_unmerge(toy):
    base = toy.build()
    ours = toy.ours(base)
    randomize_lora(ours, seed=2)
    x = inputs()
    unmerged = logits(ours, x).detach()
    before = {n: l.base_layer.weight.detach().clone() for n, l in wb.lora_layers(ours).items()}
    theirs = toy.peft(base)
    copy_into_peft(ours, theirs)
    peft_merged = theirs.merge_and_unload()
    wb.merge_lora(ours)
    assert all(l.merged for l in wb.lora_layers(ours).values())
    assert_close(logits(ours, x), unmerged, REL, "merged logits")
    for n, l in wb.lora_layers(ours).items():  # the merged weight is PEFT's merged weight
        assert rel_error(l.base_layer.weight, peft_merged.get_submodule(n).weight) <= REL_WEIGHT, n
        assert rel_error(l.base_layer.weight, before[n]) > 1e-3, n  # and it really moved
    with pytest.raises(RuntimeError, match="already merged"):
        wb.merge_lora(ours)
    with pytest.raises(RuntimeError, match="already merged"):
        next(iter(wb.lora_layers(ours).values())).merge()
    wb.unmerge_lora(ours)
    for n, l in wb.lora_layers(ours).items():
        assert rel_error(l.base_layer.weight, before[n]) <= REL_WEIGHT, n
    assert_close(logits(ours, x), unmerged, REL, "unmerged again")
    with pytest.raises(RuntimeError, match="not merged"):
        wb.unmerge_lora(ours)


@pytest.mark.parametrize("toy", params())
def test_adapter_round_trips_with_peft(toy, tmp_path):
    base = toy.build()
    x = inputs()
    # ours -> PEFT
    ours = toy.ours(base)
    randomize_lora(ours, seed=3)
    train_head(ours)
    expected = logits(ours, x).detach()
    wb.save_adapter(ours, tmp_path / "ours")
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == ["README.md", "adapter_config.json",
                                                                     "adapter_model.safetensors"]
    readme = (tmp_path / "ours" / "README.md").read_text()
    assert toy.config.label() in readme
    assert ("ORIGINAL base model" in readme) == (toy.config.init == "pissa")
    loaded_by_peft = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").eval()
    assert_close(logits(loaded_by_peft, x), expected, REL, "ours loaded by PEFT")
    mine = copy.deepcopy(base)
    wb.load_adapter(mine, tmp_path / "ours")
    assert_close(logits(mine, x), expected, REL, "ours loaded by ours")
    # PEFT -> ours
    theirs = toy.peft(base)
    randomize_peft(theirs, seed=4)
    theirs.eval()
    expected = logits(theirs, x).detach()
    theirs.save_pretrained(tmp_path / "peft")
    mine = copy.deepcopy(base)
    wb.load_adapter(mine, tmp_path / "peft")
    loaded = mine.lora_settings.config
    if toy.config.targets == "all-linear":  # PEFT writes the layer names it found, not "all-linear"
        assert sorted(mine.lora_settings.wrapped) == sorted(ours.lora_settings.wrapped)
        loaded = loaded.replace(targets="all-linear")
    assert comparable(loaded) == comparable(toy.config)
    assert_close(logits(mine, x), expected, REL, "PEFT's loaded by ours")
    if toy.task == "classification":
        assert mine.lora_settings.modules_to_save, "the trained head must come back"


# ---- the settings reach the adapter file ------------------------------------------------------------------------

@pytest.mark.parametrize("toy", params())
def test_every_setting_reaches_the_adapter_config(toy, tmp_path):
    """LoRAConfig -> adapter_config.json -> PEFT's LoraConfig and back: the same settings.

    LoRA+ (``loraplus_ratio``) is an optimizer setting with no field in PEFT's adapter
    config; it is the one setting a file does not carry."""
    c = toy.config
    assert LoRAConfig.from_peft(c.to_peft()) == c.replace(loraplus_ratio=None)  # our own round trip, in order
    model = toy.ours(toy.build())
    wb.save_adapter(model, tmp_path)
    written = json.loads((tmp_path / "adapter_config.json").read_text())
    assert written["peft_type"] == "LORA" and written["bias"] == "none"
    peft_cfg = LoraConfig.from_pretrained(str(tmp_path))  # PEFT's own reading of our file
    targets = peft_cfg.target_modules if isinstance(peft_cfg.target_modules, str) else sorted(peft_cfg.target_modules)
    assert (peft_cfg.r, peft_cfg.lora_alpha, peft_cfg.lora_dropout, peft_cfg.use_rslora, peft_cfg.use_dora) == (
        c.rank, c.alpha, c.dropout, c.rslora, c.dora)
    assert targets == (c.targets if isinstance(c.targets, str) else sorted(c.targets))
    assert peft_cfg.layers_to_transform == (None if c.layers is None else list(c.layers))
    assert peft_cfg.init_lora_weights == {"kaiming": True, "gaussian": "gaussian", "pissa": "pissa"}[c.init]
    assert comparable(LoRAConfig.from_peft(peft_cfg.to_dict())) == comparable(c)


# A value other than the default for every LoRAConfig field: a field added to LoRAConfig
# fails here until it has one, and then must change what is written to the adapter file.
OTHER_VALUES = dict(rank=3, alpha=5.0, targets=("key",), layers=(1,), dropout=0.2, rslora=True, init="gaussian",
                    dora=True, loraplus_ratio=4.0)
NOT_IN_ADAPTER_FILES = {"loraplus_ratio"}  # an optimizer setting: PEFT's LoraConfig has no field for it


def test_every_lora_setting_changes_the_adapter_config():
    assert set(OTHER_VALUES) == set(LoRAConfig.field_names())
    default = LoRAConfig()
    for name, value in OTHER_VALUES.items():
        assert getattr(default, name) != value, name
        changed = default.replace(**{name: value})
        if name in NOT_IN_ADAPTER_FILES:
            assert changed.to_peft() == default.to_peft(), name
            continue
        assert changed.to_peft() != default.to_peft(), f"{name} does not reach adapter_config.json"
        assert LoRAConfig.from_peft(changed.to_peft()) == changed, name
        LoraConfig(**changed.to_peft())  # and PEFT takes every field we write


# ---- what the layers compute -----------------------------------------------------------------------------------

@pytest.mark.parametrize("toy", params())
def test_fresh_adapter_changes_nothing(toy):
    """B = 0 (DoRA: m = ||W||) makes a fresh adapter the base model, exactly; PiSSA's
    residual + s B A is W up to float32 rounding."""
    base = toy.build()
    x = inputs()
    before = logits(base, x).detach()
    after = logits(toy.ours(base), x).detach()
    if toy.config.init == "pissa":
        assert_close(after, before, REL)
    else:
        assert torch.equal(after, before)


def _by_hand(layer: LoRALayer, x: torch.Tensor, config: LoRAConfig):
    """The layer's output in float64 from the papers' formulas, and the leaves (A, B, m) to
    differentiate: y = W x + b + s B A x (LoRA), y = b + m * (W + s B A) x / ||W + s B A|| (DoRA,
    the norm a constant in backward)."""
    w = layer.base_weight().detach().double()  # out x in
    bias = layer.base_layer.bias
    b = torch.zeros(w.shape[0], dtype=torch.float64) if bias is None else bias.detach().double()
    a_ = layer.lora_A.weight.detach().double().requires_grad_(True)
    b_ = layer.lora_B.weight.detach().double().requires_grad_(True)
    s = hand_scaling(config)
    x = x.double()
    if not config.dora:
        return x @ w.T + b + s * (x @ a_.T) @ b_.T, (a_, b_)
    m_ = layer.lora_magnitude_vector.detach().double().requires_grad_(True)
    v = w + s * b_ @ a_
    return b + x @ (m_[:, None] * v / v.detach().norm(dim=1, keepdim=True)).T, (a_, b_, m_)


@pytest.mark.parametrize("toy", params())
def test_each_layer_computes_the_formula_by_hand(toy):
    model = toy.ours(toy.build())
    randomize_lora(model, seed=5)
    model.eval()  # dropout off: the formula without it
    g = torch.Generator().manual_seed(6)
    for n, layer in wb.lora_layers(model).items():
        assert layer.scaling == pytest.approx(hand_scaling(toy.config), rel=1e-12)
        x = torch.randn(5, layer.in_features, generator=g)
        y = layer(x)
        expected, leaves = _by_hand(layer, x, toy.config)
        assert_close(y.double(), expected, REL, n)
        weights = torch.randn(y.shape, generator=g)
        (y * weights).sum().backward()
        (expected * weights.double()).sum().backward()
        mine = [layer.lora_A.weight, layer.lora_B.weight] + ([layer.lora_magnitude_vector] if toy.config.dora else [])
        for p, hand in zip(mine, leaves):
            assert_close(p.grad.double(), hand.grad, REL, n)


@pytest.mark.parametrize("toy", params(where(lambda c: c.init != "pissa")))  # PiSSA: test_pissa_closed_form
def test_initial_weights(toy):
    """kaiming: A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming-uniform with a = sqrt(5)), B = 0;
    gaussian: A ~ N(0, 1/r^2) (std 1/r, PEFT's), B = 0."""
    layers = wb.lora_layers(toy.ours(toy.build())).values()
    assert all(torch.equal(l.lora_B.weight, torch.zeros_like(l.lora_B.weight)) for l in layers)
    if toy.config.init == "kaiming":
        for l in layers:
            bound = 1 / math.sqrt(l.in_features)
            assert bound / 2 < l.lora_A.weight.abs().max() <= bound
    else:
        a = torch.cat([l.lora_A.weight.flatten() for l in layers])
        # the sample std of n normal draws is within 4 / sqrt(2 n) of the true one, relatively
        assert a.std().item() == pytest.approx(1 / toy.config.rank, rel=4 / math.sqrt(2 * a.numel()))
        assert abs(a.mean().item()) < 4 / toy.config.rank / math.sqrt(a.numel())


@pytest.mark.parametrize("toy", params())
def test_remove_lora_restores_the_plain_model(toy):
    base = toy.build()
    x = inputs()
    keys = list(base.state_dict())
    model = toy.ours(base)
    randomize_lora(model)
    adapted = logits(model, x).detach()
    merged = wb.remove_lora(copy.deepcopy(model), merge=True)
    assert list(merged.state_dict()) == keys
    assert_close(logits(merged, x), adapted, REL, "merged into the plain model")
    plain = wb.remove_lora(model)  # without merge: the original weights, also after PiSSA
    assert list(plain.state_dict()) == keys and plain.lora_settings is None
    restored = plain.state_dict()
    for n, p in base.state_dict().items():
        if toy.config.init == "pissa" and not torch.equal(restored[n], p):  # residual + s B0 A0: rounding
            assert rel_error(restored[n], p) <= REL_WEIGHT, n
        else:
            assert torch.equal(restored[n], p), n


@pytest.mark.parametrize("toy", params())
def test_only_lora_and_head_train(toy):
    model = toy.ours(toy.build())
    heads = tuple(h + "." for h in model.lora_settings.modules_to_save)
    parts = (".lora_A.weight", ".lora_B.weight") + ((".lora_magnitude_vector",) if toy.config.dora else ())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n, _ in model.named_parameters() if n.endswith(parts) or n.startswith(heads)}
    assert trainable == expected
    assert bool(heads) == (toy.task == "classification")


def test_train_head_false_freezes_the_head():
    model = tiny_bert_classifier()
    wb.add_lora(model, rank=2, alpha=4, targets=["query"], train_head=False)
    assert model.lora_settings.modules_to_save == []
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("classifier"))


# ---- a DoRA run says DoRA (issue 9, defect 4) --------------------------------------------------------------------

def test_a_dora_run_is_named_dora_in_its_id_and_label():
    from workbench.engine.config import RunConfig
    from workbench.records.store import new_run_id

    dora = RunConfig(method="lora", lora=LoRAConfig(dora=True))
    plain = RunConfig(method="lora", lora=LoRAConfig())
    assert dora.slug() == "dora-r8" and plain.slug() == "lora-r8"
    assert dora.label().startswith("DoRA r=8") and plain.label().startswith("LoRA r=8")
    assert "-dora-r8" in new_run_id(dora) and "-dora-" not in new_run_id(plain)
    pissa = RunConfig(method="lora", lora=LoRAConfig(dora=True, init="pissa", rslora=True))
    assert pissa.slug() == "dora-r8-rslora-pissa" and "DoRA" in pissa.label() and "PiSSA" in pissa.label()


# ---- the bundled model's adapter folder ---------------------------------------------------------------------------

@pytest.mark.slow
def test_minilm_adapter_folder_names_everything_needed(minilm, tmp_path):
    model, _ = minilm
    wb.add_lora(model, rank=8, alpha=16, targets=["query", "value"], dropout=0.1, rslora=True)
    wb.save_adapter(model, tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 16 and cfg["use_rslora"] is True and cfg["lora_dropout"] == 0.1
    assert cfg["target_modules"] == ["query", "value"] and cfg["modules_to_save"] == ["classifier"]
    assert cfg["base_model_name_or_path"] == "minilm" and cfg["task_type"] == "SEQ_CLS"
    from safetensors.torch import load_file

    keys = set(load_file(tmp_path / "a" / "adapter_model.safetensors"))
    assert "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight" in keys
    assert {"base_model.model.classifier.weight", "base_model.model.classifier.bias"} <= keys
    assert len(keys) == 6 * 2 * 2 + 2


# ---- bad input: a clear error, and the model exactly as before ----------------------------------------------------

def _state(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model: nn.Module, before: dict, grads: dict) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert getattr(model, "lora_settings", None) is None


BAD = [
    (dict(rank=0), ValueError, "rank must be a positive integer"),
    (dict(rank=2.5), ValueError, "rank must be a positive integer"),
    (dict(rank=True), ValueError, "rank must be a positive integer"),
    (dict(rank=33), ValueError, r"rank 33 exceeds min\(in, out\) = 32"),
    (dict(alpha=0), ValueError, "alpha must be a positive number"),
    (dict(alpha=-2.0), ValueError, "alpha must be a positive number"),
    (dict(dropout=1.0), ValueError, r"dropout must be in \[0, 1\)"),
    (dict(dropout=-0.1), ValueError, r"dropout must be in \[0, 1\)"),
    (dict(targets=["qurey"]), ValueError, r"(?s)'qurey' matches no module.*attention\.self\.query.*target 'query'"),
    (dict(targets=[]), ValueError, "LoRA needs at least one target layer"),
    (dict(targets=r"nothing\.here"), ValueError, "matched no module"),
    (dict(targets="(unclosed"), ValueError, "does not compile"),
    (dict(targets=["LayerNorm"]), TypeError, "a LayerNorm; LoRA supports Linear, Conv1D"),
    (dict(targets=["embeddings"]), TypeError, "a BertEmbeddings"),
    (dict(layers=[7]), ValueError, r"layers \[7\] do not exist.*blocks present: \[0, 1\]"),
    (dict(init="zeros"), ValueError, "init must be"),
    (dict(ranks=4), TypeError, "unknown LoRA setting"),
]


@pytest.mark.parametrize("kwargs,exc,msg", BAD, ids=[str(b[0]) for b in BAD])
def test_bad_input_raises_and_changes_nothing(kwargs, exc, msg):
    model = tiny_bert_classifier()
    before, grads = _state(model), {n: p.requires_grad for n, p in model.named_parameters()}
    args = dict(rank=2, alpha=4, targets=["query", "value"]) | kwargs
    with pytest.raises(exc, match=msg):
        wb.add_lora(model, **args)
    _assert_unchanged(model, before, grads)


def test_lora_twice_is_refused():
    model = tiny_bert_classifier()
    wb.add_lora(model, rank=2, alpha=4, targets=["query"])
    before = _state(model)
    with pytest.raises(ValueError, match="cannot be added twice"):
        wb.add_lora(model, rank=2, alpha=4, targets=["query"])
    model.lora_settings, settings = None, model.lora_settings  # even when the record is gone
    with pytest.raises(ValueError, match="already has a LoRA layer"):
        wb.add_lora(model, rank=2, alpha=4, targets=["query"])
    model.lora_settings = settings
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_the_layer_takes_a_config_or_settings_not_both():
    cfg = LoRAConfig(rank=2, alpha=4)
    assert LoRALayer(nn.Linear(4, 4), cfg).config is cfg
    assert LoRALayer(nn.Linear(4, 4), rank=2, alpha=4).config == cfg
    with pytest.raises(TypeError, match="not both"):
        LoRALayer(nn.Linear(4, 4), cfg, rank=3)
    with pytest.raises(TypeError, match="LoRA supports Linear, Conv1D layers, not Embedding"):
        LoRALayer(nn.Embedding(10, 4), cfg)
    plain = {f.name for f in fields(LoRAConfig)} & set(vars(LoRALayer(nn.Linear(4, 4), cfg)))
    assert plain == {"rank"}, "the layer reads its settings from self.config, not from copies"


# ---- adapter files that do not fit ------------------------------------------------------------------------------

@pytest.fixture
def saved_adapter(tmp_path):
    model = tiny_bert_classifier()
    wb.add_lora(model, rank=2, alpha=4, targets=["query", "value"])
    return wb.save_adapter(model, tmp_path / "adapter")


def _rewrite(folder, edit_state=None, edit_config=None):
    from safetensors.torch import load_file, save_file

    if edit_state:
        state = load_file(folder / "adapter_model.safetensors")
        edit_state(state)
        save_file(state, folder / "adapter_model.safetensors")
    if edit_config:
        cfg = json.loads((folder / "adapter_config.json").read_text())
        edit_config(cfg)
        (folder / "adapter_config.json").write_text(json.dumps(cfg))


K = "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"
BAD_FILES = [
    ("missing key", lambda s: s.pop(K), None, "lacks '" + K.replace(".", r"\.")),
    ("wrong shape", lambda s: s.__setitem__(K, torch.zeros(3, 32)), None, r"shape mismatch .* file has \[3, 32\], this model needs \[2, 32\]"),
    ("extra key", lambda s: s.__setitem__("base_model.model.bert.pooler.dense.lora_A.weight", torch.zeros(2, 32)), None, "has no place for"),
    ("wrong target", None, lambda c: c.__setitem__("target_modules", ["nope"]), "'nope' matches no module"),
    ("wrong rank", None, lambda c: c.__setitem__("r", 4), "shape mismatch"),
    ("other peft type", None, lambda c: c.__setitem__("peft_type", "IA3"), "only LoRA adapters"),
    ("head not in model", lambda s: s.__setitem__("base_model.model.pooler_head.weight", torch.zeros(2, 32)),
     lambda c: c.__setitem__("modules_to_save", ["classifier", "pooler_head"]), "'base_model.model.pooler_head.weight'"),
    ("head shape", lambda s: s.__setitem__("base_model.model.classifier.weight", torch.zeros(3, 32)), None,
     r"classifier\.weight.*file has \[3, 32\], this model needs \[2, 32\]"),
]


@pytest.mark.parametrize("what,edit_state,edit_config,msg", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_adapter_that_does_not_fit_changes_nothing(saved_adapter, what, edit_state, edit_config, msg):
    _rewrite(saved_adapter, edit_state, edit_config)
    model = tiny_bert_classifier()
    before, grads = _state(model), {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(AdapterError, match=msg):
        wb.load_adapter(model, saved_adapter)
    _assert_unchanged(model, before, grads)


@pytest.mark.parametrize("damage", ["weights", "config", "no-config"])
def test_corrupt_adapter_files(saved_adapter, damage):
    if damage == "weights":
        data = (saved_adapter / "adapter_model.safetensors").read_bytes()
        (saved_adapter / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
        msg = "corrupt or unreadable"
    elif damage == "config":
        (saved_adapter / "adapter_config.json").write_text("{not json")
        msg = "adapter_config.json is corrupt"
    else:
        (saved_adapter / "adapter_config.json").unlink()
        msg = "adapter_config.json is missing"
    model = tiny_bert_classifier()
    before, grads = _state(model), {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(AdapterError, match=msg):
        wb.load_adapter(model, saved_adapter)
    _assert_unchanged(model, before, grads)


def test_save_is_atomic_and_leaves_no_temp_files(saved_adapter):
    assert not [p for p in saved_adapter.iterdir() if p.name.startswith(".")]

"""The LoRA core against PEFT and against hand computations.

One table of toy setups (tiny models built from configs, plus the real bundled MiniLM)
runs through every check, as PEFT's own test_custom_models.py does.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

import workbench as wb
from workbench.lora.adapters import AdapterError
from workbench.lora.layer import LoRALayer, layer_shape

# (model name, task, targets, layers, rank, alpha, rslora)
CASES = [
    ("minilm", "classification", ["query", "value"], None, 8, 16, False),
    ("tiny-bert", "classification", "all-linear", None, 4, 8, False),
    ("tiny-bert", "classification", ["query", "value"], [1], 2, 4, True),
    ("tiny-bert", "classification", r".*\.\d+\.output\.dense", None, 3, 6, False),
    ("tiny-gpt2", "causal-lm", ["c_attn"], None, 8, 16, False),
    ("tiny-gpt2", "classification", ["c_attn", "mlp.c_proj"], None, 4, 4, True),
]
IDS = [f"{c[0]}-{c[1]}-{c[2] if isinstance(c[2], str) else '+'.join(c[2])}-{c[3]}-r{c[4]}" for c in CASES]
TASK_TYPE = {"classification": "SEQ_CLS", "causal-lm": "CAUSAL_LM"}


def _base(name: str, task: str, minilm_state) -> nn.Module:
    if name == "minilm":
        return copy.deepcopy(minilm_state[0]).eval()
    return wb.load_base(name, task=task)[0].eval()


def _inputs(model: nn.Module, batch: int = 3, seq: int = 7) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 2000, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _peft_config(task, targets, layers, rank, alpha, rslora) -> LoraConfig:
    return LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=targets, layers_to_transform=layers, use_rslora=rslora,
        task_type=TASK_TYPE[task], lora_dropout=0.0,
    )


def _randomize_lora(model: nn.Module, seed: int = 0) -> None:
    """Give B (and A) non-zero values so the update is visible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in wb.lora_layers(model).values():
            layer.lora_A.weight.copy_(torch.randn(layer.lora_A.weight.shape, generator=g) * 0.1)
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.1)


def _copy_into_peft(ours: nn.Module, peft_model: nn.Module) -> None:
    with torch.no_grad():
        for name, layer in wb.lora_layers(ours).items():
            peft_layer = peft_model.base_model.model.get_submodule(name)
            peft_layer.lora_A["default"].weight.copy_(layer.lora_A.weight)
            peft_layer.lora_B["default"].weight.copy_(layer.lora_B.weight)


def _logits(model: nn.Module, inputs: dict) -> torch.Tensor:
    return model(**inputs).logits


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_same_outputs_and_gradients_as_peft(case, minilm_state):
    name, task, targets, layers, rank, alpha, rslora = case
    base = _base(name, task, minilm_state)
    peft_model = get_peft_model(copy.deepcopy(base), _peft_config(task, targets, layers, rank, alpha, rslora)).eval()
    wrapped = wb.add_lora(base, rank=rank, alpha=alpha, targets=targets, layers=layers, rslora=rslora)
    peft_wrapped = sorted(n[len("base_model.model."):-len(".lora_A")] for n, _ in peft_model.named_modules() if n.endswith(".lora_A"))
    assert sorted(wrapped) == peft_wrapped
    _randomize_lora(base)
    _copy_into_peft(base, peft_model)
    x = _inputs(base)
    ours, theirs = _logits(base, x), _logits(peft_model, x)
    assert (ours - theirs).abs().max().item() <= 1e-6
    ours.square().sum().backward()
    theirs.square().sum().backward()
    for n, layer in wb.lora_layers(base).items():
        peft_layer = peft_model.base_model.model.get_submodule(n)
        for part in ("lora_A", "lora_B"):
            g_ours = getattr(layer, part).weight.grad
            g_theirs = getattr(peft_layer, part)["default"].weight.grad
            assert torch.allclose(g_ours, g_theirs, rtol=1e-5, atol=1e-7), (n, part)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_parameter_counts_closed_form_and_peft(case, minilm_state):
    name, task, targets, layers, rank, alpha, rslora = case
    base = _base(name, task, minilm_state)
    total_before = sum(p.numel() for p in base.parameters())
    peft_model = get_peft_model(copy.deepcopy(base), _peft_config(task, targets, layers, rank, alpha, rslora))
    wrapped = wb.add_lora(base, rank=rank, alpha=alpha, targets=targets, layers=layers, rslora=rslora)
    report = wb.count_parameters(base)
    closed = sum(rank * sum(layer_shape(base.get_submodule(n).base_layer)) for n in wrapped)
    head = sum(p.numel() for h in base.lora_settings.modules_to_save for p in base.get_submodule(h).parameters())
    assert report.trainable == closed + head
    assert report.total == total_before + closed
    peft_trainable, peft_total = peft_model.get_nb_trainable_parameters()
    assert report.trainable == peft_trainable
    # PEFT keeps a frozen copy of each modules_to_save head (original_module) beside the trained one.
    assert report.total == peft_total - head
    assert report.table["trainable"].sum() == report.trainable
    assert set(report.table.loc[report.table.trainable > 0, "kind"]) <= {"lora", "head"}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fresh_adapter_changes_nothing(case, minilm_state):
    name, task, targets, layers, rank, alpha, rslora = case
    base = _base(name, task, minilm_state)
    x = _inputs(base)
    before = _logits(base, x).detach()
    wb.add_lora(base, rank=rank, alpha=alpha, targets=targets, layers=layers, rslora=rslora)
    assert (_logits(base, x) - before).abs().max().item() == 0.0


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_merge_unmerge(case, minilm_state):
    name, task, targets, layers, rank, alpha, rslora = case
    base = _base(name, task, minilm_state)
    wb.add_lora(base, rank=rank, alpha=alpha, targets=targets, layers=layers, rslora=rslora)
    _randomize_lora(base)
    x = _inputs(base)
    unmerged = _logits(base, x).detach()
    originals = {n: l.base_layer.weight.detach().clone() for n, l in wb.lora_layers(base).items()}
    wb.merge_lora(base)
    assert all(l.merged for l in wb.lora_layers(base).values())
    merged = _logits(base, x).detach()
    assert (merged - unmerged).abs().max().item() <= 1e-5
    with pytest.raises(RuntimeError, match="already merged"):
        wb.merge_lora(base)
    with pytest.raises(RuntimeError, match="already merged"):
        next(iter(wb.lora_layers(base).values())).merge()
    wb.unmerge_lora(base)
    for n, l in wb.lora_layers(base).items():
        rel = (l.base_layer.weight - originals[n]).norm() / originals[n].norm()
        assert rel.item() <= 1e-6
    with pytest.raises(RuntimeError, match="not merged"):
        wb.unmerge_lora(base)


def test_merge_adds_scaled_product_by_hand():
    """W' = W + (alpha/r) B A for Linear, and its transpose for Conv1D."""
    from transformers.pytorch_utils import Conv1D

    for base_layer, rslora in ((nn.Linear(5, 3), False), (Conv1D(3, 5), True)):
        w0 = base_layer.weight.detach().clone()
        layer = LoRALayer(base_layer, rank=2, alpha=3.0, rslora=rslora)
        A, B = torch.randn(2, 5), torch.randn(3, 2)
        with torch.no_grad():
            layer.lora_A.weight.copy_(A)
            layer.lora_B.weight.copy_(B)
        s = 3.0 / math.sqrt(2) if rslora else 3.0 / 2
        assert layer.scaling == pytest.approx(s)
        x = torch.randn(4, 5)
        expected = base_layer(x) + s * x @ A.T @ B.T
        assert torch.allclose(layer(x), expected, atol=1e-6)
        layer.merge()
        delta = s * B @ A
        assert torch.allclose(base_layer.weight, w0 + (delta.T if isinstance(base_layer, Conv1D) else delta), atol=1e-6)


def test_init_options():
    layer = LoRALayer(nn.Linear(64, 32), rank=4, alpha=8)
    bound = 1 / math.sqrt(64)  # kaiming_uniform with a=sqrt(5) on fan_in 64
    assert layer.lora_A.weight.abs().max() <= bound and layer.lora_A.weight.abs().max() > bound / 2
    assert layer.lora_B.weight.abs().max() == 0
    g = LoRALayer(nn.Linear(400, 400), rank=4, alpha=8, init="gaussian")
    assert g.lora_A.weight.std().item() == pytest.approx(1 / 4, rel=0.05)
    with pytest.raises(ValueError, match="init"):
        LoRALayer(nn.Linear(4, 4), rank=2, alpha=2, init="zeros")


@pytest.mark.parametrize("case", [c for c in CASES if c[0] != "minilm"], ids=[i for c, i in zip(CASES, IDS) if c[0] != "minilm"])
def test_adapter_round_trips_with_peft(case, tmp_path):
    name, task, targets, layers, rank, alpha, rslora = case
    base = wb.load_base(name, task=task)[0].eval()
    x = _inputs(base)
    # ours -> PEFT
    ours = copy.deepcopy(base)
    wb.add_lora(ours, rank=rank, alpha=alpha, targets=targets, layers=layers, rslora=rslora)
    _randomize_lora(ours, seed=3)
    for h in ours.lora_settings.modules_to_save:  # a "trained" head
        with torch.no_grad():
            for p in ours.get_submodule(h).parameters():
                p.add_(0.5)
    expected = _logits(ours, x).detach()
    wb.save_adapter(ours, tmp_path / "ours")
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    loaded_by_peft = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").eval()
    assert (_logits(loaded_by_peft, x) - expected).abs().max().item() <= 1e-6
    # PEFT -> ours
    peft_model = get_peft_model(copy.deepcopy(base), _peft_config(task, targets, layers, rank, alpha, rslora))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n or "modules_to_save" in n:
                p.copy_(torch.randn_like(p) * 0.1)
    peft_model.eval()
    expected = _logits(peft_model, x).detach()
    peft_model.save_pretrained(tmp_path / "peft")
    ours2 = copy.deepcopy(base)
    wb.load_adapter(ours2, tmp_path / "peft")
    assert (_logits(ours2, x) - expected).abs().max().item() <= 1e-6
    if task == "classification":
        assert ours2.lora_settings.modules_to_save, "the trained head must come back"


def test_minilm_adapter_folder_names_everything_needed(minilm, tmp_path):
    import json

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
    (dict(targets=[]), ValueError, "no target layers given"),
    (dict(targets=r"nothing\.here"), ValueError, "matched no module"),
    (dict(targets="(unclosed"), ValueError, "does not compile"),
    (dict(targets=["LayerNorm"]), TypeError, "a LayerNorm; LoRA supports Linear, Conv1D"),
    (dict(targets=["embeddings"]), TypeError, "a BertEmbeddings"),
    (dict(layers=[7]), ValueError, r"layers \[7\] do not exist.*blocks present: \[0, 1\]"),
    (dict(init="zeros"), ValueError, "init must be"),
]


@pytest.mark.parametrize("kwargs,exc,msg", BAD, ids=[str(b[0]) for b in BAD])
def test_bad_input_raises_and_changes_nothing(kwargs, exc, msg):
    model = wb.load_base("tiny-bert")[0]
    before, grads = _state(model), {n: p.requires_grad for n, p in model.named_parameters()}
    args = dict(rank=2, alpha=4, targets=["query", "value"]) | kwargs
    with pytest.raises(exc, match=msg):
        wb.add_lora(model, **args)
    _assert_unchanged(model, before, grads)


def test_lora_twice_is_refused():
    model = wb.load_base("tiny-bert")[0]
    wb.add_lora(model, rank=2, alpha=4, targets=["query"])
    before = _state(model)
    with pytest.raises(ValueError, match="cannot be added twice"):
        wb.add_lora(model, rank=2, alpha=4, targets=["query"])
    model.lora_settings, settings = None, model.lora_settings  # even when the record is gone
    with pytest.raises(ValueError, match="already has a LoRA layer"):
        wb.add_lora(model, rank=2, alpha=4, targets=["query"])
    model.lora_settings = settings
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_remove_lora_restores_plain_model():
    model = wb.load_base("tiny-bert")[0].eval()
    x = _inputs(model)
    before = _logits(model, x).detach()
    keys = list(model.state_dict())
    wb.add_lora(model, rank=2, alpha=4, targets="all-linear")
    _randomize_lora(model)
    adapted = _logits(model, x).detach()
    wb.remove_lora(copy.deepcopy(model))  # does not touch the original
    merged = wb.remove_lora(copy.deepcopy(model), merge=True)
    assert list(merged.state_dict()) == keys
    assert (_logits(merged, x) - adapted).abs().max() <= 1e-5
    plain = wb.remove_lora(model)
    assert (_logits(plain, x) - before).abs().max() <= 1e-6


def test_only_lora_and_head_train():
    model = wb.load_base("tiny-bert")[0]
    wb.add_lora(model, rank=2, alpha=4, targets=["query", "value"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if ".lora_" in n or n.startswith("classifier.")}
    assert "classifier.weight" in trainable and any("lora_B" in n for n in trainable)
    model2 = wb.load_base("tiny-bert")[0]
    wb.add_lora(model2, rank=2, alpha=4, targets=["query"], train_head=False)
    assert not any(p.requires_grad for n, p in model2.named_parameters() if n.startswith("classifier"))


# ---- adapter files that do not fit ------------------------------------------------------------------------------

@pytest.fixture
def saved_adapter(tmp_path):
    model = wb.load_base("tiny-bert")[0]
    wb.add_lora(model, rank=2, alpha=4, targets=["query", "value"])
    return wb.save_adapter(model, tmp_path / "adapter")


def _rewrite(folder, edit_state=None, edit_config=None):
    import json

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
    model = wb.load_base("tiny-bert")[0]
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
    model = wb.load_base("tiny-bert")[0]
    before, grads = _state(model), {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(AdapterError, match=msg):
        wb.load_adapter(model, saved_adapter)
    _assert_unchanged(model, before, grads)


def test_save_is_atomic_and_leaves_no_temp_files(saved_adapter):
    assert not [p for p in saved_adapter.iterdir() if p.name.startswith(".")]

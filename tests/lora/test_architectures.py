"""The one table of architectures, the paths leaf, and the plain layer beside the serving one.

``workbench.lora.architectures`` is the single home of what each family calls the parts of
a block; these checks pin the facts that used to be written out in four other places
(``lora.roles``, ``lora.targets.KINDS``, the planner's encoder types and role names, the
memory estimate's block patterns), so a change to the table shows here first.
"""

from __future__ import annotations

import inspect
import re

import pytest
import torch
from torch import nn

import workbench as wb
from toy_models import ARCHS, BERT, TOK, PROMPTS, randomize_lora
from workbench.lora.architectures import (ARCHITECTURES, ENCODER_TYPES, KINDS, ROLES, architecture_named,
                                          layer_names)
from workbench.lora.layer import LoRALayer
from workbench.lora.paths import (block_linear_names, block_path, block_pattern, head_names, layer_index,
                                  replace_module)
from workbench.lora.roles import architecture_of
from workbench.lora.serving import ServingLayer, adapter_set, set_adapter

# What the table replaced, written out as it was (lora/targets.KINDS, the planner, the memory estimate).
OLD_KINDS = {
    "attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
    "attention.output.dense": "attention output", "intermediate.dense": "FFN in", "output.dense": "FFN out",
    "attn.c_attn": "query/key/value (fused)", "attn.c_proj": "attention output",
    "mlp.c_fc": "FFN in", "mlp.c_proj": "FFN out",
    "q_proj": "query", "k_proj": "key", "v_proj": "value", "o_proj": "attention output",
    "out_proj": "attention output", "gate_proj": "FFN in", "up_proj": "FFN in", "down_proj": "FFN out",
    "fc1": "FFN in", "fc2": "FFN out", "pooler.dense": "pooler",
}
OLD_ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra",
                     "deberta", "deberta-v2", "mpnet", "camembert", "modernbert")
OLD_TAPE_PATTERNS = {
    "BERT": r"^(.*?)encoder\.layer\.(\d+)\.attention\.self\.query$",
    "GPT-2": r"^(.*?)h\.(\d+)\.attn\.c_attn$",
    "Llama": r"^(.*?)layers\.(\d+)\.self_attn\.q_proj$",
}


def _kind(key: str, kinds: dict[str, str]) -> str | None:
    return next((v for k, v in kinds.items() if key == k or key.endswith("." + k)), None)


def test_every_row_names_every_role_and_the_fused_layer_is_one():
    for arch in ARCHITECTURES:
        assert set(arch.paths) == set(ROLES) and all(arch.paths[r] for r in ROLES), arch.name
        assert architecture_named(arch.name) is arch
    assert architecture_named("GPT-2").fused("key") == ("query", "key", "value")
    assert architecture_named("Llama").fused("key") == ("key",)
    with pytest.raises(KeyError, match="known: BERT, Llama, GPT-2"):
        architecture_named("T5")


def test_the_derived_facts_equal_the_copies_they_replaced():
    assert {a.name: a.tape_pattern for a in ARCHITECTURES} == OLD_TAPE_PATTERNS
    assert set(OLD_ENCODER_TYPES) <= set(ENCODER_TYPES)
    assert set(ENCODER_TYPES) - set(OLD_ENCODER_TYPES) == {"ernie"}  # an encoder the roles table knew already
    assert {r: layer_names(r) for r in ("query", "key", "value")} == {
        "query": ("query", "q_proj", "c_attn"), "key": ("key", "k_proj", "c_attn"),
        "value": ("value", "v_proj", "c_attn")}
    with pytest.raises(ValueError, match="not a role"):
        layer_names("q")
    # KINDS answers every path as the old table did (the first match in order decides).
    paths = {f"x.0.{k}" for k in OLD_KINDS} | {f"m.layers.0.{p}" for a in ARCHITECTURES for ps in a.paths.values()
                                                   for p in ps} | {"bert.pooler.dense", "x.3.attention.output.dense"}
    assert {p: _kind(p, KINDS) for p in paths} == {p: _kind(p, OLD_KINDS) for p in paths}


@pytest.mark.parametrize("arch", ARCHS + [BERT], ids=lambda a: a.id)
def test_the_toy_models_are_recognised_with_their_block_pattern(arch):
    model = arch.build()
    found = architecture_of(model)
    assert found is not None
    names = [n for n, _ in model.named_modules()]
    assert any(re.match(found.tape_pattern, n) for n in names)
    for other in ARCHITECTURES:
        if other is not found:
            assert not any(re.match(other.tape_pattern, n) for n in names)


def test_paths_read_block_numbers_and_replace_a_module():
    assert layer_index("bert.encoder.layer.4.attention.self.query") == 4 and layer_index("bert.pooler.dense") is None
    assert block_path("bert.encoder.layer.3.output.dense") == "output.dense" and block_path("lm_head") is None
    assert block_pattern("transformer.h.11.mlp.c_fc") == "transformer.h.N.mlp.c_fc"
    model = BERT.build()
    assert head_names(model) == ["classifier"]
    linears = block_linear_names(model)
    assert linears and all(layer_index(n) is not None for n in linears)
    assert not any(n.endswith(("classifier", "pooler.dense")) for n in linears)
    new = nn.Linear(32, 32)
    old = replace_module(model, "bert.encoder.layer.0.attention.self.query", new)
    assert isinstance(old, nn.Linear) and old is not new
    assert model.get_submodule("bert.encoder.layer.0.attention.self.query") is new
    head = nn.Linear(32, 2)
    assert replace_module(model, "classifier", head) is not head and model.classifier is head  # a top-level name


def test_the_layers_forward_is_plain_lora_and_names_no_adapter():
    source = inspect.getsource(LoRALayer.forward)
    assert "lora_B(self.lora_A(" in source and "self.scaling" in source
    for word in ("adapter", "row", "named"):
        assert word not in source.split('"""')[-1], word  # the code after the docstring
    assert len(source.splitlines()) <= 12


def test_a_second_adapter_swaps_in_serving_layers_that_share_the_first_ones_weights(tmp_path):
    arch = ARCHS[1]  # llama
    model = arch.build()
    wb.add_lora(model, rank=2, alpha=4, targets=("query", "value"))
    randomize_lora(model, scale=0.3, magnitudes=False)
    layers = wb.lora_layers(model)
    assert all(type(m) is LoRALayer for m in layers.values())  # one adapter: the plain layer
    a_weights = {n: m.lora_A.weight for n, m in layers.items()}
    other = arch.build()
    wb.add_lora(other, rank=2, alpha=4, targets=("FFN out",))
    randomize_lora(other, seed=1, scale=0.3, magnitudes=False)
    wb.save_adapter(other, tmp_path / "other")
    batch = TOK(PROMPTS[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        before = model(**batch).logits
    wb.load_adapter(model, tmp_path / "other", name="other")
    served = wb.lora_layers(model)
    assert all(isinstance(m, ServingLayer) for m in served.values())
    assert all(served[n].lora_A.weight is w for n, w in a_weights.items())  # shared, not copied
    assert adapter_set(model) is model.lora_settings.adapters and adapter_set(model).names == ["default", "other"]
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, before)  # the first adapter is still the active one
    set_adapter(model, None)
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, arch.build()(**batch).logits, atol=1e-5)
    wb.remove_lora(model)
    assert not wb.lora_layers(model) and getattr(model, "lora_settings", None) is None

"""The generative core on tiny GPT-2, Llama and Qwen2 language models built from configs.

One table of architectures (``ARCHS``: id, a builder, and, written out by hand from each
family's modelling code, the module paths of every role and the (in, out) of each), and
every check runs over every row, as PEFT's custom-model tests do:

* roles: each role selects the expected modules; LoRA on it trains r * (in + out)
  numbers per adapted layer; GPT-2's fused q/k/v is all-or-nothing; unknown roles are
  refused with the roles listed;
* generation: greedy equals a plain, cache-free argmax loop; batched (left padded,
  different lengths) equals one by one; seeded sampling is reproducible and independent
  of the global RNG; generation stops at EOS per sequence; base, adapted and merged;
* export: the merged folder loads in a Python that never imports the workbench and gives
  the adapted model's logits; no LoRA keys in it; the adapted model keeps its adapter.

The models and the tokenizer (word-level, 64 words, BOS first) come from tests/toy_models.py: no download.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
import transformers
from torch import nn
from transformers import PreTrainedTokenizerFast

import workbench as wb
from workbench.engine.generation import exact_match, generate, normalize_answer, position_limit
from workbench.lora.export import export_merged
from workbench.lora.architectures import ROLES
from workbench.lora.roles import model_roles, peft_target_modules
from workbench.lora.targets import find_targets, layer_groups

transformers.logging.set_verbosity_error()

from toy_models import ALL, ARCHS, BERT, BLOCKS, EOS, POSITIONS, PROMPTS, TOK, Arch  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
LMS = [pytest.param(a, id=a.id) for a in ARCHS]
EVERY = [pytest.param(a, id=a.id) for a in ALL]


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def randomize_lora(model: nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    """B != 0, so the update changes what the model computes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in wb.lora_layers(model).values():
            for w in (layer.lora_A.weight, layer.lora_B.weight):
                w.copy_(torch.randn(w.shape, generator=g) * scale)


def adapted(arch: Arch, targets=None, **settings) -> nn.Module:
    """The model with LoRA (r = 4) on q, v, FFN out (GPT-2: q, k, v, FFN out) and random A, B."""
    model = arch.build()
    if targets is None:
        targets = ("query", "key", "value", "FFN out") if arch.id == "gpt2" else ("query", "value", "FFN out")
    wb.add_lora(model, rank=4, alpha=8, targets=targets, **settings)
    randomize_lora(model)
    return model.eval()


# ------------------------------------------------------------------------------------------------------ roles


@pytest.mark.parametrize("arch", EVERY)
def test_each_role_maps_to_the_architectures_modules(arch):
    model = arch.build()
    roles = {r.role: r for r in model_roles(model)}
    assert tuple(roles) == ROLES
    for role in ROLES:
        assert list(roles[role].names) == arch.names(role), role
        assert roles[role].shapes == tuple(arch.roles[role].values()), role
        assert find_targets(model, roles[role].fused or [role]) == arch.names(role)
    fused = {r: roles[r].fused for r in ROLES}
    expected = ("query", "key", "value") if arch.id == "gpt2" else ()
    assert fused == {r: expected if r in ("query", "key", "value") else () for r in ROLES}
    # layer_groups names each block layer by its role (GPT-2's fused layer by all three)
    kinds = {g.pattern.replace("N", "{i}"): g for g in layer_groups(model)}
    for role in ROLES:
        for path in arch.roles[role]:
            group = kinds[f"{arch.prefix}.{path}"]
            assert role in group.roles and (group.kind == role or len(group.roles) == 3)


@pytest.mark.parametrize("arch", EVERY)
@pytest.mark.parametrize("roles", [(r,) for r in ROLES if r not in ("query", "key", "value")]
                         + [("query", "key", "value"), ROLES])
def test_lora_on_roles_trains_r_times_in_plus_out_per_layer(arch, roles):
    rank = 3
    model = arch.build()
    wrapped = wb.add_lora(model, rank=rank, alpha=6, targets=roles, train_head=False)
    paths = {p: shape for r in roles for p, shape in arch.roles[r].items()}  # a fused layer counts once
    assert sorted(wrapped) == sorted(f"{arch.prefix.format(i=i)}.{p}" for i in range(BLOCKS) for p in paths)
    assert trainable(model) == BLOCKS * sum(rank * (fan_in + fan_out) for fan_in, fan_out in paths.values())


def test_module_names_still_work_beside_roles():
    llama, gpt2, bert = ARCHS[1].build(), ARCHS[0].build(), BERT.build()
    assert find_targets(llama, ["q_proj", "FFN out"]) == [
        n for i in range(BLOCKS) for n in (f"model.layers.{i}.self_attn.q_proj", f"model.layers.{i}.mlp.down_proj")]
    assert find_targets(gpt2, ["c_attn"]) == ARCHS[0].names("query")
    # BERT's query and value are roles and module names at once: the same layers, as before
    assert find_targets(bert, ("query", "value")) == [
        f"bert.encoder.layer.{i}.attention.self.{p}" for i in range(BLOCKS) for p in ("query", "value")]
    # FFN out is the block's output.dense only: not attention.output.dense, not pooler.dense
    assert find_targets(bert, ["FFN out"]) == [f"bert.encoder.layer.{i}.output.dense" for i in range(BLOCKS)]
    assert find_targets(llama, ["FFN in"], layers=[1]) == ["model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"]


@pytest.mark.parametrize("subset", [s for k in (1, 2) for s in itertools.combinations(("query", "key", "value"), k)])
def test_gpt2_refuses_part_of_its_fused_query_key_value(subset):
    model = ARCHS[0].build()
    with pytest.raises(ValueError, match=r"GPT-2 computes query, key and value with one fused layer \(attn\.c_attn, "
                                         r"32 -> 96\).*choose all of query, key and value.*'c_attn'") as e:
        wb.add_lora(model, rank=2, targets=subset + ("FFN out",))
    missing = [r for r in ("query", "key", "value") if r not in subset]
    assert f"without {' and '.join(missing)}" in str(e.value)
    assert not wb.lora_layers(model) and trainable(model) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", EVERY)
@pytest.mark.parametrize("target, hint", [("ffn_in", "did you mean 'FFN in'?"), ("attn_out", ""),
                                          ("querry", "did you mean 'query'?")])
def test_an_unknown_role_is_refused_with_the_roles_listed(arch, target, hint):
    model = arch.build()
    with pytest.raises(ValueError) as e:
        wb.add_lora(model, rank=2, targets=["FFN out", target])
    text = str(e.value)
    assert text.startswith(f"target {target!r} matches no module of {type(model).__name__}") and hint in text
    assert "roles of this" in text and all(repr(r) in text for r in ROLES)
    assert not wb.lora_layers(model)


def test_a_model_of_unknown_family_reads_roles_as_module_names():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.query, self.gate = nn.Linear(4, 4), nn.Linear(4, 4)

    model = nn.Sequential(Block(), Block())
    assert model_roles(model) == []
    assert find_targets(model, ["query"]) == ["0.query", "1.query"]
    with pytest.raises(ValueError, match="no known roles"):
        find_targets(model, ["FFN in"])


@pytest.mark.filterwarnings("ignore::FutureWarning")  # PEFT calls a transformers name due to go in v6
@pytest.mark.parametrize("arch", EVERY)
def test_peft_wraps_the_same_layers_from_the_adapter_target_modules(arch):
    from peft import LoraConfig, get_peft_model

    for targets in (("query", "value"), ("FFN in", "attention output")):
        if arch.id == "gpt2" and targets == ("query", "value"):
            targets = ("query", "key", "value")
        ours = arch.build()
        wrapped = wb.add_lora(ours, rank=2, targets=targets, layers=[1])
        modules = peft_target_modules(ours)
        if targets == ("query", "value"):  # BERT's, Llama's: names PEFT knows stay as they were for BERT
            assert modules == (["query", "value"] if arch.id.startswith("bert") else wrapped)
        peft = get_peft_model(arch.build(), LoraConfig(r=2, target_modules=modules, layers_to_transform=[1],
                                                       fan_in_fan_out=arch.id == "gpt2"))
        theirs = sorted(n.removeprefix("base_model.model.") for n, m in peft.named_modules() if hasattr(m, "lora_A")
                        and isinstance(getattr(m, "lora_A"), nn.ModuleDict))
        assert theirs == sorted(wrapped)


# ------------------------------------------------------------------------------------------------- generation


def reference_greedy(model: nn.Module, prompt: str, max_new_tokens: int) -> str:
    """The plainest greedy decoder: the whole sequence through the model at every step, no cache, no padding."""
    ids = TOK(prompt)["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(min(max_new_tokens, POSITIONS - len(ids))):
            token = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            if token == EOS:
                break
            new.append(token)
    return TOK.decode(new, skip_special_tokens=True)


@pytest.mark.parametrize("arch", LMS)
def test_greedy_is_a_plain_argmax_loop_and_batched_equals_one_by_one(arch):
    model = arch.build()
    batched = generate(model, TOK, PROMPTS, max_new_tokens=10)
    alone = [generate(model, TOK, p, max_new_tokens=10)[0] for p in PROMPTS]
    pairs = generate(model, TOK, PROMPTS, max_new_tokens=10, batch_size=2)
    assert batched == alone == pairs == generate(model, TOK, PROMPTS, max_new_tokens=10)
    assert batched == [reference_greedy(model, p, 10) for p in PROMPTS]
    assert len(set(batched)) > 1 and all(len(c.split()) <= 10 for c in batched)
    # the completion is the new text only: the reference never decodes the prompt
    assert isinstance(generate(model, TOK, "w1", max_new_tokens=3), list)


@pytest.mark.parametrize("arch", LMS)
def test_seeded_sampling_is_reproducible_and_independent_of_global_rng(arch):
    model = arch.build()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = generate(model, TOK, PROMPTS, max_new_tokens=12, temperature=1.5, seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is never drawn from
    torch.manual_seed(999)
    again = generate(model, TOK, PROMPTS, max_new_tokens=12, temperature=1.5, seed=7, batch_size=1)
    other = generate(model, TOK, PROMPTS, max_new_tokens=12, temperature=1.5, seed=8)
    assert first == again and first != other
    assert first != generate(model, TOK, PROMPTS, max_new_tokens=12)  # sampling is not greedy here


def eos_instead_of(model: nn.Module, token: int):
    """Make the model write EOS wherever it would have written ``token`` (a hook on its LM head)."""
    def hook(_module, _inputs, logits):
        out = logits.clone()
        top = out.argmax(-1)
        out[..., EOS] = torch.where(top == token, out.max(-1).values + 10.0, out[..., EOS])
        return out

    return model.get_output_embeddings().register_forward_hook(hook)


@pytest.mark.parametrize("arch", LMS)
def test_generation_stops_at_eos_per_sequence(arch):
    model = arch.build()
    free = generate(model, TOK, PROMPTS, max_new_tokens=10)
    words = free[2].split()
    k = next(k for k in range(2, len(words)) if words[k] not in words[:k])
    stop_word = words[k]  # a word the model writes after prompt 2, not among its first k
    handle = eos_instead_of(model, TOK.convert_tokens_to_ids(stop_word))
    try:
        stopped = generate(model, TOK, PROMPTS, max_new_tokens=10)
        assert stopped == [generate(model, TOK, p, max_new_tokens=10)[0] for p in PROMPTS]
    finally:
        handle.remove()
    for before, after in zip(free, stopped):
        words = before.split()
        cut = words.index(stop_word) if stop_word in words else len(words)
        assert after.split() == words[:cut]  # each row stops at its own point; the others go on
    assert len(stopped[2].split()) == k >= 2


@pytest.mark.parametrize("arch", LMS)
def test_the_same_function_on_base_adapted_and_merged_models(arch):
    base = arch.build()
    model = adapted(arch)
    from_base = generate(base, TOK, PROMPTS, max_new_tokens=8)
    from_adapted = generate(model, TOK, PROMPTS, max_new_tokens=8)
    assert from_adapted != from_base  # the update shows in the answers
    assert from_adapted == [reference_greedy(model, p, 8) for p in PROMPTS]
    wb.merge_lora(model)
    assert generate(model, TOK, PROMPTS, max_new_tokens=8) == from_adapted
    wb.remove_lora(model, merge=False)
    assert generate(model, TOK, PROMPTS, max_new_tokens=8) == from_base


@pytest.mark.parametrize("arch", LMS)
def test_train_mode_is_restored_and_dropout_is_off_while_writing(arch):
    model = arch.build()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.5
    expected = generate(model, TOK, PROMPTS, max_new_tokens=6)
    model.train()
    assert generate(model, TOK, PROMPTS, max_new_tokens=6) == expected and model.training
    assert all(m.training for m in model.modules())
    model.get_output_embeddings().eval()  # a mixed model keeps its mix
    generate(model, TOK, PROMPTS, max_new_tokens=2)
    assert [m.training for m in model.modules()].count(False) == 1 and not model.get_output_embeddings().training


def test_max_new_tokens_is_capped_by_the_position_limit():
    model = ARCHS[1].build()
    assert position_limit(model) == POSITIONS
    long = " ".join(f"w{i % 60}" for i in range(POSITIONS - 3))  # BOS + 45 words: room for 2 more tokens
    short = "w1 w2"
    with_eos_off = eos_instead_of(model, -1)  # never fires: shows the cap, not an EOS
    try:
        out = generate(model, TOK, [long, short], max_new_tokens=20)
    finally:
        with_eos_off.remove()
    assert len(TOK(out[0], add_special_tokens=False)["input_ids"]) <= 2
    assert out[1] == generate(model, TOK, short, max_new_tokens=20)[0]  # a short prompt keeps its own budget
    with pytest.raises(ValueError, match=r"prompt 0 has 48 tokens; the model reads at most 48 positions"):
        generate(model, TOK, long + " w1 w2", max_new_tokens=5)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(prompts=[]), ValueError, "prompts is empty"),
    (dict(prompts=["w1", 3]), TypeError, "prompt 1 is a int"),
    (dict(temperature=-0.5), ValueError, r"temperature \(0 for greedy decoding, > 0 to sample\) must be a number in "
                                         r"\[0, inf\), got -0.5"),
    (dict(max_new_tokens=0), ValueError, r"max_new_tokens \(tokens to write per prompt\) must be a positive integer"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(chat=[True]), ValueError, "one bool per prompt"),
])
def test_bad_generation_input_is_refused(kwargs, error, match):
    args = dict(prompts=["w1", "w2"]) | kwargs
    with pytest.raises(error, match=match):
        generate(ARCHS[1].build(), TOK, **args)


def test_a_model_without_a_causal_lm_head_is_refused():
    with pytest.raises(TypeError, match="needs a language model with a causal-LM head.*BertForSequenceClassification"):
        generate(BERT.build(), TOK, ["w1"])


def test_exact_match_strips_whitespace_and_stops_at_the_first_newline():
    assert normalize_answer("  42 \nand then more") == "42"
    assert exact_match([" 42\nfoo", "Paris", "7 ", "x"], ["42", "paris", " 7", "y"]) == 0.5
    assert exact_match(["a"], ["a"]) == 1.0
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        exact_match(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no predictions"):
        exact_match([], [])
    with pytest.raises(TypeError, match="not a single string"):
        exact_match("a", "a")


# ------------------------------------------------------------------------------------------------------ export

LOADER = r"""
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedTokenizerFast
from safetensors import safe_open
jobs = json.loads(sys.argv[1])
ids = torch.tensor(jobs["ids"])
out = {}
for name, folder in jobs["folders"].items():
    cls = AutoModelForSequenceClassification if name.startswith("bert") else AutoModelForCausalLM
    model = cls.from_pretrained(folder).eval()
    tok = PreTrainedTokenizerFast.from_pretrained(folder)  # our word-level tokenizer's own class
    with torch.no_grad():
        out[name] = model(ids).logits
    with safe_open(folder + "/model.safetensors", "pt") as f:
        out[name + ":keys"] = list(f.keys())
    out[name + ":tokens"] = tok("w1 w2")["input_ids"]
    out[name + ":class"] = type(model).__name__
out["imported"] = sorted(m for m in sys.modules if m.split(".")[0] in ("workbench", "peft"))
torch.save(out, jobs["result"])
"""

EXPORTS = {  # id -> (arch, LoRA settings)
    "gpt2": (ARCHS[0], dict(targets=("query", "key", "value", "FFN in"))),
    "llama": (ARCHS[1], dict(targets=ROLES)),
    "qwen2": (ARCHS[2], dict(targets=("query", "value", "FFN out"))),
    "llama-dora": (ARCHS[1], dict(targets=("FFN in", "attention output"), dora=True)),
    "bert-classifier": (BERT, dict(targets=("query", "value"))),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every row exported, then loaded by one Python process that never imports the workbench."""
    root = tmp_path_factory.mktemp("export")
    models, before, folders = {}, {}, {}
    for name, (arch, settings) in EXPORTS.items():
        model = adapted(arch, **settings)
        models[name] = model
        before[name] = {k: v.clone() for k, v in model.state_dict().items()}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            folders[name] = str(export_merged(model, TOK, root / name))
        # transformers 5 gives a Qwen2 folder a Qwen2Tokenizer whatever was saved: the export says so
        said = [str(w.message) for w in caught if "AutoTokenizer" in str(w.message)]
        cls = type(TOK).__name__  # PreTrainedTokenizerFast, called TokenizersBackend in transformers 5
        assert said == ([] if name != "qwen2" else [
            f"AutoTokenizer.from_pretrained gives a Qwen2Tokenizer for this folder, which encodes text differently "
            f"from the {cls} given; load the tokenizer with {cls}.from_pretrained(folder)"]), said
    ids = torch.tensor([TOK("w1 w2 w3 w4 w5 w6")["input_ids"]]).tolist()
    result = root / "result.pt"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    job = json.dumps({"ids": ids, "folders": folders, "result": str(result)})
    done = subprocess.run([sys.executable, "-c", LOADER, job], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return models, before, folders, torch.load(result), torch.tensor(ids), root


@pytest.mark.parametrize("name", list(EXPORTS))
def test_the_exported_folder_loads_without_the_workbench_and_gives_the_adapted_logits(exported, name):
    models, _, _, loaded, ids, _ = exported
    assert loaded["imported"] == []
    with torch.no_grad():
        expected = models[name](ids).logits
        base = EXPORTS[name][0].build()(ids).logits
    got = loaded[name]
    assert (expected - base).abs().max() > 1e-2 * expected.abs().max()  # the update shows in the logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max())
    assert loaded[name + ":class"] == type(models[name]).__name__
    assert loaded[name + ":tokens"] == TOK("w1 w2")["input_ids"]


@pytest.mark.parametrize("name", list(EXPORTS))
def test_the_export_is_plain_and_the_adapted_model_keeps_its_adapter(exported, name):
    models, before, _, loaded, _, _ = exported
    keys = loaded[name + ":keys"]
    assert keys and not [k for k in keys if "lora" in k or "base_layer" in k]
    model = models[name]
    assert set(wb.lora_layers(model)) and model.lora_settings is not None
    assert not any(layer.merged for layer in wb.lora_layers(model).values())
    after = model.state_dict()
    assert set(after) == set(before[name]) and all(torch.equal(after[k], before[name][k]) for k in after)


def test_export_refuses_a_non_empty_folder_unless_told_to_overwrite(exported):
    models, _, folders, _, _, root = exported
    model = models["llama"]
    with pytest.raises(FileExistsError, match="exists and is not empty.*overwrite=True"):
        export_merged(model, TOK, folders["llama"])
    (root / "a-file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        export_merged(model, TOK, root / "a-file")
    other = adapted(ARCHS[1], targets=("key",))
    export_merged(other, None, folders["llama"], overwrite=True)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(folders["llama"])
    layer = wb.lora_layers(other)["model.layers.0.self_attn.k_proj"]
    merged = (layer.base_layer.weight + layer.delta_weight()).detach()  # W + s B A, by hand
    torch.testing.assert_close(reloaded.model.layers[0].self_attn.k_proj.weight.detach(), merged,
                               rtol=1e-6, atol=1e-6 * merged.abs().max())
    assert not (root / "llama" / "tokenizer.json").exists()  # replaced whole, not merged into the old folder
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == []  # no temporary folder left
    empty = root / "empty"
    empty.mkdir()
    assert export_merged(model, TOK, empty) == empty and (empty / "config.json").exists()

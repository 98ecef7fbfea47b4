"""Many adapters on one base: names, switching, and a mixed batch equal to each adapter alone.

Tiny GPT-2 (Conv1D layers) and Llama (Linear layers) language models built from configs
(``toy_models``' generative table), three adapters per model with different ranks and different
target layers, one of them written by PEFT itself (``get_peft_model`` + ``save_pretrained``).
References: each adapter loaded alone into a fresh base (ours and PEFT's), and PEFT's own
mixed batch (``adapter_names=[...]`` in its forward).  Tolerances are scaled to the logits.
"""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

import workbench as wb
from toy_models import ARCHS, PROMPTS, TOK, randomize_lora
from workbench.lora.adapters import AdapterError
from workbench.lora.layer import layer_shape
from workbench.lora.serving import (active_adapter, adapter_bytes, adapter_names, adapters_per_row, set_adapter,
                                    tensor_bytes)

GPT2, LLAMA = ARCHS[0], ARCHS[1]
# (rank, targets) per adapter and architecture: different ranks, different (overlapping and disjoint) layers.
PLANS = {
    "gpt2": {"sql": (4, ("query", "key", "value")), "chat": (2, ("FFN in", "FFN out"))},
    "llama": {"sql": (4, ("query", "value")), "chat": (8, ("query", "key", "value", "attention output",
                                                            "FFN in", "FFN out"))},
}
PEFT_TARGETS = {"gpt2": ["c_proj"], "llama": ["o_proj", "down_proj"]}  # PEFT's adapter: rank 3, module names
ROWS = ["sql", "chat", None, "peft", "sql"]  # five prompts: two share an adapter, one asks for the base


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _ours(arch, rank, targets, seed):
    model = arch.build()
    wb.add_lora(model, rank=rank, alpha=2 * rank, targets=targets)
    randomize_lora(model, seed, scale=0.3, magnitudes=False)
    return model.eval()


def _peft(arch, folder):
    """An adapter trained (here: randomized) and saved by PEFT itself, in PEFT's own format."""
    model = get_peft_model(arch.build(), LoraConfig(r=3, lora_alpha=5, target_modules=PEFT_TARGETS[arch.id],
                                                    init_lora_weights=False, fan_in_fan_out=arch.id == "gpt2"))
    model.save_pretrained(folder)
    return model.base_model.model.eval()  # the transformers model with PEFT's LoRA layers in it


@pytest.fixture(scope="module", params=[GPT2, LLAMA], ids=lambda a: a.id)
def served(request, tmp_path_factory):
    """(arch, {name: folder}, {name: the adapter alone on its own base model}, the base with all three loaded)."""
    arch = request.param
    root = tmp_path_factory.mktemp(arch.id)
    folders, alone = {}, {}
    for seed, (name, (rank, targets)) in enumerate(PLANS[arch.id].items(), start=1):
        alone[name] = _ours(arch, rank, targets, seed)
        folders[name] = wb.save_adapter(alone[name], root / name)
    folders["peft"] = root / "peft"
    alone["peft"] = _peft(arch, folders["peft"])
    alone[None] = arch.build()
    model = arch.build()
    for name, folder in folders.items():
        wb.load_adapter(model, folder, name=name)
    return arch, folders, alone, model


def _batch(prompts):
    """Left-padded ids, mask and positions, as generate builds them."""
    ids = [TOK(p)["input_ids"] for p in prompts]
    width = max(map(len, ids))
    input_ids = torch.tensor([[0] * (width - len(x)) + x for x in ids])
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
    return dict(input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))


def _close(actual, expected, rel=1e-5):
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * float(expected.detach().abs().max()))


def test_names_in_load_order_and_the_first_is_active(served):
    _, _, _, model = served
    assert adapter_names(model) == ["sql", "chat", "peft"]
    assert active_adapter(model) == "sql"


def test_greedy_mixed_batch_equals_each_adapter_alone(served):
    _, _, alone, model = served
    mixed = wb.generate(model, TOK, PROMPTS, max_new_tokens=10, adapters=ROWS)
    by_itself = [wb.generate(alone[n], TOK, p, max_new_tokens=10)[0] for p, n in zip(PROMPTS, ROWS)]
    switched = []
    for p, n in zip(PROMPTS, ROWS):
        set_adapter(model, n)
        switched.append(wb.generate(model, TOK, p, max_new_tokens=10)[0])
    set_adapter(model, "sql")
    assert mixed == by_itself == switched
    assert len(set(mixed)) >= 4  # the adapters really write different things
    # also in batches of two, mixing other pairs of adapters
    assert wb.generate(model, TOK, PROMPTS, max_new_tokens=10, adapters=ROWS, batch_size=2) == mixed


def test_sampled_mixed_batch_equals_each_adapter_alone(served):
    _, _, alone, model = served
    mixed = wb.generate(model, TOK, PROMPTS, max_new_tokens=8, temperature=1.3, seed=5, adapters=ROWS)
    assert mixed == [wb.generate(alone[n], TOK, p, max_new_tokens=8, temperature=1.3, seed=5)[0]
                     for p, n in zip(PROMPTS, ROWS)]


def test_mixed_batch_logits_equal_each_alone_and_peft_mixed_batch(served):
    arch, folders, alone, model = served
    batch = _batch(PROMPTS)
    with torch.no_grad(), adapters_per_row(model, ROWS):
        ours = model(**batch).logits
    with torch.no_grad():
        for i, name in enumerate(ROWS):  # each row against its adapter alone, in the same padded batch
            _close(ours[i], alone[name](**batch).logits[i])
        peft_model = PeftModel.from_pretrained(arch.build(), folders["sql"], adapter_name="sql").eval()
        for name in ("chat", "peft"):
            peft_model.load_adapter(folders[name], adapter_name=name)
        theirs = peft_model(**batch, adapter_names=[n or "__base__" for n in ROWS]).logits
    _close(ours, theirs)
    # and outside the block every row gets the active adapter again
    with torch.no_grad():
        _close(model(**batch).logits, alone["sql"](**batch).logits)


def test_set_adapter_switches_and_none_is_the_base(served):
    _, _, alone, model = served
    batch = _batch(PROMPTS[:2])
    try:
        with torch.no_grad():
            for name in ("chat", "peft", None, "sql"):
                set_adapter(model, name)
                assert active_adapter(model) == name
                _close(model(**batch).logits, alone[name](**batch).logits)
    finally:
        set_adapter(model, "sql")


def test_each_adapters_bytes_are_r_times_in_plus_out_floats(served):
    """Measured from the tensors, against r (in + out) float32 numbers per wrapped layer, counted by hand."""
    arch, _, _, model = served
    plain = arch.build()
    ranks_targets = {**PLANS[arch.id], "peft": (3, tuple(PEFT_TARGETS[arch.id]))}
    sizes = adapter_bytes(model)
    for name, (rank, targets) in ranks_targets.items():
        layers = wb.find_targets(plain, targets)
        assert sizes[name] == 4 * rank * sum(sum(layer_shape(plain.get_submodule(n))) for n in layers)
    base = tensor_bytes(plain.parameters())
    assert tensor_bytes(model.parameters()) == base + sum(sizes.values())  # the base once, plus each A and B


def test_the_first_adapter_keeps_its_keys_and_saves_alone(served, tmp_path):
    arch, folders, alone, model = served
    keys = set(model.state_dict())
    first = {k for k in alone["sql"].state_dict() if ".lora_" in k}
    assert first <= keys  # the first adapter's keys (PEFT's names) are where they were
    others = {k for k in keys - first if ".lora_" in k}  # the rest: in extra_adapters, or a later adapter's own layer
    assert others and all(".extra_adapters." in k or not any(k.startswith(f.split(".lora_")[0] + ".") for f in first)
                          for k in others)
    plain = set(arch.build().state_dict())  # base weights: as in a plain model, or under base_layer (as PEFT does)
    assert {k.replace(".base_layer.", ".") for k in keys if ".lora_" not in k} == plain
    wb.save_adapter(model, tmp_path / "again")
    saved, original = load_file(tmp_path / "again" / "adapter_model.safetensors"), load_file(
        folders["sql"] / "adapter_model.safetensors")
    assert saved.keys() == original.keys() and all(torch.equal(saved[k], original[k]) for k in saved)
    assert json.loads((tmp_path / "again" / "adapter_config.json").read_text())["r"] == PLANS[arch.id]["sql"][0]


# ---------------------------------------------------------------------------------------------- errors and edges


def test_an_unnamed_model_has_one_adapter_called_default_and_takes_more(tmp_path):
    trained = _ours(LLAMA, 4, ("query", "value"), 1)
    other = _ours(LLAMA, 2, ("FFN out",), 2)
    wb.save_adapter(other, tmp_path / "other")
    assert adapter_names(trained) == ["default"]
    before = wb.generate(trained, TOK, PROMPTS, max_new_tokens=6)
    wb.load_adapter(trained, tmp_path / "other", name="other")
    assert adapter_names(trained) == ["default", "other"]
    assert wb.generate(trained, TOK, PROMPTS, max_new_tokens=6) == before  # the active one is still the first
    assert (wb.generate(trained, TOK, PROMPTS, max_new_tokens=6, adapters=["other"] * len(PROMPTS))
            == wb.generate(other, TOK, PROMPTS, max_new_tokens=6))
    wb.remove_lora(trained)
    assert adapter_names(trained) == [] and not wb.lora_layers(trained)
    _close(trained(**_batch(PROMPTS)).logits, LLAMA.build()(**_batch(PROMPTS)).logits)


def test_load_adapter_without_a_name_is_unchanged(tmp_path):
    wb.save_adapter(_ours(LLAMA, 4, ("query", "value"), 1), tmp_path / "a")
    model = LLAMA.build()
    wb.load_adapter(model, tmp_path / "a")
    with pytest.raises(AdapterError, match="already has LoRA layers"):
        wb.load_adapter(model, tmp_path / "a")  # a second adapter needs a name


@pytest.fixture()
def two(tmp_path):
    folders = {}
    for seed, (name, (rank, targets)) in enumerate(PLANS["llama"].items(), start=1):
        folders[name] = wb.save_adapter(_ours(LLAMA, rank, targets, seed), tmp_path / name)
    model = LLAMA.build()
    wb.load_adapter(model, folders["sql"], name="sql")
    wb.load_adapter(model, folders["chat"], name="chat")
    return model, folders, tmp_path


def test_unknown_names_are_refused_with_the_loaded_ones_listed(two):
    model, _, _ = two
    with pytest.raises(ValueError, match=r"no adapter named 'sq1'.*loaded: 'sql', 'chat'"):
        set_adapter(model, "sq1")
    with pytest.raises(ValueError, match=r"no adapter named 'math'.*'sql', 'chat'"):
        wb.generate(model, TOK, PROMPTS[:2], adapters=["sql", "math"])
    with pytest.raises(ValueError, match="2 adapter names for 3 prompts"):
        wb.generate(model, TOK, PROMPTS[:3], adapters=["sql", "chat"])
    with pytest.raises(TypeError, match="one adapter name"):
        wb.generate(model, TOK, PROMPTS[:2], adapters="sql")
    with pytest.raises(ValueError, match="no adapters loaded|no adapter named"):
        wb.generate(LLAMA.build(), TOK, PROMPTS[:1], adapters=["sql"])


def test_a_name_twice_and_bad_names_are_refused(two):
    model, folders, _ = two
    with pytest.raises(AdapterError, match=r"'chat' is already loaded \(loaded: 'sql', 'chat'\)"):
        wb.load_adapter(model, folders["sql"], name="chat")
    for bad in ("", "a.b", "two words", 3, "forward"):
        with pytest.raises(ValueError, match="adapter name|reserved"):
            wb.load_adapter(model, folders["sql"], name=bad)
    assert adapter_names(model) == ["sql", "chat"]


def test_an_adapter_that_does_not_fit_names_the_key_and_changes_nothing(two):
    model, _, tmp_path = two
    from transformers import LlamaConfig, LlamaForCausalLM
    from toy_models import LLAMA_SIZES

    wider = LlamaForCausalLM(LlamaConfig(**{**LLAMA_SIZES, "intermediate_size": 64}))
    wb.add_lora(wider, rank=2, targets=("FFN out",))
    wb.save_adapter(wider, tmp_path / "wider")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AdapterError, match=r"shape mismatch for 'base_model\.model\.model\.layers\.0\.mlp\.down_proj"
                                           r"\.lora_A\.weight': the file has \[2, 64\], this model needs \[2, 48\]"):
        wb.load_adapter(model, tmp_path / "wider", name="wide")
    cfg = json.loads((tmp_path / "wider" / "adapter_config.json").read_text())
    cfg["target_modules"] = ["nonexistent_proj"]
    (tmp_path / "wider" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterError, match="nonexistent_proj"):
        wb.load_adapter(model, tmp_path / "wider", name="wide")
    assert adapter_names(model) == ["sql", "chat"]
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)


def test_variants_and_merging_are_refused_with_several_adapters(two):
    model, folders, tmp_path = two
    dora = LLAMA.build()
    wb.add_lora(dora, rank=2, targets=("query",), dora=True)
    wb.save_adapter(dora, tmp_path / "dora")
    with pytest.raises(AdapterError, match="DoRA.*plain LoRA only"):
        wb.load_adapter(model, tmp_path / "dora", name="dora")
    first_dora = LLAMA.build()
    wb.load_adapter(first_dora, tmp_path / "dora", name="dora")  # alone it loads
    with pytest.raises(AdapterError, match="first adapter is DoRA"):
        wb.load_adapter(first_dora, folders["sql"], name="sql")
    with pytest.raises(RuntimeError, match="several named adapters"):
        wb.merge_lora(model)
    single = LLAMA.build()
    wb.load_adapter(single, folders["sql"], name="sql")
    wb.merge_lora(single)  # one adapter merges as before
    with pytest.raises(AdapterError, match="merged"):
        wb.load_adapter(single, folders["chat"], name="chat")


def test_merging_is_all_or_nothing_with_disjoint_adapters(tmp_path):
    from workbench.lora.export import merged_copy

    model = LLAMA.build()
    for seed, (name, targets) in enumerate((("q", ("query",)), ("v", ("value",))), start=1):
        wb.load_adapter(model, wb.save_adapter(_ours(LLAMA, 2, targets, seed), tmp_path / name), name=name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for merge in (lambda: wb.merge_lora(model), lambda: merged_copy(model), lambda: wb.remove_lora(model, merge=True)):
        with pytest.raises(RuntimeError, match="several named adapters"):
            merge()
        assert not any(m.merged for m in wb.lora_layers(model).values())
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_second_adapter_with_a_trained_head_is_refused(tmp_path):
    from toy_models import BERT

    for name in ("a", "b"):
        m = BERT.build()
        wb.add_lora(m, rank=2, targets=("query",))
        wb.save_adapter(m, tmp_path / name)
    model = BERT.build()
    wb.load_adapter(model, tmp_path / "a", name="a")
    with pytest.raises(AdapterError, match="trains a head"):
        wb.load_adapter(model, tmp_path / "b", name="b")


# ------------------------------------------------------------------------------- notebook 08's library (lessons)


def test_negation_and_tense_by_hand():
    from workbench.lessons.many_adapters import negate, swap_tense

    assert negate("Tom's big dog was very hungry.") == "Tom's big dog was not very hungry."
    assert negate("Mia is happy.") == "Mia is not happy."
    assert swap_tense("Mia is happy.") == "Mia was happy."
    assert swap_tense("His tiny farmer was late.") == "His tiny farmer is late."
    assert negate("This is his island.") == "This is not his island."  # 'his', 'This' are not the verb
    for bad, n in (("Mia runs.", 0), ("Mia is what she was.", 2)):
        with pytest.raises(ValueError, match=f"exactly one 'is' or 'was'.*found {n}"):
            negate(bad)


def test_derived_tasks_keep_the_skills_statements_and_split(tmp_path):
    from workbench.engine.sft import load_prompts
    from workbench.lessons.many_adapters import derive_records, negate, swap_tense, write_task

    skill = load_prompts("skill", "validation")
    for task, cue, answer in (("negation", "Negation:", negate), ("tense", "Other tense:", swap_tense)):
        derived = load_prompts(str(write_task(tmp_path / task, task)), "validation")
        assert len(derived) == len(skill) == 200
        for p, q, c in zip(skill.prompts, derived.prompts, derived.completions):
            statement = p.split("\n")[0]
            assert q == f"{statement}\n{cue}" and c == " " + answer(statement[len("Statement: "):])
        assert len(load_prompts(str(tmp_path / task), "train")) == len(load_prompts("skill", "train"))
    with pytest.raises(ValueError, match="unknown task 'plural'; derived tasks: negation, tense"):
        derive_records([], "plural")
    with pytest.raises(ValueError, match="not a prompt of the bundled skill"):
        derive_records([{"prompt": "Mia is happy.", "completion": "x"}], "negation")


def test_mixed_vs_alone_and_latency_give_the_active_adapter_back(two):
    from workbench.lessons.many_adapters import latency, mixed_vs_alone

    model, _, _ = two
    set_adapter(model, "chat")
    names = ["sql", None, "chat", "sql", "chat"]
    table = mixed_vs_alone(model, TOK, PROMPTS, names, max_new_tokens=6)
    assert table["equal"].all() and list(table["adapter"]) == ["sql", "(base)", "chat", "sql", "chat"]
    assert active_adapter(model) == "chat"
    timed = latency(model, TOK, PROMPTS, names, max_new_tokens=4, repeats=3, warmup=0)
    assert len(timed.mixed) == len(timed.one_at_a_time) == 3 and timed.ratio > 0
    assert list(timed.table()["way"]) == ["mixed batch", "one adapter at a time"]
    assert active_adapter(model) == "chat"


@pytest.mark.slow
def test_memory_table_on_story_lm_measures_a_base_once_and_merged_copies_whole(tmp_path):
    from workbench.lessons.many_adapters import load_all, memory_table

    folders = {}
    for name, rank, targets in (("a", 8, ("query", "value")), ("b", 2, ("FFN out",))):
        m, _ = wb.load_base("story-lm", task="causal-lm")
        wb.add_lora(m, rank=rank, alpha=rank, targets=targets)
        randomize_lora(m, scale=0.3, magnitudes=False)
        folders[name] = wb.save_adapter(m, tmp_path / name)
    model, _ = load_all(folders)
    table = memory_table(model, folders)
    plain, _ = wb.load_base("story-lm", task="causal-lm")
    base = tensor_bytes(plain.parameters())
    by_hand = {"a": 8 * sum(sum(layer_shape(plain.get_submodule(n))) for n in wb.find_targets(plain, ("query", "value"))),
               "b": 2 * sum(sum(layer_shape(plain.get_submodule(n))) for n in wb.find_targets(plain, ("FFN out",)))}
    assert list(table["adapters"]) == [1, 2] and (table["base_bytes"] == base).all()
    assert list(table["adapter_bytes"]) == [4 * by_hand["a"], 4 * (by_hand["a"] + by_hand["b"])]
    assert list(table["merged_copies_bytes"]) == [base, 2 * base]
    assert table["ratio"].iloc[1] == pytest.approx(2 * base / (base + 4 * (by_hand["a"] + by_hand["b"])))


@pytest.mark.slow
def test_an_adapter_trained_and_saved_by_peft_loads_by_name_with_peft_logits(tmp_path):
    from workbench.lessons.many_adapters import train_peft_adapter, write_task

    data = write_task(tmp_path / "tense", "tense")
    losses = train_peft_adapter(tmp_path / "peft", data, steps=3, batch_size=4, max_train_examples=8)
    assert len(losses) == 3 and all(l > 0 for l in losses)
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    ours, tokenizer = wb.load_base("story-lm", task="causal-lm")
    wb.load_adapter(ours, tmp_path / "peft", name="tense")
    theirs = PeftModel.from_pretrained(wb.load_base("story-lm", task="causal-lm")[0], tmp_path / "peft").eval()
    batch = tokenizer(["Statement: Mia is happy.\nOther tense:"], return_tensors="pt")
    with torch.no_grad():
        expected = theirs(**batch).logits
        _close(ours.eval()(**batch).logits, expected)
        plain = wb.load_base("story-lm", task="causal-lm")[0].eval()(**batch).logits
    assert (plain - expected).abs().max() > 1e-3 * expected.abs().max()  # the trained adapter changes the logits

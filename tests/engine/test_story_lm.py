"""Tests for workbench/engine/story_lm.py, the shipped data/story_lm/ and the task data/skill/."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from workbench.engine import story_lm as sl  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FOLDER = Path(sl.story_lm_path())
SKILL = REPO / "data" / "skill"


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "data" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def build() -> dict:
    return json.loads((FOLDER / "build.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def shipped():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(FOLDER))
    model = AutoModelForCausalLM.from_pretrained(str(FOLDER))
    model.eval()
    return model, tok


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


# ------------------------------------------------------------------ corpus and tokenizer


def test_corpus_is_deterministic_and_matches_the_recorded_hash(build):
    a, b = sl.generate_corpus(300, seed=7), sl.generate_corpus(300, seed=7)
    assert a == b
    assert sl.generate_corpus(300, seed=8) != a
    corpus = build["corpus"]
    assert sl.corpus_hash(sl.generate_corpus(corpus["n_stories"], corpus["seed"])) == corpus["sha256"]


def test_heldout_text_is_the_generator_at_another_seed(build):
    held = build["heldout"]
    lines = (FOLDER / "heldout.txt").read_text(encoding="utf-8").splitlines()
    assert held["seed"] != build["corpus"]["seed"]
    assert lines == sl.generate_corpus(held["n_stories"], held["seed"])
    assert sl.corpus_hash(lines) == held["sha256"]
    train = set(sl.generate_corpus(build["corpus"]["n_stories"], build["corpus"]["seed"]))
    assert sum(line in train for line in lines) / len(lines) < 0.05  # held out: (almost) no story repeats


def test_generate_corpus_refuses_a_bad_size():
    with pytest.raises(ValueError, match="n_stories"):
        sl.generate_corpus(0, seed=0)


@pytest.mark.parametrize("text", [
    "The little fox is hungry.", "Statement: Tom was sad.\nQuestion:", "  two  spaces\tand tab ",
    "Ünïcödé, 日本語, emoji 🙂 and <|pad|>-like text", "ZEBRA? quantum!!! 1234567890 ~`@#$%^&*()", "",
])
def test_shipped_tokenizer_round_trips_any_text(shipped, text):
    _, tok = shipped
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.unk_token_id is None or tok.unk_token_id not in ids  # byte-level: nothing is unknown


def test_shipped_tokenizer_is_the_one_the_corpus_builds(shipped, build):
    _, tok = shipped
    corpus = sl.generate_corpus(build["corpus"]["n_stories"], build["corpus"]["seed"])
    rebuilt = sl.build_tokenizer(corpus, build["vocab_size_asked"])
    assert rebuilt.get_vocab() == tok.get_vocab()
    assert tok.eos_token == tok.bos_token == sl.EOS and tok.pad_token == sl.PAD
    assert tok.padding_side == "left"
    assert tok.model_max_length == build["model"]["context"]
    # the corpus's words are single tokens
    assert len(tok(" hungry", add_special_tokens=False)["input_ids"]) == 1


def test_build_tokenizer_refuses_a_tiny_vocabulary():
    with pytest.raises(ValueError, match="vocab_size"):
        sl.build_tokenizer(["a b c"], vocab_size=100)


# ------------------------------------------------------------------ the shipped model


def test_shipped_model_loads_with_plain_transformers(shipped, build):
    from transformers import LlamaForCausalLM

    model, tok = shipped
    assert isinstance(model, LlamaForCausalLM)
    assert model.num_parameters() == build["model"]["parameters"]
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    assert model.config.vocab_size == len(tok)
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= names


@pytest.mark.slow
def test_shipped_model_heldout_perplexity_matches_the_card(shipped, build):
    model, tok = shipped
    held = build["heldout"]
    lines = (FOLDER / "heldout.txt").read_text(encoding="utf-8").splitlines()
    stream = sl.pack(lines, tok)
    assert stream.numel() == held["tokens"]
    ppl = sl.perplexity(model, stream, held["seq_len"])
    # compare the mean loss (log perplexity), relative to its size: CPUs differ in the last bits
    assert math.log(ppl) == pytest.approx(held["loss"], rel=1e-3)
    card = (FOLDER / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert f"{held['perplexity']:.3f}" in card and f"{build['model']['parameters']:,}" in card
    # far better than chance (a uniform guess has perplexity = vocabulary size)
    assert ppl < len(tok) / 50


def test_perplexity_is_exp_of_the_mean_token_loss(shipped):
    """Hand computation: log-softmax of the logits, the next token's log-probability, averaged."""
    model, tok = shipped
    stream = sl.pack(sl.generate_corpus(10, seed=123), tok)
    seq = 32
    n = stream.numel() // seq
    x = stream[: n * seq].view(n, seq)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=x).logits.float(), dim=-1)
    nll = -logp[:, :-1].gather(-1, x[:, 1:, None]).squeeze(-1)
    assert sl.perplexity(model, stream, seq) == pytest.approx(math.exp(nll.mean().item()), rel=1e-5)


def test_greedy_generation_writes_corpus_like_text(shipped):
    model, tok = shipped
    enc = tok(["One day, the little fox"], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=20, do_sample=False, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    known = set(w.strip('.,?!"').lower() for s in sl.generate_corpus(2000, seed=0) for w in s.split())
    words = [w.strip('.,?!"').lower() for w in text.split()]
    assert len(words) >= 5 and sum(w in known for w in words) / len(words) > 0.9, text


# ------------------------------------------------------------------ the recipe


def _tiny_run(seed: int, steps: int = 3) -> list[float]:
    from transformers import LlamaForCausalLM

    texts = sl.generate_corpus(200, seed=0)
    tok = sl.build_tokenizer(texts, vocab_size=400)
    stream = sl.pack(texts, tok)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(sl.model_config(tok, hidden=32, layers=2, heads=2, intermediate=64, context=64))
    cfg = sl.PretrainConfig(steps=steps, batch_size=4, seq_len=32, warmup=2, seed=seed)
    return sl.pretrain(model, stream, cfg)


def test_pretraining_is_deterministic_from_a_seed():
    a, b = _tiny_run(seed=0), _tiny_run(seed=0)
    assert a == b and all(math.isfinite(x) for x in a)
    assert _tiny_run(seed=1) != a


def test_learning_rate_schedule_closed_form():
    cfg = sl.PretrainConfig(steps=100, warmup=10, lr=1e-3, min_lr_ratio=0.1)
    assert cfg.lr_at(0) == pytest.approx(1e-4)
    assert cfg.lr_at(9) == pytest.approx(1e-3)
    assert cfg.lr_at(10) == pytest.approx(1e-3)
    assert cfg.lr_at(55) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half-way through the decay: cos = 0
    assert cfg.lr_at(100) == pytest.approx(1e-4)


def test_story_lm_path_is_the_bundled_folder():
    from workbench.engine.bundled import bundled_data_dir

    assert Path(sl.story_lm_path()) == Path(bundled_data_dir()) / "story_lm"
    assert (FOLDER / "model.safetensors").is_file()


# ------------------------------------------------------------------ the bundled generative task


def _question(statement: str) -> str:
    """The rule, written independently of make_skill: "X Y is Z." -> "Is x Y Z?"."""
    m = re.fullmatch(r"(\S+)(.*?) (is|was) (.+)\.", statement)
    assert m, statement
    first, rest, aux, pred = m.groups()
    first = first if first in sl.NAMES or first.split("'")[0] in sl.NAMES else first.lower()
    return f"{aux.capitalize()} {first}{rest} {pred}?"


def test_skill_files_are_valid_and_follow_the_rule():
    meta = json.loads((SKILL / "task.json").read_text(encoding="utf-8"))
    for split in ("train", "validation"):
        rows = _jsonl(SKILL / f"{split}.jsonl")
        assert len(rows) == meta["sizes"][split] and len(rows) >= 200
        for r in rows:
            assert set(r) == {"prompt", "completion"}
            m = re.fullmatch(r"Statement: (.+)\nQuestion:", r["prompt"])
            assert m, r
            assert r["completion"] == " " + _question(m.group(1))
        assert len({r["prompt"] for r in rows}) == len(rows)  # no duplicates


def _pair(prompt: str) -> tuple[str, str]:
    words = prompt.split("\n")[0].rstrip(".").split()
    return words[words.index("is" if "is" in words else "was") - 1].split("'")[0], words[-1]


def test_skill_validation_is_held_out_by_combination():
    train, val = _jsonl(SKILL / "train.jsonl"), _jsonl(SKILL / "validation.jsonl")
    assert not {r["prompt"] for r in val} & {r["prompt"] for r in train}
    train_pairs = {_pair(r["prompt"]) for r in train}
    assert not {_pair(r["prompt"]) for r in val} & train_pairs
    # ... yet every word a validation prompt uses occurs in training
    train_words = {w for r in train for w in r["prompt"].split()}
    assert {w for r in val for w in r["prompt"].split()} <= train_words


def test_make_skill_reproduces_the_shipped_files():
    splits = _load_script("make_skill").build()
    for name, rows in splits.items():
        assert rows == _jsonl(SKILL / f"{name}.jsonl")


@pytest.mark.slow
def test_base_model_cannot_do_the_skill(shipped):
    """The task's premise: without adaptation, greedy completions almost never match."""
    model, tok = shipped
    rows = _jsonl(SKILL / "validation.jsonl")
    enc = tok([r["prompt"] for r in rows], return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
    preds = [tok.decode(o[enc["input_ids"].shape[1]:], skip_special_tokens=True).split("\n")[0].strip() for o in out]
    exact = sum(p == r["completion"].strip() for p, r in zip(preds, rows)) / len(rows)
    assert exact <= 0.10


def test_skill_prompt_and_completion_tokenize_apart_as_together(shipped):
    """The completion-only loss masks the prompt's tokens: that needs the boundary to be a token boundary."""
    _, tok = shipped
    rows = _jsonl(SKILL / "validation.jsonl")[:50]
    for r in rows:
        joint = tok(r["prompt"] + r["completion"], add_special_tokens=False)["input_ids"]
        apart = tok(r["prompt"], add_special_tokens=False)["input_ids"] + tok(r["completion"], add_special_tokens=False)["input_ids"]
        assert joint == apart, r

"""Supervised fine-tuning data: prompt/completion records, chats, plain text; the loss on completions only.

The loss is checked against a hand computation that never pads: each example runs alone
through the model, and -log p of its completion tokens (EOS included) is summed by hand.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from workbench.engine.data import IGNORE_INDEX, DataError, make_batches
from workbench.engine.models import load_base
from workbench.engine.sft import PromptDataset, load_prompt_task, load_prompts, prompt_ids, tokenize_prompts


@pytest.fixture(scope="module")
def lm():
    model, tok = load_base("tiny-gpt2", task="causal-lm", seed=0)
    return model.eval(), tok


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_completion_tokens_only_are_labelled_and_eos_is_appended(lm):
    _, tok = lm
    ds = PromptDataset(["the cat is", "a dog"], [" happy", " runs fast"])
    tokens = tokenize_prompts(ds, tok, max_length=32)
    for i in range(len(ds)):
        p = prompt_ids(tok, ds.prompts[i])
        c = tok(ds.completions[i], add_special_tokens=False)["input_ids"]
        assert tokens.input_ids[i] == p + c + [tok.eos_token_id]
        assert tokens.labels_for(i) == [IGNORE_INDEX] * len(p) + c + [tok.eos_token_id]


def test_loss_is_the_mean_over_completion_tokens_by_hand(lm):
    model, tok = lm
    ds = PromptDataset(["the cat is", "a dog that barks at", "x"], [" happy", " the mail man", " y z"])
    tokens = tokenize_prompts(ds, tok, max_length=32)
    batch = next(iter(make_batches(tokens, tok, batch_size=3, shuffle=False, task="causal-lm")))
    with torch.no_grad():
        batched = float(model(**batch.model_inputs()).loss)
        total, count = 0.0, 0
        for ids, n_prompt in zip(tokens.input_ids, tokens.prompt_lengths):
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
            logp = F.log_softmax(logits, dim=-1)
            for t in range(n_prompt, len(ids)):  # token t is predicted at position t - 1
                total -= float(logp[t - 1, ids[t]])
                count += 1
    by_hand = total / count
    assert count == sum(len(ids) - n for ids, n in zip(tokens.input_ids, tokens.prompt_lengths))
    assert math.isclose(batched, by_hand, rel_tol=1e-5), (batched, by_hand)


def test_too_long_examples_lose_prompt_tokens_from_the_start(lm):
    _, tok = lm
    ds = PromptDataset(["one two three four five six seven eight nine ten"], [" eleven twelve"])
    full = tokenize_prompts(ds, tok, max_length=64)
    cut = tokenize_prompts(ds, tok, max_length=8)
    completion = full.input_ids[0][full.prompt_lengths[0]:]
    assert len(cut.input_ids[0]) == 8
    assert cut.input_ids[0][cut.prompt_lengths[0]:] == completion  # the completion is kept whole
    assert cut.input_ids[0][: cut.prompt_lengths[0]] == full.input_ids[0][: full.prompt_lengths[0]][-cut.prompt_lengths[0]:]


def test_jsonl_text_and_chat_sources(tmp_path, lm):
    _, tok = lm
    pc = _write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "a", "completion": " b"}, {"prompt": "c", "completion": " d"}])
    ds = load_prompts(pc)
    assert ds.prompts == ["a", "c"] and ds.completions == [" b", " d"]

    txt = tmp_path / "corpus.txt"
    txt.write_text("first line\n\n  second line  \n", encoding="utf-8")
    plain = load_prompts(str(txt))
    assert plain.prompts == ["", ""] and plain.completions == ["first line", "second line"]
    tokens = tokenize_prompts(plain, tok, 16)  # plain text: every token after the start token is learned
    assert tokens.prompt_lengths == [1, 1] and tokens.input_ids[0][0] == tok.bos_token_id

    chats = _write_jsonl(tmp_path / "chat.jsonl", [{"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}])
    with pytest.raises(DataError, match="chat template"):
        load_prompts(chats, tokenizer=tok)
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    try:
        chat = load_prompts(chats, tokenizer=tok)
    finally:
        tok.chat_template = None
    assert chat.prompts == ["<user>hi\n<assistant>"] and chat.completions == ["hello"] and chat.chat == [True]


@pytest.mark.parametrize("rows, message", [
    ([{"prompt": "a"}], "'prompt' and 'completion', or 'messages', or 'text'"),
    ([{"prompt": "a", "completion": "  "}], "empty completion"),
    ([{"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}], "last message"),
])
def test_bad_records_are_refused_with_the_reason(tmp_path, rows, message, lm):
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=message):
        load_prompts(path, tokenizer=lm[1])


def test_a_single_file_holds_out_a_seeded_share(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"p{i}", "completion": f" c{i}"} for i in range(20)])
    train, held = load_prompt_task(path, seed=3)
    again = load_prompt_task(path, seed=3)[1]
    assert len(train) == 18 and len(held) == 2 and held.prompts == again.prompts
    assert not set(train.prompts) & set(held.prompts)


@pytest.mark.parametrize("model", ["tiny-gpt2", "story-lm"])
def test_prompts_tokenized_together_are_the_tokenizer_called_on_each(model):
    # The run's data tokenizes all its prompts in one call; the reference is the tokenizer
    # called on one text at a time, with the prompt rule applied by hand (BOS first, no
    # closing EOS, an empty plain prompt gets BOS), chat prompts as the template wrote them.
    from workbench.engine.models import load_tokenizer
    from workbench.engine.sft import batch_prompt_ids

    tok = load_tokenizer(model)
    prompts = ["the cat is", "", "a dog that barks at the mail man", "<s> as the template wrote it", "x"]
    chat = [False, False, False, True, False]

    def by_hand(text: str, is_chat: bool) -> list[int]:
        if is_chat:
            return tok(text, add_special_tokens=False)["input_ids"]
        ids = tok(text, add_special_tokens=True)["input_ids"] if text else []
        if len(ids) > 1 and ids[-1] == tok.eos_token_id:
            ids = ids[:-1]
        return ids or ([tok.bos_token_id] if tok.bos_token_id is not None else [])

    assert batch_prompt_ids(tok, prompts, chat) == [by_hand(p, c) for p, c in zip(prompts, chat)]
    ds = PromptDataset(prompts, [" happy", " on", " again and again", " yes", ""], chat=chat)
    tokens = tokenize_prompts(ds, tok, max_length=64)
    for i, (p, c) in enumerate(zip(prompts, chat)):
        completion = tok(ds.completions[i], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert tokens.input_ids[i] == (by_hand(p, c) or [tok.bos_token_id or tok.eos_token_id]) + completion

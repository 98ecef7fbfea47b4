"""``wb.evaluate`` and chrF: answers sampled with a seed, a text-similarity score, the completion loss by hand."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("sacrebleu")

import workbench as wb  # noqa: E402
from workbench.engine.generation import exact_match, generate  # noqa: E402
from workbench.engine.sft import prompt_ids  # noqa: E402
from workbench.engine.text_metrics import chrf, evaluate  # noqa: E402

DATA = [{"prompt": "Statement: Mia is happy.\nQuestion:", "completion": " Is Mia happy?"},
        {"prompt": "Statement: The dog is big.\nQuestion:", "completion": " Is the dog big?"},
        {"prompt": "Statement: Tom runs.\nQuestion:", "completion": " Does Tom run?"}]


@pytest.fixture(scope="module")
def lm():
    model, tokenizer = wb.load_base("story-lm", task="causal-lm")
    return model.eval(), tokenizer


def test_chrf_is_100_for_the_reference_0_for_no_shared_character_and_in_between_for_a_paraphrase():
    assert chrf(["Is Mia happy?"], ["Is Mia happy?"]) == pytest.approx(100.0)
    assert chrf(["xyz"], ["abc"]) == 0.0
    close, far = chrf(["Is Mia sad?"], ["Is Mia happy?"]), chrf(["The cat."], ["Is Mia happy?"])
    assert 0 < far < close < 100
    assert chrf([" Is Mia happy?\nMore text."], ["Is Mia happy?"]) == pytest.approx(100.0)  # the answer's first line


@pytest.mark.parametrize("args, error, message", [
    ((["a"], ["a", "b"]), ValueError, "1 predictions but 2 references"),
    (([], []), ValueError, "chrF of no predictions is undefined"),
    (("a", ["a"]), TypeError, "chrF takes lists of strings"),
])
def test_chrf_errors(args, error, message):
    with pytest.raises(error, match=message):
        chrf(*args)


def test_evaluate_scores_the_model_s_own_answers_and_its_completion_loss_by_hand(lm):
    model, tokenizer = lm
    result = evaluate(model, tokenizer, DATA, metrics=["exact_match", "chrf", "loss", "perplexity"],
                      max_new_tokens=8)
    answers = generate(model, tokenizer, [d["prompt"] for d in DATA], max_new_tokens=8)
    refs = [d["completion"] for d in DATA]
    assert [a["answer"] for a in result.answers] == answers
    assert result["exact_match"] == exact_match(answers, refs)
    assert result["chrf"] == pytest.approx(chrf(answers, refs))
    # The loss by hand: -log p of each completion token (and EOS) given what precedes it, averaged over tokens.
    total, count = 0.0, 0
    for d in DATA:
        p = prompt_ids(tokenizer, d["prompt"])
        c = tokenizer(d["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([p + c])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        for j, tok in enumerate(c):
            total -= float(logp[len(p) + j - 1, tok])
            count += 1
    assert result["loss"] == pytest.approx(total / count, rel=1e-4)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))


def test_sampled_answers_follow_their_seed(lm):
    model, tokenizer = lm
    one = evaluate(model, tokenizer, DATA, metrics=["chrf"], temperature=1.0, seed=5, samples=2, max_new_tokens=6)
    again = evaluate(model, tokenizer, DATA, metrics=["chrf"], temperature=1.0, seed=5, samples=2, max_new_tokens=6)
    assert one.answers == again.answers and [a["seed"] for a in one.answers] == [5, 5, 5, 6, 6, 6]
    first = generate(model, tokenizer, [d["prompt"] for d in DATA], max_new_tokens=6, temperature=1.0, seed=6)
    assert [a["answer"] for a in one.answers[3:]] == first
    per_seed = [chrf([a["answer"] for a in one.answers[k:k + 3]], [d["completion"] for d in DATA]) for k in (0, 3)]
    assert one["chrf"] == pytest.approx(sum(per_seed) / 2)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(metrics=["bleu"]), ValueError, "unknown metric(s) 'bleu'; the metrics are: exact_match, chrf, loss"),
    (dict(samples=2), ValueError, "samples=2 needs a temperature > 0"),
    (dict(data=42), TypeError, "data must be a data source ('skill', a .jsonl/.csv file), a PromptDataset"),
    (dict(data=[{"prompt": "x"}]), ValueError, "data item 0 lacks 'prompt' or 'completion'"),
    (dict(max_examples=0), ValueError, "max_examples (None evaluates every example) must be an integer >= 1"),
])
def test_evaluate_errors(lm, kwargs, error, message):
    model, tokenizer = lm
    kwargs = {"data": DATA} | kwargs
    with pytest.raises(error) as e:
        evaluate(model, tokenizer, **kwargs)
    assert message in str(e.value)


def test_evaluate_reads_a_data_source_by_name(lm):
    model, tokenizer = lm
    result = evaluate(model, tokenizer, "skill", metrics=["loss"], max_examples=4)
    assert list(result.metrics) == ["loss"] and math.isfinite(result["loss"]) and result.answers == []

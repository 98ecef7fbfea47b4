"""The practitioner's lesson (workbench/lessons/practitioner.py, notebook 09), and the switch it added to the
engine (``RunConfig.completion_only_loss``).

The findings are read from hand-made runs whose numbers are set here; the data files (replay, templates) are
read back and checked against the bundled files; the engine switch is checked on the labels a batch carries
and on a tiny run's first loss, computed again by hand.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

import workbench as wb
from workbench.engine.config import RunConfig, RunResult, Timing, preset
from workbench.engine.data import IGNORE_INDEX, PadCollator
from workbench.engine.models import load_tokenizer
from workbench.engine.sft import PromptDataset, load_prompts, tokenize_prompts
from workbench.engine.story_lm import generate_corpus, story_lm_path
from workbench.lessons import practitioner as pr
from workbench.lessons.forgetting import BasePoint
from workbench.lora.params import ParamCounts

from toy_models import vocab_lm_config  # noqa: E402


@pytest.fixture(scope="module")
def story_tokenizer():
    return load_tokenizer("story-lm")


def fake(cfg: RunConfig, em: float, heldout: float, completion: float = 0.5, trainable: int = 10) -> RunResult:
    """A finished run whose end point is set by hand."""
    history = pd.DataFrame({"step": [1], "train_loss": [1.0], "lr": [cfg.lr], "eval_loss": [completion],
                            "eval_accuracy": [0.5], "eval_exact_match": [em], "eval_perplexity": [math.exp(completion)],
                            "heldout_loss": [heldout]})
    return RunResult(config=cfg, status="completed", history=history,
                     params=ParamCounts(trainable=trainable, total=100), memory=None, timing=Timing(0.1, 10.0, 2.0))


@pytest.fixture
def ref():
    return pr.practice_config()


# --------------------------------------------------------------------------- the engine's switch


def test_completion_only_false_learns_the_prompt_tokens_too(story_tokenizer):
    ds = PromptDataset(["Statement: Mia is happy.\nQuestion:"], [" Is Mia happy?"])
    masked = tokenize_prompts(ds, story_tokenizer, 32)
    every = tokenize_prompts(ds, story_tokenizer, 32, completion_only=False)
    ids, n = masked.input_ids[0], masked.prompt_lengths[0]
    assert every.input_ids == masked.input_ids and every.prompt_lengths == masked.prompt_lengths  # same tokens
    assert masked.labels_for(0) == [IGNORE_INDEX] * n + ids[n:] and n > 1
    assert every.labels_for(0) == ids
    collate = PadCollator(story_tokenizer.pad_token_id, task="causal-lm")
    assert collate([every[0]]).labels[0].tolist() == ids
    assert collate([masked[0]]).labels[0].tolist() == masked.labels_for(0)


def test_completion_only_loss_is_checked_and_round_trips(tmp_path):
    with pytest.raises(ValueError, match="completion_only_loss must be True .* or False"):
        preset("generate", completion_only_loss="no")
    cfg = preset("generate", completion_only_loss=False)
    assert preset("generate").completion_only_loss is True  # the default: the completion only
    assert RunConfig.from_dict(cfg.to_dict()).completion_only_loss is False
    cfg.to_yaml(tmp_path / "r.yaml")
    assert RunConfig.from_yaml(tmp_path / "r.yaml").completion_only_loss is False


def test_a_run_that_learns_the_prompt_starts_from_the_loss_over_every_token(tmp_path, story_tokenizer):
    """The first step's training loss of a tiny run is the mean loss over the labelled tokens of its first batch:
    over the completion only by default, over prompt and completion with the switch off (computed again here)."""
    from transformers import AutoModelForCausalLM

    from workbench.engine.batches import run_batches
    from workbench.engine.launch import train

    config = vocab_lm_config("llama", story_tokenizer)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "lm")
    story_tokenizer.save_pretrained(tmp_path / "lm")
    quick = dict(model=str(tmp_path / "lm"), steps=1, eval_every=0, batch_size=4, max_train_examples=8,
                 max_eval_examples=4, max_generate_examples=2, max_new_tokens=4, warmup_ratio=0.0, method="full")
    losses = {}
    for flag in (True, False):
        cfg = preset("generate", completion_only_loss=flag, **quick)
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "lm")
        batch = next(iter(run_batches(cfg, story_tokenizer).train))
        with torch.no_grad():
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
        gold = batch.labels[:, 1:]
        by_hand = float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), gold.reshape(-1),
                                        ignore_index=IGNORE_INDEX))
        run = train(cfg, progress=False, fresh_process=False)
        losses[flag] = float(run.history["train_loss"].iloc[0])
        assert losses[flag] == pytest.approx(by_hand, rel=1e-4)
        labelled = int((gold != IGNORE_INDEX).sum())
        every_token = int(batch.attention_mask[:, 1:].sum())  # each real token after the first is predicted
        assert (labelled == every_token) if not flag else (0 < labelled < every_token)
    assert losses[True] != pytest.approx(losses[False], rel=1e-3)


# --------------------------------------------------------------------------- runs, once each


def test_runs_trains_a_config_once_whatever_its_name(monkeypatch, ref):
    calls = []
    monkeypatch.setattr(pr, "train", lambda cfg, **kw: calls.append(cfg) or fake(cfg, 0.5, 2.0))
    runs = pr.Runs()
    a = runs.train(ref)
    assert runs.train(ref.with_changes(name="the same run")) is a
    runs.many({"x": ref, "y": ref.with_changes(lr=1e-3)})
    assert len(calls) == len(runs) == 2 and runs.seconds == pytest.approx(4.0)


def test_practice_config_is_the_generate_preset_shortened(ref):
    g = preset("generate")
    assert ref.steps == 120 and ref.eval_every == 0 and ref.max_generate_examples == 100
    assert (ref.lora, ref.lr, ref.model, ref.data) == (g.lora, g.lr, g.model, g.data)
    assert pr.practice_config(tiny=True).steps == pr.TINY["steps"]
    with pytest.raises(ValueError, match="steps"):
        pr.practice_config(steps=0)


# --------------------------------------------------------------------------- a. which layers


@pytest.mark.slow  # loads the bundled story-lm
def test_equal_budget_rank_counts_the_layers():
    # story-lm: hidden 128, FFN 384. Per rank and block, q and v: 2 x (128 + 128) = 512; all six roles:
    # 4 x 256 (q, k, v, o) + 3 x (128 + 384) (gate, up, down) = 2,560, five times as many.
    assert pr.equal_budget_rank(8) == 40 and pr.equal_budget_rank(1) == 5


def test_layer_configs_and_findings(ref):
    configs = pr.layer_configs(ref, 40)
    assert [c.lora.targets for c in configs.values()] == [pr.QV, pr.ALL_ROLES, pr.QV]
    assert [c.lora.rank for c in configs.values()] == [8, 8, 40]
    assert all(c.lora.scaling == 2.0 and c.steps == ref.steps and c.lr == ref.lr for c in configs.values())
    ems = (0.30, 0.93, 0.55)
    found = pr.layer_findings({n: fake(c, em, 2.0) for (n, c), em in zip(configs.items(), ems)})
    assert found.gap == pytest.approx(0.63) and found.budget_gap == pytest.approx(0.38)
    assert found.six_wins and found.layers_not_count
    assert found.count_share == pytest.approx(0.25 / 0.63)  # q,v at r=40 closed 0.25 of the 0.63 gap
    assert "+0.630" in found.markdown() and "closed 40% of the gap" in found.markdown()
    assert "still 0.380 ahead" in found.markdown()
    close = pr.layer_findings({n: fake(c, em, 2.0) for (n, c), em in zip(configs.items(), (0.30, 0.93, 0.90))})
    assert not close.layers_not_count and "the count, not the choice of layers" in close.markdown()
    with pytest.raises(ValueError, match="three runs"):
        pr.layer_findings({"one": fake(ref, 0.5, 2.0)})


# --------------------------------------------------------------------------- b. the learning rate


def test_lr_findings_read_best_rates_and_useful_ranges(ref):
    configs = pr.lr_configs(ref, [1e-3, 3e-3, 1e-2], [1e-4, 3e-4, 1e-3, 3e-3])
    ems = {"LoRA lr 0.001": 0.5, "LoRA lr 0.003": 0.95, "LoRA lr 0.01": 0.90,
           "full FT lr 0.0001": 0.88, "full FT lr 0.0003": 0.97, "full FT lr 0.001": 0.96, "full FT lr 0.003": 0.2}
    found = pr.lr_findings({n: fake(c, ems[n], 2.0) for n, c in configs.items()})
    assert found.best_lr == {"lora": 3e-3, "full": 3e-4} and found.ratio == pytest.approx(10)
    assert found.useful["lora"] == [3e-3, 1e-2]  # 0.90 >= 0.9 x 0.95; 0.5 is not
    assert found.useful["full"] == [1e-4, 3e-4, 1e-3]  # 0.88 >= 0.873
    assert found.span("lora") == pytest.approx(10 / 3) and found.span("full") == pytest.approx(10)
    assert found.at_edge == {"lora": False, "full": False}
    text = found.markdown()
    assert "**10 times**" in text and "narrower than" in text
    same = pr.lr_findings({n: fake(c, 1.0 if n in ("LoRA lr 0.003", "full FT lr 0.003") else 0.5, 2.0)
                           for n, c in configs.items()})
    assert same.ratio == 1 and "**the same rate** (0.003)" in same.markdown()
    assert same.at_edge == {"lora": False, "full": True}
    assert isinstance(pr.lr_figure(found), Figure)
    with pytest.raises(ValueError, match="at least one rate"):
        pr.lr_configs(ref, [], [1e-4])
    with pytest.raises(ValueError, match="lr"):
        pr.lr_configs(ref, [-1.0], [1e-4])


# --------------------------------------------------------------------------- e. forgetting


def test_replay_data_mixes_the_pretraining_corpus_into_the_skill(tmp_path):
    folder = pr.write_replay_data(tmp_path / "replay", share=0.25, seed=0)
    rows = [json.loads(line) for line in open(f"{folder}/train.jsonl", encoding="utf-8")]
    skill = load_prompts("skill", "train")
    stories = [r["completion"] for r in rows if r["prompt"] == ""]
    assert len(stories) == round(0.25 / 0.75 * len(skill)) == 667
    assert len(stories) / len(rows) == pytest.approx(0.25, abs=1e-3)
    assert sorted(stories) == sorted(generate_corpus(667, 0))  # the first stories of story-lm's own corpus
    heldout = set(open(f"{story_lm_path()}/heldout.txt", encoding="utf-8").read().splitlines())
    assert not heldout & set(stories)  # none of the text that measures forgetting
    assert sorted((r["prompt"], r["completion"]) for r in rows if r["prompt"]) == sorted(
        zip(skill.prompts, skill.completions))
    again = pr.write_replay_data(tmp_path / "again", share=0.25, seed=0)
    assert open(f"{again}/train.jsonl").read() == open(f"{folder}/train.jsonl").read()  # seeded
    assert len(load_prompts(folder, "train")) == len(rows)  # a run's data can name the folder
    for bad in (0, 1, 1.5, "a"):
        with pytest.raises(ValueError, match="share must be a fraction"):
            pr.write_replay_data(tmp_path / "bad", share=bad)


def test_forgetting_findings_and_figure(ref):
    configs = pr.forgetting_configs(ref, "replay-folder")
    names = list(configs)
    assert configs[names[1]].steps == ref.steps // 2 and configs[names[2]].lr == pytest.approx(ref.lr / 3)
    assert configs[names[3]].lora.alpha == ref.lora.alpha / 4
    assert configs[names[4]].data == "replay-folder" and configs[names[4]].eval_data == "skill"
    points = [(0.95, 2.5), (0.80, 1.9), (0.92, 2.0), (0.85, 1.7), (0.93, 1.6)]
    base = BasePoint(exact_match=0.0, completion_loss=6.0, heldout_loss=1.0, answers=[])
    found = pr.ForgettingFindings(pr.table({n: fake(configs[n], em, ho) for n, (em, ho) in zip(names, points)}), base)
    assert found.changes["heldout_change"].tolist() == pytest.approx([-0.6, -0.5, -0.8, -0.9])
    assert found.helped == names[1:] and found.helped_and_kept == [names[2], names[4]]
    assert found.best == names[4]
    assert "4 of 4 changes forgot less" in found.markdown() and f"**{names[4]}** forgot least" in found.markdown()
    assert isinstance(pr.forgetting_figure(found), Figure)


# --------------------------------------------------------------------------- c. the loss and the template


def test_masking_findings(ref):
    configs = pr.masking_configs(ref)
    assert [c.completion_only_loss for c in configs.values()] == [True, False]
    found = pr.MaskingFindings(pr.table({n: fake(c, em, ho, cl) for (n, c), (em, ho, cl)
                                         in zip(configs.items(), [(0.9, 2.4, 0.10), (0.7, 2.0, 0.30)])}))
    assert found.em_change == pytest.approx(-0.2) and found.heldout_change == pytest.approx(-0.4)
    assert found.completion_change == pytest.approx(0.2) and "-0.200 exact match" in found.markdown()


def test_templates_rewrite_the_bundled_prompts(tmp_path):
    assert pr.statement_of("Statement: Mia is happy.\nQuestion:") == "Mia is happy."
    with pytest.raises(ValueError, match="not a bundled skill prompt"):
        pr.statement_of("Mia is happy.")
    with pytest.raises(ValueError, match="unknown template"):
        pr.templated("alpaca")
    plain, chat = load_prompts("skill", "validation"), pr.templated("chat")
    assert pr.templated("statement").prompts == plain.prompts  # the bundled format is the "statement" template
    assert chat.prompts[0] == pr.TEMPLATES["chat"].format(statement=pr.statement_of(plain.prompts[0]))
    assert chat.completions == plain.completions
    folder = pr.write_template_data(tmp_path / "chat", "chat")
    assert load_prompts(folder, "validation").prompts == chat.prompts
    assert len(load_prompts(folder, "train")) == len(load_prompts("skill", "train"))


# --------------------------------------------------------------------------- d. evaluation beyond exact match


@pytest.fixture(scope="module")
def story_lm():
    model, tokenizer = wb.load_base("story-lm", task="causal-lm")
    return model.eval(), tokenizer


def test_sampled_answers_against_greedy_on_the_base_model(story_lm):
    model, tok = story_lm
    found = pr.sampled(model, tok, temperature=1.0, samples=3, max_examples=4, max_new_tokens=6)
    assert len(found.answers) == 4 * 3 and set(found.answers["seed"]) == {0, 1, 2}
    per_prompt = found.answers.groupby("prompt")["answer"].apply(lambda a: len(set(x.strip() for x in a)))
    assert found.distinct == pytest.approx(per_prompt.mean()) and 1 <= found.distinct <= 3
    assert found.all_same == pytest.approx((per_prompt == 1).mean())
    assert found.greedy_em == 0.0  # the base model cannot do the skill
    assert "temperature 1" in found.markdown()
    with pytest.raises(ValueError, match="temperature"):
        pr.sampled(model, tok, temperature=0.0)


def test_story_probe_counts_what_each_model_writes(story_lm):
    model, tok = story_lm
    starts = pr.story_starts(3, words=4)
    lines = open(f"{story_lm_path()}/heldout.txt", encoding="utf-8").read().splitlines()
    assert starts == [" ".join(line.split()[:4]) for line in lines[:3]]
    probe = pr.story_probe({"base": model}, tok, starts, max_new_tokens=12)
    said = [a.strip() for a in wb.generate(model, tok, starts, max_new_tokens=12)]
    assert probe.loc["base", "words"] == pytest.approx(sum(len(a.split()) for a in said) / 3)
    assert probe.loc["base", "questions"] == sum(a.endswith("?") for a in said) / 3
    assert probe.loc["base", "first"] == said[0]

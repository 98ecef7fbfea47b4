"""The learning-versus-forgetting lesson (workbench/lessons/forgetting.py, notebook 07).

Grid construction, the summary against a hand-made table, the figure built without
pyplot, a run's row from a hand-made result, and (slow) the base point on the bundled
story-lm against a held-out loss computed by hand with the model alone.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from workbench.engine.config import RunResult, Timing, preset
from workbench.lessons.forgetting import (
    COLUMNS, BasePoint, findings, forgetting_figure, frozen_gap, grid_configs, grid_table, label, measure_base, point,
    summarize, train_lora_also,
)
from workbench.lora.params import ParamCounts


@pytest.fixture
def base_cfg():
    return preset("generate")


# --------------------------------------------------------------------------- the grid


def test_grid_has_every_rank_and_full_fine_tuning_for_every_seed(base_cfg):
    configs = grid_configs(base_cfg, ranks=(1, 8, 64), seeds=(0, 1))
    assert len(configs) == 2 * (3 + 1)
    lora = [c for c in configs if c.method == "lora"]
    full = [c for c in configs if c.method == "full"]
    assert [(c.seed, c.lora.rank) for c in lora] == [(0, 1), (0, 8), (0, 64), (1, 1), (1, 8), (1, 64)]
    assert all(c.lora.alpha == 2 * c.lora.rank and c.lora.scaling == 2.0 for c in lora)  # alpha = 2r: scale 2
    assert all(c.lr == base_cfg.lr for c in lora)
    assert [c.seed for c in full] == [0, 1]
    assert all(c.lr == pytest.approx(base_cfg.lr / 10) for c in full)  # default: a tenth of LoRA's
    # Everything else is the base config's: same data, steps, targets.
    assert all(c.steps == base_cfg.steps and c.data == base_cfg.data and c.lora.targets == base_cfg.lora.targets
               for c in configs)


def test_grid_takes_several_full_learning_rates_and_names_them_apart(base_cfg):
    configs = grid_configs(base_cfg, ranks=(4,), seeds=(3,), full_lr=[1e-4, 1e-3])
    full = [c for c in configs if c.method == "full"]
    assert [c.lr for c in full] == [1e-4, 1e-3]
    assert len({c.label() for c in full}) == 2
    one = grid_configs(base_cfg, ranks=(4,), seeds=(3,), full_lr=2e-4)
    assert [c.lr for c in one if c.method == "full"] == [2e-4] and one[0].seed == 3
    assert [c.method for c in grid_configs(base_cfg, ranks=(4,), seeds=(0,), full_lr=())] == ["lora"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(ranks=(0,)), "rank"),
    (dict(ranks=(2.5,)), "rank"),
    (dict(seeds=()), "seed"),
    (dict(seeds=(-1,)), "seed"),
    (dict(full_lr=-1e-4), "full_lr"),
    (dict(full_lr=[1e-4, 0.0]), "full_lr"),
    (dict(ranks=(), full_lr=()), "empty"),
])
def test_grid_rejects_bad_input_with_a_clear_error(base_cfg, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        grid_configs(base_cfg, **kwargs)


# --------------------------------------------------------------------------- rows and summary


def hand_table() -> pd.DataFrame:
    rows = [
        ("lora", 8, 3e-3, 0, 1.00, 0.30, 2.5),
        ("lora", 8, 3e-3, 1, 0.90, 0.40, 3.5),
        ("full", math.nan, 3e-4, 0, 0.80, 0.10, 1.5),
        ("full", math.nan, 3e-4, 1, 0.60, 0.20, 2.0),
        ("full", math.nan, 1e-3, 0, 1.00, 0.05, 4.0),
    ]
    table = pd.DataFrame(rows, columns=["method", "rank", "lr", "seed", "exact_match", "completion_loss",
                                        "heldout_loss"])
    return table.assign(seconds=1.0, run_id="", status="completed")[list(COLUMNS)]


def test_summarize_matches_a_hand_computation():
    base = BasePoint(exact_match=0.0, completion_loss=6.0, heldout_loss=1.0, answers=[])
    s = summarize(hand_table(), base).set_index("group")
    assert list(s.index) == ["LoRA r=8", "full FT lr 0.0003", "full FT lr 0.001"]  # order of first appearance
    assert s.loc["LoRA r=8", "exact_match_mean"] == pytest.approx(0.95)
    assert s.loc["LoRA r=8", "heldout_loss_min"] == 2.5 and s.loc["LoRA r=8", "heldout_loss_max"] == 3.5
    assert s.loc["LoRA r=8", "forgetting"] == pytest.approx(3.0 - 1.0)
    assert s.loc["full FT lr 0.0003", "completion_loss_mean"] == pytest.approx(0.15)
    assert s.loc["full FT lr 0.0003", "learned"] == pytest.approx(0.70)
    assert s.loc["full FT lr 0.0003", "forgetting"] == pytest.approx(0.75)
    assert s.loc["full FT lr 0.001", "seeds"] == 1 and s.loc["LoRA r=8", "seeds"] == 2
    assert "forgetting" not in summarize(hand_table()).columns  # without a base point: no differences


def test_summarize_rejects_a_table_it_cannot_read():
    with pytest.raises(ValueError, match="lacks the columns"):
        summarize(hand_table().drop(columns=["heldout_loss"]))
    with pytest.raises(ValueError, match="no runs"):
        summarize(hand_table().iloc[:0])


def test_a_row_holds_the_last_evaluated_values_of_a_run(base_cfg):
    cfg = base_cfg.with_changes(rank=4, alpha=8, seed=2)
    nan = math.nan
    history = pd.DataFrame({"step": [1, 2, 3], "train_loss": [3.0, 2.0, 1.0], "lr": [1e-3] * 3,
                            "eval_loss": [nan, 0.7, nan], "eval_accuracy": [nan, 0.5, nan],
                            "eval_exact_match": [nan, 0.25, nan], "eval_perplexity": [nan, 2.0, nan],
                            "heldout_loss": [nan, 1.5, nan]})
    result = RunResult(config=cfg, status="completed", history=history, params=ParamCounts(trainable=1, total=2),
                       memory=None, timing=Timing(0.1, 10.0, 4.5), run_id="r1")
    row = point(result)
    assert row == {"method": "lora", "rank": 4, "lr": cfg.lr, "seed": 2, "exact_match": 0.25, "completion_loss": 0.7,
                   "heldout_loss": 1.5, "seconds": 4.5, "run_id": "r1", "status": "completed"}
    full = point(RunResult(config=cfg.with_changes(method="full"), status="completed", history=history,
                           params=ParamCounts(trainable=2, total=2), memory=None, timing=Timing(0.1, 10.0, 4.5)))
    assert full["method"] == "full" and math.isnan(full["rank"])
    assert list(grid_table([result]).columns) == list(COLUMNS)
    assert label("lora", 4.0, 3e-3) == "LoRA r=4" and label("full", math.nan, 3e-4) == "full FT lr 0.0003"


# --------------------------------------------------------------------------- the findings notebook 07 states


def paper_like_table() -> pd.DataFrame:
    """Two seeds of LoRA r = 1, 8, 64 and full fine-tuning at 3e-4 and 1e-3, shaped like the paper's picture."""
    groups = [("lora", 1, 3e-3, 0.50, 0.80, 1.2), ("lora", 8, 3e-3, 0.95, 0.40, 1.5), ("lora", 64, 3e-3, 0.98, 0.35, 2.0),
              ("full", math.nan, 3e-4, 0.92, 0.20, 1.4), ("full", math.nan, 1e-3, 1.00, 0.10, 2.5)]
    rows = [(m, r, lr, seed, em, cl, ho + 0.01 * seed) for seed in (0, 1) for m, r, lr, em, cl, ho in groups]
    table = pd.DataFrame(rows, columns=["method", "rank", "lr", "seed", "exact_match", "completion_loss",
                                        "heldout_loss"])
    return table.assign(seconds=1.0, run_id="", status="completed")[list(COLUMNS)]


def test_findings_read_the_papers_picture_from_a_constructed_grid():
    base = BasePoint(exact_match=0.0, completion_loss=6.0, heldout_loss=1.0, answers=[])
    found = findings(paper_like_table(), base)
    assert found.seeds == 2 and found.forgot_all
    assert found.rank_order == [1, 8, 64] and found.forgetting_grows_with_rank
    assert found.full_learns_more_loss  # 0.20 at most against 0.35 at least
    assert found.smallest_rank == 1 and found.small_less_both
    assert found.ranks_that_learned == [8, 64] and found.reference_rank == 8
    assert found.lr_gap == pytest.approx(2.5 - 1.4) and found.method_gap == pytest.approx(1.5 - 1.4)
    assert found.learned_runs == 8  # r = 8, r = 64 and both full fine-tuning rates, two seeds each
    assert found.least_forgetting_learner == "full" and found.best["lr"] == 3e-4 and found.best["seed"] == 0
    assert list(found.lora.index) == [1, 8, 64] and list(found.full.index) == [3e-4, 1e-3]
    text = found.markdown()
    assert "(2 seeds; the base model at exact match 0.000, held-out loss 1.000)" in text
    assert "* **LoRA r=8**: exact match 0.950 (0.950 to 0.950), completion loss 0.400, held-out loss 1.505 " \
           "(1.500 to 1.510): +0.505 nats per token against the base." in text
    assert "Every run forgot" in text and "grows with the rank (r = 1, 8, 64, least to most)" in text
    assert "(0.200 at most) than any LoRA rank (0.350 at least)" in text
    assert "The gap to full fine-tuning's best (0.100) was 0.700 at r = 1 and 0.250 at r = 64: it shrinks as the rank grows." in text
    assert ("here that is exact match: LoRA ranks 8, 64 reached 0.9 or more on average (r = 1: 0.500, r = 8: 0.950, "
            "r = 64: 0.980), full fine-tuning 0.920 at lr 0.0003, 1.000 at lr 0.001.") in text
    assert "learned more" not in text  # a loss gap is not read as learning: the paper scores the task
    assert "LoRA r = 1 learned less (exact match 0.500) and forgot less (held-out 1.205)" in text
    assert "from 1.405 at lr 0.0003 to 2.505 at lr 0.001: +1.10 nats, more than the 0.10 nats between LoRA r=8" in text
    assert "the learning rate moved a run more than the choice of method did (as well as the method" in text
    assert "the one that forgot least is **full fine-tuning at lr 0.0003** (seed 0: exact match 0.920, held-out " \
           "loss 1.400): at the grid's learning rates, LoRA forgot more" in text


def test_findings_say_so_when_the_directions_do_not_hold():
    table = paper_like_table()
    table.loc[table["rank"] == 1, "heldout_loss"] = 3.0  # r = 1 forgets most, and more than full fine-tuning
    table.loc[(table["method"] == "full"), "exact_match"] = 0.5  # full fine-tuning no longer learns the skill
    table.loc[(table["method"] == "full"), "completion_loss"] = 0.9
    base = BasePoint(exact_match=0.0, completion_loss=6.0, heldout_loss=1.45, answers=[])
    found = findings(table, base)
    assert not found.forgot_all and not found.forgetting_grows_with_rank and found.rank_order == [8, 64, 1]
    assert not found.full_learns_more_loss and not found.small_less_both
    assert found.least_forgetting_learner == "lora" and found.best["rank"] == 8
    text = found.markdown()
    assert "Not every run's held-out loss is above the base model's." in text
    assert "Ordered from least to most forgetting, the LoRA ranks go r = 8, 64, 1." in text
    assert "Full fine-tuning did not reach a lower completion loss than every LoRA rank." in text
    assert "LoRA r = 1 did not both learn less and forget less" in text
    flat = paper_like_table()
    flat.loc[flat["rank"] == 64, "completion_loss"] = 0.75  # the gap to full FT barely moves with the rank
    said = findings(flat, base).markdown()
    gap = re.search(r"was ([0-9.]+) at r = 1 and ([0-9.]+) at r = 64: a 64 times larger rank narrowed it by (\d+)% "
                    r"and left it open, so it is not a rank limit", said)
    assert gap, said  # the narrowing is the run's own, formatted from the two gaps it prints
    assert int(gap.group(3)) == round(100 * (1 - float(gap.group(2)) / float(gap.group(1))))
    assert "the one that forgot least is **LoRA r=8** (seed 0" in text and "at equal learning LoRA forgot less" in text
    one_lr = findings(table[table["lr"] != 1e-3], base)  # one full fine-tuning rate: no learning-rate sentence
    assert one_lr.lr_gap is None and one_lr.method_gap is None and "**The learning rate.**" not in one_lr.markdown()
    nobody = table.assign(exact_match=0.1)
    assert findings(nobody, base).best is None and "**At equal learning.**" not in findings(nobody, base).markdown()
    with pytest.raises(ValueError, match="full fine-tuning"):
        findings(table[table["method"] == "lora"], base)


# --------------------------------------------------------------------------- the figure


def test_figure_draws_every_run_and_the_base_model_without_pyplot():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    table = hand_table()
    base = BasePoint(exact_match=0.0, completion_loss=6.0, heldout_loss=1.0, answers=[])
    fig = forgetting_figure(table, base)
    assert plt.get_fignums() == before  # not registered with pyplot
    left, right = fig.axes
    for ax, col, base_y in ((left, "exact_match", 0.0), (right, "completion_loss", 6.0)):
        points = [tuple(xy) for coll in ax.collections for xy in coll.get_offsets()]
        expected = list(zip(table["heldout_loss"], table[col])) + [(1.0, base_y)]
        assert sorted(points) == sorted(expected)
    labels = left.get_legend_handles_labels()[1]
    assert labels == ["LoRA r=8", "full FT lr 0.0003", "full FT lr 0.001", "base model"]


def test_the_module_does_not_import_pyplot():
    code = ("import sys, workbench.lessons.forgetting as f; "
            "f.forgetting_figure(__import__('pandas').DataFrame({'method': ['lora'], 'rank': [1], 'lr': [1e-3], "
            "'exact_match': [0.5], 'completion_loss': [1.0], 'heldout_loss': [2.0]}), "
            "f.BasePoint(0.0, 3.0, 1.0, [])); print('matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- the base point (bundled model)


def test_measure_base_refuses_a_classifier():
    with pytest.raises(ValueError, match="causal-lm"):
        measure_base(preset("tiny"))


@pytest.mark.slow
def test_base_point_on_the_bundled_model_matches_a_hand_computation():
    """The base model cannot do the skill, and its held-out loss is the plain next-token
    loss of the held-out stories (BOS + story + EOS, cut at max_length), computed here with
    the model alone in fp32."""
    from workbench.engine.models import load_base
    from workbench.engine.sft import read_text_lines
    from workbench.engine.story_lm import story_lm_path

    cfg = preset("generate", bf16=False, max_eval_examples=24, max_generate_examples=16, max_new_tokens=12)
    base = measure_base(cfg)
    assert base.exact_match <= 0.1  # the datasheet: 0.0 on the validation split
    assert len(base.answers) > 0 and all(a["step"] == 0 for a in base.answers)
    assert base.completion_loss > 2.0  # the answers are improbable to the base model

    model, tok = load_base("story-lm", task="causal-lm")
    model.eval()
    lines = read_text_lines(f"{story_lm_path()}/heldout.txt")[: cfg.max_eval_examples]
    total, count = 0.0, 0
    with torch.no_grad():
        for line in lines:
            ids = [tok.bos_token_id] + (list(tok(line, add_special_tokens=False)["input_ids"]) +
                                        [tok.eos_token_id])[: cfg.max_length - 1]
            x = torch.tensor([ids])
            logits = model(input_ids=x).logits[0, :-1].float()
            total += float(F.cross_entropy(logits, x[0, 1:], reduction="sum"))
            count += len(ids) - 1
    by_hand = total / count
    assert base.heldout_loss == pytest.approx(by_hand, rel=1e-4)


def test_frozen_by_lora_counts_every_parameter_once_by_hand():
    """A toy Llama (SHAPE: hidden 32, FFN 48, 4 heads sharing 2 key/value heads, 2 blocks, vocabulary 100)."""
    from toy_models import SHAPE, shaped_llama_lm

    from workbench.lessons.forgetting import frozen_by_lora

    model = shaped_llama_lm()
    t = frozen_by_lora(model)
    assert t["parameters"].sum() == sum(p.numel() for p in model.parameters())  # each tensor once
    h, blocks, vocab = 32, 2, 100
    kv = h * SHAPE.llama_kv_heads // SHAPE.llama_heads
    per_block = h * h + 2 * h * kv + h * h + 3 * h * SHAPE.llama_ffn  # q, k and v, o, gate/up/down
    assert t.loc["block linear layers", "parameters"] == blocks * per_block
    assert t.loc["norms", "parameters"] == (2 * blocks + 1) * h  # two RMSNorms a block and the final one
    emb = [k for k in t.index if k.startswith("embeddings")][0]
    assert t.loc[emb, "parameters"] == vocab * h
    assert t["share (%)"].sum() == pytest.approx(100)
    assert list(t["trained by LoRA"]).count("low-rank update") == 1


# --------------------------------------------------------------------------- what LoRA leaves frozen, trained too


@pytest.mark.slow  # the bundled story-lm, two steps (seconds)
def test_train_lora_also_trains_the_named_parts_and_nothing_else_frozen():
    """Two steps of the bundled story-lm: with the tied embeddings trainable beside LoRA, the embedding
    (= output layer) moves, the norms and the blocks' base weights do not, and the row counts the extra
    parameters by hand."""
    from workbench.engine.models import load_base
    from workbench.lora.layer import LoRALayer

    cfg = preset("generate", steps=2, max_train_examples=32, max_eval_examples=8, max_generate_examples=2,
                 max_new_tokens=4, bf16=False).with_changes(rank=2, alpha=4)
    row = train_lora_also(cfg, ("embeddings",), keep_model=True)
    fresh, _ = load_base("story-lm", task="causal-lm")
    model = row.pop("model")
    emb = fresh.get_input_embeddings().weight
    assert row["extra trainable"] == emb.numel()  # tied: the output layer is the same tensor, counted once
    assert not torch.equal(model.get_input_embeddings().weight, emb)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    norms = {n: p for n, p in fresh.named_parameters() if "norm" in n}
    trained = dict(model.named_parameters())
    assert norms and all(torch.equal(trained[n], p) for n, p in norms.items())
    layers = [m for m in model.modules() if isinstance(m, LoRALayer)]
    assert layers and all(torch.equal(m.base_layer.weight, fresh.get_submodule(n).weight)
                          for n, m in model.named_modules() if isinstance(m, LoRALayer))
    assert set(row) >= {"exact_match", "completion_loss", "heldout_loss", "also trained"}
    assert row["also trained"] == "embeddings" and math.isfinite(row["completion_loss"])


@pytest.mark.parametrize("parts", [(), ("head",), ("norms", "bias")])
def test_train_lora_also_names_the_parts_it_takes(parts):
    with pytest.raises(ValueError, match="norms"):
        train_lora_also(preset("generate"), parts)


def test_train_lora_also_refuses_full_fine_tuning():
    with pytest.raises(ValueError, match="method='lora'"):
        train_lora_also(preset("generate", method="full"))


def test_frozen_gap_reads_the_share_of_the_gap_each_run_closed():
    table = hand_table()  # LoRA r=8 seed 0: completion 0.30; full 3e-4 seed 0: 0.10 (the lowest lr)
    also = [dict(method="lora", rank=8, lr=3e-3, seed=0, exact_match=1.0, completion_loss=0.25, heldout_loss=2.6,
                 **{"also trained": "norms", "extra trainable": 10}),
            dict(method="lora", rank=8, lr=3e-3, seed=0, exact_match=1.0, completion_loss=0.12, heldout_loss=3.0,
                 **{"also trained": "norms + embeddings", "extra trainable": 500})]
    gap = frozen_gap(table, also)
    assert gap.gap == pytest.approx(0.20)
    assert gap.closed == pytest.approx({"norms": 0.25, "norms + embeddings": 0.90})  # 0.05 / 0.2, 0.18 / 0.2
    text = gap.markdown()
    assert "trainable too it closed 25% of it" in text and "closed 90% of it" in text
    assert "most of the gap comes from what LoRA leaves frozen (training the norms + embeddings too)" in text
    assert "all of it and more" in frozen_gap(table, [dict(also[1], completion_loss=0.05)]).markdown()
    t = gap.table()
    assert list(t.index) == ["LoRA r=8 (the grid's run)", "LoRA r=8 + norms", "LoRA r=8 + norms + embeddings",
                             "full FT lr 0.0003 (the grid's run)"]
    assert list(t["completion_loss"]) == [0.30, 0.25, 0.12, 0.10]
    small = frozen_gap(table, also[:1])
    assert "most of it remains" in small.markdown()
    with pytest.raises(ValueError, match="no LoRA r=4"):
        frozen_gap(table, [dict(also[0], rank=4)])


def test_figure_draws_extra_runs_beside_the_grid():
    table = hand_table()
    base = BasePoint(exact_match=0.0, completion_loss=6.0, heldout_loss=1.0, answers=[])
    extra = {"exercise 2": {"rank": 8, "exact_match": 0.7, "completion_loss": 0.5, "heldout_loss": 1.8}}
    left, right = forgetting_figure(table, base, extra=extra).axes
    assert "exercise 2" in left.get_legend_handles_labels()[1]
    for ax, y in ((left, 0.7), (right, 0.5)):
        assert (1.8, y) in [tuple(xy) for coll in ax.collections for xy in coll.get_offsets()]

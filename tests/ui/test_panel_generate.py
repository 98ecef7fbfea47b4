"""The panel in generate mode (``workbench.ui.try_it`` and the Try it tab).

A language model that writes: the task switch, its role toggles, no head only, Try it
(base vs adapted answers, a stored run's answer through its adapter), a run's samples
in the table.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from workbench.engine.config import RunConfig
from workbench.engine.models import load_base
from workbench.engine.outcome import run_outcome
from workbench.engine.training import prepare_model
from workbench.lora.config import LoRAConfig
from workbench.lora.inject import lora_layers
from workbench.lora.params import count_parameters
from workbench.records import store
from workbench.ui.model_layers import ModelLayers
from workbench.ui.state import PanelState
from toy_models import story_lm, tiny_gpt2_lm
from panel_helpers import KINDS, ROOT, make_panel, make_state, tiny_config


LM = "story-lm"
PROMPT = "Statement: The cat is happy.\nQuestion:"


def _skill_validation() -> list[dict]:
    """The bundled skill's held-out split, read straight from its file (the reference for the panel's prompts)."""
    import json

    lines = (ROOT / "data" / "skill" / "validation.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def adapted_story_lm(seed: int = 0, scale: float = 0.5):
    """story-lm with LoRA r=8 on query and value whose A and B matrices are set by hand (random, seeded),
    so that its answers differ from the base model's; and the tokenizer."""
    import torch

    from workbench.lora.inject import add_lora

    model, tokenizer = load_base(LM, task="causal-lm")
    add_lora(model, LoRAConfig(rank=8, alpha=16, targets=("query", "value")))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():  # A as well: add_lora draws it from the global RNG
            for w in (layer.lora_A.weight, layer.lora_B.weight):
                w.copy_(scale * torch.randn(w.shape, generator=g))
    return model.eval(), tokenizer


def generative_run(cfg: RunConfig, samples: list[dict], exact: float = 0.5, losses=(3.0, 1.0), minute: int = 0):
    """A generative RunResult (no training) with this final exact match and these samples."""
    import numpy as np

    from workbench.engine.config import ParamCounts, RunResult, Timing

    n = len(losses)
    last = [np.nan] * (n - 1)
    history = pd.DataFrame({"step": np.arange(1, n + 1), "train_loss": list(losses), "lr": cfg.lr,
                            "eval_loss": last + [losses[-1]], "eval_accuracy": last + [0.4],
                            "eval_exact_match": last + [exact], "eval_perplexity": last + [2.7],
                            "heldout_loss": last + [1.1]})
    return RunResult(config=cfg, status="completed", history=history, params=ParamCounts(16_384, 983_424),
                     memory=None, timing=Timing(0.05, 1000.0, 7.5 + minute), samples=samples,
                     environment={"started": f"2026-12-01T11:{minute:02d}:00+00:00"})


@pytest.fixture(scope="module")
def lm_layers() -> ModelLayers:
    return ModelLayers.load(LM, task="causal-lm")


def gen_state(tmp_path: Path, tiny_layers: ModelLayers, **kwargs) -> PanelState:
    """A classify-mode state on tiny-bert whose generate mode is the bundled story-lm."""
    return make_state(tmp_path, tiny_layers, **kwargs)


def test_the_task_switch_brings_the_generative_preset_its_roles_and_methods(tmp_path, tiny_layers):
    from workbench.engine.config import preset
    from workbench.lora.roles import model_roles

    state = make_state(tmp_path, tiny_layers)
    events: list[str] = []
    state.subscribe(events.append)
    assert state.task == "classification" and state.methods() == (("LoRA", "lora"), ("full fine-tuning", "full"),
                                                                    ("head only", "head"))
    state.set_task("causal-lm")
    assert state.task == "causal-lm" and {"task", "choices", "runs"} <= set(events)
    # The preset as wb.preset("generate") gives it; the panel only answers fewer prompts before the last evaluation.
    from workbench.ui.settings import INTERIM_PROMPTS

    assert state.config() == preset("generate", interim_generate_examples=INTERIM_PROMPTS) and state.problem() is None
    # One toggle per role, as model_roles reads them from the loaded model; never the LM head.
    model = story_lm()
    roles = [r for r in model_roles(model) if r.names]
    assert tuple(state.model.targets) == tuple(r.role for r in roles) == (
        "query", "key", "value", "attention output", "FFN in", "FFN out")
    assert all(list(state.model.targets[r.role].names) == list(r.names) for r in roles)
    assert not any("lm_head" in n for g in state.model.targets.values() for n in g.names)
    assert state.choices.targets == tuple(preset("generate").lora.targets) and state.model.head_parameters == 0
    assert state.methods() == (("LoRA", "lora"), ("full fine-tuning", "full"))
    # The readout is what the engine counts on the real model: r * (in + out) per layer, no head.
    for changes in ({}, {"rank": 4, "targets": ("key", "FFN in", "FFN out")}, {"method": "full"}):
        state.update(**changes)
        ref, _ = engine_count_for(state.config())
        est = state.parameter_estimate()
        assert (est.trainable, est.total) == (ref.trainable, ref.total), changes
    # Back to classify: the classifier's toggles and preset again.
    state.set_task("classification")
    assert tuple(state.model.targets) == KINDS and state.config() == tiny_config()
    with pytest.raises(ValueError, match="task must be one of"):
        state.set_task("generation")


# The toy table's builders of the models a generate-mode config names.
TOYS_BY_MODEL = {("tiny-gpt2", "causal-lm"): tiny_gpt2_lm, ("story-lm", "causal-lm"): story_lm}


def engine_count_for(cfg: RunConfig):
    model = TOYS_BY_MODEL[cfg.model, cfg.task]()
    prepare_model(cfg, model)
    return count_parameters(model), model


def test_gpt2_fused_query_key_value_toggle_together_and_count_once(tmp_path):
    layers = ModelLayers.load("tiny-gpt2", task="causal-lm")
    assert tuple(layers.targets) == ("query", "key", "value", "attention output", "FFN in", "FFN out")
    assert "lm_head" not in layers.targets and layers.fused["key"] == ("query", "key", "value")
    state = PanelState(model="tiny-gpt2", preset="gpt2", runs_dir=tmp_path / "runs", background=False, layers=layers)
    assert state.task == "causal-lm" and {"query", "key", "value"} <= set(state.choices.targets)  # the preset's
    state.update(targets=("query", "key"))  # value unticked: the fused layer goes as a whole
    assert state.choices.targets == ()
    state.update(targets=("value", "FFN out"))  # value ticked: query and key come with it
    assert state.choices.targets == ("query", "key", "value", "FFN out")
    cfg = state.config()
    assert cfg.lora.targets == ("query", "key", "value", "FFN out")
    ref, model = engine_count_for(cfg)
    assert state.parameter_estimate().trainable == ref.trainable  # c_attn counted once, not three times
    assert set(lora_layers(model)) == {f"transformer.h.{i}.{p}" for i in layers.blocks
                                       for p in ("attn.c_attn", "mlp.c_proj")}


def test_head_only_is_refused_in_generate_mode(tmp_path, tiny_layers):
    from workbench.ui.settings import HEAD_NOT_FOR_LM

    state = gen_state(tmp_path, tiny_layers)
    state.set_task("causal-lm")
    state.update(method="head")
    assert state.problem() == f"Cannot train with these settings: {HEAD_NOT_FOR_LM}."
    assert state.start() is False and state.message.kind == "error" and "head only is for a classifier" in \
        state.message.text
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    # The engine refuses it too (the panel's check says so first, in the panel's words).
    from workbench.engine.config import validate

    with pytest.raises(ValueError):
        validate(state.defaults.with_changes(method="head"))


def test_a_generative_run_is_never_called_at_chance():
    from workbench.engine.config import preset

    cfg = preset("generate")
    fell = generative_run(cfg, [], exact=0.0, losses=(3.0, 1.5))
    assert run_outcome(fell, chance=0.5).verdict == "learned"  # next-token accuracy 0.4 < "chance" 0.5: no matter
    rose = run_outcome(generative_run(cfg, [], exact=0.0, losses=(3.0, 9.0)), chance=0.5)
    assert rose.verdict == "did not learn" and "loss rose from 3 to 9" in rose.sentence and "chance" not in \
        rose.sentence


def test_try_it_answers_with_the_base_the_newest_and_a_stored_run(tmp_path, tiny_layers):
    from workbench.engine.config import preset
    from workbench.engine.generation import generate, normalize_answer
    from workbench.lora.adapters import save_adapter

    state = gen_state(tmp_path, tiny_layers)
    state.set_task("causal-lm")
    first = _skill_validation()[0]
    assert state.prompt == first["prompt"]  # prefilled with the first held-out prompt
    # No run yet: the base model answers alone.
    only = state.try_it()
    base, tokenizer = load_base(LM, task="causal-lm")
    expected_base = normalize_answer(generate(base, tokenizer, [first["prompt"]], max_new_tokens=24)[0])
    assert only.base.text == expected_base and only.adapted is None and only.stored is None
    assert only.reference == first["completion"].strip() and only.base.correct == (expected_base == only.reference)

    # Two stored runs with hand-set adapters (different seeds): the newest answers as "adapted",
    # the one chosen answers as "stored", each through its adapter file.
    ids = []
    for seed in (1, 2):
        model, _ = adapted_story_lm(seed)
        run = generative_run(preset("generate", seed=seed), [], minute=seed)
        folder = store.save_run(run, state.runs_dir)
        save_adapter(model, folder / "adapter")
        ids.append(run.run_id)
    state.refresh()
    assert [r.run_id for r in state.try_runs()] == ids
    state.choose_run(ids[0])
    want = {seed: normalize_answer(generate(adapted_story_lm(seed)[0], tokenizer, [PROMPT], max_new_tokens=24)[0])
            for seed in (1, 2)}
    state.try_it(PROMPT)
    answers = state.answers
    assert answers.prompt == PROMPT and answers.reference is None  # not a held-out prompt: no reference
    assert answers.base.text == normalize_answer(generate(base, tokenizer, [PROMPT], max_new_tokens=24)[0])
    assert (answers.adapted.run_id, answers.adapted.text) == (ids[1], want[2])
    assert (answers.stored.run_id, answers.stored.text) == (ids[0], want[1])
    assert len({answers.base.text, want[1], want[2]}) == 3, answers  # the adapters really change the answers
    with pytest.raises(ValueError, match="not a stored generative run"):
        state.choose_run("nope")
    # A run kept in memory (keep_model) answers as the newest without its adapter being read.
    kept, _ = adapted_story_lm(3)
    last = generative_run(preset("generate"), [])
    last.model, last.run_id = kept, "in-memory"
    state.last_result = last
    assert state.try_it().adapted.text == normalize_answer(generate(kept, tokenizer, [PROMPT], max_new_tokens=24)[0])
    # Try it is for generate mode only.
    state.set_task("classification")
    assert state.try_it() is None and "choose 'generate'" in state.message.text


def test_samples_appear_in_the_table_the_samples_view_and_the_export(tmp_path, tiny_layers):
    from workbench.engine.config import preset
    from workbench.ui.run_list import samples_frame

    samples = [{"step": 5, "prompt": "Statement: A.\nQuestion:", "reference": " Is A?", "answer": " a cake"},
               {"step": 5, "prompt": "Statement: B.\nQuestion:", "reference": " Was B?", "answer": ""},
               {"step": 10, "prompt": "Statement: A.\nQuestion:", "reference": " Is A?", "answer": " Is A?\nMore"},
               {"step": 10, "prompt": "Statement: B.\nQuestion:", "reference": " Was B?", "answer": " Is B?"}]
    run = generative_run(preset("generate"), samples, exact=0.5)
    store.save_run(run, tmp_path / "runs")
    state = gen_state(tmp_path, tiny_layers)
    assert state.table().empty  # classify mode shows classification runs only
    state.set_task("causal-lm")
    row = state.table().iloc[0]
    assert (row["exact match"], row["last answer"], row["run id"]) == ("50.0%", "Is A?", run.run_id)
    frame = samples_frame(store.load_run(tmp_path / "runs" / run.run_id))
    assert list(frame.columns) == ["prompt", "reference", "step 5", "step 10"]
    assert frame.values.tolist() == [["Statement: A.\nQuestion:", "Is A?", "a cake", "Is A?"],
                                     ["Statement: B.\nQuestion:", "Was B?", "", "Is B?"]]
    # The export: exact match in percent, as in the table, and the last answer.
    state.select_all()
    folder = state.export()
    csv = pd.read_csv(folder / "runs.csv")
    assert csv["exact match (%)"].tolist() == [50.0] and csv["last answer"].tolist() == ["Is A?"]
    # The compare figure scores a generative run by its exact match, on an exact-match axis.
    from workbench.viz.run_figures import accuracy_vs_params

    ax = accuracy_vs_params(state.selected_results()).axes[0]
    assert ax.get_ylabel() == "exact match on held-out prompts (%)" and "Exact match" in ax.get_title(loc="left")
    assert ax.collections[0].get_offsets()[0][1] == pytest.approx(0.5)


def test_the_view_in_generate_mode(tmp_path, tiny_layers):
    from workbench.engine.config import preset
    from workbench.lora.adapters import save_adapter
    from workbench.ui.panel import GENERATE_TAB_TITLES, TAB_TITLES

    model, _ = adapted_story_lm(1)
    run = generative_run(preset("generate"), [{"step": 200, "prompt": "Statement: A.\nQuestion:",
                                               "reference": " Is A?", "answer": " Is A?"}])
    folder = store.save_run(run, tmp_path / "runs")
    save_adapter(model, folder / "adapter")
    panel = make_panel(tmp_path, tiny_layers)
    panel.state._layers["causal-lm"] = ModelLayers.load(LM, task="causal-lm")
    assert tuple(panel.tabs.titles) == TAB_TITLES and "head" in [v for _, v in panel.method.options]
    panel.task.value = "causal-lm"
    assert tuple(panel.tabs.titles) == GENERATE_TAB_TITLES
    assert list(panel.targets) == ["query", "key", "value", "attention output", "FFN in", "FFN out"]
    assert [k for k, b in panel.targets.items() if b.value] == list(preset("generate").lora.targets)
    assert [v for _, v in panel.method.options] == ["lora", "full"] and "no head only" in panel.method_note.value
    assert panel.prompt.value == _skill_validation()[0]["prompt"]
    assert "exact match" in panel.table.value and "last answer" in panel.table.value and "Is A?" in panel.table.value
    # The role names break after their commas first, in a label and a targets cell of at least 6em (the
    # browser once squeezed them to a letter a line): every comma in the table is a break point.
    assert "query,<wbr>key" in panel.table.value and "td:nth-child(5), " in panel.table.value
    assert "td:last-child { min-width: 6em; }" in panel.table.value
    assert "step 200" in panel.samples.value and panel.samples_box.layout.display == "flex"
    # Toggling a role reaches the state; Try it shows both answers side by side.
    for key, box in panel.targets.items():
        box.value = key in ("query", "value")
    assert panel.state.choices.targets == ("query", "value") and panel.state.config().lora.targets == ("query", "value")
    panel.prompt.value = PROMPT
    panel.try_button.click()
    a = panel.state.answers
    assert a.prompt == PROMPT and a.adapted.run_id == run.run_id
    html_text = panel.answers.value
    assert len(re.findall(r"class='workbench-answer[ ']", html_text)) == 3 and "data-who='base model'" in html_text
    import html as h

    assert h.escape(a.base.text) in html_text and h.escape(a.adapted.text) in html_text
    panel.try_run.value = run.run_id
    assert panel.state.answers.stored.text == a.adapted.text
    panel.task.value = "classification"
    assert tuple(panel.tabs.titles) == TAB_TITLES and list(panel.targets) == list(KINDS)
    assert panel.samples_box.layout.display == "none"


@pytest.mark.slow
def test_a_generative_run_answers_in_try_it_as_soon_as_it_ends(tmp_path, tiny_layers):
    """A real short run of story-lm on the skill: after it, Try it's newest answer is its own, unasked."""
    from workbench.engine.generation import generate, normalize_answer
    from workbench.lora.adapters import load_adapter
    from workbench.ui.run_control import default_train

    def quick(cfg, **kwargs):  # fewer prompts answered at evaluation: seconds, not a minute
        return default_train(cfg.with_changes(max_generate_examples=8), **kwargs)

    state = gen_state(tmp_path, tiny_layers, train=quick)
    state.set_task("causal-lm")
    state.update(steps=4)
    events: list[str] = []
    state.subscribe(events.append)
    assert state.start() is True
    result = state.last_result
    assert result is not None and result.status == "completed" and result.model is not None, state.message.text
    assert "exact match" in state.message.text and events[-1] == "answers"
    answers = state.answers
    assert answers.adapted.run_id == result.run_id and answers.prompt == _skill_validation()[0]["prompt"]
    # Its answer is what its stored adapter, loaded into a fresh base, writes.
    fresh, tokenizer = load_base(LM, task="causal-lm")
    load_adapter(fresh, Path(result.path) / "adapter")
    assert answers.adapted.text == normalize_answer(generate(fresh, tokenizer, [answers.prompt],
                                                             max_new_tokens=24)[0])
    row = state.table().iloc[-1]
    assert row["run id"] == result.run_id and row["last answer"] != "–"
    assert list(state.samples_table(result.run_id).columns)[-1] == "step 4"


def test_a_task_that_cannot_load_is_said_and_the_toggle_stays(tmp_path, tiny_layers):
    state = make_state(tmp_path, tiny_layers, generate_model=str(tmp_path / "no-such-model"))
    from workbench.ui.panel import Workbench

    panel = Workbench(state=state)
    panel.task.value = "causal-lm"
    assert panel.task.value == state.task == "classification"
    assert state.message.kind == "error" and "no-such-model" in state.message.text
    assert list(panel.targets) == list(KINDS) and state.config() == tiny_config()

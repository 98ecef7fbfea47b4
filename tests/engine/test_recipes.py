"""Recipes: RunConfig <-> YAML, strict reading with the key's path, and the presets shipped as files."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.engine.config import PRESETS, RunConfig, preset
from workbench.engine.recipes import Recipe, RecipeError, read_recipe, recipe_from_text, recipe_text
from workbench.lora.config import LoRAConfig

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def test_every_preset_is_shipped_as_a_recipe_file_with_the_same_settings():
    assert sorted(p.stem for p in RECIPES.glob("*.yaml")) == sorted(PRESETS)
    for name in PRESETS:
        assert RunConfig.from_yaml(RECIPES / f"{name}.yaml") == preset(name), name


def test_a_config_with_every_field_changed_round_trips(tmp_path):
    cfg = RunConfig(method="lora", lora=LoRAConfig(rank=4, alpha=8, targets="all-linear", layers=(1, 0), dropout=0.1,
                                                   rslora=True, init="gaussian", loraplus_ratio=16),
                    quantize="nf4", model_dropout=0.0, model="tiny-bert", data="x.csv", eval_data="y.csv",
                    text_column="t", label_column="l", max_length=16, max_train_examples=10, max_eval_examples=None,
                    heldout_data=None, max_generate_examples=3, max_new_tokens=5, steps=7, lr=5e-05, batch_size=2,
                    weight_decay=0.01, warmup_ratio=0.5, max_grad_norm=0.0, eval_every=0, seed=3, device="cpu",
                    bf16=False, threads=1, name="mine")
    text = cfg.to_yaml(tmp_path / "r.yaml")
    assert (tmp_path / "r.yaml").read_text() == text
    assert RunConfig.from_yaml(tmp_path / "r.yaml") == cfg
    assert "lr: 5.0e-05" in text and "targets: all-linear" in text and "layers: [0, 1]" in text


def test_a_short_recipe_keeps_the_defaults_and_reads_numbers_as_yaml_1_2_does():
    recipe = recipe_from_text("model: tiny-bert\nlr: 1e-3\nlora: {rank: 4, targets: [query]}\ntrack: mlflow\n")
    assert recipe == Recipe(RunConfig(model="tiny-bert", lr=0.001, lora=LoRAConfig(rank=4, targets=("query",))),
                            track="mlflow")
    assert recipe_from_text("") == Recipe(RunConfig())  # an empty file: every default
    assert recipe_from_text("bf16: auto\nthreads: null\n").config == RunConfig(bf16="auto", threads=None)


@pytest.mark.parametrize("text, message", [
    ("stpes: 3", "r.yaml: stpes: unknown key (did you mean steps?); the keys allowed are: method, lora,"),
    ("rank: 4", "r.yaml: rank: rank is a LoRA setting: put it under lora: (lora: {rank: ...})"),
    ("lora: {rnak: 3}", "r.yaml: lora.rnak: unknown key (did you mean lora.rank?); the keys allowed under lora are: "
                        "rank, alpha,"),
    ("lora: {rank: '8'}", "r.yaml: lora.rank: expected an integer, got '8' (a string)"),
    ("steps: 2.5", "r.yaml: steps: expected an integer, got 2.5 (a number)"),
    ("lora: {layers: [a]}", "r.yaml: lora.layers: expected a list of integers or null, got ['a'] (a list)"),
    ("method: lroa", "r.yaml: method: expected one of 'lora', 'full', 'head', got 'lroa' (a string)"),
    ("lora: {rank: 0}", "r.yaml: lora.rank: rank must be a positive integer, got 0"),
    ("lora: {dropout: 1.5}", "r.yaml: lora.dropout: dropout must be in [0, 1), got 1.5"),
    ("lr: -1", "r.yaml: lr: lr (learning rate) must be a positive number, got -1"),
    ("max_length: 1", "r.yaml: max_length: max_length (tokens per example: at least a token and its next) must be "
                      "an integer >= 2, got 1"),
    ("method: full\nquantize: nf4", "r.yaml: quantize: quantize='nf4' stores the frozen base in nf4"),
    ("lora: [1]", "r.yaml: lora: expected a mapping of LoRA settings (rank, alpha, ...), got [1] (a list)"),
    ("- 1", "r.yaml: a recipe is a mapping of settings (key: value lines), got a list"),
    ("steps: 1\nsteps: 2", "r.yaml: not valid YAML (line 2, column 1): key 'steps' is given twice (first on line 1)"),
    ("lr: [", "r.yaml: not valid YAML (line 1, column 6)"),
    ("track: wandb", "r.yaml: track: expected 'mlflow' or null, got 'wandb'"),
])
def test_bad_recipes_are_refused_with_the_key_s_path_and_what_is_allowed(text, message):
    with pytest.raises(RecipeError) as e:
        recipe_from_text(text, "r.yaml")
    assert str(e.value).startswith(message), str(e.value)


def test_a_missing_file_or_a_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no recipe file .*nope\.yaml"):
        read_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match="a folder; a recipe is a YAML file"):
        RunConfig.from_yaml(tmp_path)


def test_recipe_text_says_where_it_came_from_and_reads_back():
    cfg = preset("tiny", rank=2)
    text = recipe_text(cfg, header="from run X\nsecond line")
    assert text.startswith("# from run X\n# second line\n# LoRA Workbench recipe")
    assert recipe_from_text(text).config == cfg
    with pytest.raises(TypeError, match="a recipe is written from a RunConfig, got dict"):
        recipe_text({"steps": 3})  # type: ignore[arg-type]

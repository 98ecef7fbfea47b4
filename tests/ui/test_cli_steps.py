"""Every step from the shell: train from a recipe, a run's recipe, generate, export (plan: tests/lessons).

The runs are tiny (the tiny preset, the generate preset cut to a few steps on story-lm) and
trained once per module; each command is checked against the API it stands for.
"""

from __future__ import annotations

import os

import pandas as pd
import pytest
import torch

import workbench as wb
from workbench.engine.config import RunConfig, preset
from workbench.engine.generation import generate
from workbench.records.run_models import find_run, run_model
from workbench.ui.cli import build_parser, config_from_args, main

QUICK_LM = dict(steps=3, eval_every=3, batch_size=4, max_train_examples=24, max_eval_examples=8,
                max_generate_examples=4, max_new_tokens=6)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A run store with a language model's LoRA run, a head-only run and a QLoRA run (tiny, in-process)."""
    root = tmp_path_factory.mktemp("store") / "runs"
    lm = wb.train(preset("generate", **QUICK_LM), runs_dir=root, progress=False, fresh_process=False)
    head = wb.train(preset("tiny", method="head", steps=1, eval_every=0), runs_dir=root, progress=False,
                    fresh_process=False)
    qlora = wb.train(preset("tiny", quantize="nf4", steps=1, eval_every=0), runs_dir=root, progress=False,
                     fresh_process=False)
    for r in (lm, head, qlora):
        assert r.status == "completed", r.message
    return {"root": str(root), "lm": lm.run_id, "head": head.run_id, "qlora": qlora.run_id}


@pytest.fixture(autouse=True)
def in_process(monkeypatch):
    """The CLI's runs train here, not in a worker process (the worker is tested in tests/engine): seconds saved."""
    from workbench.engine import launch

    monkeypatch.setattr(launch, "use_fresh_process", lambda cfg, fresh_process=None: False)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- recipes


def test_a_recipe_trains_and_its_run_s_recipe_gives_the_same_loss_curve(tmp_path, capsys):
    runs = str(tmp_path / "runs")
    first = ["train", "recipes/tiny.yaml", "--steps", "4", "--eval-every", "2", "--runs-dir", runs, "--quiet"]
    code, out, _ = run_cli(capsys, *first)
    assert code == 0 and out.startswith("LoRA r=8 (query,value): completed")
    (run_a,) = wb.load_runs(runs)
    assert run_a.config == preset("tiny", steps=4, eval_every=2)  # the file's settings, the flags over them
    code, out, _ = run_cli(capsys, "recipe", run_a.run_id[:-2], "--runs-dir", runs, "-o", str(tmp_path / "again.yaml"))
    assert code == 0 and out == f"wrote {tmp_path / 'again.yaml'}\n"
    assert RunConfig.from_yaml(tmp_path / "again.yaml") == run_a.config
    assert run_cli(capsys, "train", str(tmp_path / "again.yaml"), "--runs-dir", runs, "--quiet")[0] == 0
    run_b = next(r for r in wb.load_runs(runs) if r.run_id != run_a.run_id)
    columns = ["step", "train_loss", "lr", "eval_loss", "eval_accuracy"]
    pd.testing.assert_frame_equal(run_b.history[columns], run_a.history[columns])
    assert len(run_a.history) == 4 and run_a.history["eval_loss"].notna().sum() == 2


def test_flags_override_a_recipe_and_a_recipe_excludes_a_preset(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    preset("generate", rank=4).to_yaml(path)
    args = build_parser().parse_args(["train", str(path), "--steps", "7", "--alpha", "2", "--method", "lora"])
    assert config_from_args(args) == preset("generate", rank=4, alpha=2, steps=7)
    args = build_parser().parse_args(["train", str(path), "--method", "full"])
    assert config_from_args(args) == preset("generate", rank=4, method="full")
    code, _, err = run_cli(capsys, "train", str(path), "--preset", "tiny")
    assert code == 2 and f"error: give a recipe file ({path}) or --preset tiny, not both" in err
    path.write_text("lora: {rank: 0}\n")
    code, _, err = run_cli(capsys, "train", str(path), "--runs-dir", str(tmp_path / "runs"))
    assert code == 2 and err == f"error: {path}: lora.rank: rank must be a positive integer, got 0\n"
    assert not (tmp_path / "runs").exists()
    code, _, err = run_cli(capsys, "train", str(tmp_path / "missing.yaml"))
    assert code == 2 and f"error: no recipe file {tmp_path / 'missing.yaml'}" in err


def test_the_recipe_command_writes_a_run_s_or_a_preset_s_recipe(store, capsys):
    code, out, _ = run_cli(capsys, "recipe", store["lm"], "--runs-dir", store["root"])
    assert code == 0 and out.startswith(f"# the recipe of run {store['lm']} (completed, ")
    assert wb.RunConfig.from_yaml  # the text reads back as the run's config
    from workbench.engine.recipes import recipe_from_text

    assert recipe_from_text(out).config == find_run(store["lm"], store["root"]).config
    code, out, _ = run_cli(capsys, "recipe", "--preset", "generate")
    assert code == 0 and recipe_from_text(out).config == preset("generate")


@pytest.mark.parametrize("argv, message", [
    (["recipe"], "error: give a stored run's id (python -m workbench recipe RUN_ID) or --preset NAME, one of them"),
    (["recipe", "20990101", "--preset", "tiny"], "error: give a stored run's id"),
    (["recipe", "20990101-lora-r8-0000"], "error: no run '20990101-lora-r8-0000' under "),
    (["recipe", "../etc"], "error: a run id is a folder name under the run store"),
])
def test_recipe_command_errors(store, capsys, argv, message):
    code, _, err = run_cli(capsys, *argv, "--runs-dir", store["root"])
    assert code == 2 and err.startswith(message), err
    if "20990101-lora" in message:
        assert "the latest are: " in err and store["qlora"] in err


def test_an_ambiguous_run_id_lists_the_runs_it_starts(store):
    with pytest.raises(ValueError, match=r"'2' starts 3 run ids under .*; give more of the id"):
        find_run("2", store["root"])


# --------------------------------------------------------------------------- generate


def test_generate_from_a_stored_run_answers_as_its_model_does(store, capsys):
    model, tokenizer = run_model(store["lm"], store["root"])
    prompts = ["Tom is tall.", "The dog runs."]
    expected = generate(model, tokenizer, prompts, max_new_tokens=8)
    code, out, _ = run_cli(capsys, "generate", "--run", store["lm"], "--runs-dir", store["root"],
                           "--max-new-tokens", "8", *prompts)
    assert code == 0 and out == "".join(f"{p}\t{a}\n" for p, a in zip(prompts, expected))
    sampled = generate(model, tokenizer, prompts[:1], max_new_tokens=8, temperature=1.5, seed=7)
    argv = ["generate", "--run", store["lm"], "--runs-dir", store["root"], "--max-new-tokens", "8",
            "--temperature", "1.5", "--seed", "7", prompts[0]]
    assert run_cli(capsys, *argv)[1] == sampled[0] + "\n"
    assert run_cli(capsys, *argv)[1] == sampled[0] + "\n"  # the same seed: the same answer


def test_generate_from_an_adapter_folder_and_from_the_base(store, capsys):
    folder = os.path.join(store["root"], store["lm"], "adapter")
    model, tokenizer = run_model(store["lm"], store["root"])
    assert run_cli(capsys, "generate", "--adapter", folder, "--max-new-tokens", "6", "Tom is tall.")[1] == \
        generate(model, tokenizer, "Tom is tall.", max_new_tokens=6)[0] + "\n"
    base, tok = wb.load_base("story-lm", task="causal-lm")
    assert run_cli(capsys, "generate", "--base", "story-lm", "--max-new-tokens", "6", "Tom is tall.")[1] == \
        generate(base, tok, "Tom is tall.", max_new_tokens=6)[0] + "\n"


@pytest.mark.parametrize("argv, message", [
    (["x"], "error: say who answers: --run RUN_ID (a stored run), --adapter FOLDER (an adapter on its base) or "
            "--base MODEL"),
    (["--run", "{lm}", "--base", "story-lm", "x"], "error: --run brings its own base and adapter"),
    (["--run", "{head}", "x"], "error: run {head} is a classification run: it picks a label and writes no text"),
    (["--adapter", "{root}", "x"], "error: {root} is not an adapter folder: adapter_config.json is missing"),
    (["--run", "{lm}", "--temperature", "-1", "x"], "error: temperature (0 for greedy decoding, > 0 to sample) must be "
                                                    "a number in [0, inf), got -1.0"),
    (["--base", "story-lm", "--max-new-tokens", "0", "x"], "error: max_new_tokens (tokens to write per prompt) must be "
                                                           "a positive integer, got 0"),
])
def test_generate_errors(store, capsys, argv, message):
    argv = [a.format(**store) for a in argv]
    code, _, err = run_cli(capsys, "generate", "--runs-dir", store["root"], *argv)
    assert code == 2 and err.startswith(message.format(**store)), err


def test_generate_needs_a_prompt(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["generate", "--base", "story-lm"])
    assert e.value.code == 2 and "PROMPT" in capsys.readouterr().err


# --------------------------------------------------------------------------- export


def test_export_writes_the_merged_run_as_a_plain_transformers_folder(store, capsys, tmp_path):
    from transformers import AutoModelForCausalLM

    code, out, _ = run_cli(capsys, "export", store["lm"], str(tmp_path / "merged"), "--runs-dir", store["root"])
    assert code == 0 and out.startswith(f"wrote {tmp_path / 'merged'}: ")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    model, _ = run_model(store["lm"], store["root"])
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.no_grad():
        want, got = model(input_ids=ids).logits, merged(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    code, _, err = run_cli(capsys, "export", store["lm"], str(tmp_path / "merged"), "--runs-dir", store["root"])
    assert code == 2 and err == (f"error: {tmp_path / 'merged'} exists and is not empty: give an empty or new folder, "
                                 "or --overwrite to replace what is there\n")
    assert run_cli(capsys, "export", store["lm"], str(tmp_path / "merged"), "--overwrite",
                   "--runs-dir", store["root"])[0] == 0


def test_export_of_a_qlora_run_needs_dequantize(store, capsys, tmp_path):
    argv = ["export", store["qlora"], str(tmp_path / "q"), "--runs-dir", store["root"]]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and err.startswith(f"error: run {store['qlora']} trained on a nf4 base (QLoRA): its update cannot "
                                        "be merged into the quantized codes. Add --dequantize")
    assert not (tmp_path / "q").exists()
    code, out, _ = run_cli(capsys, *argv, "--dequantize")
    assert code == 0 and (tmp_path / "q" / "config.json").is_file()


def test_export_of_a_run_without_an_adapter_says_why(store, capsys, tmp_path):
    code, _, err = run_cli(capsys, "export", store["head"], str(tmp_path / "h"), "--runs-dir", store["root"])
    assert code == 2 and err.startswith(f"error: run {store['head']} has no stored adapter (a head run keeps no "
                                        "adapter), so its trained model cannot be loaded again")


def test_evaluate_works_on_a_saved_run_and_on_an_adapter_folder(store):
    model, tokenizer = wb.run_model(store["lm"], store["root"])
    result = wb.evaluate(model, tokenizer, "skill", metrics=["exact_match", "chrf"], max_examples=4, max_new_tokens=6)
    prompts = wb.load_prompts("skill", "validation").head(4)
    answers = generate(model, tokenizer, prompts.prompts, max_new_tokens=6)
    assert result["exact_match"] == wb.exact_match(answers, prompts.completions)
    again = wb.evaluate(*wb.adapter_model(os.path.join(store["root"], store["lm"], "adapter")), "skill",
                        metrics=["exact_match", "chrf"], max_examples=4, max_new_tokens=6)
    assert again.metrics == result.metrics

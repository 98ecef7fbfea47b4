"""The command line as a user meets it: ``--help`` on every subcommand, the API's own errors,
a tracker that is down named in the output, and (slow) every step from a shell in a folder
other than the checkout, with the bundled story-lm.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import workbench as wb
from workbench.__main__ import COMMANDS, main
from workbench.engine.generation import generate
from workbench.engine.models import resolve_model_name
from workbench.lessons.planner import plan
from workbench.records.run_models import run_model
from workbench.ui.cli import build_parser

SUBCOMMANDS = ("train", "sweep", "runs", "recipe", "generate", "export", "search", "plan")


@pytest.fixture
def in_process(monkeypatch):
    """The CLI's runs train here, not in a worker process (the worker is tested in tests/engine)."""
    from workbench.engine import launch

    monkeypatch.setattr(launch, "use_fresh_process", lambda cfg, fresh_process=None: False)


def test_every_subcommand_has_a_help_and_every_option_says_what_it_is(capsys):
    parser = build_parser(COMMANDS)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(sub.choices) == sorted(SUBCOMMANDS)
    listed = {a.dest: a.help for a in sub._choices_actions}
    for name in SUBCOMMANDS:
        assert listed[name], f"{name} has no line in `python -m workbench --help`"
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        out = capsys.readouterr().out
        assert e.value.code == 0 and out.startswith(f"usage: python -m workbench {name} "), out[:200]
        for action in sub.choices[name]._actions:
            assert action.help and action.help != argparse.SUPPRESS, f"{name} {action.option_strings or action.dest}"
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and all(f"    {name}" in out for name in SUBCOMMANDS)


def _api_error(call) -> str:
    with pytest.raises((ValueError, TypeError, OSError)) as e:
        call()
    return str(e.value)


BAD_RECIPE = "steps: 4\nlora:\n  rank: 0\n"


@pytest.mark.parametrize("argv, api", [
    (["train", "--preset", "tiny", "--rank", "0"], lambda p: wb.preset("tiny", rank=0)),
    (["train", "--preset", "tiny", "--lr", "-1"], lambda p: wb.preset("tiny", lr=-1.0)),
    (["train", "{recipe}"], lambda p: wb.RunConfig.from_yaml(p)),
    (["search", "--preset", "tiny", "--space", "rank=1,2"], lambda p: wb.search(wb.preset("tiny"), {"rank": [1, 2]})),
    (["search", "--preset", "tiny", "--space", "rnak=1,2", "--metric", "eval_loss"],
     lambda p: wb.search(wb.preset("tiny"), {"rnak": [1, 2]}, metric="eval_loss")),
    (["plan", "story-lm", "--seq-len", "0"], lambda p: plan(resolve_model_name("story-lm"), seq_len=0)),
    (["generate", "--base", "story-lm", "--temperature", "-1", "x"],
     lambda p: generate(*wb.load_base("story-lm", task="causal-lm"), ["x"], temperature=-1.0)),
])
def test_the_shell_says_the_api_s_own_error(argv, api, tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(BAD_RECIPE)
    argv = [a.format(recipe=recipe) for a in argv] + (["--runs-dir", str(tmp_path / "runs")]
                                                      if argv[0] in ("train", "search") else [])
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err == f"error: {_api_error(lambda: api(recipe))}\n"
    assert not (tmp_path / "runs").exists()  # refused before any run


def test_a_tracker_that_is_down_is_named_and_the_run_completes(tmp_path, capsys, monkeypatch, in_process):
    pytest.importorskip("mlflow")
    from workbench.records.tracking import TrackerWarning

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the socket is closed
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    with pytest.warns(TrackerWarning):
        code = main(["train", "--preset", "tiny", "--steps", "2", "--eval-every", "0", "--track", "mlflow",
                     "--runs-dir", str(tmp_path / "runs"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "completed" in out.splitlines()[0]
    assert f"\n  tracker: the MLflow tracker at http://127.0.0.1:{port} was unreachable" in out
    assert "did not accept a connection" in out and "kept in the run store only" in out
    assert len(wb.runs(tmp_path / "runs")) == 1


# --------------------------------------------------------------------------- from a shell, elsewhere


def shell(cwd: Path, *argv: str) -> str:
    """``python -m workbench ARGV`` in ``cwd`` (not the checkout), as a user types it; its output."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([sys.executable, "-m", "workbench", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"{argv}: {done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
def test_every_step_from_a_shell_outside_the_checkout(tmp_path):
    home = tmp_path / "elsewhere"
    home.mkdir()
    assert shell(home, "recipe", "--preset", "generate", "-o", "gen.yaml").startswith("wrote gen.yaml")
    quick = ["--steps", "4", "--eval-every", "2", "--batch-size", "4", "--max-train-examples", "24",
             "--max-eval-examples", "8", "--max-generate-examples", "4", "--max-new-tokens", "6", "--quiet"]
    printed = shell(home, "train", "gen.yaml", *quick)
    (first,) = [p.name for p in (home / "runs").iterdir()]
    history = pd.read_csv(home / "runs" / first / "history.csv")
    assert (f"exact match {history['eval_exact_match'].dropna().iloc[-1]:.3f} on held-out prompts, next-token "
            f"accuracy {history['eval_accuracy'].dropna().iloc[-1]:.3f}") in printed  # a language model's scores
    shell(home, "recipe", first, "-o", "again.yaml")
    shell(home, "train", "again.yaml", "--quiet")
    second = next(p.name for p in (home / "runs").iterdir() if p.name != first)
    curves = [pd.read_csv(home / "runs" / r / "history.csv")["train_loss"].tolist() for r in (first, second)]
    assert len(curves[0]) == 4 and curves[0] == curves[1]  # the run's recipe: the same loss curve

    model, tokenizer = run_model(first, home / "runs")
    prompt = "Statement: Tom is tall.\nQuestion:"
    assert shell(home, "generate", "--run", first, "--max-new-tokens", "6", prompt) == \
        generate(model, tokenizer, prompt, max_new_tokens=6)[0] + "\n"
    base, base_tok = wb.load_base("story-lm", task="causal-lm")
    assert shell(home, "generate", "--base", "story-lm", "--max-new-tokens", "6", "Once upon a time") == \
        generate(base, base_tok, "Once upon a time", max_new_tokens=6)[0] + "\n"

    assert shell(home, "export", first, "merged").startswith("wrote merged: ")
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(home / "merged").eval()
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.no_grad():
        want, got = model(input_ids=ids).logits, merged(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))

    out = shell(home, "plan", "story-lm", "--seq-len", "64", "--gpus", "1")
    assert "will it fit a 1 GB GPU: fits" in out

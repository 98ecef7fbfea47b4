"""The command line's flags -> RunConfig, without training (one short run at the end).

The expected configs are written out field by field (``RunConfig(..., lora=LoRAConfig(...))``),
not through ``preset``/``with_changes``, so a flag that lands in the wrong place shows.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

import pytest

from workbench.engine.config import PRESETS, RunConfig
from workbench.lora.config import LoRAConfig
from workbench.ui import cli
from workbench.ui.cli import build_parser, config_from_args, main

LORA_FIELDS = [f.name for f in fields(LoRAConfig)]
RUN_FIELDS = [f.name for f in fields(RunConfig) if f.name not in ("method", "lora")]


def subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def actions_by_dest(command: str) -> dict[str, argparse.Action]:
    return {a.dest: a for a in subparser(command)._actions if a.dest != "help"}


def parse(*argv: str) -> RunConfig:
    return config_from_args(build_parser().parse_args(list(argv)))


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_every_lora_setting_has_its_flag_with_a_help(command):
    actions = actions_by_dest(command)
    # A sweep sets the rank per run (--ranks), so it has no --rank.
    expected = [n for n in LORA_FIELDS if not (command == "sweep" and n == "rank")]
    for name in expected:
        action = actions.get(name)
        assert action is not None, f"no flag for LoRAConfig.{name}"
        assert f"--{name.replace('_', '-')}" in action.option_strings
        assert action.help and action.help != f"LoRAConfig.{name}", f"--{name} has no help of its own"
    assert ("rank" in actions) == (command == "train")
    assert actions["ranks" if command == "sweep" else "method"].help


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_every_flag_is_a_setting_or_a_named_cli_option(command):
    """A flag whose dest were not a field would be dropped silently by config_from_args."""
    cli_only = {"train": {"preset", "runs_dir", "quiet", "recipe", "track"},
                "sweep": {"preset", "runs_dir", "quiet", "ranks", "with_full", "with_head", "alpha_per_rank",
                          "variants", "full_lr", "head_lr", "out", "backend", "address", "track"}}[command]
    settings = set(LORA_FIELDS) | set(RUN_FIELDS) | ({"method"} if command == "train" else set())
    dests = set(actions_by_dest(command))
    assert dests - settings == cli_only
    assert set(RUN_FIELDS) - {"name"} <= dests


def test_no_flags_give_the_preset():
    assert parse("train") == RunConfig(**PRESETS["default"])
    assert parse("train", "--preset", "tiny") == RunConfig(**PRESETS["tiny"])


def test_lora_flags_go_into_lora_and_run_flags_into_the_run():
    cfg = parse("train", "--method", "lora", "--rank", "4", "--alpha", "8", "--targets", "query,value,key",
                "--layers", "1,0", "--dropout", "0.1", "--rslora", "--init", "pissa", "--dora",
                "--loraplus-ratio", "16", "--steps", "5", "--lr", "0.01", "--batch-size", "4", "--seed", "3",
                "--bf16", "off", "--model-dropout", "0.0", "--name", "mine")
    lora = LoRAConfig(rank=4, alpha=8.0, targets=("query", "value", "key"), layers=(0, 1), dropout=0.1, rslora=True,
                      init="pissa", dora=True, loraplus_ratio=16.0)
    expected = RunConfig(**(PRESETS["default"] | dict(steps=5, lr=0.01, batch_size=4, seed=3, bf16=False,
                                                      model_dropout=0.0, name="mine")), method="lora", lora=lora)
    assert cfg == expected
    assert cfg.lora.slug() == "dora-r4-rslora-pissa-plus16"


def test_the_readme_command_line():
    cfg = parse("train", "--method", "lora", "--rank", "8", "--alpha", "16", "--targets", "query,value", "--steps", "5")
    assert (cfg.method, cfg.steps, cfg.lora) == ("lora", 5, LoRAConfig(rank=8, alpha=16.0, targets=("query", "value")))


@pytest.mark.parametrize("text, targets", [
    ("all-linear", "all-linear"),
    (r"bert\.encoder\.layer\.\d+\.output\.dense", r"bert\.encoder\.layer\.\d+\.output\.dense"),
    ("query, value", ("query", "value")),
])
def test_targets_are_names_or_one_pattern(text, targets):
    assert parse("train", "--targets", text).lora.targets == targets


def test_booleans_can_be_turned_off_explicitly():
    assert parse("train", "--no-rslora", "--no-dora").lora == LoRAConfig(rslora=False, dora=False)
    assert parse("train", "--rslora").lora.rslora is True


@pytest.mark.parametrize("method", ["full", "head"])
def test_method_flags_reach_the_config(method):
    cfg = parse("train", "--method", method, "--lr", "5e-05")
    assert (cfg.method, cfg.lr, cfg.lora) == (method, 5e-05, LoRAConfig())


def test_lora_settings_with_another_method_are_refused(capsys):
    with pytest.raises(ValueError, match="--rank, --dora: LoRA settings apply to --method lora only"):
        parse("train", "--method", "full", "--rank", "4", "--dora")
    assert main(["train", "--method", "head", "--alpha", "4"]) == 2
    assert "--alpha: LoRA settings apply to --method lora only" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--rank", "0"], "rank must be a positive integer, got 0"),
    (["--alpha", "-1"], "alpha must be a positive number, got -1.0"),
    (["--dropout", "1.5"], "dropout must be in [0, 1), got 1.5"),
    (["--loraplus-ratio", "0"], "loraplus_ratio (B's learning rate / A's, or None) must be a positive number, got 0.0"),
])
def test_bad_values_are_refused_with_the_dataclass_message(argv, message, capsys, tmp_path):
    """Refused before anything loads or trains: the store stays empty."""
    assert main(["train", "--preset", "tiny", "--runs-dir", str(tmp_path / "runs"), *argv]) == 2
    assert f"error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv", [["train", "--init", "xavier"], ["train", "--bf16", "yes"], ["train", "--rank", "2.5"],
                                  ["sweep", "--rank", "4"], ["sweep", "--variants", "lora,qlora"],
                                  ["train", "--layers", "a,b"]])
def test_unreadable_flags_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_sweep_refuses_alpha_and_alpha_per_rank_together(capsys):
    assert main(["sweep", "--preset", "tiny", "--alpha", "4", "--alpha-per-rank", "2"]) == 2
    assert "give --alpha (the same for every rank) or --alpha-per-rank" in capsys.readouterr().err


def test_sweep_flags():
    args = build_parser().parse_args(["sweep", "--ranks", "1,4", "--variants", "lora,dora", "--alpha", "4",
                                      "--targets", "query", "--with-head"])
    assert (args.ranks, args.variants, args.with_head, args.with_full) == ([1, 4], ["lora", "dora"], True, False)
    assert config_from_args(args).lora == LoRAConfig(alpha=4.0, targets=("query",))


def test_a_setting_added_to_the_dataclass_becomes_a_flag():
    """The flags are read off the dataclass: a new field needs no new CLI code."""

    @dataclass(frozen=True)
    class Wider(LoRAConfig):
        bias_scale: float = 1.0
        freeze_a: bool = False

    p = argparse.ArgumentParser()
    cli._add_flags(p, Wider, cli.LORA_HELP, Wider(), "default")
    args = p.parse_args(["--bias-scale", "0.5", "--freeze-a", "--rank", "2"])
    assert (args.bias_scale, args.freeze_a, args.rank) == (0.5, True, 2)
    assert "(default: 1.0)" in next(a for a in p._actions if a.dest == "bias_scale").help

    @dataclass(frozen=True)
    class Odd(LoRAConfig):
        table: dict = None  # type: ignore[assignment]

    with pytest.raises(TypeError, match="Odd.table has type .*which the CLI cannot read yet"):
        cli._add_flags(argparse.ArgumentParser(), Odd, {}, Odd(), "default")


def test_train_and_runs_in_process(tmp_path, capsys, monkeypatch):
    from workbench.engine import launch

    monkeypatch.setattr(launch, "use_fresh_process", lambda cfg, fresh_process=None: False)  # the worker: tests/engine
    runs_dir = str(tmp_path / "runs")
    assert main(["train", "--preset", "tiny", "--rank", "2", "--alpha", "4", "--steps", "2", "--eval-every", "0",
                 "--runs-dir", runs_dir, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("LoRA r=2 (query,value): completed")
    import workbench as wb

    stored = wb.load_runs(runs_dir)
    assert len(stored) == 1 and stored[0].config.lora == LoRAConfig(rank=2, alpha=4.0)
    assert main(["runs", "--runs-dir", runs_dir]) == 0
    assert stored[0].run_id in capsys.readouterr().out


def test_sweep_backend_flags():
    args = build_parser().parse_args(["sweep", "--backend", "ray", "--address", "head:6379"])
    assert (args.backend, args.address) == ("ray", "head:6379")
    args = build_parser().parse_args(["sweep"])
    assert (args.backend, args.address) == ("local", None)


def test_sweep_address_needs_the_ray_backend(tmp_path, capsys):
    """Refused before anything trains: the store stays empty."""
    assert main(["sweep", "--preset", "tiny", "--runs-dir", str(tmp_path / "runs"), "--address", "head:6379"]) == 2
    assert "error: --address is a Ray cluster's: it needs --backend ray" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_sweep_backend_must_be_known(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["sweep", "--backend", "dask"])
    assert e.value.code == 2
    assert "--backend: invalid choice: 'dask'" in capsys.readouterr().err.replace('"', "'")

"""The headless command line: ``python -m workbench train|sweep|runs|recipe|generate|export|plan``.

    python -m workbench train --method lora --rank 8 --alpha 16 --targets query,value --steps 100
    python -m workbench train recipes/generate.yaml --steps 50          # a recipe, a flag overriding it
    python -m workbench recipe RUN_ID > again.yaml                       # the recipe that reproduces a run
    python -m workbench generate --run RUN_ID "Tom is tall."             # ask a stored run
    python -m workbench export RUN_ID merged/                            # LoRA merged: a plain transformers folder
    python -m workbench plan llama-3-8b --quantize nf4 --seq-len 4096    # will it fit? (workbench.lessons.planner)
    python -m workbench sweep --ranks 1,2,4,8,16,32 --with-full --with-head --steps 100 --out reports/sweep
    python -m workbench runs

The flags are made from the dataclasses they fill, so they carry the same names: one
flag per ``LoRAConfig`` field (``--rank``, ``--alpha``, ``--targets``, ``--layers``,
``--dropout``, ``--rslora``, ``--init``, ``--dora``, ``--loraplus-ratio``) and one per
``RunConfig`` setting (``--steps``, ``--lr``, ``--batch-size``, ...).  A setting added
to either dataclass shows up here as a flag.  The values change a preset (``--preset``)
or a recipe file (``workbench.engine.recipes``), whose LoRA names go into
``RunConfig.lora``; a bad value is refused with the dataclass's own message.

Commands of a higher layer (``plan`` lives with the planner, in ``workbench.lessons``) are
handed in by ``workbench/__main__.py`` as ``Command`` objects: this module never imports
upward, and ``python -m workbench`` still has them all.
"""

from __future__ import annotations

import argparse
import os
import sys
import typing
from pathlib import Path
from dataclasses import Field, dataclass, fields
from typing import Any, Callable, Literal, Sequence

from workbench.engine.config import METHODS, PRESETS, RunConfig, RunResult, preset
from workbench.engine.recipes import TRACKERS, read_recipe, recipe_text, write_recipe
from workbench.engine.sweep import DEFAULT_RANKS, FULL_LR, HEAD_LR, VARIANTS, sweep_configs
from workbench.engine.ray_sweep import BACKENDS, RayUnavailable
from workbench.lora.config import INITS, LoRAConfig
from workbench.lora.quantize import QUANTIZE_CHOICES
from workbench.ui.run_facts import threads_text
from workbench.util.units import format_bytes

# What each flag means (the flag itself is the field's name).  A field missing here still
# gets its flag, with a plain help.
LORA_HELP: dict[str, str] = {
    "rank": "LoRA rank r: A is r x in, B is out x r",
    "alpha": "LoRA alpha: the update is scaled by s = alpha / r (alpha / sqrt(r) with --rslora)",
    "targets": "the layers LoRA wraps: comma-separated names (query,value), 'all-linear', or a regex of the path",
    "layers": "only the blocks with these indices, comma-separated (e.g. 4,5); default: every block",
    "dropout": "dropout on LoRA's input, a probability in [0, 1)",
    "rslora": "rsLoRA: scale by alpha / sqrt(r) instead of alpha / r",
    "init": "how A and B start: kaiming (B = 0, PEFT's default), gaussian, or pissa (top-r SVD of W)",
    "dora": "DoRA: a learned magnitude per output, LoRA on the direction",
    "loraplus_ratio": "LoRA+: B's learning rate / A's (unset: one learning rate for both)",
}
RUN_HELP: dict[str, str] = {
    "model_dropout": "the base model's own dropout probability (unset: the checkpoint's, 0.1 for BERT)",
    "quantize": "QLoRA: store the frozen base's block linears quantized with bitsandbytes, nf4 (4-bit NormalFloat, "
                "double quantization) or int8 (LLM.int8); unset: a float base. Not with --method full",
    "model": "'minilm' (bundled classifier), 'story-lm' (bundled language model), 'tiny-bert', 'tiny-gpt2', "
             "a folder or a Hub name",
    "task": "'classification' (a label per text) or 'causal-lm' (a model that writes)",
    "data": "'default' (the bundled task), 'skill' (the bundled generative task), a .csv/.tsv/.jsonl/.txt file, "
            "or a datasets name",
    "eval_data": "validation data (default: a held-out split of --data)",
    "text_column": "the column holding the text",
    "label_column": "the column holding the label",
    "max_length": "tokens per example, at most",
    "max_train_examples": "use at most this many training examples",
    "max_eval_examples": "evaluate on at most this many examples",
    "heldout_data": "causal-lm: a text file to measure forgetting on ('auto': the bundled model's held-out text)",
    "max_generate_examples": "causal-lm: answer at most this many evaluation prompts (exact match)",
    "max_new_tokens": "causal-lm: the longest answer generated at evaluation",
    "completion_only_loss": "causal-lm: the loss counts the completion only (off: the prompt's tokens are learned too)",
    "steps": "optimizer steps",
    "lr": "learning rate",
    "batch_size": "examples per step",
    "weight_decay": "AdamW weight decay",
    "warmup_ratio": "share of the steps with a rising learning rate, in [0, 1)",
    "max_grad_norm": "clip the gradient norm to this",
    "eval_every": "evaluate every this many steps (0: only at the end)",
    "seed": "random seed (same config and seed: same loss curve)",
    "device": "'auto' (CUDA when present), 'cpu', 'cuda'",
    "bf16": "bfloat16 autocast: auto (where the hardware is fast at it), on, off",
    "threads": "torch CPU threads (default: torch's)",
    "name": "a label for tables and legends (default: built from the settings)",
}
# RunConfig fields that are not flags of their own: method (train's --method; a sweep
# sets it per run) and lora (one flag per LoRAConfig field instead).
NOT_RUN_FLAGS = ("method", "lora")
# Flags that are not settings of a run.
OTHER_FLAGS = ("preset", "runs_dir", "quiet", "recipe", "track")


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _targets(text: str) -> list[str] | str:
    """'query,value' -> a list of names; 'all-linear' or a regex (contains regex syntax) stays a string."""
    if text == "all-linear" or any(c in text for c in "*\\|()[]^$+?"):
        return text
    return [t.strip() for t in text.split(",") if t.strip()]


def _bf16(text: str) -> bool | str:
    values = {"auto": "auto", "on": True, "off": False}
    if text not in values:
        raise argparse.ArgumentTypeError(f"expected one of auto, on, off; got {text!r}")
    return values[text]


def _variants(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated variants from {', '.join(VARIANTS)}; got {text!r}")
    return names


# How a flag reads its value, by the field's type.
_READERS: list[tuple[Any, dict[str, Any]]] = [
    (bool, dict(action=argparse.BooleanOptionalAction)),
    (int, dict(type=int)), (int | None, dict(type=int)),
    (float, dict(type=float)), (float | None, dict(type=float)),
    (str, dict(type=str)), (str | None, dict(type=str)),
    (tuple[str, ...] | str, dict(type=_targets, metavar="NAMES")),
    (tuple[int, ...] | None, dict(type=_ints, metavar="INDICES")),
    (bool | str, dict(type=_bf16, metavar="{auto,on,off}")),
]
# ... and where the type alone does not say which values are allowed.
_CHOICES: dict[str, tuple[str, ...]] = {"init": INITS, "quantize": QUANTIZE_CHOICES}


def flag(name: str) -> str:
    """The flag of a setting: its name with '-' for '_' (``loraplus_ratio`` -> ``--loraplus-ratio``)."""
    return "--" + name.replace("_", "-")


def _reader(cls: type, f: Field, hint: Any) -> dict[str, Any]:
    if typing.get_origin(hint) is Literal:
        return dict(type=str, choices=typing.get_args(hint))
    for known, how in _READERS:
        if hint == known:
            how = dict(how)
            if f.name in _CHOICES:
                how["choices"] = _CHOICES[f.name]
            return how
    raise TypeError(f"{cls.__name__}.{f.name} has type {hint}, which the CLI cannot read yet: "
                    f"add a reader for it to workbench/ui/cli.py's _READERS")


def _default_text(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return "off" if value is False else "on" if value is True else str(value)


def _add_flags(p: argparse.ArgumentParser, cls: type, helps: dict[str, str], defaults: Any, default_word: str,
               exclude: Sequence[str] = ()) -> None:
    """One flag per field of the dataclass ``cls`` (a flag not given: the preset's value stands)."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in exclude:
            continue
        help_text = helps.get(f.name, f"{cls.__name__}.{f.name}")
        default = getattr(defaults, f.name)
        help_text += f" ({default_word}: {_default_text(default)})" if default is not None else ""
        p.add_argument(flag(f.name), dest=f.name, default=None, help=help_text, **_reader(cls, f, hints[f.name]))


def _add_run_options(p: argparse.ArgumentParser, lora_exclude: Sequence[str] = (),
                     run_exclude: Sequence[str] = ()) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="base settings every flag below changes (default: default; not with a recipe file)")
    lora = p.add_argument_group("LoRA settings (LoRAConfig; used by --method lora)")
    _add_flags(lora, LoRAConfig, LORA_HELP, LoRAConfig(), "default", exclude=lora_exclude)
    run = p.add_argument_group("run settings (RunConfig)")
    _add_flags(run, RunConfig, RUN_HELP, preset("default"), "default preset", exclude=(*NOT_RUN_FLAGS, *run_exclude))
    p.add_argument("--runs-dir", dest="runs_dir", default="runs", help="run store folder (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_recipe(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", default=None,
                   help="a YAML recipe file (e.g. recipes/tiny.yaml) whose settings the flags change; "
                        "default: the --preset")
    p.add_argument("--track", choices=TRACKERS, default=None,
                   help="also log the run to this experiment tracker (MLflow: at MLFLOW_TRACKING_URI, else MLflow's default, ./mlflow.db); "
                        "default: the recipe's track key, or mlflow when MLFLOW_TRACKING_URI is set")


def base_config(args: argparse.Namespace) -> RunConfig:
    """The settings the flags change: the recipe file's, or the preset's."""
    recipe = getattr(args, "recipe", None)
    if recipe is not None:
        if args.preset is not None:
            raise ValueError(f"give a recipe file ({recipe}) or --preset {args.preset}, not both: "
                             "the recipe holds every setting")
        return read_recipe(recipe).config
    return preset(args.preset or "default")


def config_from_args(args: argparse.Namespace, **extra: Any) -> RunConfig:
    """The RunConfig the flags ask for: the recipe or preset, with every flag given (and ``extra``) changed.

    LoRA settings given with a method other than LoRA are refused: they would change nothing.
    """
    settable = {f.name for f in fields(RunConfig)} | set(LoRAConfig.field_names())
    settings = {k: v for k, v in vars(args).items() if k in settable and v is not None} | extra
    base = base_config(args)
    lora_given = [k for k in LoRAConfig.field_names() if k in settings]
    method = settings.get("method", base.method)
    if method != "lora" and lora_given:
        raise ValueError(f"{', '.join(flag(k) for k in lora_given)}: LoRA settings apply to --method lora only, "
                         f"not to --method {method}")
    return base.with_changes(**settings)


def track_from_args(args: argparse.Namespace) -> str | None:
    """--track, else the recipe's ``track`` key (None: ``train`` asks MLFLOW_TRACKING_URI)."""
    if args.track is not None:
        return args.track
    return read_recipe(args.recipe).track if getattr(args, "recipe", None) else None


@dataclass(frozen=True)
class Command:
    """A subcommand a higher layer adds (``workbench/__main__.py`` adds the planner's ``plan``)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _add_generate(sub: Any) -> None:
    g = sub.add_parser("generate", help="a language model answers prompts: a stored run, an adapter, or a base",
                       allow_abbrev=False,
                       description="Write each prompt's completion (greedy at temperature 0, else sampled with --seed). "
                                   "One prompt: its completion alone is printed; several: 'prompt<TAB>completion' "
                                   "lines.")
    g.add_argument("prompts", nargs="+", metavar="PROMPT", help="the prompt(s) to complete")
    g.add_argument("--run", default=None, help="a stored run's id (or the start of it): its base with its adapter")
    g.add_argument("--adapter", default=None, help="an adapter folder (PEFT's format) on the base it names")
    g.add_argument("--base", default=None,
                   help="a base model (story-lm, tiny-gpt2, a folder, a Hub name): alone, the base answers; "
                        "with --adapter, the base to load it on")
    g.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); > 0: sampled")
    g.add_argument("--seed", type=int, default=0, help="the sampling seed (default: %(default)s)")
    g.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=32,
                   help="the longest completion, in tokens (default: %(default)s)")
    g.add_argument("--runs-dir", dest="runs_dir", default="runs", help="run store folder (default: %(default)s)")


def build_parser(commands: Sequence[Command] = ()) -> argparse.ArgumentParser:
    # No abbreviations: `sweep --rank 4` must not be read as `--ranks 4`.
    parser = argparse.ArgumentParser(prog="python -m workbench", description="LoRA Workbench, headless",
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="one run (from a preset or a recipe file)", allow_abbrev=False)
    _add_recipe(t)
    t.add_argument("--method", choices=METHODS, default=None,
                   help="lora (frozen base + LoRA + trained head), full (every weight trains), head (only the head) "
                        "(default: the recipe's or preset's, lora)")
    _add_run_options(t)
    s = sub.add_parser("sweep", help="LoRA at several ranks, optionally beside full fine-tuning and head-only",
                       allow_abbrev=False)
    s.add_argument("--ranks", type=_ints, default=list(DEFAULT_RANKS),
                   help=f"the LoRA ranks, comma-separated (default: {_default_text(DEFAULT_RANKS)})")
    s.add_argument("--with-full", action="store_true", help="add a full fine-tuning run")
    s.add_argument("--with-head", action="store_true", help="add a head-only run")
    s.add_argument("--alpha-per-rank", type=float,
                   help="alpha = this x rank (default: --alpha, the same for every rank)")
    s.add_argument("--variants", type=_variants, default=["lora"],
                   help=f"LoRA variants side by side: {','.join(VARIANTS)} (default: lora)")
    s.add_argument("--full-lr", type=float, default=FULL_LR,
                   help="learning rate of the full run (default: %(default)g)")
    s.add_argument("--head-lr", type=float, default=HEAD_LR,
                   help="learning rate of the head run (default: %(default)g)")
    s.add_argument("--out", default="reports/sweep", help="folder for the CSV, Markdown and figures")
    s.add_argument("--backend", choices=BACKENDS, default="local",
                   help="local: the runs one after another here; ray: each run a Ray task, on the cluster at "
                        "--address or on a Ray instance started here (default: %(default)s)")
    s.add_argument("--address", default=None,
                   help="--backend ray: the Ray head's HOST:PORT (as `ray start --head` prints it); the runs "
                        "directory must then be a path every node sees (default: a Ray instance on this machine)")
    s.add_argument("--track", choices=TRACKERS, default=None,
                   help="also log each run to this experiment tracker, one tracker run per run (MLflow: at "
                        "MLFLOW_TRACKING_URI); default: mlflow when MLFLOW_TRACKING_URI is set")
    _add_run_options(s, lora_exclude=("rank",), run_exclude=("name",))  # --ranks; each run is named by its settings
    r = sub.add_parser("runs", help="list the stored runs", allow_abbrev=False)
    r.add_argument("--runs-dir", dest="runs_dir", default="runs", help="run store folder (default: %(default)s)")
    rc = sub.add_parser("recipe", help="write the recipe (YAML) of a stored run or a preset", allow_abbrev=False,
                        description="The recipe that reproduces a stored run (train it with "
                                    "`python -m workbench train FILE`), or a preset's recipe.")
    rc.add_argument("run_id", nargs="?", default=None, metavar="RUN_ID", help="a stored run's id (or its start)")
    rc.add_argument("--preset", choices=sorted(PRESETS), default=None, help="a preset's recipe instead of a run's")
    rc.add_argument("--out", "-o", default=None, help="write it to this file (default: print it)")
    rc.add_argument("--runs-dir", dest="runs_dir", default="runs", help="run store folder (default: %(default)s)")
    _add_generate(sub)
    e = sub.add_parser("export", help="a stored run with LoRA merged in, as a plain transformers folder",
                       allow_abbrev=False)
    e.add_argument("run_id", metavar="RUN_ID", help="a stored LoRA run's id (or its start)")
    e.add_argument("folder", metavar="FOLDER", help="the folder to write (refused if it is not empty)")
    e.add_argument("--dequantize", action="store_true",
                   help="a QLoRA run: write float32 weights (the dequantized base with the update merged)")
    e.add_argument("--overwrite", action="store_true", help="replace FOLDER when it is not empty")
    e.add_argument("--runs-dir", dest="runs_dir", default="runs", help="run store folder (default: %(default)s)")
    q = sub.add_parser("search", help="search settings with Optuna, stopping hopeless trials early",
                       allow_abbrev=False,
                       description="Each trial is a run from the recipe (or preset) with the searched settings "
                                   "changed; a trial whose metric at an evaluation is worse than the median of "
                                   "earlier trials there is stopped (Optuna's median pruner).")
    _add_recipe(q)
    q.add_argument("--space", action="append", type=_space_item, required=True, metavar="NAME=VALUES",
                   help="a setting to search: rank=2,4,8 (a list), lr=loguniform:1e-4:1e-2 or "
                        "dropout=uniform:0:0.2; repeat for several")
    q.add_argument("--trials", type=int, default=8, help="at most this many runs (default: %(default)s)")
    q.add_argument("--budget-steps", dest="budget_steps", type=int, default=None,
                   help="at most this many optimizer steps over all trials (default: no cap)")
    q.add_argument("--metric", default="eval_exact_match",
                   help="eval_exact_match (default), eval_accuracy (maximized), eval_loss, eval_perplexity, "
                        "heldout_loss (minimized)")
    q.add_argument("--search-seed", dest="search_seed", type=int, default=0,
                   help="the sampler's seed (default: %(default)s)")
    q.add_argument("--out", default="reports/search", help="folder for the trials' table and the figure")
    _add_run_options(q)
    for command in commands:
        command.add_arguments(sub.add_parser(command.name, help=command.help, allow_abbrev=False))
    return parser


def _score(result: RunResult) -> str:
    """What the run was judged by: a classifier's validation accuracy; a language model's exact
    match on its held-out prompts (its eval_accuracy is next-token accuracy, not the answer's)."""
    if result.config.task != "causal-lm":
        return f"validation accuracy {result.eval_accuracy:.3f}"
    return (f"exact match {result.last('eval_exact_match'):.3f} on held-out prompts, next-token accuracy "
            f"{result.eval_accuracy:.3f}")


def _summary(result: RunResult) -> str:
    m = result.memory
    threads = threads_text(result)
    return (
        f"{result.config.label()}: {result.status}"
        + (f" ({result.message})" if result.message else "")
        + f"\n  trainable {result.params.trainable:,} of {result.params.total:,} ({100 * result.params.share:.3f}%)"
        f"\n  final train loss {result.final_loss:.4f}, {_score(result)}"
        f"\n  {result.timing.seconds_per_step * 1000:.0f} ms/step, {result.timing.tokens_per_second:,.0f} tokens/s"
        + (f" ({threads})" if threads else "")
        + f"\n  memory: weights {format_bytes(m.weights)}, gradients {format_bytes(m.gradients)}, "
        f"optimizer {format_bytes(m.optimizer)}, activations {format_bytes(m.activations)}, "
        f"peak {format_bytes(m.peak)} ({m.peak_kind})\n  stored in {result.path}"
    )


def _train(args: argparse.Namespace) -> int:
    from workbench.records.recording import train

    cfg = config_from_args(args)
    track = track_from_args(args)
    result = train(cfg, runs_dir=args.runs_dir, progress=not args.quiet, track=track)
    print(_summary(result) + _tracker_line(result))
    return 0 if result.status == "completed" else 1


def _tracker_line(result: RunResult) -> str:
    """Where the run was also logged, or why not ('' when it was not asked to be)."""
    tracker = result.environment.get("tracker")
    if not tracker:
        return ""
    return (f"\n  tracker: {tracker['error']}" if "error" in tracker else
            f"\n  tracker: MLflow run {tracker['run_id']} in experiment {tracker['experiment']!r} at {tracker['uri']}")


def _sweep(args: argparse.Namespace) -> int:
    from workbench.records.recording import run_sweep
    from workbench.records.report import export_report

    if args.alpha_per_rank is not None and args.alpha is not None:
        raise ValueError("give --alpha (the same for every rank) or --alpha-per-rank (alpha = k x rank), not both")
    configs = sweep_configs(config_from_args(args), args.ranks, args.with_full, args.with_head,
                            args.alpha_per_rank, args.full_lr, args.head_lr, variants=args.variants)
    if args.address is not None and args.backend != "ray":
        raise ValueError("--address is a Ray cluster's: it needs --backend ray")
    results = run_sweep(configs, runs_dir=args.runs_dir, progress=not args.quiet, backend=args.backend,
                        address=args.address, track=track_from_args(args))
    for res in results:
        print(_summary(res) + _tracker_line(res))
    written = export_report(results, args.out)
    print(f"wrote {len(written)} files to {args.out}: " + ", ".join(p.name for p in written))
    return 0 if all(r.status == "completed" for r in results) else 1


def _runs(args: argparse.Namespace) -> int:
    from workbench.records.store import runs

    table = runs(args.runs_dir)
    print(table.to_string(index=False) if len(table) else f"no runs in {args.runs_dir}")
    return 0


def _recipe(args: argparse.Namespace) -> int:
    from workbench.records.run_models import find_run

    if (args.run_id is None) == (args.preset is None):
        raise ValueError("give a stored run's id (python -m workbench recipe RUN_ID) or --preset NAME, one of them")
    if args.preset is not None:
        config, header = preset(args.preset), f"the {args.preset!r} preset (workbench.engine.config.PRESETS)"
    else:
        run = find_run(args.run_id, args.runs_dir)
        config = run.config
        header = (f"the recipe of run {run.run_id} ({run.status}, {run.config.label()}); "
                  "the same settings and seed give the same loss curve")
    if args.out is None:
        print(recipe_text(config, header=header), end="")
    else:
        print(f"wrote {write_recipe(config, args.out, header=header)}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from workbench.engine.generation import generate
    from workbench.records.run_models import adapter_model, base_model, find_run, run_model

    if args.run is None and args.adapter is None and args.base is None:
        raise ValueError("say who answers: --run RUN_ID (a stored run), --adapter FOLDER (an adapter on its base) "
                         "or --base MODEL (a base model alone)")
    if args.run is not None and (args.adapter is not None or args.base is not None):
        raise ValueError("--run brings its own base and adapter: give --run alone, or --adapter/--base instead")
    if args.run is not None:
        run = find_run(args.run, args.runs_dir)
        if run.config.task != "causal-lm":
            raise ValueError(f"run {run.run_id} is a {run.config.task} run: it picks a label and writes no text; "
                             "generate needs a language model's run (task causal-lm)")
        model, tokenizer = run_model(run)
    elif args.adapter is not None:
        model, tokenizer = adapter_model(args.adapter, args.base)
    else:
        model, tokenizer = base_model(args.base)
    answers = generate(model, tokenizer, args.prompts, max_new_tokens=args.max_new_tokens,
                       temperature=args.temperature, seed=args.seed)
    if len(answers) == 1:
        print(answers[0])
    else:
        for prompt, answer in zip(args.prompts, answers):
            print(f"{prompt}\t{answer}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from workbench.lora.export import export_merged
    from workbench.records.run_models import find_run, run_model

    run = find_run(args.run_id, args.runs_dir)
    target = Path(args.folder)
    if target.is_dir() and any(target.iterdir()) and not args.overwrite:
        raise FileExistsError(f"{target} exists and is not empty: give an empty or new folder, or --overwrite to "
                              "replace what is there")
    if run.config.quantize is not None and not args.dequantize:
        raise ValueError(f"run {run.run_id} trained on a {run.config.quantize} base (QLoRA): its update cannot be "
                         "merged into the quantized codes. Add --dequantize to write float32 weights (the "
                         "dequantized base with the update merged)")
    model, tokenizer = run_model(run)
    folder = export_merged(model, tokenizer, args.folder, overwrite=args.overwrite, dequantize=args.dequantize)
    auto = "AutoModelForCausalLM" if run.config.task == "causal-lm" else "AutoModelForSequenceClassification"
    print(f"wrote {folder}: {run.config.label()} merged into {run.config.model}, a plain transformers folder "
          f"({auto}.from_pretrained('{folder}'))")
    return 0


def _space_item(text: str) -> tuple[str, Any]:
    """'rank=2,4,8' -> ('rank', [2, 4, 8]); 'lr=loguniform:1e-4:1e-2' -> ('lr', LogUniform(...))."""
    from workbench.records.search import loguniform, uniform

    name, eq, values = text.partition("=")
    if not eq or not name or not values:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUES (rank=2,4,8 or lr=loguniform:1e-4:1e-2), got {text!r}")
    kind, _, bounds = values.partition(":")
    if kind in ("loguniform", "uniform"):
        try:
            low, high = (float(b) for b in bounds.split(":"))
            return name, (loguniform if kind == "loguniform" else uniform)(low, high)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {kind}:LOW:HIGH with numbers ({e})") from None
    return name, [_scalar(v) for v in values.split(",") if v.strip()]


def _scalar(text: str) -> Any:
    """A value as a recipe reads it: 8 -> int, 1e-3 -> float, query -> str."""
    from workbench.engine.recipes import yaml_value

    return yaml_value(text.strip())


def _search(args: argparse.Namespace) -> int:
    from workbench.records.search import search
    from workbench.viz.output import save_figure
    from workbench.util.fileio import atomic_write_text

    cfg = config_from_args(args)
    space = dict(args.space)
    result = search(cfg, space, trials=args.trials, metric=args.metric, budget_steps=args.budget_steps,
                    seed=args.search_seed, runs_dir=args.runs_dir, progress=not args.quiet,
                    track=track_from_args(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = result.table
    atomic_write_text(out / "trials.csv", table.to_csv(index=False))
    written = save_figure(result.figure(), out / "search", formats=("png",))
    cols = ["trial", *space, f"{args.metric} (search)", "stopped_by_search", "steps_done", "run_id"]
    shown = table.assign(**{k: [p[k] for p in result.params] for k in space})[cols]
    print(shown.to_string(index=False))
    best = result.best
    print(f"{len(result.results)} trials, {sum(result.pruned)} stopped by the search, {result.steps_used:,} steps in all"
          + (f"; best {args.metric} {result.values[result.best_index]:.3f}: {result.params[result.best_index]} "
             f"(run {best.run_id})" if best is not None else "; no trial ran to the end"))
    print(f"wrote {out / 'trials.csv'} and {written[0]}")
    return 0


_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": _train, "sweep": _sweep, "runs": _runs, "recipe": _recipe, "generate": _generate, "export": _export,
    "search": _search}


def main(argv: Sequence[str] | None = None, commands: Sequence[Command] = ()) -> int:
    """Run the command line; ``commands``: subcommands a higher layer adds (``workbench/__main__.py``)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser(commands).parse_args(argv)
    handlers = _HANDLERS | {c.name: c.run for c in commands}
    try:
        return handlers[args.command](args)
    except (ValueError, TypeError, OSError, RayUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

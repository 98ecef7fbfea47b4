"""The headless command line: ``python -m workbench train|sweep|runs``.

    python -m workbench train --method lora --rank 8 --alpha 16 --targets query,value --steps 100
    python -m workbench sweep --ranks 1,2,4,8,16,32 --with-full --with-head --steps 100 --out reports/sweep
    python -m workbench runs

The flags are made from the dataclasses they fill, so they carry the same names: one
flag per ``LoRAConfig`` field (``--rank``, ``--alpha``, ``--targets``, ``--layers``,
``--dropout``, ``--rslora``, ``--init``, ``--dora``, ``--loraplus-ratio``) and one per
``RunConfig`` setting (``--steps``, ``--lr``, ``--batch-size``, ...).  A setting added
to either dataclass shows up here as a flag.  The values go through
``preset(name, **settings)``, which routes the LoRA names into ``RunConfig.lora``; a
bad value is refused with the dataclass's own message.
"""

from __future__ import annotations

import argparse
import os
import sys
import typing
from dataclasses import Field, fields
from typing import Any, Literal, Sequence

from workbench.engine.config import METHODS, PRESETS, RunConfig, RunResult, preset
from workbench.engine.sweep import DEFAULT_RANKS, FULL_LR, HEAD_LR, VARIANTS, sweep_configs
from workbench.engine.ray_sweep import BACKENDS, RayUnavailable
from workbench.lora.config import INITS, LoRAConfig
from workbench.lora.quantize import QUANTIZE_CHOICES
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
OTHER_FLAGS = ("preset", "runs_dir", "quiet")


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
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="base settings every flag below changes (default: %(default)s)")
    lora = p.add_argument_group("LoRA settings (LoRAConfig; used by --method lora)")
    _add_flags(lora, LoRAConfig, LORA_HELP, LoRAConfig(), "default", exclude=lora_exclude)
    run = p.add_argument_group("run settings (RunConfig)")
    _add_flags(run, RunConfig, RUN_HELP, preset("default"), "default preset", exclude=(*NOT_RUN_FLAGS, *run_exclude))
    p.add_argument("--runs-dir", dest="runs_dir", default="runs", help="run store folder (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace, **extra: Any) -> RunConfig:
    """The RunConfig the flags ask for: the preset, with every flag given (and ``extra``) changed.

    LoRA settings given with a method other than LoRA are refused: they would change nothing.
    """
    settable = {f.name for f in fields(RunConfig)} | set(LoRAConfig.field_names())
    settings = {k: v for k, v in vars(args).items() if k in settable and v is not None} | extra
    lora_given = [k for k in LoRAConfig.field_names() if k in settings]
    method = settings.get("method", "lora")
    if method != "lora" and lora_given:
        raise ValueError(f"{', '.join(flag(k) for k in lora_given)}: LoRA settings apply to --method lora only, "
                         f"not to --method {method}")
    return preset(args.preset, **settings)


def build_parser() -> argparse.ArgumentParser:
    # No abbreviations: `sweep --rank 4` must not be read as `--ranks 4`.
    parser = argparse.ArgumentParser(prog="python -m workbench", description="LoRA Workbench, headless",
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="one run", allow_abbrev=False)
    t.add_argument("--method", choices=METHODS, default="lora",
                   help="lora (frozen base + LoRA + trained head), full (every weight trains), head (only the head) "
                        "(default: %(default)s)")
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
    _add_run_options(s, lora_exclude=("rank",), run_exclude=("name",))  # --ranks; each run is named by its settings
    r = sub.add_parser("runs", help="list the stored runs", allow_abbrev=False)
    r.add_argument("--runs-dir", dest="runs_dir", default="runs", help="run store folder (default: %(default)s)")
    return parser


def _summary(result: RunResult) -> str:
    m = result.memory
    return (
        f"{result.config.label()}: {result.status}"
        + (f" ({result.message})" if result.message else "")
        + f"\n  trainable {result.params.trainable:,} of {result.params.total:,} ({100 * result.params.share:.3f}%)"
        f"\n  final train loss {result.final_loss:.4f}, validation accuracy {result.eval_accuracy:.3f}"
        f"\n  {result.timing.seconds_per_step * 1000:.0f} ms/step, {result.timing.tokens_per_second:,.0f} tokens/s"
        f"\n  memory: weights {format_bytes(m.weights)}, gradients {format_bytes(m.gradients)}, "
        f"optimizer {format_bytes(m.optimizer)}, activations {format_bytes(m.activations)}, "
        f"peak {format_bytes(m.peak)} ({m.peak_kind})\n  stored in {result.path}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    # wb.train and wb.run_sweep: the engine's, with the run store attached.
    from workbench.records.recording import run_sweep, train
    from workbench.records.report import export_report
    from workbench.records.store import runs

    if args.command == "runs":
        table = runs(args.runs_dir)
        print(table.to_string(index=False) if len(table) else f"no runs in {args.runs_dir}")
        return 0
    try:
        if args.command == "train":
            result = train(config_from_args(args), runs_dir=args.runs_dir, progress=not args.quiet)
            print(_summary(result))
            return 0 if result.status == "completed" else 1
        if args.alpha_per_rank is not None and args.alpha is not None:
            raise ValueError("give --alpha (the same for every rank) or --alpha-per-rank (alpha = k x rank), not both")
        configs = sweep_configs(config_from_args(args), args.ranks, args.with_full, args.with_head,
                                args.alpha_per_rank, args.full_lr, args.head_lr, variants=args.variants)
        if args.address is not None and args.backend != "ray":
            raise ValueError("--address is a Ray cluster's: it needs --backend ray")
        results = run_sweep(configs, runs_dir=args.runs_dir, progress=not args.quiet, backend=args.backend,
                            address=args.address)
        for res in results:
            print(_summary(res))
        written = export_report(results, args.out)
        print(f"wrote {len(written)} files to {args.out}: " + ", ".join(p.name for p in written))
        return 0 if all(r.status == "completed" for r in results) else 1
    except (ValueError, TypeError, OSError, RayUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

"""``python -m workbench plan MODEL ...``: the planner from the shell (parameters, memory, will it fit).

    python -m workbench plan llama-3-8b --method lora --quantize nf4 --seq-len 4096 --rank 16 --targets all-linear
    python -m workbench plan story-lm --seq-len 64

Why here and not in ``workbench/ui/cli.py``: the command line sits in the ``ui`` layer and
the planner in ``lessons``, above it, so the CLI may not import the planner
(``tests/package/test_layout.py``).  The planner's logic stays where it is; this module
adds the subcommand as a ``workbench.ui.cli.Command`` (lessons may import ui), and
``workbench/__main__.py``, which sits on top of every layer, hands it to the CLI.

The LoRA flags are the CLI's own (one per ``LoRAConfig`` field, same names and helps); a
bad value is refused with the planner's or the dataclass's message.
"""

from __future__ import annotations

import argparse
from typing import Any

from workbench.engine.memory import OPTIMIZERS
from workbench.engine.models import resolve_model_name
from workbench.lessons.planner.meta import DTYPES, TASKS
from workbench.lessons.planner.planning import plan
from workbench.lessons.planner.shipped import shipped_architectures
from workbench.lessons.planner.tables import GPU_SIZES_GB
from workbench.lora.config import LoRAConfig
from workbench.lora.quantize import QUANTIZE_CHOICES
from workbench.ui.cli import LORA_HELP, Command, _add_flags, _ints
from workbench.util.units import GB

__all__ = ["PLAN", "plan_text"]


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Plan a fine-tuning run from the model's config alone (no weights are loaded): trainable "
                     "parameters, the memory of one training step itemised, and whether it fits each GPU size.")
    p.add_argument("model", metavar="MODEL",
                   help=f"a shipped architecture ({', '.join(shipped_architectures())}), story-lm, a local folder "
                        "or config.json, or a Hub name (needs a network)")
    p.add_argument("--method", choices=("lora", "full"), default="lora", help="(default: %(default)s)")
    p.add_argument("--quantize", choices=QUANTIZE_CHOICES, default=None,
                   help="QLoRA: the frozen base's block linears in nf4 or int8 (default: a float base)")
    p.add_argument("--seq-len", dest="seq_len", type=int, default=512, help="tokens per sequence (default: 512)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=1, help="sequences per step (default: 1)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="weights, gradients and activations (default: bf16 with --quantize, else fp32)")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default=None,
                   help="(default: adamw-32bit for a 16-bit dtype, else adamw)")
    p.add_argument("--gradient-checkpointing", dest="gradient_checkpointing", action="store_true",
                   help="checkpoint every block (activations: the block inputs + one block recomputed)")
    p.add_argument("--task", choices=TASKS, default=None, help="default: the architecture's natural task")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda",
                   help="whose kernels the activation estimate assumes (default: %(default)s)")
    p.add_argument("--gpus", type=_ints, default=list(GPU_SIZES_GB),
                   help=f"GPU sizes in GB for the verdicts, comma-separated (default: "
                        f"{','.join(map(str, GPU_SIZES_GB))})")
    lora = p.add_argument_group("LoRA settings (LoRAConfig)")
    _add_flags(lora, LoRAConfig, LORA_HELP, LoRAConfig(), "default")


def _model_source(name: str) -> tuple[Any, str | None]:
    """The planner's argument for a model name: the workbench's offline names (story-lm) as their folder."""
    if name in shipped_architectures():
        return name, None
    path = resolve_model_name(name)
    return (path, name) if path != name else (name, None)


def plan_text(args: argparse.Namespace) -> str:
    """The plan the flags ask for, in words: summary, breakdown, verdicts, assumptions."""
    if any(g <= 0 for g in args.gpus) or not args.gpus:
        raise ValueError(f"--gpus must be positive sizes in GB, got {args.gpus!r}")
    lora = {k: getattr(args, k) for k in LoRAConfig.field_names() if getattr(args, k, None) is not None}
    if args.method == "full" and lora:
        raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in lora)}: LoRA settings apply to "
                         "--method lora only")
    source, name = _model_source(args.model)
    p = plan(source, LoRAConfig(**lora), method=args.method, batch_size=args.batch_size, seq_len=args.seq_len,
             dtype=args.dtype, optimizer=args.optimizer, task=args.task, device=args.device, name=name,
             quantize=args.quantize, gradient_checkpointing=args.gradient_checkpointing)
    side = p.chosen
    what = p.lora_label + (f" on an {args.quantize} base" if args.quantize else "") \
        if args.method == "lora" else "full fine-tuning"
    lines = [p.summary(), "", f"memory of one training step, {what} (GB = 10**9 bytes):"]
    for row in p.breakdown().itertuples(index=False):
        lines.append(f"  {row.component:<50} {row.GB:>10.3f}   {row.how}")
    lines.append("")
    total = side.total_bytes
    if total is None:
        lines.append("will it fit: unknown (no activation estimate for this architecture; see the notes)")
    else:
        for g in args.gpus:
            verdict = "fits" if total <= g * GB else "does not fit"
            lines.append(f"will it fit a {g:g} GB GPU: {verdict} ({total / GB:.3g} GB of {g:g} GB, tensors alone)")
    lines += ["", "assumptions:"] + [f"  - {a}" for a in p.assumptions()]
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    print(plan_text(args))
    return 0


#: The ``plan`` subcommand (``workbench/__main__.py`` hands it to ``workbench.ui.cli.main``).
PLAN = Command(name="plan", help="parameters, memory and will-it-fit of a fine-tuning run, from a config alone",
               add_arguments=_add_arguments, run=_run)

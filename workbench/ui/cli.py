"""The headless command line: ``python -m workbench train|sweep|runs``.

    python -m workbench train --method lora --rank 8 --alpha 16 --targets query,value --steps 100
    python -m workbench sweep --ranks 1,2,4,8,16,32 --with-full --with-head --steps 100 --out reports/sweep
    python -m workbench runs
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from typing import Sequence

from workbench.engine.config import METHODS, PRESETS, RunConfig


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
    return {"auto": "auto", "on": True, "off": False}[text]


def _add_run_options(p: argparse.ArgumentParser) -> None:
    d = RunConfig()
    p.add_argument("--preset", choices=sorted(PRESETS), default="default", help="base settings (default: %(default)s)")
    p.add_argument("--model", help=f"'minilm' (bundled), 'tiny-bert', 'tiny-gpt2', a folder or a Hub name")
    p.add_argument("--task", choices=["classification", "causal-lm"])
    p.add_argument("--data", help="'default' (bundled task), a .csv/.tsv/.jsonl file, or a datasets name")
    p.add_argument("--eval-data", dest="eval_data")
    p.add_argument("--text-column", dest="text_column")
    p.add_argument("--label-column", dest="label_column")
    p.add_argument("--alpha", type=float, help=f"LoRA alpha (default {d.alpha:g})")
    p.add_argument("--targets", type=_targets, help="comma-separated layer names, 'all-linear', or a regex")
    p.add_argument("--layers", type=_ints, help="only these block indices, e.g. 4,5")
    p.add_argument("--dropout", type=float, help="LoRA dropout")
    p.add_argument("--model-dropout", dest="model_dropout", type=float,
                   help="the base model's own dropout (default: the checkpoint's, 0.1 for BERT)")
    p.add_argument("--rslora", action="store_true", default=None, help="scale by alpha/sqrt(r)")
    p.add_argument("--dora", action="store_true", default=None, help="DoRA: learned magnitude, LoRA on the direction")
    p.add_argument("--init", choices=["kaiming", "gaussian", "pissa"], help="LoRA init (pissa: top-r SVD of W)")
    p.add_argument("--loraplus-ratio", dest="loraplus_ratio", type=float, help="LoRA+: B's lr / A's lr")
    p.add_argument("--steps", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--max-length", dest="max_length", type=int)
    p.add_argument("--eval-every", dest="eval_every", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="'auto' (CUDA when present), 'cpu', 'cuda'")
    p.add_argument("--bf16", type=_bf16, choices=["auto", True, False], metavar="{auto,on,off}")
    p.add_argument("--threads", type=int)
    p.add_argument("--runs-dir", dest="runs_dir", default="runs", help="run store folder (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _config(args: argparse.Namespace, **extra) -> RunConfig:
    names = {f.name for f in fields(RunConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return RunConfig(**(PRESETS[args.preset] | overrides | extra))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workbench", description="LoRA Workbench, headless")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="one run")
    t.add_argument("--method", choices=METHODS, default="lora")
    t.add_argument("--rank", type=int)
    _add_run_options(t)
    s = sub.add_parser("sweep", help="LoRA at several ranks, optionally beside full fine-tuning and head-only")
    s.add_argument("--ranks", type=_ints, default=[1, 2, 4, 8, 16, 32])
    s.add_argument("--with-full", action="store_true")
    s.add_argument("--with-head", action="store_true")
    s.add_argument("--alpha-per-rank", type=float, help="alpha = this x rank (default: alpha fixed)")
    s.add_argument("--variants", type=lambda t: [v for v in t.split(",") if v], default=["lora"],
                   help="LoRA variants side by side: lora,rslora,dora,pissa,loraplus (default: lora)")
    s.add_argument("--full-lr", type=float, default=5e-5)
    s.add_argument("--head-lr", type=float, default=1e-3)
    s.add_argument("--out", default="reports/sweep", help="folder for the CSV, Markdown and figures")
    _add_run_options(s)
    r = sub.add_parser("runs", help="list the stored runs")
    r.add_argument("--runs-dir", dest="runs_dir", default="runs")
    return parser


def _summary(result) -> str:
    from workbench.engine.memory import format_bytes

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
    if args.command == "runs":
        from workbench.records.store import runs

        table = runs(args.runs_dir)
        print(table.to_string(index=False) if len(table) else f"no runs in {args.runs_dir}")
        return 0
    try:
        if args.command == "train":
            from workbench.engine.training import train

            result = train(_config(args, method=args.method) if args.rank is None
                           else _config(args, method=args.method, rank=args.rank),
                           runs_dir=args.runs_dir, progress=not args.quiet)
            print(_summary(result))
            return 0 if result.status == "completed" else 1
        from workbench.records.report import export_report
        from workbench.engine.sweep import run_sweep, sweep_configs

        configs = sweep_configs(_config(args), args.ranks, args.with_full, args.with_head, args.alpha_per_rank,
                                args.full_lr, args.head_lr, variants=args.variants)
        results = run_sweep(configs, runs_dir=args.runs_dir, progress=not args.quiet)
        for res in results:
            print(_summary(res))
        written = export_report(results, args.out)
        print(f"wrote {len(written)} files to {args.out}: " + ", ".join(p.name for p in written))
        return 0 if all(r.status == "completed" for r in results) else 1
    except (ValueError, TypeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

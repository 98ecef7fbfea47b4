"""What quantizing the frozen base costs in accuracy: LoRA on a float base against QLoRA.

    python benchmarks/qlora_cost.py [--tasks default,generate] [--quantize none,nf4,int8] [--seeds 0]

For each bundled task (the MiniLM classifier, preset "default"; story-lm learning its skill,
preset "generate") the same run (same preset, same seed, same data order) is trained three
ways: the base in float (bf16 where the CPU is fast at it, as the presets run), the base's
block linears quantized to NF4 (QLoRA: 4-bit NormalFloat with double quantization), and
to int8 (LLM.int8).  Prints one row per run: the final validation accuracy (classifier)
or exact match (language model), the final validation loss, the weights' bytes as the
run measured them (quantized layers counted with their constants), and the bytes per
weight of the quantized layers alone.  Seconds are printed for information only: on a
shared machine they are not a measurement of speed.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd  # noqa: E402

from workbench.engine.config import preset  # noqa: E402
from workbench.engine.models import load_base  # noqa: E402
from workbench.lora.quantize import quantized_layer_bytes, quantize_model  # noqa: E402
from workbench.records.recording import train  # noqa: E402  (wb.train)
from workbench.util.units import MB  # noqa: E402

TASKS = {"default": "eval_accuracy", "generate": "eval_exact_match"}


def quantized_bytes_per_weight(model_name: str, task: str, quantize: str) -> float:
    """Bytes per weight of the quantized block linears, constants included (measured on the model)."""
    model, _ = load_base(model_name, task=task)
    layers = [model.get_submodule(n) for n in quantize_model(model, quantize)]
    return sum(quantized_layer_bytes(l) for l in layers) / sum(l.in_features * l.out_features for l in layers)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="default,generate", help="presets, comma-separated (default: %(default)s)")
    p.add_argument("--quantize", default="none,nf4,int8", help="bases, comma-separated (default: %(default)s)")
    p.add_argument("--seeds", default="0", help="seeds, comma-separated (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per run (default: torch's)")
    args = p.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        p.error(f"unknown task {unknown}; choose from {', '.join(TASKS)}")
    bases = [None if q == "none" else q for q in args.quantize.split(",") if q]
    seeds = [int(s) for s in args.seeds.split(",") if s]

    rows = []
    for task in tasks:
        for seed in seeds:
            for q in bases:  # the float run first: the reference of its task and seed
                cfg = preset(task, quantize=q, seed=seed, threads=args.threads)
                t0 = time.perf_counter()
                r = train(cfg, runs_dir=None, progress=False)
                seconds = time.perf_counter() - t0
                metric = TASKS[task]
                bpw = quantized_bytes_per_weight(cfg.model, cfg.task, q) if q else float("nan")
                rows.append({
                    "task": task, "model": cfg.model, "seed": seed, "base": q or "float",
                    "run": r.config.label(), "status": r.status,
                    "metric": metric.removeprefix("eval_"), "value": r.last(metric),
                    "eval_loss": r.last("eval_loss"), "train_loss": r.final_loss,
                    "weights_MB": r.memory.weights / MB if r.memory else float("nan"),
                    "quantized_bytes_per_weight": bpw,
                    "frozen_dtype": r.environment.get("frozen_dtype"), "seconds": seconds,
                })
                print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1), flush=True)
    print()
    print(markdown(pd.DataFrame(rows)))


def markdown(table: pd.DataFrame) -> str:
    """The table as Markdown (for the README), without the optional ``tabulate`` package."""
    def cell(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

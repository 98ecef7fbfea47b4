"""The default rank sweep, ours against the standard way (PEFT + the transformers Trainer);
and (``--compare-ray``) the same sweep run locally against run on Ray.

    python benchmarks/sweep.py [--ranks 1,2,4,8,16,32] [--steps 150] [--datasets default,sst2]
    python benchmarks/sweep.py --compare-ray [--preset tiny] [--ranks 1,2,4,8] [--threads 1] [--repeats 3]
                               [--address HEAD:6379]

For each dataset (the bundled task, and SST-2 from ../shared when present) and each run
of the sweep (LoRA at every rank, full fine-tuning, head-only), the same run is done
three ways, interleaved (so background load falls on all alike):

* ours: ``wb.train`` (``workbench.records.recording.train``, not storing the run) with the
  default preset, as a user runs it: model loading, the evaluation, and (on a CPU) the run's
  own worker process included;
* standard: ``peft.get_peft_model`` (LoRA, task SEQ_CLS) or the plain model (full,
  head), trained by ``transformers.Trainer`` with its CPU defaults (fp32, fused AdamW,
  its own dynamic padding) and the checkpoint's own dropout (0.1);
* standard, same recipe: the same, with the base model's dropout set as our preset sets
  it (``model_dropout``), so only the engines differ.

``--compare-ray``: the sweep (LoRA at the ranks, full, head; ``--threads`` CPU threads per
run) done with ``backend="local"`` (one run after another) and ``backend="ray"`` (each run
a Ray task, as many at once as the CPUs allow), interleaved ``--repeats`` times with the
order alternating; medians.  Ray's start-up is timed apart: starting a local instance
(``ray.init``), the first sweep on it (its workers start and import torch), a second
sweep on the same instance (workers warm), and the shutdown.  With ``--address`` the
instance is a running cluster: connecting replaces starting, and nothing is shut down.

Every way evaluates once, at the end, on the same examples.  Prints a table per
dataset: seconds and validation accuracy of each run each way, the total-time ratios
(target: ours at least 1.5x faster than the standard way) and the largest accuracy gap
(target: within 1 point).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_lines  # noqa: E402

import workbench as wb  # noqa: E402
from workbench.engine.data import load_task  # noqa: E402
from workbench.engine.models import set_model_dropout  # noqa: E402
from workbench.engine.sweep import sweep_configs  # noqa: E402
from workbench.records.recording import train  # noqa: E402  (wb.train)

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


def standard_run(cfg: wb.RunConfig, out_dir: str, same_recipe: bool) -> tuple[float, float]:
    """(seconds, validation accuracy) of the same run done with PEFT + Trainer; with
    ``same_recipe`` the base model's dropout is set to ``cfg.model_dropout`` first."""
    import datasets
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    t0 = time.perf_counter()
    transformers.set_seed(cfg.seed)
    label_column = cfg.label_column
    train_ds, eval_ds = load_task(cfg.data, cfg.eval_data, cfg.text_column, label_column, cfg.seed)
    train_ds, eval_ds = train_ds.head(cfg.max_train_examples), eval_ds.head(cfg.max_eval_examples)
    model, tok = wb.load_base(cfg.model, num_labels=max(2, train_ds.num_labels))
    if same_recipe and cfg.model_dropout is not None:
        set_model_dropout(model, cfg.model_dropout)
    if cfg.method == "lora":
        model = get_peft_model(model, LoraConfig(**cfg.lora.to_peft(), task_type="SEQ_CLS"))
    elif cfg.method == "head":
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("classifier"))

    def encode(ds):
        enc = tok(ds.texts, truncation=True, max_length=cfg.max_length)
        return datasets.Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                                           "labels": ds.labels})

    args = TrainingArguments(
        output_dir=out_dir, max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size * 2, learning_rate=cfg.lr, weight_decay=cfg.weight_decay,
        warmup_steps=int(cfg.warmup_ratio * cfg.steps), max_grad_norm=cfg.max_grad_norm, lr_scheduler_type="linear",
        seed=cfg.seed, logging_strategy="no", save_strategy="no", eval_strategy="no", report_to=[],
        disable_tqdm=True,
    )

    def accuracy(pred):
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    trainer = Trainer(model=model, args=args, train_dataset=encode(train_ds), eval_dataset=encode(eval_ds),
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=accuracy)
    with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its metrics
        trainer.train()
        acc = trainer.evaluate()["eval_accuracy"]
    return time.perf_counter() - t0, acc


def ours_run(cfg: wb.RunConfig) -> tuple[float, float, str]:
    t0 = time.perf_counter()
    result = train(cfg, runs_dir=None, progress=False)
    return time.perf_counter() - t0, result.eval_accuracy, result.status


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    value = fn(*args, **kwargs)
    return time.perf_counter() - t0, value


def compare_ray(args: argparse.Namespace) -> int:
    """The same sweep locally and on Ray, interleaved; the medians, Ray's start-up apart."""
    args.threads = args.threads or 1
    import statistics

    import ray

    from workbench.engine.ray_sweep import _local_cpus
    from workbench.records.recording import run_sweep

    ranks = [int(r) for r in args.ranks.split(",") if r]
    base = wb.preset(args.preset, threads=args.threads, eval_every=0)
    if args.steps is not None:
        base = replace(base, steps=args.steps)
    configs = sweep_configs(base, ranks, with_full=True, with_head=True)
    train(wb.preset("tiny", steps=1), runs_dir=None, progress=False)  # imports, the fork server: before any clock
    cpus = _local_cpus()
    print(f"{len(configs)} runs of preset {args.preset!r} ({base.steps} steps), {args.threads} thread(s) each; "
          f"this machine: {cpus} CPUs; Ray: {'the cluster at ' + args.address if args.address else 'a local instance'}")
    times: dict[str, list[float]] = {k: [] for k in ("local", "start", "first", "again", "stop")}
    finals: dict[str, list[float]] = {}

    def local() -> None:
        t, results = _timed(run_sweep, configs, runs_dir=None, progress=False)
        times["local"].append(t)
        finals["local"] = [r.final_loss for r in results]

    def on_ray() -> None:
        if args.address:
            t, _ = _timed(ray.init, address=args.address)
        else:
            t, _ = _timed(ray.init, num_cpus=cpus, include_dashboard=False, object_store_memory=200 * 2**20)
        times["start"].append(t)
        try:
            t, results = _timed(run_sweep, configs, runs_dir=None, progress=False, backend="ray")
            times["first"].append(t)
            finals["ray"] = [r.final_loss for r in results]
            t, _ = _timed(run_sweep, configs, runs_dir=None, progress=False, backend="ray")
            times["again"].append(t)
        finally:
            t, _ = _timed(ray.shutdown)
            times["stop"].append(t)

    for repeat in range(args.repeats):
        for way in ((local, on_ray) if repeat % 2 == 0 else (on_ray, local)):
            way()
        print(f"  repeat {repeat + 1}: local {times['local'][-1]:.1f} s | Ray start {times['start'][-1]:.1f} s, "
              f"first sweep {times['first'][-1]:.1f} s, again {times['again'][-1]:.1f} s, "
              f"shutdown {times['stop'][-1]:.1f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    cold = med["start"] + med["first"] + med["stop"]
    print(f"\n### local vs Ray: {len(configs)} runs, preset {args.preset}, {args.threads} thread(s) per run, "
          f"{cpus} CPUs, median of {args.repeats}\n")
    print("| way | median s |")
    print("|---|---|")
    print(f"| local: the runs one after another | {med['local']:.1f} |")
    print(f"| Ray: {'connect to the cluster' if args.address else 'start a local instance (ray.init)'} "
          f"| {med['start']:.1f} |")
    print(f"| Ray: the sweep, first on the instance (its workers start) | {med['first']:.1f} |")
    print(f"| Ray: the sweep again, workers warm | {med['again']:.1f} |")
    print(f"| Ray: {'disconnect' if args.address else 'shut down'} | {med['stop']:.1f} |")
    print(f"| **Ray, all told (start + first sweep + shutdown)** | **{cold:.1f}** |")
    print(f"\nlocal / Ray (warm sweep) = {med['local'] / med['again']:.2f}x; local / Ray all told = "
          f"{med['local'] / cold:.2f}x")
    gap = max(abs(a - b) for a, b in zip(finals["local"], finals["ray"]))
    print(f"largest difference of a final training loss, local vs Ray: {gap:.3g} (same configs and seeds)")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compare-ray", action="store_true", help="time the sweep locally against on Ray instead")
    p.add_argument("--preset", default="tiny", help="--compare-ray: the preset of the sweep (default: tiny)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per run (--compare-ray default: 1; else torch's default)")
    p.add_argument("--lora-only", action="store_true", help="only the LoRA runs (no full fine-tuning, no head only)")
    p.add_argument("--cold", action="store_true",
                   help="no warm-up run before the clock: ours' first run starts the worker (a fresh process's first "
                        "run), reported as it is")
    p.add_argument("--repeats", type=int, default=3, help="--compare-ray: interleaved repeats (default: 3)")
    p.add_argument("--address", default=None, help="--compare-ray: a running Ray cluster's HOST:PORT")
    p.add_argument("--ranks", default="1,2,4,8,16,32")
    p.add_argument("--steps", type=int, default=None, help="default: the default preset's steps")
    p.add_argument("--datasets", default="default,sst2")
    p.add_argument("--sst2-train", type=int, default=4000, help="SST-2 training examples used")
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="auto", help="our bf16 autocast")
    args = p.parse_args(argv)
    if args.compare_ray:
        return compare_ray(args)
    ranks = [int(r) for r in args.ranks.split(",") if r]
    bf16 = {"auto": "auto", "on": True, "off": False}[args.bf16]
    base = wb.preset("default", bf16=bf16, eval_every=0)  # one evaluation, at the end, as the Trainer's
    if args.steps is not None:
        base = replace(base, steps=args.steps)
    print("\n".join(machine_lines()))
    if args.threads:
        torch.set_num_threads(args.threads)
        base = replace(base, threads=args.threads)
    if not args.cold:
        wb.load_base(base.model)  # imports (transformers' model code) once, before any clock starts
        train(wb.preset("tiny", steps=1), runs_dir=None, progress=False)  # starts the worker processes' fork server
    import peft  # noqa: F401
    from transformers import Trainer  # noqa: F401
    print(f"torch threads {torch.get_num_threads()}; our bf16 = {args.bf16}; steps {base.steps}; "
          f"batch {base.batch_size}; max_length {base.max_length}")
    for name in args.datasets.split(","):
        if name == "sst2":
            if not (SST2 / "dev.tsv").is_file():
                print("\nSST-2: ../shared/data/sst2 absent, skipped")
                continue
            data = replace(base, data=str(SST2 / "train.tsv"), eval_data=str(SST2 / "dev.tsv"),
                           text_column="sentence", max_train_examples=args.sst2_train, max_eval_examples=None)
        else:
            data = replace(base, data=name)
        configs = sweep_configs(data, ranks, with_full=not args.lora_only, with_head=not args.lora_only)
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for cfg in configs:
                t_ours, acc_ours, status = ours_run(cfg)
                t_std, acc_std = standard_run(cfg, tmp, same_recipe=False)
                t_same, acc_same = standard_run(cfg, tmp, same_recipe=True)
                rows.append((cfg.label(), t_ours, acc_ours, t_std, acc_std, t_same, acc_same))
                print(f"  {cfg.label():26s} ours {t_ours:5.1f} s {acc_ours:.3f} | standard {t_std:5.1f} s {acc_std:.3f}"
                      f" | same recipe {t_same:5.1f} s {acc_same:.3f}  ({status})", flush=True)
        total = [sum(r[k] for r in rows) for k in (1, 3, 5)]
        print(f"\n### {name}\n")
        print("| run | ours s | ours val. acc | standard s | standard val. acc | same recipe s | same recipe val. acc |")
        print("|---|---|---|---|---|---|---|")
        for label, t_o, a_o, t_s, a_s, t_r, a_r in rows:
            print(f"| {label} | {t_o:.1f} | {a_o:.3f} | {t_s:.1f} | {a_s:.3f} | {t_r:.1f} | {a_r:.3f} |")
        print(f"| **total** | **{total[0]:.0f}** | | **{total[1]:.0f}** | | **{total[2]:.0f}** | |")
        gap = max(abs(r[2] - r[4]) for r in rows)
        lower = max(r[4] - r[2] for r in rows)
        print(f"\ntotal time standard / ours = {total[1] / total[0]:.2f}x (target >= 1.5x); "
              f"same recipe / ours = {total[2] / total[0]:.2f}x")
        print(f"largest accuracy gap to the standard way {100 * gap:.1f} points; "
              f"ours below it by at most {100 * max(lower, 0):.1f} points (target <= 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The default rank sweep, ours against the standard way (PEFT + the transformers Trainer).

    python benchmarks/sweep.py [--ranks 1,2,4,8,16,32] [--steps 150] [--datasets default,sst2]

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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", default="1,2,4,8,16,32")
    p.add_argument("--steps", type=int, default=None, help="default: the default preset's steps")
    p.add_argument("--datasets", default="default,sst2")
    p.add_argument("--sst2-train", type=int, default=4000, help="SST-2 training examples used")
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="auto", help="our bf16 autocast")
    args = p.parse_args(argv)
    ranks = [int(r) for r in args.ranks.split(",") if r]
    bf16 = {"auto": "auto", "on": True, "off": False}[args.bf16]
    base = wb.preset("default", bf16=bf16, eval_every=0)  # one evaluation, at the end, as the Trainer's
    if args.steps is not None:
        base = replace(base, steps=args.steps)
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
        configs = sweep_configs(data, ranks, with_full=True, with_head=True)
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

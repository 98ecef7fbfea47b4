"""The default rank sweep, ours against the standard way (PEFT + the transformers Trainer).

    python benchmarks/sweep.py [--ranks 1,2,4,8,16,32] [--steps 100] [--datasets default,sst2]

For each dataset (the bundled task, and SST-2 from ../shared when present) and each run
of the sweep (LoRA at every rank, full fine-tuning, head-only), the same settings are run
both ways, interleaved (ours, standard, ours, standard, ...), so background load falls
on both alike:

* ours: ``workbench.train`` as a user runs it, model loading and evaluation included;
* standard: ``peft.get_peft_model`` (LoRA, task SEQ_CLS) or the plain model (full, head),
  trained by ``transformers.Trainer`` with its CPU defaults, its own dynamic padding
  (``DataCollatorWithPadding``), evaluated once at the end by ``Trainer.evaluate``.

Prints a table per dataset: seconds and validation accuracy of each run both ways, the
total-time ratio (target: ours at least 1.5x faster) and the largest accuracy gap
(target: within 1 point).
"""

from __future__ import annotations

import argparse
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
from workbench.data import load_task  # noqa: E402
from workbench.sweep import sweep_configs  # noqa: E402
from workbench.train import train  # noqa: E402

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


def standard_run(cfg: wb.RunConfig, out_dir: str) -> tuple[float, float]:
    """(seconds, validation accuracy) of the same run done with PEFT + Trainer."""
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
    if cfg.method == "lora":
        model = get_peft_model(model, LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, target_modules=cfg.targets,
                                                 lora_dropout=cfg.dropout, use_rslora=cfg.rslora, task_type="SEQ_CLS"))
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
        warmup_ratio=cfg.warmup_ratio, max_grad_norm=cfg.max_grad_norm, lr_scheduler_type="linear",
        seed=cfg.seed, logging_steps=10, save_strategy="no", eval_strategy="no", report_to=[],
        disable_tqdm=True,
    )

    def accuracy(pred):
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    trainer = Trainer(model=model, args=args, train_dataset=encode(train_ds), eval_dataset=encode(eval_ds),
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=accuracy)
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
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--datasets", default="default,sst2")
    p.add_argument("--sst2-train", type=int, default=4000, help="SST-2 training examples used")
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="auto", help="our bf16 autocast")
    args = p.parse_args(argv)
    ranks = [int(r) for r in args.ranks.split(",") if r]
    bf16 = {"auto": "auto", "on": True, "off": False}[args.bf16]
    base = wb.RunConfig(steps=args.steps, eval_every=0, bf16=bf16)
    print(f"torch threads {torch.get_num_threads()}; our bf16 = {args.bf16}; steps {args.steps}; "
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
                t_std, acc_std = standard_run(cfg, tmp)
                rows.append((cfg.label(), t_ours, acc_ours, t_std, acc_std, status))
                print(f"  {cfg.label():32s} ours {t_ours:6.1f} s acc {acc_ours:.3f} | standard {t_std:6.1f} s "
                      f"acc {acc_std:.3f}", flush=True)
        total_ours = sum(r[1] for r in rows)
        total_std = sum(r[3] for r in rows)
        gap = max(abs(r[2] - r[4]) for r in rows)
        print(f"\n### {name}\n")
        print("| run | ours s | ours val. acc | standard s | standard val. acc |")
        print("|---|---|---|---|---|")
        for label, t_o, a_o, t_s, a_s, status in rows:
            print(f"| {label} | {t_o:.1f} | {a_o:.3f} | {t_s:.1f} | {a_s:.3f} |")
        print(f"| **total** | **{total_ours:.0f}** | | **{total_std:.0f}** | |")
        print(f"\ntotal time standard / ours = {total_std / total_ours:.2f}x (target >= 1.5x); "
              f"largest accuracy gap {100 * gap:.1f} points (target <= 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

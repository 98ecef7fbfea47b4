"""The default generative LoRA run, ours against the standard way (PEFT + TRL's SFTTrainer).

    python benchmarks/sft_vs_trl.py [--repeats 3] [--steps N]

The same run, three ways, interleaved (so background load falls on all alike), medians
over ``--repeats``:

* ours: ``wb.train`` (not storing the run) with ``wb.preset("generate")`` as a user runs it:
  model loading, tokenizing, the run's own worker process, and the one evaluation at the
  end (completion loss, exact match by greedy generation) included;
* TRL: ``peft.get_peft_model`` with the same LoRA settings (the same layers, named as PEFT
  names them), trained by
  ``trl.SFTTrainer`` with completion-only loss on the same prompt/completion records, same
  steps, batch, learning rate, warm-up and linear decay, with the trainer's CPU defaults
  (fp32);
* TRL bf16: the same with ``bf16=True`` (autocast), as our engine uses on this CPU.

Every way is timed from loading to its one evaluation at the end, and measured by the same
code (``workbench.engine.evaluation``): completion loss on the validation prompts and
greedy exact match.  (Ours evaluates inside its run, and its figures are the run's own; the
TRL ways are evaluated by that code right after training, inside their timed region.)  Targets: ours at least
2x faster in total time, final completion loss within 2 %, exact match within 2 points.

``--fresh-processes N`` also times each way's first run the way a user meets it: a new
Python process per run, from its start to its end (the interpreter, every import, the worker's
start for ours, the run and its evaluation), N rounds, interleaved.  In the repeats above
TRL's imports happened before its clock started; here both ways pay their own.  Ours runs
twice there: as a script calling ``wb.train`` (its worker starts at that first call), and as
``python -m workbench train --preset generate`` (the command line starts the worker while it
imports, and stores the run).

It also reports the LoRA step time against this CPU's floor: the FLOPs of one step
(forward 2·P·T, backward through the activations 2·P·T: the frozen weights get no
gradient; attention scores add 4·L·T·S·d per pass) divided by the faster of the bf16 and
fp32 matmul rates measured in the same run (bf16 where the CPU has bf16 units; fp32 where
bf16 is emulated).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_lines  # noqa: E402

import workbench as wb  # noqa: E402
from workbench.engine.data import make_batches  # noqa: E402
from workbench.engine.evaluation import WritingEval, evaluate, evaluate_writing  # noqa: E402
from workbench.engine.models import load_base  # noqa: E402
from workbench.engine.sft import load_prompt_task, tokenize_prompts  # noqa: E402
from workbench.lora.roles import role_layer_names  # noqa: E402
from workbench.records.recording import train  # noqa: E402  (wb.train)


def measure_after(model, tokenizer, cfg) -> tuple[float, float]:
    """(completion loss, exact match) of a trained model on the run's validation prompts."""
    _, eval_ds = load_prompt_task(cfg.data, cfg.eval_data, tokenizer, cfg.seed)
    eval_ds = eval_ds.head(cfg.max_eval_examples)
    batches = list(make_batches(tokenize_prompts(eval_ds, tokenizer, cfg.max_length), tokenizer,
                                cfg.batch_size * 2, cfg.max_length, shuffle=False, task="causal-lm"))
    device = next(model.parameters()).device  # the GPU's, where gpu_check.py runs it
    loss, _ = evaluate(model, batches, device, use_bf16=False)
    ev = WritingEval(eval_ds.head(cfg.max_generate_examples), [], cfg.max_new_tokens)
    metrics, _ = evaluate_writing(model, tokenizer, ev, device, False, loss, cfg.steps)
    return loss, metrics["eval_exact_match"]


def trl_run(cfg, bf16: bool) -> dict:
    """The same run with PEFT + TRL's SFTTrainer; times loading, tokenizing and training."""
    import datasets
    import transformers
    from peft import LoraConfig, get_peft_model
    from trl import SFTConfig, SFTTrainer

    t0 = time.perf_counter()
    transformers.set_seed(cfg.seed)
    model, tokenizer = load_base(cfg.model, task="causal-lm", seed=cfg.seed)
    names, _ = role_layer_names(model, cfg.lora.targets)
    peft_model = get_peft_model(model, LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha,
                                                  lora_dropout=cfg.lora.dropout, target_modules=names,
                                                  task_type="CAUSAL_LM"))
    train_ds, _ = load_prompt_task(cfg.data, cfg.eval_data, tokenizer, cfg.seed)
    rows = datasets.Dataset.from_dict({"prompt": train_ds.prompts, "completion": train_ds.completions})
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(output_dir=out, max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size,
                         learning_rate=cfg.lr, lr_scheduler_type="linear",
                         warmup_steps=int(cfg.warmup_ratio * cfg.steps), weight_decay=cfg.weight_decay,
                         max_grad_norm=cfg.max_grad_norm, max_length=cfg.max_length, completion_only_loss=True,
                         use_cpu=not torch.cuda.is_available(), bf16=bf16, seed=cfg.seed, data_seed=cfg.seed, report_to="none",
                         save_strategy="no", logging_steps=cfg.steps, disable_tqdm=True, dataset_num_proc=None)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            trainer = SFTTrainer(model=peft_model, args=args, train_dataset=rows, processing_class=tokenizer)
            trainer.train()
    loss, em = measure_after(peft_model.eval(), tokenizer, cfg)  # the evaluation ours does inside its run
    return {"seconds": time.perf_counter() - t0, "loss": loss, "exact_match": em}


def ours_run(cfg) -> dict:
    """``wb.train`` as a user runs it; the loss and exact match are its own evaluation at the end
    (the same ``workbench.engine.evaluation`` code as ``measure_after``), so the trained model
    stays in the run's worker, as it does for a user: it is not copied back to be measured."""
    t0 = time.perf_counter()
    result = train(cfg.with_changes(eval_every=0), runs_dir=None, progress=False)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "loss": result.last("eval_loss"), "exact_match": result.eval_exact_match,
            "step": result.timing.seconds_per_step, "tokens": result.timing.tokens_per_second, "result": result}


def matmul_rate(dtype: torch.dtype, n: int = 1024, repeats: int = 20) -> float:
    """FLOP/s of an n x n x n matmul in ``dtype`` (median of ``repeats``)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def step_flops(cfg, tokens_per_step: float) -> float:
    """FLOPs of one LoRA step: 4·P·T for the linear layers and LM head, plus attention."""
    model, _ = load_base(cfg.model, task="causal-lm")
    c = model.config
    matmul_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    seq = tokens_per_step / cfg.batch_size
    attention = 4 * c.num_hidden_layers * tokens_per_step * seq * c.hidden_size  # QK^T and AV, forward
    return 2 * (2 * matmul_params * tokens_per_step + attention)  # forward + backward through activations


# Ours from the shell: the command line stores the run (its record and adapter), as a user's run does.
SHELL = "ours, python -m workbench"


def fresh_processes(args, ways: list[str]) -> None:
    """Each way's first run in a process of its own, timed from the process's start to its end."""
    import subprocess

    extra = (["--steps", str(args.steps)] if args.steps else []) + (["--threads", str(args.threads)]
                                                                    if args.threads else [])
    ways = ways + [SHELL] if "ours" in ways else ways
    seconds: dict[str, list[float]] = {w: [] for w in ways}
    print(f"\nfresh processes ({args.fresh_processes} rounds, interleaved; start to end, imports included):")
    for rnd in range(args.fresh_processes):
        for way in ways:
            with tempfile.TemporaryDirectory() as runs:
                command = ([sys.executable, "-m", "workbench", "train", "--preset", "generate", "--eval-every", "0",
                            "--runs-dir", runs, "--quiet", *extra] if way == SHELL
                           else [sys.executable, __file__, "--one", way, *extra])
                t0 = time.perf_counter()
                out = subprocess.run(command, capture_output=True, text=True)
                seconds[way].append(time.perf_counter() - t0)
                if out.returncode != 0:
                    raise RuntimeError(f"the fresh process of {way} failed:\n{out.stderr[-2000:]}")
                if way == SHELL:  # the stored run's own evaluation
                    (run,) = wb.load_runs(runs)
                    r = {"loss": run.last("eval_loss"), "exact_match": run.eval_exact_match}
                else:
                    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
                    r = json.loads(line[len("RESULT "):])
            print(f"  round {rnd + 1} {way:26s} {seconds[way][-1]:6.1f} s  loss {r['loss']:.4f}  "
                  f"exact match {r['exact_match']:.3f}", flush=True)
    for mine in [w for w in ("ours", SHELL) if w in ways]:
        ours = statistics.median(seconds[mine])
        for way in [w for w in ways if w not in ("ours", SHELL)]:
            theirs = statistics.median(seconds[way])
            print(f"fresh process, start to end: {mine} {ours:.1f} s against {way} {theirs:.1f} s: "
                  f"{theirs / ours:.2f}x")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="default: the preset's")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every CPU)")
    parser.add_argument("--ways", default="ours,TRL fp32,TRL bf16", help="comma-separated: ours, TRL fp32, TRL bf16")
    parser.add_argument("--fresh-processes", type=int, default=0,
                        help="also time each way's first run in a new process, start to end, this many rounds")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a fresh process's single run
    args = parser.parse_args(argv)
    cfg = wb.preset("generate") if args.steps is None else wb.preset("generate", steps=args.steps)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    if args.one is not None:
        r = {"ours": lambda: ours_run(cfg), "TRL fp32": lambda: trl_run(cfg, False),
             "TRL bf16": lambda: trl_run(cfg, True)}[args.one]()
        print("RESULT " + json.dumps({"loss": r["loss"], "exact_match": r["exact_match"]}))
        return 0
    print("\n".join(machine_lines()))
    print(f"# {cfg.label()} on {cfg.model}, data {cfg.data}: {cfg.steps} steps, batch {cfg.batch_size}, lr {cfg.lr:g}; "
          f"{torch.get_num_threads()} threads; {args.repeats} interleaved repeats; ours' first repeat is the "
          "first wb.train in this fresh process (cold: its worker starts), reported apart\n")
    every = {"ours": lambda: ours_run(cfg), "TRL fp32": lambda: trl_run(cfg, False),
             "TRL bf16": lambda: trl_run(cfg, True)}
    ways = {k: every[k] for k in (w.strip() for w in args.ways.split(",")) if k in every}
    got: dict[str, list[dict]] = {k: [] for k in ways}
    for rep in range(args.repeats):
        for name, fn in ways.items():
            got[name].append(fn())
            r = got[name][-1]
            print(f"  repeat {rep + 1} {name:9s} {r['seconds']:6.1f} s  loss {r['loss']:.4f}  "
                  f"exact match {r['exact_match']:.3f}", flush=True)
    cold = got["ours"][0]["seconds"]
    warm = got["ours"][1:] or got["ours"]
    med = {k: {m: statistics.median(r[m] for r in (warm if k == "ours" else v)) for m in ("seconds", "loss",
                                                                                         "exact_match")}
           for k, v in got.items()}
    for k in ways:
        if k != "ours":
            print(f"cold: ours' first run {cold:.1f} s against {k} {med[k]['seconds']:.1f} s: "
                  f"{med[k]['seconds'] / cold:.2f}x")
    print("(the table's 'ours' is the median of the warm repeats)")
    print("\n| way | total s (median) | completion loss | exact match | ours faster by |")
    print("|---|---|---|---|---|")
    for k, m in med.items():
        ratio = m["seconds"] / med["ours"]["seconds"]
        print(f"| {k} | {m['seconds']:.1f} | {m['loss']:.4f} | {m['exact_match']:.3f} | "
              f"{'' if k == 'ours' else f'{ratio:.2f}x'} |")
    for k in [w for w in ways if w != "ours"]:
        dl = abs(med["ours"]["loss"] - med[k]["loss"]) / med[k]["loss"]
        de = abs(med["ours"]["exact_match"] - med[k]["exact_match"]) * 100
        print(f"ours vs {k}: {med[k]['seconds'] / med['ours']['seconds']:.2f}x faster (target >= 2x); "
              f"loss differs by {dl:.1%} (target <= 2 %); exact match by {de:.1f} points (target <= 2)")

    if args.fresh_processes:
        fresh_processes(args, list(ways))

    step = statistics.median(r["step"] for r in got["ours"])
    tokens_per_step = statistics.median(r["tokens"] for r in got["ours"]) * step
    flops = step_flops(cfg, tokens_per_step)
    bf16_rate, fp32_rate = matmul_rate(torch.bfloat16), matmul_rate(torch.float32)
    # The floor is at the faster rate: bf16 on a CPU with bf16 units; fp32 where bf16 is emulated (no units).
    rate, kind = max((bf16_rate, "bf16"), (fp32_rate, "fp32"))
    print(f"\nLoRA step: {step * 1000:.1f} ms median, ~{tokens_per_step:.0f} real tokens, {flops / 1e9:.2f} GFLOP; "
          f"matmul rate here: bf16 {bf16_rate / 1e9:.0f} GFLOP/s, fp32 {fp32_rate / 1e9:.0f} GFLOP/s (1024^3); "
          f"floor at the faster ({kind}) rate {flops / rate * 1000:.2f} ms: the step takes "
          f"{step / (flops / rate):.1f}x its floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())

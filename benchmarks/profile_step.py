"""Where a story-lm LoRA step's time goes, before and after issue 20's cuts: torch.profiler's
top operations, the step time, and an evaluation's time.

    python benchmarks/profile_step.py [--preset generate] [--steps 30] [--threads N] [--bf16 off|on|auto]
                                      [--out benchmarks/results/profile.md]

A small model's step is bound by the number of operations it launches, not by their
arithmetic (``docs/benchmarks.md``: 13x the FLOP floor).  This script sets a run up exactly
as ``wb.train`` does (``workbench.engine.training.set_up``: the preset's model, LoRA layers,
batches, optimizer) and compares, in one process, interleaved in rounds of 5 steps:

* **before**: the LoRA forward as it was (``s * B(A x)``: the scaling multiplies the
  out_features numbers of every token, forward and backward; ``old_lora_forward`` below)
  and a decoder's training forward that builds a key/value cache it never reads;
* **after**: the engine as it is (``use_cache=False``; the LoRA forward ``B(s * A x)``,
  the scaling on the rank-r numbers; see ``docs/benchmarks.md`` on the fused ``addmm``
  that was measured and taken back out).

It prints the machine (CPU model and flags, torch threads, load), the median step time each
way, the operator calls per step, the top operations by self CPU time each way, and an
evaluation's generation with 16 prompts a batch against ``GENERATE_BATCH`` (and whether the
answers are identical).  ``--out`` also writes it as markdown (``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_lines  # noqa: E402

import workbench as wb  # noqa: E402
from workbench.engine.training import set_up, training_step  # noqa: E402


def step_fn(run, cfg):
    """One training step on the run's next batch, as the loop does it."""
    def step() -> float:
        inputs = next(run.batches).to(run.device).model_inputs()
        return training_step(run, inputs, cfg.max_grad_norm)
    return step


def old_lora_forward(self, x):
    """``LoRALayer.forward`` as it was before issue 20 (the scaling applied to B's output, of
    out_features numbers a token), kept here to measure the change against, interleaved."""
    result = self.base_layer(x)
    if self.merged:
        return result
    if self.variant is not None:
        return self.variant.forward(self, x, result)
    update = self.lora_B(self.lora_A(self.lora_input(x))) * self.scaling
    return result + update.to(result.dtype)


@contextlib.contextmanager
def before(run):
    """The step as it was before issue 20's cuts: the old LoRA forward, and a decoder's training
    forward building a key/value cache it never uses."""
    from workbench.lora.layer import LoRALayer

    forward, kwargs = LoRALayer.forward, run.forward_kwargs
    LoRALayer.forward, run.forward_kwargs = old_lora_forward, {}
    try:
        yield
    finally:
        LoRALayer.forward, run.forward_kwargs = forward, kwargs


def profile_steps(step, n: int) -> tuple[list[tuple[str, int, float]], int]:
    """(name, calls per step, self CPU ms per step) for each operator, most time first; calls per step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            step()
    calls: dict[str, int] = defaultdict(int)
    self_us: dict[str, float] = defaultdict(float)
    for e in prof.key_averages():
        if e.key.startswith("ProfilerStep") or e.key.startswith("## "):
            continue
        calls[e.key] += e.count
        self_us[e.key] += e.self_cpu_time_total
    rows = sorted(((k, round(calls[k] / n), self_us[k] / n / 1000) for k in calls), key=lambda r: -r[2])
    aten_calls = sum(c for k, c in calls.items() if k.startswith("aten::")) / n
    return rows, round(aten_calls)


def timed(step, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        step()
        out.append(time.perf_counter() - t)
    return out


def eval_comparison(run, repeats: int) -> list[str]:
    """An evaluation's generation with 16 prompts a batch (before) and ``GENERATE_BATCH`` (after),
    interleaved: seconds (median) and whether the answers are identical."""
    from workbench.engine import evaluation

    if run.writing is None:
        return []
    after_batch = evaluation.GENERATE_BATCH
    times: dict[int, list[float]] = {16: [], after_batch: []}
    answers: dict[int, object] = {}
    for _ in range(repeats):
        for b in times:
            evaluation.GENERATE_BATCH = b
            t = time.perf_counter()
            metrics, samples = evaluation.evaluate_writing(run.model, run.tokenizer, run.writing, run.device,
                                                           run.use_bf16, 1.0, 0)
            times[b].append(time.perf_counter() - t)
            answers[b] = (metrics, [x["answer"] for x in samples])
    evaluation.GENERATE_BATCH = after_batch
    med = {b: statistics.median(t) for b, t in times.items()}
    same = answers[16] == answers[after_batch]
    return [f"evaluation (generation + held-out loss), {len(run.writing.prompts)} prompts: batch 16 {med[16]:.2f} s, "
            f"batch {after_batch} {med[after_batch]:.2f} s ({med[16] / med[after_batch]:.2f}x); metrics and samples "
            f"identical: {same}"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="generate")
    p.add_argument("--steps", type=int, default=30, help="timed steps each way (median; interleaved in rounds of 5)")
    p.add_argument("--profiled", type=int, default=5, help="profiled steps (averaged)")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--eval-repeats", type=int, default=2, help="evaluation timings each way (0: none)")
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="off")
    p.add_argument("--out", default=None, help="also write the tables as markdown here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    bf16 = {"auto": "auto", "on": True, "off": False}[args.bf16]
    cfg = wb.preset(args.preset, bf16=bf16, steps=10 * (args.steps + args.profiled + 5), threads=args.threads)
    lines = machine_lines()
    t0 = time.perf_counter()
    run = set_up(cfg)
    step = step_fn(run, cfg)
    with before(run):
        step()
    step()
    setup_s = time.perf_counter() - t0
    times: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(max(1, args.steps // 5)):  # rounds of 5 steps each way: load falls on both alike
        with before(run):
            times["before"] += timed(step, 5)
        times["after"] += timed(step, 5)
    ms = {k: statistics.median(v) * 1000 for k, v in times.items()}
    with before(run):
        rows_before, aten_before = profile_steps(step, args.profiled)
    rows_after, aten_after = profile_steps(step, args.profiled)
    after = {k: (c, t) for k, c, t in rows_after}
    lines += [f"# {cfg.label()} on {cfg.model}, batch {cfg.batch_size}, bf16 {run.use_bf16}; set-up + warm-up "
              f"{setup_s:.1f} s",
              f"step time: before {ms['before']:.1f} ms, after {ms['after']:.1f} ms (medians of "
              f"{len(times['after'])}, interleaved): {ms['before'] / ms['after']:.2f}x",
              f"aten operator calls per step: before {aten_before}, after {aten_after} (profiled {args.profiled} "
              "steps each)", "",
              "| operation | calls before | calls after | self CPU ms before | self CPU ms after |",
              "|---|---|---|---|---|"]
    for k, c, t in rows_before[:args.top]:
        ca, ta = after.get(k, (0, 0.0))
        lines.append(f"| {k} | {c} | {ca} | {t:.2f} | {ta:.2f} |")
    if args.eval_repeats:
        lines += [""] + eval_comparison(run, args.eval_repeats)
    text = "\n".join(lines)
    print(text)
    if args.out:
        from workbench.util.fileio import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The training engine: one short fine-tuning run, measured honestly.

``train(RunConfig(...))`` loads the base model and the data, applies the method
("lora": frozen base + LoRA layers + trained head; "full": everything trains; "head":
frozen base, trained head), and runs AdamW with linear warmup and linear decay,
gradient clipping, and an evaluation every ``eval_every`` steps.  It measures:

* parameters: trainable and total (``workbench.lora.params``);
* memory (``workbench.engine.memory.MemoryProbe``, which watches the first step through
  hooks): weights, gradients and optimizer state by exact tensor accounting, the
  activations autograd saves for backward, the analytic estimate for the measured
  batch's shape, and the peak: CUDA's max allocated, or on the CPU the VmHWM of the run's
  own process (which process a run lives in is decided above this module, by
  ``workbench.engine.launch``: by default a CPU run trains in a fresh worker process, so
  that its peak does not depend on what ran before it);
* time: median seconds per step (the first step, which warms caches, left out) and
  non-padding tokens per second.

``train_here`` is a run in the calling process, and this module knows nothing of other
processes: ``workbench.engine.launch.train`` picks this process or a worker
(``workbench.engine.worker``, whose child calls ``train_here``).  The data comes from one
call, ``workbench.engine.batches.run_batches``; the hardware choices from
``workbench.engine.hardware``.

The loop is only about training.  Everything else happens at its edges,
in *sinks* (``workbench.engine.events``): the caller's ``on_step``, the progress bar, the
run store's checkpoints (``workbench.records.recording``: ``wb.train`` is this ``train``
with the store attached).  This module stores nothing.

Speed comes from not doing needless work, never from measuring less: batches padded to
their own longest sequence (evaluation batches sorted by length first); bf16 autocast
where it is faster (CUDA; on CPUs with AMX / AVX-512-bf16, when a short probe of the run's
model measured it faster: ``workbench.engine.bf16_probe``); in such bf16
runs a frozen base stored in bf16 once (``store_frozen_in_bf16``) and, on the CPU, the
plain attention path (``use_plain_attention``); the fused AdamW kernel.  The recipe is
the config's: ``model_dropout`` (the default preset turns the base model's dropout off,
see ``workbench.engine.config.PRESETS``).  ``benchmarks/sweep.py`` measures the whole against
PEFT and the ``transformers`` Trainer.

A run can be stopped from outside (``stop.set()`` or Ctrl-C): it ends as "stopped" and
keeps its curve.  A NaN or infinite loss, or one above ``EXPLODED`` (10) times the first
step's, ends it as "diverged" at that step.  An error
ends it as "failed" and is raised again after the sinks have seen the end.
"""

from __future__ import annotations

import math
import random
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn

from workbench.engine.batches import run_batches
from workbench.engine.bf16_probe import Bf16Choice, choose_bf16, measure_bf16, probe_key
from workbench.engine.config import ParamCounts, RunConfig, RunResult, Timing, history_frame, history_row
from workbench.engine.cpu_share import CpuWatch, free_threads
from workbench.engine.data import Batch, repeat_batches
from workbench.engine.evaluation import WritingEval, evaluate, evaluate_writing
from workbench.engine.events import RunSink, StepInfo
from workbench.engine.hardware import (resolve_device, restore_frozen_to_fp32, store_frozen_in_bf16,
                                       use_plain_attention)
from workbench.engine.memory import MemoryProbe
from workbench.engine.models import load_base, load_tokenizer, set_model_dropout
from workbench.engine.optim import make_optimizer
from workbench.engine.provenance import environment
from workbench.lora.adapters import adapter_files
from workbench.lora.inject import add_lora
from workbench.lora.params import count_parameters
from workbench.lora.paths import head_names

__all__ = ["train_here", "StepInfo", "prepare_model", "evaluate", "training_step", "set_up",
           "Setup", "EXPLODED", "run_bf16"]


# --------------------------------------------------------------------------- the config and the model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def prepare_model(cfg: RunConfig, model: nn.Module) -> None:
    """Apply the method (which parameters train) and the base model's dropout (``model_dropout``)."""
    if cfg.model_dropout is not None:
        set_model_dropout(model, cfg.model_dropout)  # before LoRA, whose dropout is its own
    if cfg.method == "lora":
        add_lora(model, cfg.lora)
    elif cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    else:  # head only
        heads = head_names(model)
        if not heads:
            raise ValueError(f"{type(model).__name__} has no classification head to train")
        for p in model.parameters():
            p.requires_grad_(False)
        for h in heads:
            model.get_submodule(h).requires_grad_(True)


# --------------------------------------------------------------------------- one step, the schedule, evaluation


def linear_schedule(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warmup to 1 over ``warmup`` steps, then linear decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


# --------------------------------------------------------------------------- a run


@dataclass
class Setup:
    """What a run trains with, made from its config by ``set_up``."""

    model: nn.Module
    trainable: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    batches: Iterator[Batch]  # exactly cfg.steps training batches, reshuffled each pass
    eval_batches: Iterable[Batch]
    device: torch.device
    use_bf16: bool
    params: ParamCounts
    environment: dict = field(default_factory=dict)
    frozen_in_bf16: bool = False
    tokenizer: object = None
    writing: WritingEval | None = None  # a language model's run: prompts to answer, held-out text
    forward_kwargs: dict = field(default_factory=dict)  # {"use_cache": False} for a decoder (see no_cache)


def set_up(cfg: RunConfig) -> Setup:
    """Load the model and the data, apply the method, and make the optimizer and the schedule."""
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    bf16 = run_bf16(cfg, device)  # before seeding: a probe, if one runs, leaves the run as it would be
    use_bf16 = bf16.use
    seed_everything(cfg.seed)

    # QLoRA: a quantized base dequantizes to bf16 for its matmuls in a bf16 run.
    quantized = dict(quantize=cfg.quantize, compute_dtype=torch.bfloat16 if use_bf16 else None)
    tokenizer = load_tokenizer(cfg.model)
    data = run_batches(cfg, tokenizer)  # a classifier's size comes from its data's labels
    model, tokenizer = load_base(cfg.model, num_labels=data.num_labels, task=cfg.task, seed=cfg.seed,
                                 tokenizer=tokenizer, **quantized)
    prepare_model(cfg, model)
    model.to(device).train()
    # bf16 runs of a frozen base: store it in bf16 once (see store_frozen_in_bf16).
    frozen_in_bf16 = use_bf16 and cfg.method != "full" and store_frozen_in_bf16(model) > 0
    if use_bf16 and device.type == "cpu":
        use_plain_attention(model)
    counts = count_parameters(model)

    ratio = cfg.lora.loraplus_ratio if cfg.method == "lora" else None
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, loraplus_ratio=ratio)
    warmup = int(cfg.warmup_ratio * cfg.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: linear_schedule(s, cfg.steps, warmup))

    env = environment(device=str(device), threads=torch.get_num_threads())
    env["bf16"] = use_bf16
    env["bf16_reason"] = bf16.reason
    env["frozen_dtype"] = "bfloat16" if frozen_in_bf16 else str(next(model.parameters()).dtype).removeprefix("torch.")
    return Setup(model=model, trainable=[p for p in model.parameters() if p.requires_grad], optimizer=optimizer,
                 scheduler=scheduler, batches=repeat_batches(data.train, cfg.steps), eval_batches=data.eval,
                 device=device, use_bf16=use_bf16, params=ParamCounts(trainable=counts.trainable, total=counts.total),
                 environment=env, frozen_in_bf16=frozen_in_bf16, tokenizer=tokenizer, writing=data.writing,
                 forward_kwargs=no_cache(model))


def no_cache(model: nn.Module) -> dict:
    """``{"use_cache": False}`` for a model whose forward takes it (a decoder), else ``{}``.

    A decoder's config asks for a key/value cache by default, and a training forward pass
    would build one (a cache object and a concatenation per layer) only to drop it: the
    loss needs none.  Generation passes ``use_cache=True`` itself."""
    import inspect

    return {"use_cache": False} if "use_cache" in inspect.signature(type(model).forward).parameters else {}


def run_bf16(cfg: RunConfig, device: torch.device) -> Bf16Choice:
    """The run's bf16 choice and why; "auto" on a CPU with bf16 units is measured
    (``workbench.engine.bf16_probe``) on the run's own model and first batch, once per
    model and machine."""
    return choose_bf16(cfg.bf16, device, key=probe_key(cfg.model, cfg.method), quantized=cfg.quantize is not None,
                       measure=lambda: _probe(cfg, device))


def _probe(cfg: RunConfig, device: torch.device) -> tuple[float, float]:
    """(fp32 ms, bf16 ms) of a forward + backward step of the run's model on its first batch."""
    tokenizer = load_tokenizer(cfg.model)
    data = run_batches(cfg, tokenizer)
    model, tokenizer = load_base(cfg.model, num_labels=data.num_labels, task=cfg.task, seed=cfg.seed,
                                 tokenizer=tokenizer)
    prepare_model(cfg, model)
    model.to(device).train()
    inputs = next(iter(data.train)).to(device).model_inputs()
    return measure_bf16(model, inputs, device)


def training_step(run: Setup, inputs: dict[str, torch.Tensor], max_grad_norm: float) -> float:
    """One optimizer step on one batch; returns its loss.

    forward (under bf16 autocast when the run uses it) -> backward -> clip the gradient
    norm -> AdamW step -> next learning rate -> drop the gradients.  A NaN or infinite
    loss returns before backward: the weights are left as they were.
    """
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.use_bf16):
        loss = run.model(**inputs, **run.forward_kwargs).loss
    value = loss.detach().item()
    if not math.isfinite(value):
        return value
    loss.backward()
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(run.trainable, max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)  # so the step's time is the step's
    return value


@dataclass
class RunLog:
    """What the loop has done so far: the curve, and the time and real tokens of each step."""

    history: list[dict] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)
    tokens: int = 0
    eval_seconds: float = 0.0  # wall time spent in evaluations (a generative one answers prompts: seconds)
    load_seconds: float = float("nan")  # wall time of loading the model and the data (set_up)

    def curve(self) -> pd.DataFrame:
        return history_frame(self.history)

    def timing(self, started: float) -> Timing:
        """Median step time without the first step (it warms caches up); tokens per second of training."""
        steady = self.step_times[1:] or self.step_times
        train_time = sum(self.step_times)
        return Timing(
            seconds_per_step=statistics.median(steady) if steady else float("nan"),
            tokens_per_second=self.tokens / train_time if train_time > 0 else float("nan"),
            total_seconds=time.perf_counter() - started,
            eval_seconds=self.eval_seconds,
            train_seconds=train_time,
            load_seconds=self.load_seconds,
        )


def train_here(cfg: RunConfig, sinks: RunSink | None = None, stop: threading.Event | None = None,
               keep_model: bool = False, *, own_process: bool = False) -> RunResult:
    """Run one fine-tuning in this process: set up, the loop, and the end the sinks see.

    ``sinks`` hear the run's edges (``workbench.engine.events``); ``stop`` ends it before
    the next step; ``keep_model`` hands the trained model back as ``result.model``.
    ``own_process``: this process exists for this run alone (a worker's child, chosen by
    ``workbench.engine.launch``), so its resident peak is the run's own, and its thread
    count may be lowered to the CPUs other processes leave free (``workbench.engine.cpu_share``).
    The config was checked when it was made and again by ``launch.train``, the way in.
    """
    started = time.perf_counter()
    sinks = sinks if sinks is not None else RunSink()
    # A run in its own process trains with the CPUs other processes leave free, as they were while it loaded.
    watch = CpuWatch() if own_process and not cfg.threads and resolve_device(cfg.device).type == "cpu" else None
    run = set_up(cfg)
    if watch is not None:
        threads, threads_reason = free_threads(torch.get_num_threads(), busy=watch.others())
        torch.set_num_threads(threads)
        run.environment["threads"] = threads
        if threads_reason:
            run.environment["threads_reason"] = threads_reason
    probe = MemoryProbe(run.model, run.optimizer, run.device, own_process=own_process)  # measures the first step
    log = RunLog(load_seconds=time.perf_counter() - started)
    result = RunResult(config=cfg, status="running", history=log.curve(), params=run.params, memory=probe.memory,
                       timing=log.timing(started), environment=run.environment)
    error: Exception | None = None
    try:
        sinks.on_start(result)
        status, message = _loop(cfg, run, log, result, sinks, stop, started)
    except KeyboardInterrupt:
        status, message = "stopped", f"interrupted after {len(log.step_times)} of {cfg.steps} steps"
    except Exception as e:  # noqa: BLE001 - recorded as "failed", then raised again below
        status, message, error = "failed", f"{type(e).__name__}: {e}", e

    result.status, result.message = status, message
    result.history, result.timing = log.curve(), log.timing(started)
    result.memory, result.memory_estimate = probe.close(), probe.estimate
    result.environment.update(probe.notes)
    if keep_model:
        if run.frozen_in_bf16:
            restore_frozen_to_fp32(run.model)
        result.model = run.model.eval()
    if cfg.method == "lora" and sinks.needs_adapter(cfg):
        result.adapter = adapter_files(run.model)
    sinks.on_finish(result, run.model)
    result.adapter = None  # the sinks have it; the result does not hold on to it
    if error is not None:
        raise error
    return result


# A loss this many times the first step's has left training, not merely wobbled: the run
# ends as "diverged" (as a NaN does) instead of spending its remaining steps at chance.
EXPLODED = 10.0


def _loop(cfg: RunConfig, run: Setup, log: RunLog, result: RunResult, sinks: RunSink,
          stop: threading.Event | None, started: float) -> tuple[str, str]:
    """The training loop, one optimizer step per pass; returns how it ended: (status, message)."""
    for step in range(1, cfg.steps + 1):
        if stop is not None and stop.is_set():
            return "stopped", f"stopped by the user after {step - 1} of {cfg.steps} steps"
        batch = next(run.batches)
        inputs = batch.to(run.device).model_inputs()
        lr = run.scheduler.get_last_lr()[0]
        t0 = time.perf_counter()
        loss = training_step(run, inputs, cfg.max_grad_norm)
        row = history_row(step, loss, lr)
        log.history.append(row)
        if not math.isfinite(loss):
            return "diverged", f"the loss became {loss} at step {step}; try a lower learning rate than {cfg.lr:g}"
        first = log.history[0]["train_loss"]
        if loss > EXPLODED * first:
            return "diverged", (f"the loss exploded from {first:.3g} to {loss:.3g} at step {step} (more than "
                                f"{EXPLODED:g}x where it started); try a lower learning rate than {cfg.lr:g}")
        log.step_times.append(time.perf_counter() - t0)
        log.tokens += batch.num_tokens
        if step == cfg.steps or (cfg.eval_every and step % cfg.eval_every == 0):
            # Before the last evaluation a language model may answer fewer prompts (interim_generate_examples).
            limit = cfg.interim_generate_examples if step < cfg.steps else None
            sinks.on_eval_start(step, cfg.steps, _prompts_answered(run, limit))
            t_eval = time.perf_counter()
            row.update(_evaluation(run, result, step, limit))
            log.eval_seconds += time.perf_counter() - t_eval
            result.history = log.curve()
            sinks.on_eval(result)
        sinks.on_step(StepInfo.from_row(row, cfg.steps, time.perf_counter() - started, log.history))
    return "completed", ""


def _prompts_answered(run: Setup, limit: int | None) -> int:
    """How many held-out prompts an evaluation answers by generation (0 for a classifier)."""
    n = len(run.writing.prompts) if run.writing is not None else 0
    return n if limit is None else min(n, limit)


def _evaluation(run: Setup, result: RunResult, step: int, limit: int | None = None) -> dict[str, float]:
    """One evaluation's columns of the curve (the samples a language model wrote go onto ``result``);
    ``limit``: answer only the first that many prompts (None: all)."""
    eval_loss, eval_accuracy = evaluate(run.model, run.eval_batches, run.device, run.use_bf16)
    columns = {"eval_loss": eval_loss, "eval_accuracy": eval_accuracy}
    if run.writing is not None:
        metrics, samples = evaluate_writing(run.model, run.tokenizer, run.writing, run.device, run.use_bf16,
                                            eval_loss, step, limit=limit)
        columns.update(metrics)
        result.samples.extend(samples)
    return columns

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
  own process (``workbench.engine.worker``: by default a CPU run trains in a fresh worker
  process, so that its peak does not depend on what ran before it);
* time: median seconds per step (the first step, which warms caches, left out) and
  non-padding tokens per second.

The loop (``train_here``) is only about training.  Everything else happens at its edges,
in *sinks* (``workbench.engine.events``): the caller's ``on_step``, the progress bar, the
run store's checkpoints (``workbench.records.recording``: ``wb.train`` is this ``train``
with the store attached).  This module stores nothing.

Speed comes from not doing needless work, never from measuring less: batches padded to
their own longest sequence (evaluation batches sorted by length first); bf16 autocast
where the hardware runs bf16 fast (CUDA, and CPUs with AMX / AVX-512-bf16); in such bf16
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
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from workbench.engine.config import GENERATIVE_COLUMNS, HISTORY_COLUMNS, METHODS, ParamCounts, RunConfig, RunResult, Timing
from workbench.engine.data import TASKS, Batch, by_length, load_task, make_batches, repeat_batches, tokenize_dataset
from workbench.engine.evaluation import WritingEval, evaluate, evaluate_writing
from workbench.engine.events import RunSink, StepInfo, sinks_for
from workbench.engine.memory import MemoryProbe
from workbench.engine.models import BUNDLED_LM, load_base, set_model_dropout
from workbench.engine.sft import PromptTokens, load_prompt_task, read_text_lines, tokenize_prompts
from workbench.engine.optim import make_optimizer
from workbench.engine.provenance import environment
from workbench.lora.inject import add_lora
from workbench.lora.params import count_parameters
from workbench.lora.targets import head_names
from workbench.util.checks import (check_bool, check_choice, check_integer, check_number, check_positive_int,
                                   check_positive_number, is_probability)

__all__ = ["train", "train_here", "StepInfo", "HISTORY_COLUMNS", "validate", "prepare_model", "resolve_device",
           "resolve_bf16", "evaluate", "training_step", "set_up", "Setup"]


# --------------------------------------------------------------------------- hardware choices


def resolve_device(device: str = "auto") -> torch.device:
    """'auto': CUDA when present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but no CUDA GPU is available; use 'auto' or 'cpu'")
    return dev


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX or AVX-512 bf16 units, where bf16 matmuls run several times faster."""
    try:
        flags = open("/proc/cpuinfo", encoding="ascii", errors="ignore").read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_bf16(bf16: bool | str, device: torch.device) -> bool:
    """'auto': bf16 autocast on CUDA GPUs that support it and on CPUs with fast bf16."""
    if bf16 == "auto":
        if device.type == "cuda":
            return torch.cuda.is_bf16_supported()
        return device.type == "cpu" and cpu_has_fast_bf16()
    if not isinstance(bf16, bool):
        raise ValueError(f"bf16 must be True, False or 'auto', got {bf16!r}")
    return bf16


def store_frozen_in_bf16(model: nn.Module) -> int:
    """Keep the frozen parameters in bf16 for a bf16 run; returns how many tensors changed.

    Under bf16 autocast every matmul reads W in bf16, so autocast casts each frozen
    weight from fp32 to bf16 again at every step: for MiniLM that is 10.6M numbers read
    and written per step, only to give the same bf16 copy each time.  A frozen parameter
    never changes, so storing it in bf16 once does that work once (and halves its
    memory).  The matmuls see exactly the inputs autocast gave them; the embedding sums
    of the frozen base now run in bf16 too.  Trainable parameters (LoRA, the head) stay
    fp32, as in PEFT's mixed precision: their updates are far smaller than bf16's
    resolution of 1 part in 256.  Needs autocast during the forward pass.
    """
    changed = 0
    for p in model.parameters():
        if not p.requires_grad and p.dtype == torch.float32:
            p.data = p.data.to(torch.bfloat16)
            changed += 1
    return changed


def use_plain_attention(model: nn.Module) -> bool:
    """Switch a ``transformers`` model to its plain ("eager") attention; False if it has none.

    For bf16 runs on the CPU: there PyTorch's fused (flash) attention kernel, which sdpa
    picks when attention dropout is off, has a slow bf16 backward pass (measured here:
    about 10 ms per layer at batch 16 x 20 tokens, some 15 times the plain path).  The
    plain path computes the same softmax(Q K^T / sqrt(d) + mask) V with two matmuls.
    """
    try:
        model.set_attn_implementation("eager")
    except (AttributeError, ValueError, ImportError):
        return False
    return True


def restore_frozen_to_fp32(model: nn.Module) -> None:
    """Undo ``store_frozen_in_bf16`` for the model a run hands back (``keep_model``), so
    it runs without autocast; the values keep their bf16 rounding."""
    for p in model.parameters():
        if not p.requires_grad and p.dtype == torch.bfloat16:
            p.data = p.data.float()


# --------------------------------------------------------------------------- the config and the model


def validate(cfg: RunConfig) -> None:
    """Check a config before anything loads; say what is wrong and what is allowed."""
    if not isinstance(cfg, RunConfig):
        raise TypeError(f"train needs a RunConfig (e.g. wb.preset('default', rank=8)), got {type(cfg).__name__}")
    check_choice("method", cfg.method, METHODS)
    check_choice("task", cfg.task, TASKS)
    for name in ("steps", "batch_size", "max_length"):
        check_positive_int(name, getattr(cfg, name))
    for name in ("max_train_examples", "max_eval_examples"):
        if getattr(cfg, name) is not None:
            check_positive_int(name, getattr(cfg, name), what="None keeps every example")
    check_positive_number("lr", cfg.lr, what="learning rate")
    check_number("warmup_ratio", cfg.warmup_ratio, 0, 1, high_open=True)
    check_number("weight_decay", cfg.weight_decay, 0)
    check_number("max_grad_norm", cfg.max_grad_norm, 0, what="0 turns clipping off")
    check_integer("eval_every", cfg.eval_every, 0, what="0 evaluates only at the end")
    check_integer("seed", cfg.seed)
    if cfg.threads is not None:
        check_positive_int("threads", cfg.threads, what="None keeps torch's default")
    if cfg.model_dropout is not None and not is_probability(cfg.model_dropout):
        raise ValueError("model_dropout must be None (the checkpoint's own) or a probability in [0, 1), "
                         f"got {cfg.model_dropout!r}")
    if cfg.method == "head" and cfg.task != "classification":
        raise ValueError("method 'head' trains a classification head, and a language model (task 'causal-lm') "
                         "has none to train apart: choose method 'lora' or 'full'")
    if cfg.task == "causal-lm":
        if cfg.max_generate_examples is not None:
            check_integer("max_generate_examples", cfg.max_generate_examples, 0,
                          what="0 or None: None answers every evaluation prompt, 0 none")
        check_positive_int("max_new_tokens", cfg.max_new_tokens, what="the longest answer generated")


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


def set_up(cfg: RunConfig) -> Setup:
    """Load the model and the data, apply the method, and make the optimizer and the schedule."""
    device = resolve_device(cfg.device)
    use_bf16 = resolve_bf16(cfg.bf16, device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)

    writing = None
    # QLoRA: a quantized base dequantizes to bf16 for its matmuls in a bf16 run.
    quantized = dict(quantize=cfg.quantize, compute_dtype=torch.bfloat16 if use_bf16 else None)
    if cfg.task == "causal-lm":
        model, tokenizer = load_base(cfg.model, task=cfg.task, seed=cfg.seed, **quantized)
        train_loader, eval_batches, writing = _language_data(cfg, tokenizer)
    else:
        train_ds, eval_ds = load_task(cfg.data, cfg.eval_data, cfg.text_column, cfg.label_column, cfg.seed)
        train_ds, eval_ds = train_ds.head(cfg.max_train_examples), eval_ds.head(cfg.max_eval_examples)
        model, tokenizer = load_base(cfg.model, num_labels=max(2, train_ds.num_labels), task=cfg.task,
                                     seed=cfg.seed, **quantized)
        train_loader = make_batches(train_ds, tokenizer, cfg.batch_size, cfg.max_length, shuffle=True,
                                    seed=cfg.seed, task=cfg.task)
        # Evaluation order does not change its result: batch similar lengths to pad less.
        eval_tokens = by_length(tokenize_dataset(eval_ds, tokenizer, cfg.max_length))
        eval_batches = make_batches(eval_tokens, tokenizer, cfg.batch_size * 2, cfg.max_length, shuffle=False,
                                    task=cfg.task)
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
    env["frozen_dtype"] = "bfloat16" if frozen_in_bf16 else str(next(model.parameters()).dtype).removeprefix("torch.")
    return Setup(model=model, trainable=[p for p in model.parameters() if p.requires_grad], optimizer=optimizer,
                 scheduler=scheduler, batches=repeat_batches(train_loader, cfg.steps), eval_batches=eval_batches,
                 device=device, use_bf16=use_bf16, params=ParamCounts(trainable=counts.trainable, total=counts.total),
                 environment=env, frozen_in_bf16=frozen_in_bf16, tokenizer=tokenizer, writing=writing)


def heldout_source(cfg: RunConfig) -> str | None:
    """The held-out pretraining text a language model's run measures forgetting on.

    "auto": the bundled model's held-out text (``data/story_lm/heldout.txt``) when the run
    adapts the bundled model, else none (we do not know another model's pretraining data).
    """
    if cfg.heldout_data != "auto":
        return cfg.heldout_data
    if cfg.model != BUNDLED_LM:
        return None
    from workbench.engine.story_lm import story_lm_path

    return str(Path(story_lm_path()) / "heldout.txt")


def _language_data(cfg: RunConfig, tokenizer) -> tuple[DataLoader, list[Batch], WritingEval]:
    """Training batches, evaluation batches and the generative evaluation of a language model's run."""
    train_ds, eval_ds = load_prompt_task(cfg.data, cfg.eval_data, tokenizer, cfg.seed)
    train_ds, eval_ds = train_ds.head(cfg.max_train_examples), eval_ds.head(cfg.max_eval_examples)
    train_loader = make_batches(tokenize_prompts(train_ds, tokenizer, cfg.max_length), tokenizer, cfg.batch_size,
                                cfg.max_length, shuffle=True, seed=cfg.seed, task=cfg.task)
    eval_batches = list(make_batches(_shortest_first(tokenize_prompts(eval_ds, tokenizer, cfg.max_length)),
                                     tokenizer, cfg.batch_size * 2, cfg.max_length, shuffle=False, task=cfg.task))
    # Plain text has no answer to match: exact match is measured on prompt/completion data only.
    answerable = eval_ds.select([i for i, p in enumerate(eval_ds.prompts) if p]).head(cfg.max_generate_examples)
    heldout: list[Batch] = []
    source = heldout_source(cfg)
    if source is not None:
        from workbench.engine.sft import PromptDataset

        lines = read_text_lines(source)[: cfg.max_eval_examples or None]
        text = PromptDataset([""] * len(lines), lines, "held-out text")
        heldout = list(make_batches(_shortest_first(tokenize_prompts(text, tokenizer, cfg.max_length)), tokenizer,
                                    cfg.batch_size * 2, cfg.max_length, shuffle=False, task=cfg.task))
    return train_loader, eval_batches, WritingEval(answerable, heldout, cfg.max_new_tokens)


def _shortest_first(tokens: PromptTokens) -> PromptTokens:
    """For evaluation, where order does not matter: batches of similar lengths pad less."""
    order = sorted(range(len(tokens)), key=lambda i: len(tokens.input_ids[i]))
    return PromptTokens([tokens.input_ids[i] for i in order], [tokens.prompt_lengths[i] for i in order],
                        tokens.max_length, tokens.name)


def training_step(run: Setup, inputs: dict[str, torch.Tensor], max_grad_norm: float) -> float:
    """One optimizer step on one batch; returns its loss.

    forward (under bf16 autocast when the run uses it) -> backward -> clip the gradient
    norm -> AdamW step -> next learning rate -> drop the gradients.  A NaN or infinite
    loss returns before backward: the weights are left as they were.
    """
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.use_bf16):
        loss = run.model(**inputs).loss
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

    def curve(self) -> pd.DataFrame:
        return pd.DataFrame(self.history, columns=list(HISTORY_COLUMNS))

    def timing(self, started: float) -> Timing:
        """Median step time without the first step (it warms caches up); tokens per second of training."""
        steady = self.step_times[1:] or self.step_times
        train_time = sum(self.step_times)
        return Timing(
            seconds_per_step=statistics.median(steady) if steady else float("nan"),
            tokens_per_second=self.tokens / train_time if train_time > 0 else float("nan"),
            total_seconds=time.perf_counter() - started,
        )


def train_here(cfg: RunConfig, sinks: RunSink | None = None, stop: threading.Event | None = None,
               keep_model: bool = False, *, own_process: bool = False) -> RunResult:
    """Run one fine-tuning in this process: set up, the loop, and the end the sinks see.

    ``sinks`` hear the run's edges (``workbench.engine.events``); ``stop`` ends it before
    the next step; ``keep_model`` hands the trained model back as ``result.model``.
    ``own_process``: this process exists for this run alone (``workbench.engine.worker``),
    so its resident peak is the run's own.
    """
    validate(cfg)
    started = time.perf_counter()
    sinks = sinks if sinks is not None else RunSink()
    run = set_up(cfg)
    log = RunLog()
    probe = MemoryProbe(run.model, run.optimizer, run.device, own_process=own_process)  # measures the first step
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
    sinks.on_finish(result, run.model)
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
        row = {"step": step, "train_loss": loss, "lr": lr}
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
            row["eval_loss"], row["eval_accuracy"] = evaluate(run.model, run.eval_batches, run.device, run.use_bf16)
            if run.writing is not None:
                metrics, samples = evaluate_writing(run.model, run.tokenizer, run.writing, run.device, run.use_bf16,
                                                    row["eval_loss"], step)
                row.update(metrics)
                result.samples.extend(samples)
            result.history = log.curve()
            sinks.on_eval(result)
        sinks.on_step(StepInfo(step, cfg.steps, loss, lr, time.perf_counter() - started,
                               row.get("eval_loss"), row.get("eval_accuracy"), log.history,
                               {k: row[k] for k in GENERATIVE_COLUMNS if k in row}))
    return "completed", ""


def use_fresh_process(cfg: RunConfig, fresh_process: bool | None = None) -> bool:
    """Whether a run trains in a worker process of its own (``workbench.engine.worker``).

    None (the default) decides by the device.  On the CPU (Linux) yes: the only peak a CPU
    run has is the resident memory of a whole process, and a process that ran other runs
    keeps their memory (measured in one process, the same head-only run on the tiny preset
    peaked at 545 MB alone and at 665 MB right after a full fine-tuning).  On CUDA no:
    ``max_memory_allocated`` after a reset is the run's own in any process.
    """
    linux = sys.platform.startswith("linux")
    if fresh_process is None:
        return linux and resolve_device(cfg.device).type == "cpu"
    check_bool("fresh_process", fresh_process)
    if fresh_process and not linux:
        raise ValueError("fresh_process=True needs Linux (the worker is forked, and the peak read from /proc); "
                         "use fresh_process=False")
    return fresh_process


def train(
    cfg: RunConfig,
    on_step: Callable[[StepInfo], None] | None = None,
    stop: threading.Event | None = None,
    progress: bool = True,
    keep_model: bool = False,
    *,
    sinks: Iterable[RunSink] = (),
    fresh_process: bool | None = None,
) -> RunResult:
    """Run one fine-tuning as ``cfg`` says and return its result.  Nothing is stored here:
    ``wb.train`` (``workbench.records.recording.train``) is this with the run store attached.

    ``on_step`` is called after each step with a ``StepInfo``; ``progress`` shows a bar;
    ``sinks`` are further listeners on the run's edges (``workbench.engine.events``).
    Setting ``stop`` (a ``threading.Event``) or pressing Ctrl-C ends the run early as
    "stopped".  ``keep_model=True`` returns the trained model too, as ``result.model``.
    ``fresh_process``: train in a worker process of its own (see ``use_fresh_process``;
    the default: yes on the CPU, no on CUDA); the sinks and ``on_step`` run here either way.
    """
    validate(cfg)
    group = sinks_for(sinks, on_step, progress)
    if use_fresh_process(cfg, fresh_process):
        from workbench.engine.worker import train_in_worker

        return train_in_worker(cfg, group, stop=stop, keep_model=keep_model)
    return train_here(cfg, group, stop=stop, keep_model=keep_model)

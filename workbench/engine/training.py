"""The training engine: one short fine-tuning run, measured honestly.

``train(RunConfig(...))`` loads the base model and the data, applies the method
("lora": frozen base + LoRA layers + trained head; "full": everything trains; "head":
frozen base, trained head), and runs AdamW with linear warmup and linear decay,
gradient clipping, and an evaluation every ``eval_every`` steps.  It measures:

* parameters: trainable and total (``workbench.lora.params``);
* memory: weights, gradients and optimizer state by exact tensor accounting, the
  activations autograd saves for backward (counted during the first step), and the
  peak (CUDA max allocated, or the process's VmHWM on CPU); plus the analytic estimate;
* time: median seconds per step (the first step, which warms caches, left out) and
  non-padding tokens per second.

Speed comes from not doing needless work, never from measuring less: batches padded to
their own longest sequence (evaluation batches sorted by length first); bf16 autocast
where the hardware runs bf16 fast (CUDA, and CPUs with AMX / AVX-512-bf16); in such bf16
runs a frozen base stored in bf16 once (``store_frozen_in_bf16``) and, on the CPU, the
plain attention path (``use_plain_attention``); the fused AdamW kernel.  The recipe is
the config's: ``model_dropout`` (the default preset turns the base model's dropout off,
see ``workbench.engine.config.PRESETS``).  ``benchmarks/sweep.py`` measures the whole against
PEFT and the ``transformers`` Trainer.

A run can be stopped from outside (``stop.set()`` or Ctrl-C): it ends as "stopped" and
keeps its curve.  A NaN or infinite loss ends it as "diverged" at that step.  The run
is written to the run store as it goes, so nothing recorded is lost.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from workbench.engine.config import METHODS, ParamCounts, RunConfig, RunResult, Timing
from workbench.lora.inject import add_lora, head_names
from workbench.util.checks import is_probability
from workbench.engine.models import set_model_dropout
from workbench.engine.optim import make_optimizer
from workbench.lora.params import count_parameters

HISTORY_COLUMNS = ["step", "train_loss", "lr", "eval_loss", "eval_accuracy"]


@dataclass
class StepInfo:
    """What the step callback receives after every optimizer step (and each evaluation)."""

    step: int
    steps: int
    train_loss: float
    lr: float
    seconds: float  # since the run started
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    history: list[dict] = field(default_factory=list)  # every row so far (step, train_loss, ...)


class RunDiverged(RuntimeError):
    pass


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


def validate(cfg: RunConfig) -> None:
    """Check a config before anything loads; say what is wrong and what is allowed."""
    if cfg.method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {cfg.method!r}")
    for name in ("steps", "batch_size", "max_length"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if not (isinstance(cfg.lr, (int, float)) and cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise ValueError(f"lr (learning rate) must be a positive number, got {cfg.lr!r}")
    if not 0 <= cfg.warmup_ratio < 1:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {cfg.warmup_ratio!r}")
    if cfg.model_dropout is not None and not is_probability(cfg.model_dropout):
        raise ValueError("model_dropout must be None (the checkpoint's own) or a probability in [0, 1), "
                         f"got {cfg.model_dropout!r}")
    if cfg.eval_every < 0:
        raise ValueError(f"eval_every must be 0 (only at the end) or a positive number of steps, got {cfg.eval_every!r}")
    if cfg.method == "head" and cfg.task != "classification":
        raise ValueError("method 'head' trains a classification head; it needs task='classification'")


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


def linear_schedule(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warmup to 1 over ``warmup`` steps, then linear decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


@torch.no_grad()
def evaluate(model: nn.Module, batches, device: torch.device, use_bf16: bool) -> tuple[float, float]:
    """Mean loss and accuracy over the evaluation batches (token accuracy for causal LM)."""
    was_training = model.training
    model.eval()
    loss_sum, n_loss, correct, n_items = 0.0, 0, 0, 0
    for batch in batches:
        batch = batch.to(device).model_inputs()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = model(**batch)
        labels = batch["labels"]
        logits = out.logits.float()
        if logits.dim() == 3:  # causal LM: predict token t+1 from tokens up to t
            pred, gold = logits[:, :-1].argmax(-1), labels[:, 1:]
            keep = gold != -100
            correct += int((pred[keep] == gold[keep]).sum())
            n_items += int(keep.sum())
        else:
            correct += int((logits.argmax(-1) == labels).sum())
            n_items += labels.numel()
        loss_sum += float(out.loss) * labels.shape[0]
        n_loss += labels.shape[0]
    model.train(was_training)
    return loss_sum / max(1, n_loss), correct / max(1, n_items)


def train(
    cfg: RunConfig,
    on_step: Callable[[StepInfo], None] | None = None,
    stop: threading.Event | None = None,
    runs_dir: str | None = "runs",
    progress: bool = True,
    keep_model: bool = False,
) -> RunResult:
    """Run one fine-tuning as ``cfg`` says; return (and store under ``runs_dir``) its result.

    ``on_step`` is called after each step with a ``StepInfo``.  Setting ``stop`` (a
    ``threading.Event``) or pressing Ctrl-C ends the run early as "stopped".
    ``runs_dir=None`` keeps the run out of the store.  A LoRA run's adapter is saved in
    PEFT's format beside its record (``<run folder>/adapter``).  ``keep_model=True``
    returns the trained model too, as ``result.model`` (for looking inside ΔW).
    """
    from tqdm.auto import tqdm

    from workbench.engine import memory as mem
    from workbench.records import store
    from workbench.engine.data import by_length, load_task, make_batches, repeat_batches, tokenize_dataset
    from workbench.engine.models import load_base

    validate(cfg)
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    use_bf16 = resolve_bf16(cfg.bf16, device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)

    label_column = cfg.label_column if cfg.task == "classification" else None
    train_ds, eval_ds = load_task(cfg.data, cfg.eval_data, cfg.text_column, label_column, cfg.seed)
    train_ds, eval_ds = train_ds.head(cfg.max_train_examples), eval_ds.head(cfg.max_eval_examples)
    num_labels = max(2, train_ds.num_labels)
    model, tokenizer = load_base(cfg.model, num_labels=num_labels, task=cfg.task, seed=cfg.seed)
    prepare_model(cfg, model)
    model.to(device).train()
    # bf16 runs of a frozen base: store it in bf16 once (see store_frozen_in_bf16).
    frozen_in_bf16 = use_bf16 and cfg.method != "full" and store_frozen_in_bf16(model) > 0
    if use_bf16 and device.type == "cpu":
        use_plain_attention(model)
    counts = count_parameters(model)
    params = ParamCounts(trainable=counts.trainable, total=counts.total)

    train_loader = make_batches(train_ds, tokenizer, cfg.batch_size, cfg.max_length, shuffle=True, seed=cfg.seed,
                                task=cfg.task)
    # Evaluation order does not change its result: batch similar lengths to pad less.
    eval_tokens = by_length(tokenize_dataset(eval_ds, tokenizer, cfg.max_length))
    eval_loader = make_batches(eval_tokens, tokenizer, cfg.batch_size * 2, cfg.max_length, shuffle=False, task=cfg.task)
    trainable = [p for p in model.parameters() if p.requires_grad]
    ratio = cfg.lora.loraplus_ratio if cfg.method == "lora" else None
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, loraplus_ratio=ratio)
    warmup = int(cfg.warmup_ratio * cfg.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: linear_schedule(s, cfg.steps, warmup))

    env = store.environment(device=str(device), threads=torch.get_num_threads())
    env["bf16"] = use_bf16
    env["frozen_dtype"] = "bfloat16" if frozen_in_bf16 else str(next(model.parameters()).dtype).removeprefix("torch.")

    def estimate_for(batch_size: int, seq_len: int):
        """The analytic estimate for the batch the measurement saw (BERT/GPT-2 blocks only)."""
        try:
            est = mem.estimate_memory(model, batch_size=batch_size, seq_len=seq_len, device=device.type)
            env["estimate_shape"] = [batch_size, seq_len]
            return est
        except (ValueError, NotImplementedError, TypeError) as e:
            env["estimate_note"] = str(e)
            return None

    estimate = None
    memory = mem.MemoryBreakdown(weights=mem.parameter_bytes(model))
    history: list[dict] = []
    result = RunResult(config=cfg, status="running", history=pd.DataFrame(columns=HISTORY_COLUMNS), params=params,
                       memory=memory, timing=Timing(float("nan"), float("nan"), 0.0), environment=env,
                       memory_estimate=estimate)

    def finish(status: str, message: str = "") -> RunResult:
        result.status, result.message = status, message
        result.history = pd.DataFrame(history, columns=HISTORY_COLUMNS)
        steady = step_times[1:] or step_times
        train_time = sum(step_times)
        result.timing = Timing(
            seconds_per_step=statistics.median(steady) if steady else float("nan"),
            tokens_per_second=tokens / train_time if train_time > 0 else float("nan"),
            total_seconds=time.perf_counter() - t_start,
        )
        memory.peak, memory.peak_kind = mem.peak_memory(device)
        if runs_dir is not None:
            store.save_run(result, runs_dir)
            if cfg.method == "lora" and step > 0:
                from workbench.lora.adapters import save_adapter

                save_adapter(model, os.path.join(result.path, "adapter"))
        if keep_model:
            if frozen_in_bf16:
                restore_frozen_to_fp32(model)
            result.model = model.eval()
        return result

    step_times: list[float] = []
    tokens = 0
    step = 0
    mem.reset_peak_memory(device)  # this run's peak, not the whole session's
    bar = tqdm(total=cfg.steps, desc=cfg.label(), disable=not progress, leave=False)
    batches = repeat_batches(train_loader, cfg.steps)
    try:
        while step < cfg.steps:
            if stop is not None and stop.is_set():
                return finish("stopped", f"stopped by the user after {step} of {cfg.steps} steps")
            batch = next(batches)
            if step == 0:  # dynamic padding: the measured step saw this batch's own length
                result.memory_estimate = estimate_for(*batch.input_ids.shape)
            n_tokens = batch.num_tokens
            batch = batch.to(device).model_inputs()
            t0 = time.perf_counter()
            saved = mem.SavedActivations(model) if step == 0 else None
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                if saved is not None:
                    with saved:
                        loss = model(**batch).loss
                else:
                    loss = model(**batch).loss
            loss_value = loss.detach().item()
            if not math.isfinite(loss_value):
                history.append({"step": step + 1, "train_loss": loss_value, "lr": scheduler.get_last_lr()[0]})
                return finish("diverged", f"the loss became {loss_value} at step {step + 1}; "
                                          f"try a lower learning rate than {cfg.lr:g}")
            loss.backward()
            if saved is not None:
                memory.activations = saved.bytes
                memory.gradients = mem.gradient_bytes(model)
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            step_times.append(time.perf_counter() - t0)
            tokens += n_tokens
            if step == 0:
                memory.optimizer = mem.optimizer_state_bytes(optimizer)
            step += 1
            row = {"step": step, "train_loss": loss_value, "lr": lr}
            history.append(row)
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
                row["eval_loss"], row["eval_accuracy"] = evaluate(model, eval_loader, device, use_bf16)
                if runs_dir is not None and step < cfg.steps:  # checkpoint the record and curve
                    result.history = pd.DataFrame(history, columns=HISTORY_COLUMNS)
                    store.save_run(result, runs_dir)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
            if on_step is not None:
                on_step(StepInfo(step, cfg.steps, loss_value, lr, time.perf_counter() - t_start,
                                 row.get("eval_loss"), row.get("eval_accuracy"), history))
    except KeyboardInterrupt:
        return finish("stopped", f"interrupted after {step} of {cfg.steps} steps")
    except Exception as e:
        finish("failed", f"{type(e).__name__}: {e}")
        raise
    finally:
        bar.close()
    return finish("completed")

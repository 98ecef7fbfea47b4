"""One training step of a ``RunConfig``, measured exactly beside the analytic estimate.

* ``measure_vs_estimate(cfg, batch_size, seq_len)``: load ``cfg.model``, apply
  ``cfg.method`` (LoRA, full fine-tuning, head only), run one measured AdamW step on a
  synthetic batch of exactly ``batch_size`` x ``seq_len`` tokens, and estimate the same
  step on paper;
* ``memory_grid(cfgs, batch_sizes, seq_lens)``: the same over a grid, as a long table,
  loading each model once.

Why a synthetic batch: real data is padded per batch to that batch's longest sentence
(dynamic padding), so "sequence length 64" of a real run means "at most 64", and the
measured activations follow the first batch's longest sentence.  Random token ids with a
full attention mask make the length exact, and memory depends on shapes, not on which
tokens they are.

Why float32 and no autocast: the estimate models training wholly in one dtype; under
autocast the weights stay float32 while matmuls save bfloat16 copies, a mixture the
formulas do not describe.  (``cfg.bf16`` is therefore ignored here.)

The measured step (``workbench.engine.memory.measure_step``) uses AdamW with learning
rate 0: the optimizer allocates and updates its two moments as in any step, but no weight
changes, so one loaded model serves a whole grid.  Dropout runs as in training (the model
is in ``train()`` mode), as the estimate assumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import pandas as pd
import torch
from torch import nn

from workbench.engine.config import RunConfig
from workbench.engine.memory import (
    COMPONENTS,
    MemoryBreakdown,
    compare_breakdowns,
    estimate_activation_bytes,
    estimate_memory,
    measure_step,
)
from workbench.lora.quantize import logical_numel
from workbench.util.checks import check_choice, check_positive_int
from workbench.util.units import MB


@dataclass
class MemoryComparison:
    """One training step of one configuration: measured exactly and estimated on paper.

    ``measured.peak`` is the process's VmHWM on CPU (Python, torch and everything else
    resident included) or CUDA's max allocated; the estimate has no peak.
    ``activation_items`` is the estimate's itemised list ({label: bytes}), whose sum is
    ``estimated.activations``.
    """

    label: str  # cfg.label(): "LoRA r=8 (query,value)", "full fine-tuning", "head only"
    method: str  # cfg.method
    rank: int  # cfg.lora.rank for LoRA, 0 otherwise
    batch_size: int
    seq_len: int
    trainable: int  # numbers that train
    total_params: int  # all numbers of the model
    device: str
    measured: MemoryBreakdown
    estimated: MemoryBreakdown
    activation_items: dict[str, int] = field(default_factory=dict, repr=False)

    def table(self) -> pd.DataFrame:
        """``compare_breakdowns(measured, estimated)``: MB per component and error in %."""
        return compare_breakdowns(self.measured, self.estimated)

    def rows(self, name: str | None = None) -> list[dict[str, Any]]:
        """Long-format rows (one per component, bytes), as ``memory_grid`` stacks them.

        ``name`` goes in the ``method`` column (default: the label).
        """
        return [{
            "method": name if name is not None else self.label,
            "kind": self.method,
            "rank": self.rank,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "component": comp,
            "measured": int(getattr(self.measured, comp)),
            "estimated": int(getattr(self.estimated, comp)),
        } for comp in COMPONENTS]


def _max_positions(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(cfg, key, None)
        if isinstance(value, int):
            return value
    return None


def prepared_model(cfg: RunConfig, seed: int | None = None) -> tuple[nn.Module, Any]:
    """(model, tokenizer): ``cfg.model`` loaded, ``cfg.method`` applied, in train mode, on
    ``cfg.device``, in float32.  Which parameters train is exactly what ``train`` would
    train (the same ``prepare_model``).  ``seed`` (default ``cfg.seed``) seeds the random
    weights of the tiny presets and LoRA's A.  ``cfg.quantize`` (QLoRA) quantizes the
    base's block linears as ``train`` does; their codes keep their own dtype (uint8/int8)
    and everything else is float32.
    """
    from workbench.engine.models import load_base
    from workbench.engine.config import validate
    from workbench.engine.hardware import resolve_device
    from workbench.engine.training import prepare_model

    if not isinstance(cfg, RunConfig):
        raise TypeError(f"cfg must be a RunConfig, got {type(cfg).__name__}")
    validate(cfg)
    seed = cfg.seed if seed is None else seed
    device = resolve_device(cfg.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, tokenizer = load_base(cfg.model, num_labels=2, task=cfg.task, seed=seed, quantize=cfg.quantize)
        prepare_model(cfg, model)
    model.to(device=device, dtype=torch.float32).train()
    return model, tokenizer


def synthetic_batch(tokenizer: Any, batch_size: int, seq_len: int, task: str = "classification",
                    num_labels: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Exactly ``batch_size`` x ``seq_len`` random token ids, no padding, and labels.

    Ids are drawn uniformly from the tokenizer's vocabulary, special tokens left out; the
    attention mask is all ones (so the length is exact: nothing is padding).  Labels: one
    class per sequence for classification, the ids themselves for causal-lm (the model
    shifts them).  Memory depends on these shapes only, not on the values.
    """
    check_positive_int("batch_size", batch_size)
    check_positive_int("seq_len", seq_len)
    check_choice("task", task, ("classification", "causal-lm"))
    vocab = len(tokenizer)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    allowed = torch.tensor([i for i in range(vocab) if i not in special], dtype=torch.long)
    if not len(allowed):
        raise ValueError("the tokenizer has no ordinary (non-special) tokens to draw from")
    g = torch.Generator().manual_seed(seed)
    ids = allowed[torch.randint(len(allowed), (batch_size, seq_len), generator=g)]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if task == "classification":
        batch["labels"] = torch.randint(num_labels, (batch_size,), generator=g)
    else:
        batch["labels"] = ids.clone()
    return batch


def measure_vs_estimate(cfg: RunConfig, batch_size: int, seq_len: int, seed: int = 0, *,
                        model: nn.Module | None = None, tokenizer: Any = None) -> MemoryComparison:
    """One training step of ``cfg`` on exactly ``batch_size`` x ``seq_len`` tokens, measured
    and estimated with the same settings.

    Measured (``workbench.engine.memory.measure_train_step``): weights, the gradients present
    after backward, AdamW's state after its first step, the bytes autograd saved for
    backward, and the peak.  Estimated (``estimate_memory``): the same four terms from the
    model's shapes and config, for the same batch, dtype (float32), device, dropout on
    and no padding.  The closed forms both sides share:

        weights = total * 4,  gradients = trainable * 4,
        optimizer = 2 * trainable * 4 + 4 * (number of trainable tensors)

    With ``cfg.quantize`` (QLoRA) the quantized weights count as stored on both sides:
    their 4/8-bit codes plus the constants bitsandbytes keeps (``parameter_bytes``);
    ``total_params`` still counts weights (``logical_numel``), not bytes.

    ``model``/``tokenizer``: a model already prepared for ``cfg`` (``prepared_model``),
    to reuse across calls; it is left as it was (learning rate 0, gradients cleared).
    Without them the model is loaded and prepared here (the slow part).
    """
    if not isinstance(cfg, RunConfig):
        raise TypeError(f"cfg must be a RunConfig, got {type(cfg).__name__}")
    check_positive_int("batch_size", batch_size)
    check_positive_int("seq_len", seq_len)
    if (model is None) != (tokenizer is None):
        raise ValueError("pass both model and tokenizer (from prepared_model), or neither")
    if model is None:
        model, tokenizer = prepared_model(cfg, seed)
    limit = _max_positions(model)
    if limit is not None and seq_len > limit:
        raise ValueError(f"seq_len {seq_len} is longer than {cfg.model!r} can take ({limit} positions)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = next(model.parameters()).device
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"{cfg.label()} leaves no parameter trainable: nothing to measure")
    batch = {k: v.to(device) for k, v in synthetic_batch(tokenizer, batch_size, seq_len, cfg.task, seed=seed).items()}
    measured = measure_step(model, batch, "adamw", seed)
    del batch
    kw = dict(dropout=True, device=device.type, padded=False)
    estimated = estimate_memory(model, batch_size, seq_len, optimizer="adamw", **kw)
    items = estimate_activation_bytes(model, batch_size, seq_len, **kw)
    return MemoryComparison(
        label=cfg.label(), method=cfg.method, rank=cfg.lora.rank if cfg.method == "lora" else 0,
        batch_size=int(batch_size), seq_len=int(seq_len),
        trainable=sum(p.numel() for p in trainable), total_params=sum(logical_numel(p) for p in model.parameters()),
        device=str(device), measured=measured, estimated=estimated, activation_items=items,
    )


def memory_grid(cfg_by_method: Mapping[str, RunConfig], batch_sizes: Iterable[int], seq_lens: Iterable[int],
                seed: int = 0, progress: bool = False) -> pd.DataFrame:
    """``measure_vs_estimate`` over every (method, batch size, sequence length), as a long table.

    One row per (method, batch_size, seq_len, component), columns ``method`` (the key of
    ``cfg_by_method``), ``kind`` (lora/full/head), ``rank`` (0 unless LoRA),
    ``batch_size``, ``seq_len``, ``component`` (weights, gradients, optimizer,
    activations, total), ``measured`` and ``estimated`` (bytes).  Each model is loaded
    and prepared once per method and reused for all its points.  ``progress`` prints a
    line per point.
    """
    if not isinstance(cfg_by_method, Mapping) or not cfg_by_method:
        raise ValueError("cfg_by_method must be a non-empty mapping {name: RunConfig}")
    bs, ss = list(batch_sizes), list(seq_lens)
    if not bs or not ss:
        raise ValueError("batch_sizes and seq_lens must each hold at least one value")
    for b in bs:
        check_positive_int("every batch size", b)
    for s in ss:
        check_positive_int("every sequence length", s)
    rows: list[dict[str, Any]] = []
    for name, cfg in cfg_by_method.items():
        if not isinstance(cfg, RunConfig):
            raise TypeError(f"cfg_by_method[{name!r}] is a {type(cfg).__name__}, not a RunConfig")
        model, tokenizer = prepared_model(cfg, seed)
        for s in sorted(set(ss)):
            for b in sorted(set(bs)):
                c = measure_vs_estimate(cfg, b, s, seed, model=model, tokenizer=tokenizer)
                rows += c.rows(name)
                if progress:
                    print(f"{name}: batch {b} x {s} tokens: activations measured {c.measured.activations / MB:.1f} MB, "
                          f"estimated {c.estimated.activations / MB:.1f} MB")
        del model, tokenizer
    return pd.DataFrame(rows, columns=["method", "kind", "rank", "batch_size", "seq_len", "component",
                                       "measured", "estimated"])

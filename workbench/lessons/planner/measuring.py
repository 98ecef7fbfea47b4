"""Measuring: one real training step of what a plan estimates, for small models.

``measure(plan)`` builds (or copies) a real model of the plan's config and runs one
training step per side through the memory study's measured step
(``workbench.engine.memory.measure_step``); ``Plan.compare`` then sets the
estimate beside the measurement (``engine.memory.compare_breakdowns``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from workbench.engine.memory import MemoryBreakdown, measure_step
from workbench.lessons.planner.meta import DTYPES, quiet
from workbench.lessons.planner.plans import Plan
from workbench.lora.inject import add_lora
from workbench.util.units import GB

__all__ = ["measure"]

_MAX_MEASURE_BYTES = 2 * 10**9  # a real model above this is not built here


def _batch(p: Plan, vocab: int, seed: int) -> dict[str, torch.Tensor]:
    """Random token ids; when ``padded``, the last sequence is half padding (mask 0)."""
    s = p.settings
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, max(vocab, 6), (s.batch_size, s.seq_len), generator=g)
    mask = torch.ones_like(ids)
    if s.padded:
        mask[-1, max(1, s.seq_len // 2):] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if s.task == "classification":
        batch["labels"] = torch.randint(0, s.num_labels, (s.batch_size,), generator=g)
    elif s.task == "causal-lm":
        batch["labels"] = ids.masked_fill(mask == 0, -100)
    return batch


def measure(p: Plan, model: nn.Module | None = None, seed: int = 0) -> dict[str, MemoryBreakdown]:
    """One real training step for each side of a plan, accounted exactly: {"lora", "full"}.

    ``model``: a real model of the plan's config (e.g. the bundled MiniLM, loaded with its
    weights); it is copied, not changed.  Without it the model is built from the plan's
    config with random weights: memory depends on shapes, not values.  Small models
    only (weights up to 2 GB).  Each side is measured by ``engine.memory.measure_step``
    (the memory study's measured step): forward with the model in train mode (dropout on
    when ``settings.dropout``), backward, one step of ``settings.optimizer``; with
    ``settings.gradient_checkpointing`` every block is checkpointed and the recomputation
    in backward is measured too; with ``settings.quantize`` the LoRA side's base is
    quantized by bitsandbytes first (``workbench.lora.quantize.quantize_model``).  On
    CUDA (``plan(..., device="cuda")``) each side also reports the allocator's peak (max
    allocated after a reset), which ``Plan.compare`` lists beside the tensor accounting.
    """
    if not isinstance(p, Plan):
        raise TypeError(f"measure takes a Plan, got {type(p).__name__}")
    s = p.settings
    if p.full.memory.weights > _MAX_MEASURE_BYTES:
        raise ValueError(f"{s.architecture} has {p.full.memory.weights / GB:.1f} GB of weights: too big to "
                         f"measure here (limit {_MAX_MEASURE_BYTES / GB:.0f} GB); the plan is the estimate")
    if s.task == "base":
        raise ValueError("a 'base' plan has no head and no loss to train: plan with task='classification' "
                         "or 'causal-lm' to measure")
    if s.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("the plan is for device='cuda' but no CUDA device is available")
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    dtype = DTYPES[s.dtype]
    if model is None:
        auto = AutoModelForSequenceClassification if s.task == "classification" else AutoModelForCausalLM
        cfg = copy.deepcopy(p.config)
        if s.task == "classification":
            cfg.num_labels = s.num_labels
        quiet()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = auto.from_config(cfg)
    if getattr(model.config, "pad_token_id", None) is None and s.task == "classification":
        model.config.pad_token_id = 0  # GPT-2 classifiers need one to find the last token
    vocab = int(getattr(model.config, "vocab_size", 1000))
    batch = _batch(p, vocab, seed)
    out: dict[str, MemoryBreakdown] = {}
    for method in ("lora", "full"):
        m = copy.deepcopy(model).to(device=s.device, dtype=dtype)
        # Train mode runs dropout; eval mode is training with every dropout p = 0 (the
        # functional attention dropout of transformers reads self.training too).
        if s.dropout:
            m.train()
        else:
            m.eval()
        if method == "lora":
            if s.quantize is not None:
                from workbench.lora.quantize import quantize_model

                quantize_model(m, s.quantize, compute_dtype=dtype)
            add_lora(m, s.lora)
        else:
            m.requires_grad_(True)
        out[method] = measure_step(m, {k: v.to(s.device) for k, v in batch.items()}, s.optimizer, seed,
                                   gradient_checkpointing=s.gradient_checkpointing)
        del m
    return out

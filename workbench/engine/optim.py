"""The optimizer for a run: AdamW, optionally with LoRA+ learning rates.

LoRA+ (Hayou, Ghosh & Yu 2024, "LoRA+: Efficient Low Rank Adaptation of Large Models",
arXiv:2402.12354) observes that with one learning rate for both factors of ``s B A``,
B (which starts at zero and maps the rank-r space to the wide output) learns too slowly
when the width is large.  Giving B a larger step,

    lr_B = ratio * lr_A        (the paper suggests ratio around 16)

speeds up fine-tuning at no cost in parameters or memory.

The parameter groups follow PEFT's ``create_loraplus_optimizer`` (and the authors' code):

=============================  ==================  =========================================
parameter                      learning rate       weight decay
=============================  ==================  =========================================
``lora_A``, other matrices     lr                  weight_decay
  (e.g. the head's weight)
``lora_B``, other vectors      lr * ratio          weight_decay
  (e.g. DoRA's magnitude)
biases and LayerNorm vectors   lr * ratio          0
=============================  ==================  =========================================

Note that every 1-D trainable tensor (a head's bias, DoRA's magnitude) is put with B:
that is what the reference implementations do, and matching them keeps runs comparable.
PEFT also gives LoRA on embedding layers its own small rate; our LoRA wraps only
Linear/Conv1D layers, so that group never arises here.

Without a ratio the optimizer is plain AdamW over all trainable parameters with one
learning rate and ``weight_decay`` on every one of them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from workbench.lora.layer import LoRALayer


def _check_number(name: str, value: object, minimum: float, inclusive: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = value >= minimum if inclusive else value > minimum
    if not ok:
        bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
        raise ValueError(f"{name} must be a number {bound}, got {value!r}")
    return float(value)


def _no_decay_names(model: nn.Module) -> set[str]:
    """Parameters that never take weight decay: biases, and the vectors of LayerNorm layers."""
    names = set()
    for mod_name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if isinstance(module, nn.LayerNorm) or "bias" in full:
                names.add(full)
    return names


def loraplus_groups(
    model: nn.Module, lr: float, weight_decay: float = 0.0, loraplus_ratio: float = 16.0
) -> list[dict[str, Any]]:
    """LoRA+ parameter groups (see the module table): A-like at ``lr``, B-like at ``lr * ratio``.

    Each group carries a ``"name"`` ("A", "B", "B_no_decay") for tables and plots; empty
    groups are left out.
    """
    no_decay = _no_decay_names(model)
    groups: dict[str, list[nn.Parameter]] = {"A": [], "B": [], "B_no_decay": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if "lora_B" in name or param.ndim == 1:
            groups["B_no_decay" if name in no_decay else "B"].append(param)
        else:
            groups["A"].append(param)
    settings = {
        "A": (lr, weight_decay),
        "B": (lr * loraplus_ratio, weight_decay),
        "B_no_decay": (lr * loraplus_ratio, 0.0),
    }
    return [
        {"name": key, "params": params, "lr": settings[key][0], "weight_decay": settings[key][1]}
        for key, params in groups.items()
        if params
    ]


def can_fuse(params: list[nn.Parameter]) -> bool:
    """True when PyTorch's fused AdamW kernel takes these parameters: floating point, on
    the CPU or a CUDA GPU.  The fused kernel does the same update as the loop over
    tensors (to float rounding) in one pass over memory, which on the CPU is several
    times faster for a full fine-tuning's 22M parameters (it is the Trainer's default too)."""
    return all(p.dtype.is_floating_point and p.device.type in ("cpu", "cuda") for p in params)


def make_optimizer(
    model: nn.Module, lr: float, weight_decay: float = 0.0, loraplus_ratio: float | None = None,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over the model's trainable parameters; with ``loraplus_ratio``, LoRA+ groups.

    ``loraplus_ratio=None`` gives one group: every trainable parameter at ``lr`` with
    ``weight_decay``.  A ratio (> 0; LoRA+ uses ratios above 1, e.g. 16) needs LoRA layers
    in the model and builds the groups of ``loraplus_groups``.  ``fused``: None uses the
    fused kernel wherever ``can_fuse`` says it runs.  Build the optimizer after moving the
    model to its device.
    """
    lr = _check_number("lr", lr, 0.0, inclusive=False)
    weight_decay = _check_number("weight_decay", weight_decay, 0.0, inclusive=True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters to optimize")
    if fused is None:
        fused = can_fuse(trainable)
    if loraplus_ratio is None:
        return torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay, fused=fused)
    ratio = _check_number("loraplus_ratio", loraplus_ratio, 0.0, inclusive=False)
    if not any(isinstance(m, LoRALayer) for m in model.modules()):
        raise ValueError("loraplus_ratio needs a model with LoRA layers (LoRA+ sets B's learning rate); "
                         "call add_lora first or pass loraplus_ratio=None")
    return torch.optim.AdamW(loraplus_groups(model, lr, weight_decay, ratio), lr=lr, weight_decay=weight_decay,
                             fused=fused)


def learning_rates(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The learning rate each named parameter gets from ``optimizer`` (for tables and checks)."""
    by_id = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.named_parameters() if id(p) in by_id}

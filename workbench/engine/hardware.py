"""Where a run computes and in which precision: the device, bf16, and what a bf16 run does once.

The run's config names a device ("auto": CUDA when present) and a bf16 choice ("auto": on
CUDA with bf16 support; on CPUs with AMX / AVX-512-bf16 units when a short probe measures it
faster for the run's model, ``workbench.engine.bf16_probe``); these functions turn the
device into a ``torch.device``, say whether the CPU has bf16 units, and prepare a model for
a bf16 run (its frozen base stored in bf16 once; on the CPU the plain attention path).  The loop
(``workbench.engine.training``) and the launcher (``workbench.engine.launch``) both ask here.
"""

from __future__ import annotations

import torch
from torch import nn

from workbench.util import procfs

__all__ = ["resolve_device", "cpu_has_fast_bf16", "store_frozen_in_bf16", "use_plain_attention",
           "restore_frozen_to_fp32"]


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
    return bool({"amx_bf16", "avx512_bf16"} & procfs.cpu_flags())


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

"""What the LoRA layer and the counters need to know about a quantized base, and nothing more.

A bitsandbytes layer (``Linear4bit``: QLoRA's NF4; ``Linear8bitLt``: LLM.int8) stores its
frozen weight as 4/8-bit codes.  Beside such a layer LoRA's A and B train in float
(``float_dtype``), the update cannot be merged into the codes (``refuse_merge``), and a
packed NF4 parameter stands for twice the weights its ``numel()`` says (``logical_numel``).

Making and unmaking quantized layers (``quantize_model``, ``dequantize_model``) and what
they cost in bytes live in ``workbench.lora.quantize``, apart from the layer.  This module
never imports bitsandbytes: a model can only hold bitsandbytes layers once something else
has imported it, so the checks look at ``sys.modules``.  A leaf: only torch.
"""

from __future__ import annotations

import math
import sys
from typing import Literal

import torch
from torch import nn

__all__ = ["Quantize", "QUANTIZE_CHOICES", "check_quantize", "quantized_layer_types", "is_quantized_layer",
           "layer_quantization", "model_quantization", "is_quantized", "float_dtype", "refuse_merge",
           "logical_numel"]

Quantize = Literal["nf4", "int8"]
QUANTIZE_CHOICES: tuple[str, ...] = ("nf4", "int8")

def check_quantize(quantize: str | None) -> str | None:
    """``None`` (no quantization), ``"nf4"`` or ``"int8"``; anything else is refused."""
    if quantize is None or quantize in QUANTIZE_CHOICES:
        return quantize
    raise ValueError(
        f"quantize must be one of {', '.join(repr(q) for q in QUANTIZE_CHOICES)} or None "
        f"(no quantization), not {quantize!r}"
    )


def quantized_layer_types() -> tuple[type, ...]:
    """bitsandbytes' quantized linear layers (both subclass ``nn.Linear``); () when it is not loaded."""
    bnb = sys.modules.get("bitsandbytes")
    if bnb is None:
        return ()
    return (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)


def is_quantized_layer(module: nn.Module) -> bool:
    """True for a bitsandbytes ``Linear4bit`` / ``Linear8bitLt`` holding quantized weights."""
    types = quantized_layer_types()
    return bool(types) and isinstance(module, types)


def layer_quantization(module: nn.Module) -> str | None:
    """"nf4", "int8" (or bitsandbytes' "fp4") for a quantized layer; None for any other module."""
    if not is_quantized_layer(module):
        return None
    bnb = sys.modules["bitsandbytes"]
    if isinstance(module, bnb.nn.Linear8bitLt):
        return "int8"
    return getattr(module.weight, "quant_type", "fp4")


def model_quantization(model: nn.Module) -> str | None:
    """The quantization of a model's quantized layers ("nf4" / "int8"), or None when it has none."""
    kinds = {q for q in map(layer_quantization, model.modules()) if q is not None}
    if len(kinds) > 1:
        return "+".join(sorted(kinds))
    return next(iter(kinds), None)


def is_quantized(model: nn.Module) -> bool:
    """True when any layer of ``model`` holds bitsandbytes-quantized weights."""
    return any(is_quantized_layer(m) for m in model.modules())


def float_dtype(layer: nn.Module) -> torch.dtype:
    """The dtype LoRA's A and B take beside ``layer``: its weight's dtype when that is a float,
    else (a quantized weight stored as uint8/int8 codes) the default float dtype (fp32), as
    PEFT's LoRA on bitsandbytes layers does: the adapter trains in full precision."""
    w = layer.weight
    return w.dtype if w.dtype.is_floating_point else torch.get_default_dtype()


def refuse_merge(layer: nn.Module, what: str = "merge") -> None:
    """Raise if ``layer`` is quantized: W + s B A cannot be written into 4- or 8-bit codes.

    Rounding the merged weight back to NF4/int8 would throw most of the small update away
    (an NF4 step is about a tenth of a block's largest weight), so a quantized base keeps its
    adapter separate.  The message says what to do instead.
    """
    q = layer_quantization(layer)
    if q is None:
        return
    raise ValueError(
        f"cannot {what} LoRA into a {q}-quantized base layer ({type(layer).__name__}): the update s B A would be "
        "rounded away in the quantized codes. Keep the adapter separate (save_adapter), or dequantize first: "
        "export_merged(model, tokenizer, folder, dequantize=True) writes a plain model with the update merged, "
        "or workbench.lora.quantize.dequantize_model(model) turns the base back into float layers in place"
    )


def logical_numel(p: torch.Tensor) -> int:
    """How many weights a parameter stands for: a packed NF4 parameter holds two per byte."""
    state = getattr(p, "quant_state", None)
    if state is not None and getattr(state, "shape", None) is not None:
        return int(math.prod(state.shape))
    return p.numel()

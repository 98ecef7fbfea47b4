"""Quantized frozen bases (QLoRA): what a quantized weight costs in bytes.

QLoRA (Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs",
arXiv:2305.14314) stores the frozen base weights in 4-bit NormalFloat (NF4) and trains
LoRA on top in 16 or 32 bits.  bitsandbytes keeps, besides the packed 4-bit codes:

* one absolute maximum per block of 64 weights (the scale of the block), and with
  *double quantization* those absmax values are themselves quantized to 8 bits in blocks
  of 256, each such block keeping one fp32 scale.

So, per weight (the paper's section 3, "Double Quantization"):

    NF4 without double quantization:  4 + 32 / 64               = 4.5   bits
    NF4 with double quantization:     4 + 8 / 64 + 32 / (64*256) = 4.127 bits

LLM.int8 (Dettmers et al. 2022, arXiv:2208.07339) stores one int8 code per weight and
one fp32 scale per output row:  8 + 32 / in_features bits.

These constants are the single source for the planner (``lessons/planner/``) and the
memory breakdown; ``tests`` check them against the bytes bitsandbytes really allocates.

Quantizing a model (``quantize_model``, what ``load_base(..., quantize=)`` calls) replaces
the plain ``nn.Linear`` layers of the transformer blocks by bitsandbytes' ``Linear4bit``
(NF4, blocks of 64, double quantization) or ``Linear8bitLt`` (LLM.int8), frozen; the
embeddings, norms, pooler and head stay in float.  ``LoRALayer`` wraps those layers as it
wraps ``nn.Linear`` (they subclass it), with A and B in float (``float_dtype``).  Merging
into 4/8-bit codes is refused (``refuse_merge``); ``dequantize_model`` turns the base back
into float layers holding the weights the quantized layers computed with, after which
merging and ``export_merged`` work as on any float model.  ``quantization_constant_bytes``
and ``quantized_layer_bytes`` count what a quantized layer really holds, for
``workbench.engine.memory.parameter_bytes``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import torch
from torch import nn

from workbench.lora.paths import block_linear_names, replace_module
# The facts the layer needs live in a leaf (the layer never imports this module); they are
# part of this module's public face too: ``from workbench.lora.quantize import check_quantize``.
from workbench.lora.quant_facts import (QUANTIZE_CHOICES, Quantize, check_quantize, float_dtype, is_quantized,
                                        is_quantized_layer, layer_quantization, logical_numel, model_quantization,
                                        quantized_layer_types, refuse_merge)

__all__ = [
    "QUANTIZE_CHOICES", "Quantize", "check_quantize", "float_dtype", "is_quantized", "is_quantized_layer",
    "layer_quantization", "logical_numel", "model_quantization", "quantized_layer_types", "refuse_merge",
    "NF4_BLOCK", "NF4_STATS_BLOCK", "NF4_LAYER_TABLE_BYTES", "INT8_THRESHOLD", "nf4_bits_per_weight",
    "int8_bits_per_weight", "quantized_bytes_per_weight", "quantize_layer", "quantize_model", "dequantize_weight",
    "dequantize_layer", "dequantize_model", "quantization_constant_bytes", "quantized_layer_bytes",
    "restore_quantized_weights",
]

NF4_BLOCK = 64  # weights per absmax (bitsandbytes' default blocksize for 4-bit)
NF4_STATS_BLOCK = 256  # absmax values per fp32 scale under double quantization


def nf4_bits_per_weight(double_quant: bool = True) -> float:
    """4 bits of code plus the block constants: 4.127 with double quantization, 4.5 without."""
    if double_quant:
        return 4 + 8 / NF4_BLOCK + 32 / (NF4_BLOCK * NF4_STATS_BLOCK)
    return 4 + 32 / NF4_BLOCK


def int8_bits_per_weight(in_features: int) -> float:
    """8 bits of code plus one fp32 scale per output row, spread over its ``in_features`` weights."""
    if in_features < 1:
        raise ValueError(f"in_features must be a positive integer, not {in_features!r}")
    return 8 + 32 / in_features


def quantized_bytes_per_weight(quantize: str, in_features: int, double_quant: bool = True) -> float:
    """Bytes per weight of a quantized ``Linear`` with ``in_features`` inputs, constants included."""
    q = check_quantize(quantize)
    if q is None:
        raise ValueError("quantized_bytes_per_weight needs quantize 'nf4' or 'int8', not None")
    bits = nf4_bits_per_weight(double_quant) if q == "nf4" else int8_bits_per_weight(in_features)
    return bits / 8


# --------------------------------------------------------------------------- quantizing a model
#
# bitsandbytes is imported only when a model is quantized (it is heavy, and prints a notice
# on import); a model can only hold bitsandbytes layers once it has been imported, so the
# checks below look at ``sys.modules`` first and never import it themselves.

# Bytes every NF4 layer keeps besides its per-weight codes and block constants: the 16-entry
# NF4 code book and the 256-entry code book of the double-quantized absmax values (fp32 each),
# and the fp32 offset subtracted from the absmax values before they are quantized.
NF4_LAYER_TABLE_BYTES = (16 + 256 + 1) * 4
# LLM.int8's outlier threshold (Dettmers et al. 2022; transformers' default): at inference,
# input features with a value above it are multiplied in 16-bit instead of int8.
INT8_THRESHOLD = 6.0


class _CastNotice(logging.Filter):
    """Drops bitsandbytes' "inputs will be cast ... to float16" line, logged at *every* int8
    matmul in eval mode (LLM.int8 quantizes the inputs from fp16 by design): a run would
    print it thousands of times.  Every other bitsandbytes message passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "will be cast from" not in record.getMessage()


class _KernelsNotice(logging.Filter):
    """Drops bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community" warning,
    logged when it is imported on a CPU with AVX-512 bf16 and the optional ``kernels`` package
    (a faster NF4 kernel downloaded from the Hub) is absent: its own CPU path works without it.
    Installed when this module loads, since bitsandbytes may be imported by unpickling a model."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_KernelsNotice())


def _bnb():
    """The ``bitsandbytes`` module, or an ImportError that says how to get it."""
    try:
        import bitsandbytes
    except ImportError as e:  # pragma: no cover - a hard dependency (requirements.txt)
        raise ImportError("quantize='nf4' or 'int8' needs bitsandbytes (pip install bitsandbytes); "
                          f"it could not be imported: {e}") from None
    log = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _CastNotice) for f in log.filters):
        log.addFilter(_CastNotice())
    return bitsandbytes


def quantize_layer(layer: nn.Linear, quantize: str, compute_dtype: torch.dtype | None = None) -> nn.Module:
    """A bitsandbytes layer holding ``layer``'s weights quantized (``layer`` is left unchanged).

    * "nf4": ``Linear4bit`` with NF4 codes, blocks of 64, double quantization (the absmax of
      each block quantized to 8 bits in blocks of 256), as QLoRA does; the matmul dequantizes
      to ``compute_dtype`` (None: the input's dtype, fp32 or bf16).
    * "int8": ``Linear8bitLt`` (LLM.int8) with int8 codes and one fp32 scale per output row,
      the outlier threshold ``INT8_THRESHOLD`` (6.0, LLM.int8's), weights not kept in float.
      (On the CPU bitsandbytes trains through the dequantized weight and evaluates with
      int8 inputs, so an int8 model's train-mode and eval-mode outputs differ slightly.)

    The bias stays in float.  Quantization happens on the layer's own device.  bitsandbytes'
    CPU inference repacking of NF4 weights (on CPUs with AVX-512 bf16, at the first
    ``no_grad`` eval forward) is switched off: it rewrites the weight in place into a layout
    that has no backward pass, so training after an evaluation would break, and its fp32
    absmax would change the bytes counted.
    """
    if check_quantize(quantize) is None:
        raise ValueError("quantize_layer needs quantize 'nf4' or 'int8', not None")
    if type(layer) is not nn.Linear:
        raise TypeError(f"only plain nn.Linear layers are quantized, not {type(layer).__name__}")
    if compute_dtype is not None and compute_dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"compute_dtype must be None, torch.float32, torch.bfloat16 or torch.float16, "
                         f"not {compute_dtype!r}")
    bnb = _bnb()
    device = layer.weight.device
    has_bias = layer.bias is not None
    with torch.device("meta"):  # no throw-away float weights: load_state_dict brings the real ones
        if quantize == "nf4":
            q = bnb.nn.Linear4bit(layer.in_features, layer.out_features, bias=has_bias, compute_dtype=compute_dtype,
                                  compress_statistics=True, quant_type="nf4", quant_storage=torch.uint8)
        else:
            q = bnb.nn.Linear8bitLt(layer.in_features, layer.out_features, bias=has_bias, has_fp16_weights=False,
                                    threshold=INT8_THRESHOLD)
    q.weight = type(q.weight)(layer.weight.detach().to(torch.float32).clone(), requires_grad=False,
                              **({"compress_statistics": True, "quant_type": "nf4", "quant_storage": torch.uint8,
                                  "module": q} if quantize == "nf4" else {"has_fp16_weights": False}))
    if has_bias:
        q.bias = nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
    q = q.to(device)  # bitsandbytes quantizes when the float weight is moved to a device
    if quantize == "nf4":
        q.support_avx512bf16_for_cpu = False
    q.train(layer.training)
    return q


def quantize_model(model: nn.Module, quantize: str | None, compute_dtype: torch.dtype | None = None) -> list[str]:
    """Replace the ``nn.Linear`` layers of the transformer blocks by quantized ones, in place.

    Returns the replaced paths ([] for ``quantize=None``).  Call it on a base model before
    ``add_lora``: the quantized layers are frozen, and LoRA then wraps them as it wraps
    ``nn.Linear``.  Embeddings, LayerNorms, the pooler and the head stay in float.
    """
    q = check_quantize(quantize)
    if q is None:
        return []
    if getattr(model, "lora_settings", None) is not None:
        raise ValueError("quantize the base model before adding LoRA (the model already has LoRA layers)")
    names = block_linear_names(model)
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear layers inside numbered transformer blocks to quantize "
            "(GPT-2 style models use Conv1D, which bitsandbytes does not quantize): quantize supports BERT- and "
            "Llama-style models")
    for n in names:
        replace_module(model, n, quantize_layer(model.get_submodule(n), q, compute_dtype))
    model.workbench_quantize = q
    return names


def _unpacked_4bit(layer: nn.Module) -> tuple[torch.Tensor, Any]:
    """(codes, quant state) of a Linear4bit in bitsandbytes' standard layout."""
    w, state = layer.weight.data, layer.weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

        w, state = _convert_weight_packed_for_cpu_inverse(w, state)
    return w, state


@torch.no_grad()
def dequantize_weight(layer: nn.Module, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight a quantized layer computes with, as a float ``out x in`` tensor.

    NF4: each code's NF4 value times its block's absmax (itself dequantized from 8 bits);
    int8: code * row scale / 127.  This is the W the layer's forward pass uses (up to the
    compute dtype), not the original float weight, which is gone.
    """
    q = layer_quantization(layer)
    if q is None:
        raise TypeError(f"{type(layer).__name__} is not a quantized layer")
    bnb = sys.modules["bitsandbytes"]
    if q == "int8":
        scb = layer.weight.SCB if getattr(layer.weight, "SCB", None) is not None else layer.state.SCB
        w = layer.weight.data.to(torch.float32) * (scb.to(torch.float32)[:, None] / 127.0)
    else:
        codes, state = _unpacked_4bit(layer)
        w = bnb.functional.dequantize_4bit(codes, state).to(torch.float32)
    return w.reshape(layer.out_features, layer.in_features).to(dtype)


def dequantize_layer(layer: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Linear:
    """A plain ``nn.Linear`` computing with the quantized layer's (dequantized) weights."""
    out = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                    device=layer.weight.device, dtype=dtype)
    with torch.no_grad():
        out.weight.copy_(dequantize_weight(layer, dtype))
        if layer.bias is not None:
            out.bias.copy_(layer.bias.to(dtype))
    out.requires_grad_(False)
    out.train(layer.training)
    return out


def dequantize_model(model: nn.Module, dtype: torch.dtype = torch.float32) -> list[str]:
    """Replace every quantized layer (also those inside LoRA layers) by a float ``nn.Linear``, in place.

    Returns the paths replaced.  Afterwards ``merge_lora`` and ``export_merged`` work as on
    any float model; the weights are the dequantized ones the quantized model computed with.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype (torch.float32, torch.bfloat16), not {dtype!r}")
    names = [n for n, m in model.named_modules() if is_quantized_layer(m)]
    for n in names:
        replace_module(model, n, dequantize_layer(model.get_submodule(n), dtype))
    if hasattr(model, "workbench_quantize"):
        del model.workbench_quantize
    return names


# --------------------------------------------------------------------------- counting what it costs


def _state_tensors(layer: nn.Module) -> list[torch.Tensor]:
    """The tensors a quantized layer keeps besides its codes (which are its weight parameter)."""
    if layer_quantization(layer) == "int8":
        scb = getattr(layer.weight, "SCB", None)
        scb = scb if scb is not None else layer.state.SCB
        return [scb] if scb is not None else []
    state = layer.weight.quant_state
    out = [state.absmax, state.code, getattr(state, "offset", None)]
    if getattr(state, "state2", None) is not None:
        out += [state.state2.absmax, state.state2.code]
    return [t for t in out if isinstance(t, torch.Tensor)]


def quantization_constant_bytes(model: nn.Module) -> int:
    """Bytes of every quantized layer's constants (not its codes, which are parameters).

    NF4: the uint8 absmax per block of 64, the fp32 scales of the absmax blocks of 256, the
    two code books and the offset; int8: the fp32 scale per output row.  A tensor shared
    by several layers is counted once.
    """
    seen: set[tuple] = set()
    total = 0
    for m in model.modules():
        if not is_quantized_layer(m):
            continue
        for t in _state_tensors(m):
            key = (t.device.type, t.device.index, t.untyped_storage().data_ptr())
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
    return total


def quantized_layer_bytes(layer: nn.Module) -> int:
    """All the bytes a quantized layer's weight costs: codes + constants (bias not included)."""
    w = layer.weight
    return w.numel() * w.element_size() + sum(t.untyped_storage().nbytes() for t in _state_tensors(layer))


def restore_quantized_weights(model: nn.Module) -> nn.Module:
    """Give each quantized layer its bitsandbytes weight class back after a trip between processes.

    torch's multiprocessing pickler rebuilds a ``Parameter`` subclass as a plain ``Parameter``
    carrying the subclass's attributes (``quant_state``; ``CB``, ``SCB``).  bitsandbytes'
    forward still runs on it, but a copy of it (``copy.deepcopy``, as ``export_merged`` makes)
    drops those attributes, and the codes could no longer be read back.  A model trained in a
    worker process comes back through here (``workbench.engine.worker``).
    """
    types = quantized_layer_types()
    if not types:
        return model
    bnb = sys.modules["bitsandbytes"]
    for layer in model.modules():
        w = getattr(layer, "weight", None)
        if isinstance(layer, bnb.nn.Linear4bit) and not isinstance(w, bnb.nn.Params4bit):
            layer.weight = bnb.nn.Params4bit(
                w.data, requires_grad=w.requires_grad, quant_state=w.quant_state, blocksize=w.blocksize,
                compress_statistics=w.compress_statistics, quant_type=w.quant_type,
                quant_storage=w.quant_storage, module=layer, bnb_quantized=True)
        elif isinstance(layer, bnb.nn.Linear8bitLt) and not isinstance(w, bnb.nn.Int8Params):
            layer.weight = bnb.nn.Int8Params(w.data, requires_grad=w.requires_grad,
                                             has_fp16_weights=w.has_fp16_weights, CB=w.CB, SCB=w.SCB)
    return model

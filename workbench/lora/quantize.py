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

These constants are the single source for the planner (``lessons/planner.py``) and the
memory breakdown; ``tests`` check them against the bytes bitsandbytes really allocates.
"""

from __future__ import annotations

from typing import Literal

Quantize = Literal["nf4", "int8"]
QUANTIZE_CHOICES: tuple[str, ...] = ("nf4", "int8")

NF4_BLOCK = 64  # weights per absmax (bitsandbytes' default blocksize for 4-bit)
NF4_STATS_BLOCK = 256  # absmax values per fp32 scale under double quantization


def check_quantize(quantize: str | None) -> str | None:
    """``None`` (no quantization), ``"nf4"`` or ``"int8"``; anything else is refused."""
    if quantize is None or quantize in QUANTIZE_CHOICES:
        return quantize
    raise ValueError(
        f"quantize must be one of {', '.join(repr(q) for q in QUANTIZE_CHOICES)} or None "
        f"(no quantization), not {quantize!r}"
    )


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
